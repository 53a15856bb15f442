"""Live pages: state events from the transport's events port, fanned out to the open pages
of this process as server-sent events. One subscription per process, made when the first
page opens; each page gets only what its session may see, and a session opens a bounded
number of streams."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import structlog

from broker.transport.base import Consumer, Transport
from broker.web import labels

log = structlog.get_logger("demat.web")

# Streams a session (a browser) and a token (all its sessions) hold at once: a new page
# past the bound ends the oldest one (a closed tab is only noticed at its next write).
PER_SESSION = 4
PER_TOKEN = 128
# Past this the server refuses new streams.
PER_PROCESS = 1000
# Events held for one slow page before it is told to catch up from the store instead.
BACKLOG = 256


@dataclass(eq=False)
class Stream:
    session: str
    token: str
    entity: str | None  # None: an operator, who sees every entity
    # Events as sent (encoded once for every page), None: the end.
    queue: asyncio.Queue[bytes | None] = field(default_factory=lambda: asyncio.Queue(BACKLOG))
    # Events were dropped for this page: it must reload what it shows.
    overflowed: bool = False

    def offer(self, entity: Any, line: bytes) -> None:
        if self.entity is not None and entity != self.entity:
            return
        try:
            self.queue.put_nowait(line)
        except asyncio.QueueFull:
            self.overflowed = True

    def end(self) -> None:
        """Close the stream (its session ended, or a newer page took its place): what it
        had not sent yet is dropped, so the end always finds room."""
        while not self.queue.empty():
            self.queue.get_nowait()
        self.queue.put_nowait(None)


def event_line(event: Mapping[str, Any]) -> bytes:
    """A state event as a page receives it (``id`` lets a reconnecting page resume)."""
    shown = {k: event.get(k) for k in ("id", "flow", "entity", "state", "step")}
    shown["state_label"] = labels.label(labels.STATES, event.get("state"))
    shown["step_label"] = labels.label(labels.STEPS, event.get("step"))
    ident = f"id: {event['event']}\n" if isinstance(event.get("event"), int) else ""
    return f"{ident}event: state\ndata: {json.dumps(shown, ensure_ascii=False)}\n\n".encode()


class TooMany(Exception):
    pass


class LiveHub:
    def __init__(self, transport: Transport) -> None:
        self._transport = transport
        # Insertion-ordered: the oldest stream first.
        self._streams: dict[Stream, None] = {}
        self._consumer: Consumer | None = None
        self._lock = asyncio.Lock()

    @property
    def open_streams(self) -> int:
        return len(self._streams)

    async def open(self, session: str, token: str, entity: str | None) -> Stream:
        for held, bound in (([s for s in self._streams if s.session == session], PER_SESSION),
                            ([s for s in self._streams if s.token == token], PER_TOKEN)):
            # ``held`` is oldest first: the streams are kept in the order they opened.
            for oldest in held[:max(0, len(held) - bound + 1)]:
                self.close(oldest)
                oldest.end()
        if len(self._streams) >= PER_PROCESS:
            raise TooMany("too many live pages on this server")
        async with self._lock:
            if self._consumer is None:
                self._consumer = await self._transport.subscribe("#", self._on_event)
        stream = Stream(session, token, entity)
        self._streams[stream] = None
        return stream

    def close(self, stream: Stream) -> None:
        self._streams.pop(stream, None)

    def end_session(self, session: str) -> None:
        for stream in [s for s in self._streams if s.session == session]:
            stream.end()

    async def _on_event(self, routing_key: str, body: bytes) -> None:
        try:
            event = json.loads(body)
        except ValueError:
            log.warning("unreadable state event", routing_key=routing_key)
            return
        if isinstance(event, dict) and self._streams:
            line, entity = event_line(event), event.get("entity")
            for stream in list(self._streams):
                stream.offer(entity, line)

    async def stop(self) -> None:
        for stream in list(self._streams):
            stream.end()
        if self._consumer is not None:
            await self._consumer.cancel()
            self._consumer = None
