"""A refusal of a use case, with an HTTP-like status and the problems that caused it."""

from __future__ import annotations

from collections.abc import Sequence

from broker.flows.base import Problem


class ServiceError(Exception):
    """A refusal with an HTTP-like status and the problems that caused it."""

    def __init__(self, status: int, message: str, problems: Sequence[Problem] = ()) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.problems = list(problems)


def not_found(what: str) -> ServiceError:
    return ServiceError(404, f"{what} not found")
