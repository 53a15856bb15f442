"""The engine's rules, without a database or a network."""

from __future__ import annotations

import random

import pytest
from pydantic import BaseModel

from broker import engine as eng
from broker.flows.base import FileRule, Flow, FollowUp, Step
from broker.outcomes import Done, Pending, PermanentError, Rejected, TransientError
from broker.retry import AttemptRecord, PollPolicy, RetryPolicy


class Meta(BaseModel):
    sign: bool = True


class TwoStep(Flow):
    def plan(self, metadata):  # type: ignore[no-untyped-def, override]
        return ["sign", "send"] if metadata.get("sign", True) else ["send"]


FLOW = TwoStep(
    name="two",
    description="",
    files={"document": FileRule(min=1)},
    metadata_model=Meta,
    steps=[Step("sign", "parapheur"), Step("send", "tdt")],
)
POLICIES = eng.Policies(
    RetryPolicy(ladder=(10.0, 60.0), jitter=0.2),
    PollPolicy(first=2.0, factor=2.0, max_interval=60.0, deadline=1000.0),
)
NOW = 1_000_000.0


def doc(
    state: str = eng.RUNNING, step: str | None = "sign", run: int = 1, sign: bool = True
) -> eng.Doc:
    return eng.Doc("D1", "two", state, step, run, {"sign": sign})


def apply(result, job=None, **kw):  # type: ignore[no-untyped-def]
    return eng.apply(
        FLOW,
        kw.pop("d", doc()),
        job or eng.Job("sign", "run", 1),
        result,
        NOW,
        POLICIES,
        rng=random.Random(1),
        **kw,
    )


def test_start_follows_the_plan_chosen_by_metadata() -> None:
    t = eng.start(FLOW, doc(eng.QUEUED, None, 0, sign=False), NOW, "operator:x")
    assert (t.state, t.step, t.next_job.step, t.next_job.connector) == (  # type: ignore[union-attr]
        eng.QUEUED,
        "send",
        "send",
        "tdt",
    )
    assert t.journal[0].kind == "intake" and t.journal[0].data["plan"] == ["send"]


def test_the_files_received_are_journaled_with_their_names_as_sent() -> None:
    t = eng.start(FLOW, doc(eng.QUEUED, None, 0), NOW, "operator:x",
                  [("acte", "délibération_€ – vœu.pdf")])
    assert t.journal[0].data["files"] == [{"role": "acte", "name": "délibération_€ – vœu.pdf"}]


def test_done_moves_to_next_step_then_completes() -> None:
    t = apply(Done(metadata={"signed": True}))
    assert t.state == eng.QUEUED and t.step == "send" and t.next_job is not None
    assert t.next_job.due_at == NOW and t.metadata == {"signed": True}
    assert t.event == "two.queued"
    last = apply(Done(), job=eng.Job("send", "run", 1), d=doc(step="send"))
    assert last.state == eng.COMPLETED and last.next_job is None
    assert [e.kind for e in last.journal] == ["attempt", "transition"]


def test_transient_error_follows_the_ladder_with_jitter_then_parks() -> None:
    t = apply(TransientError("HTTP 503"))
    assert t.state == eng.RETRYING and t.run == 2
    assert t.next_job is not None and t.next_job.kind == "retry"
    assert 8.0 <= t.next_job.due_at - NOW <= 12.0
    second = apply(TransientError("HTTP 503"), job=eng.Job("sign", "retry", 2))
    assert 48.0 <= second.next_job.due_at - NOW <= 72.0  # type: ignore[union-attr]
    final = apply(TransientError("HTTP 503"), job=eng.Job("sign", "retry", 3))
    assert final.state == eng.FAILED and final.park and final.next_job is None
    assert final.last_error == "gave up after 3 runs: HTTP 503"


def test_retry_after_is_a_floor_for_the_next_run() -> None:
    t = apply(TransientError("HTTP 429", retry_after=120.0))
    assert t.next_job is not None and t.next_job.due_at - NOW == pytest.approx(120.0)


def test_in_call_attempts_are_journaled_with_their_next_try() -> None:
    attempts = [AttemptRecord(1, "HTTP 503", 0.5), AttemptRecord(2, "HTTP 503", 1.0)]
    t = apply(Done(), attempts=attempts)
    tries = [e.data for e in t.journal if e.kind == "attempt"]
    assert [a["try"] for a in tries] == [1, 2, 3]
    assert tries[0]["error"] == "HTTP 503" and "next_try_at" in tries[0]
    assert tries[2]["ok"] is True


def test_permanent_error_fails_at_once() -> None:
    t = apply(PermanentError("HTTP 400: bad metadata"))
    assert t.state == eng.FAILED and t.park and t.next_job is None
    assert t.last_error == "HTTP 400: bad metadata"


def test_rejection_is_terminal_with_the_peer_words() -> None:
    t = apply(Rejected("refusé par le maire : erreur de montant"))
    assert t.state == eng.REJECTED and not t.park
    assert t.last_error == "refusé par le maire : erreur de montant"


TOLD = Flow(
    name="told", description="", files={}, metadata_model=Meta,
    steps=[Step("send", "tdt"), Step("archive", "sae"), Step("notify", "callback")],
    on_rejected=frozenset({"notify"}),
)


def test_a_rejection_still_runs_the_on_rejected_steps_then_ends_rejected() -> None:
    d = eng.Doc("D1", "told", eng.RUNNING, "send", 1, {})
    t = eng.apply(TOLD, d, eng.Job("send", "run", 1), Rejected("ERREUR_CODIQUE", {"errors": [1]}),
                  NOW, POLICIES)
    # Archive is skipped; the finance software is told, the reason kept meanwhile.
    assert (t.state, t.step, t.next_job.step) == (eng.QUEUED, "notify", "notify")  # type: ignore[union-attr]
    assert t.last_error == "ERREUR_CODIQUE" and t.metadata["errors"] == [1]
    assert t.metadata[eng.REJECTION] == {"step": "send", "reason": "ERREUR_CODIQUE"}
    told = eng.Doc("D1", "told", eng.RUNNING, "notify", 1, t.metadata)
    end = eng.apply(TOLD, told, eng.Job("notify", "run", 1), Done(), NOW, POLICIES)
    assert (end.state, end.last_error, end.next_job) == (eng.REJECTED, "ERREUR_CODIQUE", None)
    assert end.event == "told.rejected"


def test_without_a_rejection_the_on_rejected_steps_run_in_plan_order() -> None:
    d = eng.Doc("D1", "told", eng.RUNNING, "archive", 1, {})
    t = eng.apply(TOLD, d, eng.Job("archive", "run", 1), Done(), NOW, POLICIES)
    assert t.next_job.step == "notify"  # type: ignore[union-attr]
    told = eng.Doc("D1", "told", eng.RUNNING, "notify", 1, {})
    assert eng.apply(TOLD, told, eng.Job("notify", "run", 1), Done(), NOW,
                     POLICIES).state == eng.COMPLETED


def test_a_rejected_on_rejected_step_ends_the_document_at_once() -> None:
    d = eng.Doc("D1", "told", eng.RUNNING, "notify", 1, {})
    t = eng.apply(TOLD, d, eng.Job("notify", "run", 1), Rejected("no"), NOW, POLICIES)
    assert t.state == eng.REJECTED and t.next_job is None


def test_polls_have_their_cadence_and_never_spend_the_retry_budget() -> None:
    first = apply(Pending(poll_after=300.0))
    assert first.state == eng.WAITING and first.run == 1
    assert first.next_job is not None and first.next_job.due_at - NOW == 2.0
    deadline = first.next_job.poll_deadline
    assert deadline == NOW + 1000.0
    job = eng.Job("sign", "poll", 1, polls=5, poll_deadline=deadline)
    later = apply(Pending(poll_after=300.0), job=job)
    assert later.run == 1 and later.next_job.due_at - NOW == 60.0  # type: ignore[union-attr]
    hinted = apply(Pending(poll_after=1.0), job=job)
    assert hinted.next_job.due_at - NOW == 1.0  # type: ignore[union-attr]


def test_poll_deadline_fails_with_a_reason() -> None:
    job = eng.Job("sign", "poll", 1, polls=3, poll_deadline=NOW - 1)
    t = apply(Pending(poll_after=5.0), job=job)
    assert t.state == eng.FAILED and t.park
    assert "no answer from parapheur" in (t.last_error or "")


def test_operator_retry_of_a_failed_document_restarts_the_budget() -> None:
    t = eng.retry(FLOW, doc(eng.FAILED, "send", 3), NOW, "operator:o", "replay")
    assert t.state == eng.QUEUED and t.run == 1 and t.next_job is not None
    assert t.next_job.kind == "replay" and t.next_job.step == "send"
    assert t.journal[0].kind == "operator" and t.journal[0].actor == "operator:o"
    with pytest.raises(eng.NotAllowed):
        eng.retry(FLOW, doc(eng.COMPLETED), NOW, "operator:o")


def test_cancel_only_what_has_not_ended() -> None:
    assert eng.cancel(doc(eng.WAITING), NOW, "entity:e").state == eng.CANCELLED
    with pytest.raises(eng.NotAllowed):
        eng.cancel(doc(eng.REJECTED), NOW, "entity:e")


def test_ids_sort_in_creation_order_even_within_a_millisecond() -> None:
    from broker.ids import new_id

    ids = [new_id() for _ in range(2000)]
    assert ids == sorted(ids) and len(set(ids)) == 2000 and all(len(i) == 26 for i in ids)


def test_an_action_reopens_a_completed_document_on_its_step() -> None:
    flow = TwoStep(name="two", description="", files={}, metadata_model=Meta,
                   steps=[Step("sign", "parapheur"), Step("send", "tdt"),
                          Step("cancel", "tdt")],
                   actions={"annuler": ("cancel", "id_acte")})
    done = eng.Doc("D1", "two", eng.COMPLETED, "send", 1, {"id_acte": "034-…-DE"})
    t = eng.act(flow, done, "annuler", NOW, "entity:e")
    assert t.state == eng.QUEUED and t.next_job is not None and t.next_job.step == "cancel"
    back = eng.apply(flow, eng.Doc("D1", "two", eng.RUNNING, "cancel", 1, done.metadata),
                     eng.Job("cancel", "run", 1), Done(metadata={"annulation": "ok"}), NOW,
                     POLICIES)
    assert back.state == eng.COMPLETED and back.metadata == {"annulation": "ok"}
    with pytest.raises(eng.NotAllowed, match="needs a completed document with id_acte"):
        eng.act(flow, eng.Doc("D2", "two", eng.COMPLETED, "send", 1, {}), "annuler", NOW, "x")
    with pytest.raises(eng.NotAllowed, match="no action 'purger'"):
        eng.act(flow, done, "purger", NOW, "x")


def test_each_poll_advances_the_cadence_by_one_step() -> None:
    first = apply(Pending(poll_after=300.0))
    assert first.next_job is not None and first.next_job.polls == 1
    waits = []
    job = eng.Job("sign", "poll", 1, first.next_job.polls, first.next_job.poll_deadline)
    for _ in range(3):
        t = apply(Pending(poll_after=300.0), job=job)
        assert t.next_job is not None
        waits.append(t.next_job.due_at - NOW)
        job = eng.Job("sign", "poll", 1, t.next_job.polls, t.next_job.poll_deadline)
    assert waits == [4.0, 8.0, 16.0]  # first 2 s, factor 2: one step per poll
    retried = apply(TransientError("503"), job=job)
    assert retried.next_job is not None and retried.next_job.polls == job.polls


def test_a_claim_is_a_journaled_transition_naming_the_worker() -> None:
    t = eng.claimed(doc(eng.RETRYING, run=2), eng.Job("sign", "retry", 2), "host:12:W1")
    assert (t.state, t.step, t.run, t.next_job, t.next_due_at, t.event) == (
        eng.RUNNING, "sign", 2, None, None, None)
    assert [(e.kind, e.data) for e in t.journal] == [("transition", {
        "from": "retrying", "to": "running", "step": "sign", "worker": "host:12:W1"})]
    # Taken over (lease out) or the same claim tried again: no second entry, no event.
    again = eng.claimed(doc(eng.RUNNING, run=2), eng.Job("sign", "retry", 2), "host:13:W2")
    assert (again.state, again.journal, again.event) == (eng.RUNNING, [], None)


def test_a_job_given_back_after_a_crash_runs_again_with_the_same_run() -> None:
    t = eng.given_back(doc(run=2), eng.Job("sign", "retry", 2), "worker w1 stopped mid-step",
                       crashes=1, limit=3, now=NOW)
    assert (t.state, t.step, t.run, t.next_job, t.next_due_at, t.park) == (
        eng.QUEUED, "sign", 2, None, NOW, False)
    assert t.event == "two.queued"
    [recovery, transition] = t.journal
    assert recovery.kind == "recovery" and recovery.data == {
        "step": "sign", "run": 2, "crashes": 1,
        "reason": "worker w1 stopped mid-step (crash 1 of at most 2 before parking); "
                  "step will run again"}
    assert transition.kind == "transition"


def test_a_job_released_on_purpose_counts_no_crash() -> None:
    t = eng.given_back(doc(), eng.Job("sign", "run", 1), "worker w1 stopped on request",
                       crashes=0, limit=3, now=NOW)
    assert t.state == eng.QUEUED
    assert t.journal[0].data["reason"] == "worker w1 stopped on request; step will run again"


def test_the_crash_limit_parks_the_step_with_the_count_in_its_reason() -> None:
    t = eng.given_back(doc(), eng.Job("sign", "run", 1), "worker w3 stopped mid-step",
                       crashes=3, limit=3, now=NOW)
    reason = ("step sign crashed its worker 3 times (last: worker w3 stopped mid-step); "
              "parked after 3 crashes")
    assert (t.state, t.park, t.last_error, t.next_due_at) == (eng.FAILED, True, reason, None)
    assert t.journal[0].data == {"step": "sign", "run": 1, "error": reason, "crashes": 3,
                                 "parked": True}


def test_a_message_over_the_brokers_delivery_limit_is_parked_as_such() -> None:
    t = eng.poisoned(doc(), eng.Job("sign", "run", 1), 51)
    assert (t.state, t.park) == (eng.FAILED, True)
    assert t.last_error == ("the message of step sign was delivered 51 times without an "
                            "outcome; parked by the broker's delivery limit")


class Asked(BaseModel):
    what: str


ASKING = TwoStep(
    name="two", description="", files={}, metadata_model=Meta,
    steps=[Step("sign", "parapheur"), Step("send", "tdt")],
    follow_ups={"ask": FollowUp("send", Asked, lambda _m, _r, _a, _w: {})},
)


def _ask(d: eng.Doc) -> eng.Transition | eng.Noted:
    return eng.follow_up(ASKING, d, "ask", NOW, "app:gf", {"what": "x"}, {"asked": ["x"]})


@pytest.mark.parametrize("state", [eng.WAITING, eng.RETRYING, eng.QUEUED])
def test_a_request_runs_the_step_that_waits_for_it_at_once(state: str) -> None:
    t = _ask(doc(state, "send"))
    assert isinstance(t, eng.Transition)
    assert (t.state, t.next_job.step, t.next_job.due_at) == (  # type: ignore[union-attr]
        eng.QUEUED, "send", NOW)
    assert t.metadata == {"asked": ["x"]}


@pytest.mark.parametrize("state", [eng.QUEUED, eng.RUNNING, eng.WAITING, eng.RETRYING])
def test_a_request_for_a_step_still_ahead_is_kept_and_nothing_moves(state: str) -> None:
    noted = _ask(doc(state, "sign"))
    assert isinstance(noted, eng.Noted) and noted.metadata == {"asked": ["x"]}
    assert [e.kind for e in noted.journal] == ["operator"]


def test_a_request_while_its_step_runs_makes_the_step_run_again_at_once() -> None:
    noted = _ask(doc(eng.RUNNING, "send"))
    assert isinstance(noted, eng.Noted) and noted.metadata[eng.ASKED] == "send"
    d = doc(eng.RUNNING, "send")
    d = eng.Doc(d.id, d.flow, d.state, d.step, d.run, {**d.metadata, **noted.metadata})
    waiting = eng.apply(ASKING, d, eng.Job("send", "poll", 1, polls=3), Pending(None), NOW,
                        POLICIES)
    assert waiting.state == eng.WAITING and waiting.next_job.due_at == NOW  # type: ignore[union-attr]
    assert waiting.metadata == {eng.ASKED: None}
    # Without a request meanwhile, the poll keeps its cadence.
    calm = eng.apply(ASKING, doc(eng.RUNNING, "send"), eng.Job("send", "poll", 1, polls=3),
                     Pending(None), NOW, POLICIES)
    assert calm.next_job.due_at > NOW and eng.ASKED not in calm.metadata  # type: ignore[union-attr]
    # A transient error keeps the mark: the retry has not seen the request either.
    failed = eng.apply(ASKING, d, eng.Job("send", "run", 1), TransientError("503"), NOW,
                       POLICIES)
    assert eng.ASKED not in failed.metadata


@pytest.mark.parametrize(("state", "step"), [(eng.COMPLETED, "send"), (eng.FAILED, "send"),
                                             (eng.CANCELLED, "sign")])
def test_a_request_after_its_step_or_the_end_is_refused_saying_why(state: str,
                                                                   step: str) -> None:
    with pytest.raises(eng.NotAllowed, match="until document D1 has passed step send"):
        _ask(doc(state, step))


def test_a_request_the_step_ended_without_is_said_and_a_rejected_document_takes_none(
        ) -> None:
    d = eng.Doc("D1", "two", eng.RUNNING, "send", 1, {"sign": True, eng.ASKED: "send"})
    ended = eng.apply(ASKING, d, eng.Job("send", "poll", 1), Done(), NOW, POLICIES)
    assert ended.state == eng.COMPLETED and ended.metadata[eng.ASKED] is None
    assert any(e.kind == "error" and "ask again" in e.data["error"] for e in ended.journal)
    rejected = eng.Doc("D1", "two", eng.WAITING, "send", 1,
                       {"sign": True, "rejection": {"step": "sign", "reason": "non"}})
    assert not eng.takes_follow_up(ASKING, rejected, "ask")
    with pytest.raises(eng.NotAllowed):
        _ask(rejected)


def test_a_request_declared_after_a_rejection_is_taken_at_its_step_only() -> None:
    told = TwoStep(
        name="two", description="", files={}, metadata_model=Meta,
        steps=[Step("sign", "parapheur"), Step("send", "tdt")],
        follow_ups={"ask": FollowUp("send", Asked, lambda _m, _r, _a, _w: {},
                                    after_rejection_at=frozenset({"sign"}))})
    meta = {"sign": True, "rejection": {"step": "sign", "reason": "refusé"}}
    assert eng.takes_follow_up(told, eng.Doc("D1", "two", eng.WAITING, "send", 1, meta), "ask")
    assert not eng.takes_follow_up(told, eng.Doc("D1", "two", eng.WAITING, "sign", 1, meta),
                                   "ask")
    other = {"sign": True, "rejection": {"step": "send", "reason": "refusé"}}
    assert not eng.takes_follow_up(told, eng.Doc("D1", "two", eng.WAITING, "send", 1, other),
                                   "ask")
    # While it waits for the request, the rejection's reason stays in view.
    waiting = eng.apply(told, eng.Doc("D1", "two", eng.RUNNING, "send", 1, meta),
                        eng.Job("send", "run", 1), Pending(None), NOW, POLICIES)
    assert waiting.state == eng.WAITING and waiting.last_error == "refusé"
