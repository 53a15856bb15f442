"""The overview's activity: documents ended per hour folded into Paris days, across a
change of clocks, and the SVG chart's accessible text."""

from __future__ import annotations

from datetime import datetime, timedelta

from broker.web import charts
from broker.web.labels import PARIS
from broker.web.pages import activity


def paris(*args: int) -> float:
    return datetime(*args, tzinfo=PARIS).timestamp()


def test_days_are_paris_days_across_the_october_clock_change() -> None:
    now = paris(2026, 11, 10, 12, 0)
    start = (datetime(2026, 11, 10, tzinfo=PARIS) - timedelta(days=29)).timestamp()
    ended = [paris(2026, 10, 20, 23, 30), paris(2026, 10, 25, 2, 30),
             paris(2026, 11, 1, 0, 30), paris(2026, 11, 10, 11, 10)]
    hours = [(int((t - start) // 3600), "completed", 1) for t in ended]
    hours.append((int((ended[-1] - start) // 3600), "rejected", 2))
    by_hour, by_day = activity(hours, start, now)
    counted = {b.label: (b.ok, b.errors) for b in by_day if b.total}
    assert counted == {"20/10": (1, 0), "25/10": (1, 0), "01/11": (1, 0), "10/11": (1, 2)}
    assert by_day[-1].label == "10/11" and by_day[0].label == "12/10"
    assert [(b.label, b.total) for b in by_hour if b.total] == [("11 h", 3)]
    assert by_hour[-1].label == "12 h"


def test_a_chart_says_its_figures_in_text_and_hatches_errors() -> None:
    svg = charts.bars("Par heure", [charts.Bar("14 h", 3, 1), charts.Bar("15 h", 0, 0)],
                      key="hours")
    assert 'role="img" aria-label="Par heure"' in svg
    assert "14 h : 4 terminés dont 1 en erreur (25,0 %)" in svg
    assert 'fill="url(#hours-hatch)"' in svg and 'id="hours-hatch"' in svg
