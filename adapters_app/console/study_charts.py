"""Plotly figures for a footprint study's page, as plain JSON-ready dicts (see charts.py).

A study's cells fall into groups of one base and one target set; each group gets its
own figures, since payload bytes are only comparable within a base and target set.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import plotly.graph_objects as go

from adapters_app.console.charts import OTHER_SUITE_COLOUR, SUITE_COLOURS, _layout, _plain, reference_line

# One colour per LoRA init, the same in every study figure.
INIT_COLOURS = {"default": "#2563eb", "pissa": "#9333ea", "olora": "#ea580c", "tail": "#16a34a"}
TARGET_COLOUR = "#dc2626"
# The suites whose spread the distribution chart shows: what the adapter learned, and
# what it must not forget.
DISTRIBUTION_SUITES = ("recall", "tool", "preference", "retention")


@dataclass(slots=True)
class CellGroup:
    """The cells of one base and one target set, with their figures."""

    base: str
    targets: str
    cells: list  # CellView
    pass_rate: dict | None = None
    collapse_rate: dict | None = None
    scores: dict | None = None

    @property
    def key(self) -> str:
        return f"{self.base}-{self.targets}"

    @property
    def title(self) -> str:
        return f"{self.base} · {self.targets}"


def cell_groups(cells: Sequence, scores_by_cell: dict[int, list[dict]], target: float) -> list[CellGroup]:
    """Group a study's cells by base and targets, and draw each group's figures."""
    groups: dict[tuple[str, str], CellGroup] = {}
    for view in cells:
        key = (view.cell.base.name, view.cell.targets)
        groups.setdefault(key, CellGroup(*key, cells=[])).cells.append(view)
    for group in groups.values():
        group.pass_rate = rate_figure(group.cells, "pass_rate", "runs passing the gate", target)
        group.collapse_rate = rate_figure(group.cells, "collapse_rate", "runs collapsed")
        group.scores = score_distribution_figure(group.cells, scores_by_cell)
    return list(groups.values())


def _judged(cells: Sequence) -> list:
    return [c for c in cells if c.cell.payload_bytes and c.reliability.runs]


def rate_figure(cells: Sequence, rate: str, title: str, target: float | None = None) -> dict | None:
    """A reliability rate (pass or collapse) against payload bytes, log x, one line per init;
    the operator's reliability target as a dashed line. None while no cell has a run."""
    judged = _judged(cells)
    if not judged:
        return None
    figure = go.Figure()
    inits = list(dict.fromkeys(c.cell.init for c in sorted(judged, key=lambda c: c.cell.pk)))
    for init in inits:
        points = sorted(
            (c for c in judged if c.cell.init == init), key=lambda c: (c.cell.payload_bytes, c.cell.rank)
        )
        figure.add_trace(
            go.Scatter(
                x=[c.cell.payload_bytes for c in points],
                y=[getattr(c.reliability, rate) for c in points],
                mode="lines+markers",
                name=init,
                line=dict(color=INIT_COLOURS.get(init, OTHER_SUITE_COLOUR)),
                customdata=[
                    [
                        c.cell.rank,
                        c.reliability.pass_rate,
                        c.reliability.collapse_rate,
                        c.reliability.runs,
                        c.cell.runs_total,
                    ]
                    for c in points
                ],
                hovertemplate=(
                    f"{init} rank %{{customdata[0]}}<br>%{{x:,}} bytes<br>"
                    "pass rate %{customdata[1]:.0%}<br>collapse rate %{customdata[2]:.0%}<br>"
                    "%{customdata[3]} of %{customdata[4]} runs<extra></extra>"
                ),
            )
        )
    shapes = [] if target is None else [reference_line(target, TARGET_COLOUR, dash="dash", width=1.5)]
    figure.update_layout(
        **_layout(
            height=280,
            xaxis=dict(title="payload bytes (log)", type="log"),
            yaxis=dict(title=title, range=[-0.03, 1.05], tickformat=".0%"),
            shapes=shapes,
            showlegend=True,  # even with one init: the legend names it
            hovermode="closest",
        )
    )
    return _plain(figure)


def score_distribution_figure(cells: Sequence, scores_by_cell: dict[int, list[dict]]) -> dict | None:
    """Each suite's score across a cell's runs, as box plots grouped by cell (smallest first)."""
    ordered = sorted(
        (c for c in cells if scores_by_cell.get(c.cell.pk)),
        key=lambda c: (c.cell.payload_bytes or 0, c.cell.rank, c.cell.init),
    )
    if not ordered:
        return None
    labels = [f"r{c.cell.rank} {c.cell.init}" for c in ordered]
    figure = go.Figure()
    for suite in DISTRIBUTION_SUITES:
        x, y = [], []
        for label, view in zip(labels, ordered, strict=True):
            for scores in scores_by_cell[view.cell.pk]:
                if suite in scores:
                    x.append(label)
                    y.append(scores[suite])
        if y:
            figure.add_trace(
                go.Box(
                    x=x,
                    y=y,
                    name=suite,
                    marker=dict(color=SUITE_COLOURS.get(suite, OTHER_SUITE_COLOUR)),
                    boxpoints="all",
                    jitter=0.3,
                    pointpos=0,
                    hovertemplate=f"%{{x}}<br>{suite}: %{{y:.3f}}<extra></extra>",
                )
            )
    figure.update_layout(
        **_layout(
            height=300,
            boxmode="group",
            xaxis=dict(type="category", categoryorder="array", categoryarray=labels),
            yaxis=dict(title="score", range=[-0.03, 1.05]),
            hovermode="closest",
        )
    )
    return _plain(figure)


def figures(groups: Sequence[CellGroup]) -> dict[str, dict]:
    """Every drawn figure of the page, by the `data-figure` name of the element it is drawn in."""
    out = {}
    for group in groups:
        for prefix, figure in (
            ("pass", group.pass_rate),
            ("collapse", group.collapse_rate),
            ("scores", group.scores),
        ):
            if figure is not None:
                out[f"{prefix}-chart-{group.key}"] = figure
    return out
