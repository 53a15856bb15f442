"""Fault rules: parsing, schedules, seeded draws, which rule fires."""

from __future__ import annotations

import argparse

import pytest
from pydantic import ValidationError

from simulators.common import add_common_arguments
from simulators.faults import FaultInjector, FaultRule, parse_fault


def fired(injector: FaultInjector, n: int, method: str = "POST", path: str = "/inbox") -> list[str]:
    return [rule.kind if (rule := injector.pick(method, path)) else "-" for _ in range(n)]


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("503", {"kind": "503", "ratio": 1.0, "phase": "before"}),
        ("503:0.2", {"kind": "503", "ratio": 0.2}),
        ("reset:0.05@after", {"kind": "reset", "ratio": 0.05, "phase": "after"}),
        ("hang@after", {"kind": "hang", "phase": "after"}),
        (
            "429:0.5,retry_after=3,path=/inbox,method=post,count=2,after=1,seed=9",
            {"retry_after": 3, "path": "/inbox", "method": "POST", "count": 2, "after": 1},
        ),
        ("slow,interval=0.1,chunk=64", {"kind": "slow", "interval": 0.1, "chunk": 64}),
    ],
)
def test_parse_fault(spec: str, expected: dict[str, object]) -> None:
    rule = parse_fault(spec)
    assert {key: getattr(rule, key) for key in expected} == expected


@pytest.mark.parametrize(
    ("spec", "named"),
    [
        ("teapot", "kind"),
        ("503:1.5", "ratio"),
        ("503@during", "phase"),
        ("503,count", "key=value"),
        ("503,colour=red", "colour"),
        ("503,count=-1", "count"),
    ],
)
def test_bad_fault_spec_names_the_field(spec: str, named: str) -> None:
    with pytest.raises(ValueError, match=named):
        parse_fault(spec)


def test_command_line_collects_repeated_faults() -> None:
    parser = argparse.ArgumentParser()
    add_common_arguments(parser)
    args = parser.parse_args(["--fault", "503:0.2", "--fault", "reset:0.05@after", "--seed", "3"])
    assert [(r.kind, r.ratio, r.phase) for r in args.faults] == [
        ("503", 0.2, "before"),
        ("reset", 0.05, "after"),
    ]
    assert (args.host, args.port, args.seed) == ("127.0.0.1", 0, 3)


def test_rules_are_validated() -> None:
    with pytest.raises(ValidationError):
        FaultRule(kind="503", ratio=-0.1)


def test_after_then_count() -> None:
    injector = FaultInjector()
    injector.replace([FaultRule(kind="500", after=2, count=3)])
    assert fired(injector, 7) == ["-", "-", "500", "500", "500", "-", "-"]
    assert injector.counts["500"] == 3


def test_ratio_is_reproducible_per_seed() -> None:
    def draws(seed: int) -> list[str]:
        injector = FaultInjector(seed=seed)
        injector.replace([FaultRule(kind="503", ratio=0.3)])
        return fired(injector, 200)

    first = draws(1)
    assert first == draws(1)
    assert first != draws(2)
    assert 40 <= first.count("503") <= 80  # about 30 % of 200


def test_rearm_replays_the_same_sequence() -> None:
    injector = FaultInjector()
    injector.replace([FaultRule(kind="503", ratio=0.5, count=5)])
    first = fired(injector, 30)
    injector.rearm()
    assert fired(injector, 30) == first
    assert first.count("503") == 5


def test_first_rule_that_fires_wins_and_others_see_the_rest() -> None:
    injector = FaultInjector()
    injector.replace([FaultRule(kind="503", count=1), FaultRule(kind="reset", after=1)])
    # The 1st request is taken by 503; reset counts only the requests reaching it.
    assert fired(injector, 4) == ["503", "-", "reset", "reset"]


def test_filters_and_control_paths() -> None:
    injector = FaultInjector()
    injector.replace([FaultRule(kind="refuse", path="/inbox", method="POST")])
    assert injector.pick("GET", "/inbox") is None
    assert injector.pick("POST", "/other") is None
    assert injector.pick("POST", "/inbox/mandats") is not None
    injector.replace([FaultRule(kind="refuse")])
    assert [injector.pick("GET", p) for p in ("/stats", "/_control/faults")] == [None, None]
    assert injector.pick("GET", "/anything") is not None
