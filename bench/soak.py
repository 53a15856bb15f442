"""Soak: the chaos run of ``tests/e2e/chaos.py`` at length, faults repeated every minute.

    .venv/bin/python bench/soak.py [--acts 500] [--depot 2000] [--minutes 10]

On RabbitMQ and PostgreSQL of this machine (a virtual host and a database of its own,
removed after): ``demat api``, ``demat relay`` and two ``demat worker`` move the acts
(half signed, all archived) and depot documents, submitted over ``--minutes``, while
the TdT and the inbox fail 10 % of their calls and, every minute, a worker is SIGKILLed,
RabbitMQ is stopped twice for 5 s and PostgreSQL is restarted twice. It fails unless
every document completes with none parked and no duplicate at any peer, and prints the
figures: documents, faults, recovery time after each, replays, crashes counted.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path

import asyncpg

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.e2e import chaos  # noqa: E402
from tests.e2e.harness import isolated_amqp  # noqa: E402

AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
# Five faults a round; spaced so that a round takes about a minute.
SPACING = 9.0


def seen(fault: chaos.Fault) -> None:
    print(f"  {fault.kind}: {fault.detail}; recovered in {fault.recovered_in:.1f}s",
          file=sys.stderr, flush=True)


async def soak(acts: int, depot: int, minutes: float) -> chaos.Report:
    name = f"demat_soak_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(PG_ADMIN)
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    # Fault rounds go on while documents are submitted.
    plan = chaos.Plan(acts=acts, depot=depot, rounds=None, spacing=SPACING,
                      submit_over=minutes * 60, end_timeout=900.0)
    tmp = Path(tempfile.mkdtemp(prefix="soak-"))
    try:
        async with isolated_amqp(AMQP_URL) as vhost:
            report = await chaos.run(tmp, vhost,
                                     f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}",
                                     plan, seen)
        shutil.rmtree(tmp)
        return report
    except BaseException:
        print(f"soak failed; logs kept in {tmp}", file=sys.stderr)
        raise
    finally:
        await chaos.ensure_servers()
        admin = await asyncpg.connect(PG_ADMIN)
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--acts", type=int, default=500)
    parser.add_argument("--depot", type=int, default=2000)
    parser.add_argument("--minutes", type=float, default=10.0,
                        help="submissions are spread over this long; one fault round a minute")
    args = parser.parse_args()
    started = time.monotonic()
    report = asyncio.run(soak(args.acts, args.depot, args.minutes))
    print(report.summary())
    print(f"soak: {report.documents / report.seconds:.1f} documents/s completed under faults, "
          f"wall {time.monotonic() - started:.0f}s")


if __name__ == "__main__":
    main()
