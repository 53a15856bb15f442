"""Child processes of the benchmarks: the broker and the simulators, run for real."""

from __future__ import annotations

import asyncio
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Child:
    """A child process; stdout is read until its ready line, stderr goes to a log file."""

    name: str
    args: list[str]
    env: dict[str, str]
    log: Path
    # KEY=VALUE lines printed before the ready line (certificate paths...).
    info: dict[str, str] = field(default_factory=dict)
    proc: asyncio.subprocess.Process | None = None
    _drain: asyncio.Task[None] | None = None

    async def start(self, ready_prefix: str | None, timeout: float = 60.0) -> str:
        with self.log.open("ab") as err:
            self.proc = await asyncio.create_subprocess_exec(
                *self.args, env=self.env, cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=err
            )
        if ready_prefix is None:
            self._drain = asyncio.create_task(self._read_all())
            return ""
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            raw = await asyncio.wait_for(self.proc.stdout.readline(), deadline - time.monotonic())
            if not raw:
                raise RuntimeError(f"{self.name} exited early; see {self.log}")
            line = raw.decode().strip()
            if line.startswith(ready_prefix):
                self._drain = asyncio.create_task(self._read_all())
                return line[len(ready_prefix) :]
            key, sep, value = line.partition("=")
            if sep:
                self.info[key] = value
        raise TimeoutError(f"{self.name} did not print {ready_prefix!r}; see {self.log}")

    async def _read_all(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        while await self.proc.stdout.readline():
            pass

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    async def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), 20)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        if self._drain is not None:
            self._drain.cancel()
