"""Query and path parameters: one rule per name, applied by the server and shown in the
OpenAPI document, so the document allows exactly what the server accepts."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from broker.engine import STATES
from broker.errors import ServiceError
from broker.flows.base import Problem
from broker.views import MAX_PAGE


@dataclass(frozen=True)
class Rule:
    """What one parameter may be (a JSON schema of a string or an integer)."""

    schema: dict[str, Any]

    def parse(self, name: str, raw: str) -> Any:
        s = self.schema
        if s["type"] == "integer":
            if not re.fullmatch(r"-?[0-9]+", raw):
                raise _refused(name, f"an integer, got {raw!r}")
            value = int(raw)
            low, high = s.get("minimum"), s.get("maximum")
            if (low is not None and value < low) or (high is not None and value > high):
                bounds = f"from {low}" + (f" to {high}" if high is not None else " up")
                raise _refused(name, f"an integer {bounds}, got {value}")
            return value
        if len(raw) < s.get("minLength", 0):
            raise _refused(name, "a value, got an empty one")
        if "pattern" in s and not re.search(s["pattern"], raw):
            raise _refused(name, f"{s['description']}, got {raw!r}")
        if "enum" in s and raw not in s["enum"]:
            raise _refused(name, f"one of {', '.join(s['enum'])}, got {raw!r}")
        return raw


def _refused(name: str, expected: str) -> ServiceError:
    return ServiceError(422, f"{name}: expected {expected}",
                        [Problem(name, f"expected {expected}")])


_SIREN = {"type": "string", "pattern": "^[0-9]{9}$", "description": "a SIREN (9 digits)"}
RULES: dict[str, Rule] = {
    "limit": Rule({"type": "integer", "minimum": 1, "maximum": MAX_PAGE}),
    "after": Rule({"type": "integer", "minimum": 0}),
    "entity": Rule(_SIREN),
    "siren": Rule(_SIREN),
    "state": Rule({"type": "string", "enum": sorted(STATES)}),
}
_TEXT = Rule({"type": "string", "minLength": 1})


def rule(name: str) -> Rule:
    return RULES.get(name, _TEXT)


def query(request: web.Request, name: str, default: Any = None) -> Any:
    """The query parameter ``name`` checked by its rule, or ``default`` when absent."""
    raw = request.query.get(name)
    return default if raw is None else rule(name).parse(name, raw)
