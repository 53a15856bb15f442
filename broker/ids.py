"""Identifiers: time-ordered document/job ids and the SIREN check."""

from __future__ import annotations

import os
import time

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def new_id() -> str:
    """A 26-character ULID: 48-bit milliseconds then 80 random bits.

    Ids sort by creation time, so cursor paging can use the id alone.
    """
    value = (int(time.time() * 1000) << 80) | int.from_bytes(os.urandom(10), "big")
    chars = []
    for _ in range(26):
        chars.append(_CROCKFORD[value & 31])
        value >>= 5
    return "".join(reversed(chars))


def luhn_ok(digits: str) -> bool:
    total = 0
    for index, char in enumerate(reversed(digits)):
        value = int(char)
        if index % 2 == 1:
            value *= 2
            if value > 9:
                value -= 9
        total += value
    return total % 10 == 0


def siren_problem(value: str) -> str | None:
    """Why ``value`` is not a valid SIREN, or None when it is."""
    if len(value) != 9 or not value.isdigit():
        return f"SIREN must be 9 digits, got {value!r}"
    if not luhn_ok(value):
        return f"SIREN {value} fails its checksum (Luhn)"
    return None
