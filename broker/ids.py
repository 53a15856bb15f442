"""Identifiers: time-ordered document/job ids and the SIREN check."""

from __future__ import annotations

import os
import threading
import time

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


_last = [0, 0]  # (milliseconds, random part) of the previous id
_lock = threading.Lock()


def new_id() -> str:
    """A 26-character monotonic ULID: 48-bit milliseconds then 80 random bits.

    Ids sort by creation time, also within one millisecond in one process, so
    cursor paging and file order can use the id alone.
    """
    with _lock:
        ms, rand = int(time.time() * 1000), int.from_bytes(os.urandom(10), "big")
        if ms <= _last[0]:
            ms, rand = _last[0], (_last[1] + 1) % (1 << 80)
        _last[0], _last[1] = ms, rand
    value = (ms << 80) | rand
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


# La Poste's establishments share SIREN 356000000; their SIRET sums to a multiple of 5.
_LA_POSTE = "356000000"


def siret_problem(value: str) -> str | None:
    """Why ``value`` is not a valid SIRET (SIREN + NIC, Luhn), or None when it is."""
    if len(value) != 14 or not value.isdigit():
        return f"SIRET must be 14 digits, got {value!r}"
    if value.startswith(_LA_POSTE) and value != _LA_POSTE + "00001":
        ok = sum(int(c) for c in value) % 5 == 0
    else:
        ok = luhn_ok(value)
    return None if ok else f"SIRET {value} fails its checksum (Luhn)"
