"""Replayed histories: the journals of real runs fed back through today's engine and flows.

Each history (``histories/*.json``, written by ``record.py`` from real runs on the
simulators) is the journal of one document. What the peers said — a step done, a
peer still working, a refusal, an error — and what people did (retry, cancel, an
action) are the inputs; everything else in the journal is what the engine decided
(states, next runs and polls, retry budgets, parking, reasons). The replay feeds the
inputs to the engine and requires the same decisions, as Temporal's replayer does for
workflow histories: a change to a flow or to the engine that would treat one of these
past documents differently fails here. Times (next due, next poll) are left out: they
depend on the clock and on jitter, not on the decisions.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from broker import engine as eng
from broker.flows.base import Flow
from broker.outcomes import Done, Pending, PermanentError, Rejected, TransientError
from broker.retry import AttemptRecord
from broker.settings import Settings
from broker.wiring import catalog

HISTORIES = sorted((Path(__file__).parent / "histories").glob("*.json"))
TIMES = {"seq", "at", "actor", "next_due_at", "next_poll_at", "next_try_at"}
_COUNTED = re.compile(r" \(crash \d+ of at most \d+ before parking\)$")


def normalized(entry: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in entry.items() if k not in TIMES}


def replay(flow: Flow, history: dict[str, Any], settings: Settings) -> list[dict[str, Any]]:
    """The journal today's engine writes for the history's inputs."""
    policies = eng.Policies(settings.retry_policy, settings.poll_policy)
    metadata = history["metadata"]
    doc = eng.Doc("replayed", flow.name, eng.QUEUED, None, 0, metadata)
    t = 1_000_000.0
    written: list[dict[str, Any]] = []
    job: eng.NextJob | None = None
    tries: list[AttemptRecord] = []
    rng = random.Random(0)

    def take(transition: eng.Transition, *, same_job: bool = False) -> None:
        nonlocal doc, job
        written.extend({"kind": e.kind, **e.data} for e in transition.journal)
        doc = replace(doc, state=transition.state, step=transition.step, run=transition.run)
        if transition.next_job is not None:
            job = transition.next_job
        elif transition.requeued_at is None and not same_job:
            job = None

    def ran_job() -> eng.Job:
        assert job is not None, "a step ran with no job scheduled"
        return eng.Job(job.step, job.kind, job.run, job.polls, job.poll_deadline)

    def run(result: Any) -> None:
        nonlocal doc, tries
        assert job is not None, f"a step ran with no job scheduled: {result!r}"
        if doc.state != eng.RUNNING:  # recorded before claims were journaled
            doc = replace(doc, state=eng.RUNNING, step=job.step, run=job.run)
        take(eng.apply(flow, doc, ran_job(), result, t, policies, tries, rng))
        tries = []

    for entry in history["journal"]:
        t += 1.0
        kind, data = entry["kind"], entry
        if kind == "transition" and data["to"] == eng.RUNNING:  # a worker took the job
            take(eng.claimed(doc, ran_job(), data["worker"]), same_job=True)
        elif kind == "intake":
            assert flow.plan(metadata) == data["plan"], "the plan of this document changed"
            take(eng.start(flow, doc, t, "replay"))
        elif kind == "attempt" and data.get("ok"):
            run(Done(note=data.get("note", "")))
        elif kind == "poll":
            run(Pending(1.0, note=data.get("note", "")))
        elif kind == "attempt" and "rejected" in data:
            run(Rejected(data["rejected"]))
        elif kind == "attempt" and "next_try_at" in data:
            tries.append(AttemptRecord(data["try"], data["error"], 0.0))
        elif kind == "attempt" and "error" in data:
            run(TransientError(data["error"]))
        elif kind == "error" and data.get("permanent"):
            run(PermanentError(data["error"]))
        elif kind == "error" and data.get("parked") and "crashes" not in data:
            run(TransientError(data["error"]))  # the run that spent the retry budget
        elif kind == "recovery" or (kind == "error" and "crashes" in data):
            why = _COUNTED.sub("", data.get("reason", "").removesuffix("; step will run again"))
            running = replace(doc, state=eng.RUNNING)
            take(eng.given_back(running, ran_job(), why, data["crashes"], settings.crash_limit,
                                t))
        elif kind == "operator":
            action = data["action"]
            if action == "retry":
                take(eng.retry(flow, doc, t, "replay"))
            elif action == "cancel":
                take(eng.cancel(doc, t, "replay"))
            else:
                take(eng.act(flow, replace(doc, metadata=metadata), action, t, "replay"))
        # Other transitions and any other entries are the engine's own: compared below.
    return written


def recorded(history: dict[str, Any]) -> list[dict[str, Any]]:
    return [normalized(e) for e in history["journal"] if e["kind"] != "intake"]


def load(path: Path) -> tuple[dict[str, Any], Flow, Settings]:
    history = json.loads(path.read_text(encoding="utf-8"))
    return history, catalog().flows[history["flow"]], Settings(**history["settings"])


def test_there_are_histories_of_each_flow_and_path() -> None:
    names = {p.stem for p in HISTORIES}
    assert {"depot-delivered", "depot-retried", "depot-parked-then-replayed", "depot-cancelled",
            "actes-signed-archived", "actes-sent-alone", "actes-rejected-in-parapheur",
            "actes-acknowledged-then-cancelled"} <= names


def check(flow: Flow, history: dict[str, Any], settings: Settings) -> None:
    """AssertionError unless today's engine decides what the recorded run decided."""
    written = [normalized(e) for e in replay(flow, history, settings)
               if e["kind"] != "intake"]
    assert written == recorded(history)


@pytest.mark.parametrize("path", HISTORIES, ids=[p.stem for p in HISTORIES])
def test_a_past_document_is_treated_as_it_was(path: Path) -> None:
    history, flow, settings = load(path)
    check(flow, history, settings)


def test_a_flow_that_changed_its_plan_is_caught() -> None:
    history, flow, settings = load(next(p for p in HISTORIES
                                        if p.stem == "actes-signed-archived"))

    class Unsigned(type(flow)):  # type: ignore[misc]
        def plan(self, metadata: Any) -> list[str]:
            return ["transmit", "archive"]

    changed = Unsigned(**{f: getattr(flow, f) for f in flow.__dataclass_fields__})
    with pytest.raises(AssertionError, match="the plan of this document changed"):
        check(changed, history, settings)


def test_a_shorter_retry_budget_is_caught() -> None:
    history, flow, _ = load(next(p for p in HISTORIES if p.stem == "depot-retried"))
    with pytest.raises(AssertionError):
        check(flow, history, Settings(**{**history["settings"], "retry_ladder": "300ms"}))


def test_slower_polls_of_a_signature_are_not_a_change_of_decision() -> None:
    history, flow, _ = load(next(p for p in HISTORIES
                                        if p.stem == "actes-signed-archived"))
    check(flow, history, Settings(**{**history["settings"], "poll_first": "5s"}))
