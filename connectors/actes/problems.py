"""Problems found in ACTES data, and pydantic errors turned into problems naming the field."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from pydantic import ValidationError

from broker.flows.base import Problem

Loc = tuple[int | str, ...]


class ActesError(ValueError):
    """Every problem found, each naming where (field, member or XML path)."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(f"{p.field}: {p.message}" for p in self.problems))


class MessageError(ActesError):
    """A message that cannot be read or built."""


def dotted(loc: Loc) -> str:
    """``("type_pj", 1)`` → ``type_pj[1]``."""
    text = ""
    for item in loc:
        text += f"[{item}]" if isinstance(item, int) else (f".{item}" if text else item)
    return text or "(root)"


def problems_from(exc: ValidationError, locate: Callable[[Loc], str] = dotted) -> list[Problem]:
    """One problem per pydantic error, naming the field and saying what was received."""
    problems = []
    for error in exc.errors(include_url=False):
        message = str(error["msg"]).removeprefix("Value error, ")
        if error["type"] == "missing":
            message = "is required"
        elif error["type"] != "value_error" and isinstance(error.get("input"), str | int):
            message = f"{message}, got {error['input']!r}"
        problems.append(Problem(locate(tuple(error["loc"])), message))
    return problems


def located(name: str, line: object) -> str:
    """``file:line`` when the line is known, else the file: where a problem is."""
    return f"{name}:{line}" if isinstance(line, int) and line > 0 else name
