"""The engine: pure functions from (document, what happened) to a transition.

Nothing here does I/O. The worker, the relay and the API feed the engine
plain values and commit the :class:`Transition` it returns in one transaction,
which is why every rule about states, retries, polls and parking lives here
and is tested without a database or a network.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from broker.flows.base import Flow
from broker.journal import Entry
from broker.outcomes import (
    REJECTION,
    Done,
    Outcome,
    Pending,
    PermanentError,
    Rejected,
    StepError,
    TransientError,
)
from broker.retry import AttemptRecord, PollPolicy, RetryPolicy

QUEUED = "queued"
RUNNING = "running"
WAITING = "waiting"
RETRYING = "retrying"
COMPLETED = "completed"
REJECTED = "rejected"
FAILED = "failed"
CANCELLED = "cancelled"

ACTIVE = frozenset({QUEUED, RUNNING, WAITING, RETRYING})
TERMINAL = frozenset({COMPLETED, REJECTED, FAILED, CANCELLED})
STATES = ACTIVE | TERMINAL
# Metadata: the step a request came for while it ran; it runs again at once after.
ASKED = "asked_while_running"


class NotAllowed(Exception):
    """An operator action that does not apply to the document's state."""


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class Doc:
    """What the engine needs to know of a document."""

    id: str
    flow: str
    state: str
    step: str | None
    run: int
    metadata: Mapping[str, Any]


@dataclass(frozen=True)
class Job:
    """The job whose result is being applied."""

    step: str
    kind: str
    run: int
    polls: int = 0
    poll_deadline: float | None = None


@dataclass(frozen=True)
class NextJob:
    step: str
    connector: str
    kind: str  # run | retry | poll | replay
    run: int
    due_at: float
    polls: int = 0
    poll_deadline: float | None = None


@dataclass
class Transition:
    """Everything one commit writes for one document."""

    state: str
    step: str | None
    run: int
    next_job: NextJob | None = None
    last_error: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    journal: list[Entry] = field(default_factory=list)
    # Routing key of the state event to publish, when the state changed.
    event: str | None = None
    # The finished job ends parked (visible in parking, replayable).
    park: bool = False
    # The current job runs again at this time (given back after a crash): no new job.
    requeued_at: float | None = None
    # Facts that go with the transition's journal entry (e.g. the worker that took it).
    about: dict[str, Any] = field(default_factory=dict)

    @property
    def next_due_at(self) -> float | None:
        return self.next_job.due_at if self.next_job else self.requeued_at


@dataclass(frozen=True)
class Policies:
    retry: RetryPolicy
    poll: PollPolicy


def _policies(flow: Flow, step: str, defaults: Policies) -> Policies:
    definition = flow.step(step)
    return Policies(definition.retry or defaults.retry, definition.poll or defaults.poll)


def _changed(doc: Doc, transition: Transition) -> Transition:
    if transition.state != doc.state:
        transition.event = f"{doc.flow}.{transition.state}"
        transition.journal.append(Entry("transition", {
            "from": doc.state, "to": transition.state, "step": transition.step,
            **({"next_due_at": iso(transition.next_due_at)} if transition.next_due_at else {}),
            **({"reason": transition.last_error} if transition.last_error else {}),
            **transition.about,
        }, doc.id))
    return transition


def _run_job(flow: Flow, step: str, kind: str, run: int, now: float) -> NextJob:
    return NextJob(step, flow.step(step).connector, kind, run, now)


def start(flow: Flow, doc: Doc, now: float, actor: str,
          files: Sequence[tuple[str, str]] = (), warnings: Sequence[str] = ()) -> Transition:
    """A document accepted at intake: schedule the first step of its plan.

    ``files``: (role, name) of what came with it, journaled as received; ``warnings``: what
    its inspection let through but a person should see.
    """
    plan = flow.plan(doc.metadata)
    intake = Entry("intake", {"flow": flow.name, "plan": plan, **(
        {"files": [{"role": role, "name": name} for role, name in files]} if files else {}),
        **({"warnings": list(warnings)} if warnings else {})},
        doc.id, actor)
    if not plan:
        transition = Transition(COMPLETED, None, 0, journal=[intake])
    else:
        transition = Transition(QUEUED, plan[0], 1, _run_job(flow, plan[0], "run", 1, now),
                                journal=[intake])
    return _changed(doc, transition)


def claimed(doc: Doc, job: Job, worker: str) -> Transition:
    """A worker took the job: the document runs its step (one journal entry names the worker).

    A document already running (its claim taken over once its lease ran out, or the same
    claim tried again after a store outage) stays as it is, with no new entry. No state
    event is published for a claim (see below).
    """
    transition = _changed(doc, Transition(RUNNING, job.step, job.run, about={"worker": worker}))
    # Journaled, not published: a step runs for moments, and a page told of every claim
    # would get twice the events for nothing it can act on (it sees the step's outcome).
    transition.event = None
    return transition


def apply(
    flow: Flow,
    doc: Doc,
    job: Job,
    result: Outcome | StepError,
    now: float,
    defaults: Policies,
    attempts: Sequence[AttemptRecord] = (),
    rng: random.Random | None = None,
) -> Transition:
    """Apply what one run of a step produced."""
    policies = _policies(flow, job.step, defaults)
    entries = [
        Entry("attempt", {"step": job.step, "run": job.run, "try": a.try_number,
                          "error": a.error, "next_try_at": iso(now + a.next_try_in)}, doc.id)
        for a in attempts
    ]
    last_try = len(attempts) + 1
    if isinstance(result, Done):
        entries.append(Entry("attempt", {"step": job.step, "run": job.run, "try": last_try,
                                         "ok": True, **({"note": result.note} if result.note
                                                        else {})}, doc.id))
        transition = _after_done(flow, doc, job, now)
        transition.metadata = dict(result.metadata)
    elif isinstance(result, Pending):
        transition = _after_pending(flow, doc, job, result, now, policies.poll, entries)
    elif isinstance(result, Rejected):
        entries.append(Entry("attempt", {"step": job.step, "run": job.run, "try": last_try,
                                         "rejected": result.reason}, doc.id))
        transition = _after_rejected(flow, doc, job, result, now)
    elif isinstance(result, PermanentError):
        entries.append(Entry("error", {"step": job.step, "run": job.run, "try": last_try,
                                       "error": result.message, "permanent": True}, doc.id))
        transition = Transition(FAILED, job.step, job.run, last_error=result.message, park=True)
    elif isinstance(result, TransientError):
        transition = _after_transient(flow, doc, job, result, now, policies.retry, rng, entries,
                                      last_try)
    else:  # pragma: no cover - exhaustive over the union
        raise TypeError(f"unexpected step result {result!r}")
    if doc.metadata.get(ASKED) == job.step and not isinstance(result, TransientError):
        transition.metadata.setdefault(ASKED, None)  # done with: the run again is due
        if not isinstance(result, Pending):
            entries.append(Entry("error", {
                "step": job.step, "error": "a request came while this step ran, and the "
                "step ended before it could take it: ask again if it still applies"}, doc.id))
    transition.journal[:0] = entries
    return _changed(doc, transition)


def _told_of_rejection(flow: Flow, doc: Doc, after: str) -> list[str]:
    """The ``on_rejected`` steps of the document's plan still to run after step ``after``."""
    steps = [s for s in flow.plan(doc.metadata) if s in flow.on_rejected]
    return steps[steps.index(after) + 1:] if after in steps else steps


def _after_rejected(flow: Flow, doc: Doc, job: Job, result: Rejected, now: float) -> Transition:
    metadata = dict(result.metadata)
    following = [] if job.step in flow.on_rejected else _told_of_rejection(flow, doc, job.step)
    if not following:
        return Transition(REJECTED, job.step, job.run, last_error=result.reason,
                          metadata=metadata)
    metadata[REJECTION] = {"step": job.step, "reason": result.reason}
    return Transition(QUEUED, following[0], 1, _run_job(flow, following[0], "run", 1, now),
                      last_error=result.reason, metadata=metadata)


def _after_done(flow: Flow, doc: Doc, job: Job, now: float) -> Transition:
    rejection = doc.metadata.get(REJECTION)
    if isinstance(rejection, Mapping) and job.step in flow.on_rejected:
        still = _told_of_rejection(flow, doc, job.step)
        if not still:
            return Transition(REJECTED, job.step, job.run, last_error=str(rejection["reason"]))
        return Transition(QUEUED, still[0], 1, _run_job(flow, still[0], "run", 1, now),
                          last_error=str(rejection["reason"]))
    plan = flow.plan(doc.metadata)
    # A step outside the plan is an action's: it ends the document again.
    index = plan.index(job.step) if job.step in plan else len(plan)
    if index + 1 >= len(plan):
        return Transition(COMPLETED, job.step, job.run)
    following = plan[index + 1]
    return Transition(QUEUED, following, 1, _run_job(flow, following, "run", 1, now))


def _after_pending(flow: Flow, doc: Doc, job: Job, result: Pending, now: float,
                   poll: PollPolicy, entries: list[Entry]) -> Transition:
    deadline = job.poll_deadline if job.poll_deadline is not None else now + poll.deadline
    # Polls done so far: a poll's job counts them; a retry that interrupted polling keeps
    # the count, so a transient error does not reset the cadence.
    polls = job.polls if job.kind in ("poll", "retry") else 0
    if now >= deadline:
        reason = (f"no answer from {flow.step(job.step).connector} for step {job.step} "
                  f"before the deadline ({iso(deadline)})")
        entries.append(Entry("error", {"step": job.step, "error": reason, "deadline": True},
                             doc.id))
        return Transition(FAILED, job.step, job.run, last_error=reason, park=True)
    due = min(now + poll.interval(polls, result.poll_after), deadline)
    if doc.metadata.get(ASKED) == job.step:
        due = now  # a request came while this run went on: it has not seen it
    entries.append(Entry("poll", {"step": job.step, "poll": polls + 1,
                                  "next_poll_at": iso(due),
                                  **({"note": result.note} if result.note else {})}, doc.id))
    # A poll keeps the run number: it never spends the retry budget.
    nxt = NextJob(job.step, flow.step(job.step).connector, "poll", job.run, due, polls + 1,
                  deadline)
    # A step that tells of a rejection and waits keeps the rejection's reason in view.
    rejection = doc.metadata.get(REJECTION)
    shown = str(rejection.get("reason")) if isinstance(rejection, Mapping) else None
    return Transition(WAITING, job.step, job.run, nxt, last_error=shown)


def _after_transient(flow: Flow, doc: Doc, job: Job, error: TransientError, now: float,
                     retry: RetryPolicy, rng: random.Random | None, entries: list[Entry],
                     last_try: int) -> Transition:
    if job.run >= retry.max_runs:
        reason = f"gave up after {job.run} runs: {error.message}"
        entries.append(Entry("error", {"step": job.step, "run": job.run, "try": last_try,
                                       "error": error.message, "parked": True}, doc.id))
        return Transition(FAILED, job.step, job.run, last_error=reason, park=True)
    run = job.run + 1
    due = now + retry.delay_before_run(run, rng, error.retry_after)
    entries.append(Entry("attempt", {"step": job.step, "run": job.run, "try": last_try,
                                     "error": error.message, "next_due_at": iso(due),
                                     "next_run": run}, doc.id))
    # A poll that hit a transient error goes on polling after the retry.
    nxt = NextJob(job.step, flow.step(job.step).connector, "retry", run, due, job.polls,
                  job.poll_deadline)
    return Transition(RETRYING, job.step, run, nxt, last_error=error.message)


def retry(flow: Flow, doc: Doc, now: float, actor: str, reason: str = "retry") -> Transition:
    """An operator asks to run the document's current step again now.

    A failed document starts its step over with a fresh retry budget; one
    waiting for a retry or a poll is brought forward.
    """
    if doc.state in (COMPLETED, REJECTED, CANCELLED):
        raise NotAllowed(f"document {doc.id} is {doc.state}; nothing to retry")
    if doc.state == RUNNING:
        raise NotAllowed(f"document {doc.id} is running; wait for the attempt to end")
    step = doc.step or flow.plan(doc.metadata)[0]
    run = 1 if doc.state == FAILED else doc.run
    transition = Transition(QUEUED, step, run, _run_job(flow, step, "replay", run, now),
                            journal=[Entry("operator", {"action": reason, "step": step}, doc.id,
                                           actor)])
    return _changed(doc, transition)


def act(flow: Flow, doc: Doc, action: str, now: float, actor: str) -> Transition:
    """A follow-up asked of a completed document (e.g. cancelling an acknowledged act)."""
    if action not in flow.actions:
        raise NotAllowed(f"flow {flow.name} has no action {action!r}"
                         + (f" (actions: {', '.join(sorted(flow.actions))})" if flow.actions
                            else ""))
    step, needs = flow.actions[action]
    if doc.state != COMPLETED or needs not in doc.metadata:
        raise NotAllowed(f"{action} needs a completed document with {needs}; document "
                         f"{doc.id} is {doc.state}")
    transition = Transition(QUEUED, step, 1, _run_job(flow, step, "run", 1, now), journal=[
        Entry("operator", {"action": action, "step": step}, doc.id, actor)])
    return _changed(doc, transition)


@dataclass
class Noted:
    """What changes a document's metadata and journal only: its state and jobs stay."""

    metadata: dict[str, Any]
    journal: list[Entry]


def follow_up(flow: Flow, doc: Doc, name: str, now: float, actor: str,
              asked: Mapping[str, Any], metadata: Mapping[str, Any]) -> Transition | Noted:
    """A request for a step of the document's plan (an invoice's next statuses), kept in
    its metadata and done by that step.

    Waiting, retrying or queued in that step: the step runs again now. Running in it: the
    run under way has not seen the request, so the step runs again as soon as that run
    says it waits (``ASKED``). At an earlier step: the step does it when it comes. The
    asker never has to try again because of the moment it asked.
    """
    step = flow.follow_ups[name].step
    if not takes_follow_up(flow, doc, name):
        at = f" at step {doc.step}" if doc.step else ""
        raise NotAllowed(f"{name} is taken until document {doc.id} has passed step {step}; "
                         f"it is {doc.state}{at}")
    entry = Entry("operator", {"action": name, "step": step, "asked": dict(asked)}, doc.id,
                  actor)
    if doc.step != step:
        return Noted(dict(metadata), [entry])
    if doc.state == RUNNING:
        return Noted({**metadata, ASKED: step}, [entry])
    transition = Transition(QUEUED, step, doc.run, _run_job(flow, step, "run", doc.run, now),
                            journal=[entry], metadata=dict(metadata))
    return _changed(doc, transition)


def takes_follow_up(flow: Flow, doc: Doc, name: str) -> bool:
    """Whether the document still takes request ``name``: active, and its step is the
    request's or comes before it in the plan; once rejected, only at the request's step
    and after a rejection the request declares it follows."""
    wanted = flow.follow_ups[name]
    step = wanted.step
    if doc.state not in ACTIVE:
        return False
    rejection = doc.metadata.get(REJECTION)
    if isinstance(rejection, Mapping):  # only the steps that tell of it are left
        return doc.step == step and rejection.get("step") in wanted.after_rejection_at
    if doc.step == step:
        return True
    plan = flow.plan(doc.metadata)
    return doc.step in plan and step in plan and plan.index(doc.step) < plan.index(step)


def cancel(doc: Doc, now: float, actor: str) -> Transition:
    if doc.state in TERMINAL:
        raise NotAllowed(f"document {doc.id} is already {doc.state}")
    transition = Transition(CANCELLED, doc.step, doc.run, journal=[
        Entry("operator", {"action": "cancel", "step": doc.step}, doc.id, actor)])
    return _changed(doc, transition)


def given_back(doc: Doc, job: Job, why: str, crashes: int, limit: int,
               now: float) -> Transition:
    """The worker running the job's step is gone (killed, hung, stopped) before its outcome.

    ``crashes`` counts the times that happened to this job, this one included (0 when the
    worker stopped on purpose and released the job). Below ``limit`` the same job runs
    again at once, the run unchanged (a crash is not a failed try); at the limit the step
    is taken for poison: failed and parked, the count in the reason.
    """
    if crashes >= limit:
        reason = (f"step {job.step} crashed its worker {crashes} times (last: {why}); "
                  f"parked after {limit} crashes")
        transition = Transition(FAILED, job.step, job.run, last_error=reason, park=True, journal=[
            Entry("error", {"step": job.step, "run": job.run, "error": reason,
                            "crashes": crashes, "parked": True}, doc.id)])
        return _changed(doc, transition)
    counted = f" (crash {crashes} of at most {limit - 1} before parking)" if crashes else ""
    transition = Transition(QUEUED, job.step, job.run, requeued_at=now, journal=[
        Entry("recovery", {"step": job.step, "run": job.run, "crashes": crashes,
                           "reason": f"{why}{counted}; step will run again"}, doc.id)])
    return _changed(doc, transition)


def poisoned(doc: Doc, job: Job, deliveries: int | None) -> Transition:
    """The broker dead-lettered the job's message: delivered over its delivery limit.

    That limit is a last-resort guard far above the crash limit: crashes are counted on
    the job (see :func:`given_back`); this catches a message no worker ever settled.
    """
    count = f" {deliveries} times" if deliveries else ""
    reason = (f"the message of step {job.step} was delivered{count} without an outcome; "
              "parked by the broker's delivery limit")
    transition = Transition(FAILED, job.step, job.run, last_error=reason, park=True, journal=[
        Entry("error", {"step": job.step, "run": job.run, "error": reason, "parked": True},
              doc.id)])
    return _changed(doc, transition)
