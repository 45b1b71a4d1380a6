"""MAIL FROM and RCPT TO paths: the fast path for plain addresses says exactly what aiosmtplib's parse says."""

from __future__ import annotations

import pytest
from aiosmtplib.email import quote_address
from hypothesis import given
from hypothesis import strategies as st

from jetmail.messaging.providers.smtp import smtp_path

# addresses made of the characters that matter to a parser: atoms, dots, quotes, brackets, spaces, line ends
pieces = st.sampled_from(["a", "Z9", ".", "..", "+tag", "-", "_", "'", "ü", '"', " ", "<", ">", "(c)", ",", ";",
                          ":", "\\", "[", "]", "\r\n", "\t", "@", "example.com"])
addresses = st.lists(pieces, min_size=1, max_size=12).map("".join)


def quoted(address: str) -> str:
    try:
        return quote_address(address)
    except ValueError:
        return "refused"


def path(address: str) -> str:
    try:
        return smtp_path(address)
    except ValueError:
        return "refused"


@given(addresses)
def test_every_address_gets_the_path_aiosmtplib_would_send(address: str) -> None:
    assert path(address) == quoted(address)


@pytest.mark.parametrize("address", ["user@example.com", "first.last+tag@mail.example.co.uk", "o'brien@example.org"])
def test_a_plain_address_is_sent_in_angle_brackets(address: str) -> None:
    assert smtp_path(address) == f"<{address}>"


@pytest.mark.parametrize("address", ['"a b"@example.com', "a@b\r\nRCPT TO:<x@y>", "Name <user@example.com>"])
def test_anything_else_is_parsed_and_checked_as_before(address: str) -> None:
    assert path(address) == quoted(address)
