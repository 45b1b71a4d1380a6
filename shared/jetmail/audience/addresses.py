"""Email addresses as jetmail stores and compares them."""

from __future__ import annotations

from email_validator import EmailNotValidError, validate_email


class InvalidAddress(ValueError):
    """An address that is not a valid email address; the message says why."""


def normalise_email(address: str) -> str:
    """Validated, with the domain lower-cased and IDNA-normalised; the local part is kept as given."""
    try:
        result = validate_email(address, check_deliverability=False, allow_smtputf8=True)
    except EmailNotValidError as exc:
        raise InvalidAddress(str(exc)) from None
    return result.normalized
