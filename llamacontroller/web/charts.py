"""Bar charts as server-rendered SVG: no chart library, no script, escaped labels."""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

from markupsafe import Markup

# A narrow viewBox: the chart is scaled to its card, so fewer units mean larger text.
WIDTH, BAR, GAP, LABEL = 360, 18, 5, 100


def bar_chart(data: Sequence[tuple[object, int | float]], unit: str) -> Markup:
    if not data:
        return Markup('<p class="muted">No data yet.</p>')
    peak = max(value for _, value in data) or 1
    height = len(data) * (BAR + GAP)
    rows = []
    for i, (label, value) in enumerate(data):
        y = i * (BAR + GAP)
        width = max(1.0, (WIDTH - LABEL - 50) * value / peak)
        text = escape(str(label))
        rows.append(
            f'<text x="0" y="{y + 13}" class="label">{text}</text>'
            f'<rect x="{LABEL}" y="{y}" width="{width:.1f}" height="{BAR}" class="bar"><title>{text}: {value:,} '
            f"{escape(unit)}</title></rect>"
            f'<text x="{LABEL + width + 4:.1f}" y="{y + 13}" class="value">{value:,}</text>'
        )
    return Markup(  # noqa: S704 - every label is escaped above; the rest are numbers
        f'<svg class="chart" viewBox="0 0 {WIDTH} {height}" width="100%" role="img" '
        f'aria-label="{escape(unit)} chart">{"".join(rows)}</svg>'
    )
