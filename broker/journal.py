"""Append-only, hash-chained audit log of every transition, attempt, poll, error
and operator action.

Entries are written in the transaction of the change they record, then sealed
by the relay (a fraction of a second later): each gets a gap-free ``seq`` and a
hash over its fields and the previous entry's hash, so an altered, inserted or
removed entry breaks the chain at the first place it touches. ``verify`` (in
``broker.store.journal``, with the SQL) seals what is pending, walks the chain and
names that place. Sealing apart keeps appends off a global lock: writers never
wait for each other here. This module is the pure part: entries and their hashes.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

GENESIS = "0" * 64


@dataclass(frozen=True)
class Entry:
    """A journal entry before it gets its place in the chain."""

    kind: str  # intake | transition | attempt | poll | error | operator | recovery
    data: dict[str, Any]
    document_id: str | None = None
    actor: str = "system"


def canonical(data: Any) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      default=str)


def entry_hash(seq: int, at: float, document_id: str | None, kind: str, actor: str,
               data: dict[str, Any], prev_hash: str) -> str:
    material = canonical([seq, repr(float(at)), document_id, kind, actor, data, prev_hash])
    return hashlib.sha256(material.encode()).hexdigest()


@dataclass
class Verdict:
    ok: bool
    checked: int
    problem: str | None = None
    seq: int | None = None
    details: list[str] = field(default_factory=list)
