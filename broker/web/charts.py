"""Charts drawn by the server as SVG: no script, readable printed and without colour
(errors are hatched as well as coloured, and every bar has a text title)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

WIDTH, HEIGHT, AXIS = 640, 160, 28


@dataclass(frozen=True)
class Bar:
    label: str  # what the bar covers: "14 h", "02/12"
    ok: int
    errors: int

    @property
    def total(self) -> int:
        return self.ok + self.errors

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.total if self.total else None


def percent(rate: float | None) -> str:
    return "—" if rate is None else f"{rate * 100:.1f} %".replace(".", ",")


def bars(title: str, data: Sequence[Bar], *, every: int = 1, key: str = "chart") -> str:
    """Stacked bars (ended well below, ended in error hatched above) with a label every
    ``every`` bars; the SVG's title and each bar's title say the figures."""
    top = max([b.total for b in data] + [1])
    slot = (WIDTH - AXIS) / max(len(data), 1)
    width = max(slot - 2, 1)
    plot = HEIGHT - 20
    parts = [
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'aria-label="{escape(title)}" xmlns="http://www.w3.org/2000/svg">',
        f"<title>{escape(title)}</title>",
        f'<defs><pattern id="{key}-hatch" width="6" height="6" patternUnits="userSpaceOnUse" '
        'patternTransform="rotate(45)"><rect width="6" height="6" class="err-bg"/>'
        '<line x1="0" y1="0" x2="0" y2="6" class="err-line"/></pattern></defs>',
        f'<text x="0" y="12" class="axis">{top}</text>',
        f'<line x1="{AXIS}" y1="{plot}" x2="{WIDTH}" y2="{plot}" class="base"/>',
    ]
    for i, b in enumerate(data):
        x = AXIS + i * slot
        ok_h = plot * b.ok / top
        err_h = plot * b.errors / top
        tip = escape(f"{b.label} : {b.total} terminés dont {b.errors} en erreur "
                     f"({percent(b.error_rate)})")
        parts.append(f"<g><title>{tip}</title>")
        if b.ok:
            parts.append(f'<rect x="{x:.1f}" y="{plot - ok_h:.1f}" width="{width:.1f}" '
                         f'height="{ok_h:.1f}" class="ok"/>')
        if b.errors:
            parts.append(f'<rect x="{x:.1f}" y="{plot - ok_h - err_h:.1f}" '
                         f'width="{width:.1f}" height="{err_h:.1f}" fill="url(#{key}-hatch)" '
                         'class="err"/>')
        parts.append("</g>")
        if i % every == 0:
            parts.append(f'<text x="{x:.1f}" y="{HEIGHT - 4}" class="axis">'
                         f"{escape(b.label)}</text>")
    parts.append("</svg>")
    return "".join(parts)
