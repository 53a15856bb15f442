"""Fault injection shared by every simulator: an aiohttp middleware and its control API.

A :class:`FaultRule` says what goes wrong (``kind``), when in the exchange
(``phase``) and for which requests (``path``, ``method``, ``after``, ``count``,
``ratio``). Rules are tried in order; each rule counts the requests that reach
it (its filters match and no earlier rule fired) and the first one that fires
wins. Draws for ``ratio`` come from a per-rule seeded RNG, so a run with the
same rules, seed and request sequence injects the same faults.

``phase="before"``: the request is not processed. ``phase="after"``: it is
processed (stored...) and then its answer is lost, which is the case
idempotency keys exist for. ``slow`` always processes the request and then
dribbles the answer's body.
"""

from __future__ import annotations

import asyncio
import json
import random
import socket
import struct
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

FaultKind = Literal["refuse", "hang", "500", "503", "429", "slow", "reset"]
FAULT_KINDS: tuple[str, ...] = ("refuse", "hang", "500", "503", "429", "slow", "reset")

# Never faulted nor counted as traffic: the harness must always reach them.
CONTROL_PATHS = ("/_control/", "/stats")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def is_control_path(path: str) -> bool:
    return path == "/stats" or path.startswith(CONTROL_PATHS)


class FaultRule(BaseModel):
    """One way to fail, and which requests it hits."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: FaultKind
    phase: Literal["before", "after"] = "before"
    # Probability per request that reaches the rule (after the schedule allows it).
    ratio: float = Field(default=1.0, ge=0.0, le=1.0)
    # Fire on at most this many requests (None: no limit).
    count: int | None = Field(default=None, ge=0)
    # Let the first N requests that reach the rule through untouched.
    after: int = Field(default=0, ge=0)
    path: str = "/"  # prefix
    method: str | None = None
    seed: int | None = None  # default: derived from the injector's seed and the rule's rank
    retry_after: int = Field(default=1, ge=0)  # 503, 429: Retry-After seconds
    hang: float = Field(default=120.0, gt=0)  # hang: longest wait for the client to give up
    interval: float = Field(default=0.5, ge=0)  # slow: pause before each chunk
    chunk: int = Field(default=1, ge=1)  # slow: bytes per chunk

    @field_validator("method")
    @classmethod
    def _upper(cls, value: str | None) -> str | None:
        return value.upper() if value else None

    def matches(self, method: str, path: str) -> bool:
        return path.startswith(self.path) and self.method in (None, method.upper())


class FaultConfig(BaseModel):
    """Body of ``POST /_control/faults``: the rules replace the current ones."""

    model_config = ConfigDict(extra="forbid")

    rules: list[FaultRule] = Field(default_factory=list)
    seed: int | None = None


def describe(exc: ValidationError) -> str:
    """A one-line account of a validation error, naming each wrong field."""
    return "; ".join(
        f"{'.'.join(str(p) for p in err['loc']) or 'value'}: {err['msg']}" for err in exc.errors()
    )


def parse_fault(spec: str) -> FaultRule:
    """A rule from ``KIND[:RATIO][@PHASE][,key=value...]``, e.g. ``503:0.2``, ``reset@after``.

    Extra ``key=value`` pairs set any other field: ``503:0.5,retry_after=3,path=/inbox``.
    """
    head, *options = spec.split(",")
    head, _, phase = head.partition("@")
    kind, _, ratio = head.partition(":")
    fields: dict[str, Any] = {"kind": kind.strip()}
    if ratio:
        fields["ratio"] = ratio.strip()
    if phase:
        fields["phase"] = phase.strip()
    for option in options:
        key, sep, value = option.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"fault {spec!r}: expected key=value, got {option!r}")
        fields[key.strip()] = value.strip()
    try:
        return FaultRule.model_validate(fields)
    except ValidationError as exc:
        raise ValueError(f"fault {spec!r}: {describe(exc)}") from exc


@dataclass
class _RuleState:
    rng: random.Random
    seen: int = 0
    applied: int = 0


@dataclass
class FaultInjector:
    """The active rules, their schedules and the count of faults injected by kind."""

    seed: int = 0
    counts: Counter[str] = field(default_factory=Counter)
    # Set when the server shuts down, so hanging requests let it stop.
    closing: asyncio.Event = field(default_factory=asyncio.Event)
    _rules: list[FaultRule] = field(default_factory=list)
    _states: list[_RuleState] = field(default_factory=list)

    @property
    def rules(self) -> list[FaultRule]:
        return list(self._rules)

    def replace(self, rules: Iterable[FaultRule], seed: int | None = None) -> None:
        if seed is not None:
            self.seed = seed
        self._rules = list(rules)
        self.rearm()

    def rearm(self) -> None:
        """Start every rule's schedule and RNG afresh."""
        self._states = [
            _RuleState(random.Random(rule.seed if rule.seed is not None else f"{self.seed}/{rank}"))
            for rank, rule in enumerate(self._rules)
        ]

    def pick(self, method: str, path: str) -> FaultRule | None:
        """The rule that fires for this request, if any (updates the schedules)."""
        if is_control_path(path):
            return None
        for rule, state in zip(self._rules, self._states, strict=True):
            if not rule.matches(method, path):
                continue
            state.seen += 1
            if state.seen <= rule.after:
                continue
            if rule.count is not None and state.applied >= rule.count:
                continue
            if rule.ratio < 1.0 and state.rng.random() >= rule.ratio:
                continue
            state.applied += 1
            self.counts[rule.kind] += 1
            return rule
        return None

    def describe_state(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "rules": [rule.model_dump() for rule in self._rules],
            "state": [{"seen": s.seen, "applied": s.applied} for s in self._states],
        }


def fault_middleware(injector: FaultInjector) -> Callable[..., Awaitable[web.StreamResponse]]:
    @web.middleware
    async def inject_faults(request: web.Request, handler: Handler) -> web.StreamResponse:
        rule = injector.pick(request.method, request.path)
        if rule is None:
            return await handler(request)
        if rule.kind == "slow":
            return await _dribble(request, await handler(request), rule)
        if rule.phase == "after":
            await handler(request)  # processed; its answer is about to be lost
        return await _fail(request, rule, injector.closing)

    return inject_faults


async def _fail(
    request: web.Request, rule: FaultRule, closing: asyncio.Event
) -> web.StreamResponse:
    if rule.kind in ("500", "503", "429"):
        headers = {} if rule.kind == "500" else {"Retry-After": str(rule.retry_after)}
        body = {"error": f"injected fault {rule.kind}"}
        return web.json_response(body, status=int(rule.kind), headers=headers)
    if rule.kind == "hang":
        await _hang(request, rule.hang, closing)
    _drop_connection(request, reset=rule.kind == "reset")
    # Never written: the connection is gone, aiohttp notices and moves on.
    return web.Response(status=503)


async def _hang(request: web.Request, limit: float, closing: asyncio.Event) -> None:
    """Answer nothing until the client gives up, the server stops or ``limit`` passes."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while loop.time() < deadline and not closing.is_set():
        transport = request.transport
        if transport is None or transport.is_closing():
            return
        await asyncio.sleep(0.05)


def _drop_connection(request: web.Request, *, reset: bool) -> None:
    transport = request.transport
    if transport is None:
        return
    if not reset:
        transport.close()
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        # Linger 0: closing sends RST instead of FIN.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


async def _dribble(
    request: web.Request, response: web.StreamResponse, rule: FaultRule
) -> web.StreamResponse:
    """Send ``response`` with its full length announced, ``chunk`` bytes per ``interval``."""
    if not isinstance(response, web.Response) or response.prepared:
        return response
    body = response.body
    if not isinstance(body, bytes):
        return response
    slow = web.StreamResponse(
        status=response.status, reason=response.reason, headers=response.headers
    )
    slow.content_length = len(body)
    try:
        await slow.prepare(request)
        for start in range(0, len(body), rule.chunk):
            await asyncio.sleep(rule.interval)
            await slow.write(body[start : start + rule.chunk])
        await slow.write_eof()
    except ConnectionError:
        pass  # the client gave up: nothing more to send
    return slow


def add_fault_routes(app: web.Application, injector: FaultInjector) -> None:
    """``GET``, ``POST`` (replace) and ``DELETE`` (clear) ``/_control/faults``."""

    async def get_faults(_request: web.Request) -> web.Response:
        return web.json_response(injector.describe_state())

    async def set_faults(request: web.Request) -> web.Response:
        try:
            config = FaultConfig.model_validate(await request.json())
        except json.JSONDecodeError as exc:
            return web.json_response({"error": f"body is not JSON: {exc}"}, status=400)
        except ValidationError as exc:
            return web.json_response({"error": describe(exc)}, status=400)
        injector.replace(config.rules, config.seed)
        return web.json_response(injector.describe_state())

    async def clear_faults(_request: web.Request) -> web.Response:
        injector.replace([])
        return web.json_response(injector.describe_state())

    app.router.add_get("/_control/faults", get_faults)
    app.router.add_post("/_control/faults", set_faults)
    app.router.add_delete("/_control/faults", clear_faults)
