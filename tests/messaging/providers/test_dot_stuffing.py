"""DATA transparency (RFC 5321 section 4.5.2): what a server un-stuffs is the message, line for line."""

from __future__ import annotations

import re

from hypothesis import given
from hypothesis import strategies as st

from jetmail.messaging.providers.pipelining import dot_stuffed

# messages made of the bytes that matter here: line ends, periods and some text
messages = st.lists(st.sampled_from([b"\r", b"\n", b"\r\n", b".", b"..", b"a", b"x y"]), max_size=40).map(b"".join)


def lines_of(raw: bytes) -> list[bytes]:
    """The lines a mail client sees: CRLF, LF and a lone CR each end one."""
    return re.split(rb"\r\n|\n|\r", raw)


def unstuffed(data: bytes) -> list[bytes]:
    """What a server stores from DATA: lines up to the lone ".", each leading period removed."""
    assert data.endswith(b"\r\n.\r\n") or data == b".\r\n"
    lines = data[:-len(b".\r\n")].split(b"\r\n")[:-1]
    return [line[1:] if line.startswith(b".") else line for line in lines]


@given(messages)
def test_the_server_reads_back_every_line(raw: bytes) -> None:
    data = dot_stuffed(raw)
    # only CRLF line ends, and no line of a lone period before the end
    assert b"\r" not in data.replace(b"\r\n", b"") and b"\n" not in data.replace(b"\r\n", b"")
    body = data[:-len(b".\r\n")]
    assert b"\r\n.\r\n" not in body and not body.startswith(b".\r\n")
    expected = lines_of(raw)
    if raw.endswith((b"\r", b"\n")):
        expected = expected[:-1]  # the message's final line end ends its last line
    assert unstuffed(data) == expected


def test_examples() -> None:
    assert dot_stuffed(b"a\n.b\r.\r\n") == b"a\r\n..b\r\n..\r\n.\r\n"
    assert dot_stuffed(b".") == b"..\r\n.\r\n"
    assert dot_stuffed(b"") == b"\r\n.\r\n"


# messages whose every line ends in CRLF, as jetmail.messaging.mime builds them
built = st.lists(st.sampled_from([b"", b".", b"..", b"a", b"x y", b". z"]), max_size=20).map(
    lambda lines: b"".join(line + b"\r\n" for line in lines))


@given(built)
def test_a_built_message_is_stuffed_as_any_other(raw: bytes) -> None:
    assert dot_stuffed(raw, crlf=True) == dot_stuffed(raw)
