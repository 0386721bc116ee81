"""Plotly figures for console pages, returned as plain JSON-ready dicts.

Pages embed a figure with `json_script` and draw it with the locally served
plotly.js (`Plotly.react`), so a live fragment can redraw the same figure.
"""

import json
from collections.abc import Sequence

import plotly.graph_objects as go

LOSS_COLOUR = "#2563eb"
ACCURACY_COLOUR = "#16a34a"
# One colour per suite, the same on every page; an unknown suite gets grey.
SUITE_COLOURS = {
    "recall": "#2563eb",
    "preference": "#9333ea",
    "tool": "#ea580c",
    "retention": "#16a34a",
    "leakage": "#dc2626",
    "update": "#0891b2",
}
OTHER_SUITE_COLOUR = "#6b7280"


def _layout(**extra) -> dict:
    return {
        **dict(
            # No template: plotly's default one adds ~7 KB to every figure (and to every poll).
            template="none",
            height=260,
            margin=dict(l=50, r=50, t=10, b=40),
            paper_bgcolor="rgba(0,0,0,0)",
            plot_bgcolor="#fafafa",
            font=dict(size=12),
            legend=dict(orientation="h", y=1.12, x=0),
            hovermode="x unified",
        ),
        **extra,
    }


def _plain(figure: go.Figure) -> dict:
    return json.loads(figure.to_json())


def _revision_axis(ordered: Sequence) -> dict:
    return dict(
        title="revision",
        type="category",
        categoryorder="array",
        categoryarray=[r.label for r in ordered],
    )


def suite_scores_figure(
    revisions: Sequence,
    scores: dict[int, dict[str, float]],
    base_scores: dict[str, float] | None = None,
) -> dict | None:
    """Every suite's score across revisions: one line per suite.

    `scores` maps revision number to {suite: score}; `base_scores` (the bare base on the
    same evaluation set) are drawn as dotted reference lines, not traces, so the figure
    keeps exactly one trace per suite. None when no revision has a suite score.
    """
    ordered = sorted(revisions, key=lambda r: r.number)
    suites = sorted(
        {suite for by_suite in scores.values() for suite in by_suite},
        key=lambda s: (list(SUITE_COLOURS).index(s) if s in SUITE_COLOURS else len(SUITE_COLOURS), s),
    )
    if not suites:
        return None
    figure = go.Figure()
    for suite in suites:
        points = [(r.label, scores[r.number][suite]) for r in ordered if suite in scores.get(r.number, {})]
        figure.add_trace(
            go.Scatter(
                x=[label for label, _ in points],
                y=[score for _, score in points],
                mode="lines+markers",
                name=suite,
                line=dict(color=SUITE_COLOURS.get(suite, OTHER_SUITE_COLOUR)),
                hovertemplate=f"revision %{{x}}<br>{suite}: %{{y:.3f}}<extra></extra>",
            )
        )
    shapes = [
        reference_line(score, SUITE_COLOURS.get(suite, OTHER_SUITE_COLOUR), dash="dot", width=1)
        for suite, score in (base_scores or {}).items()
        if suite in suites
    ]
    figure.update_layout(
        **_layout(
            xaxis=_revision_axis(ordered),
            yaxis=dict(title="score", range=[0, 1.05]),
            shapes=shapes,
            hovermode="closest",
        )
    )
    return _plain(figure)


def revision_history_figure(revisions: Sequence, accuracies: dict[int, float] | None = None) -> dict | None:
    """Final training loss per revision, and held-out token accuracy where evaluated (a small chart).

    `accuracies` maps revision number to token accuracy. None when there is nothing to plot.
    """
    accuracies = accuracies or {}
    ordered = sorted(revisions, key=lambda r: r.number)
    losses = [(r.label, r.final_loss) for r in ordered if r.final_loss is not None]
    scored = [(r.label, accuracies[r.number]) for r in ordered if r.number in accuracies]
    if not losses and not scored:
        return None
    figure = go.Figure()
    if losses:
        figure.add_trace(
            go.Scatter(
                x=[label for label, _ in losses],
                y=[loss for _, loss in losses],
                mode="lines+markers",
                name="final training loss",
                line=dict(color=LOSS_COLOUR),
            )
        )
    if scored:
        figure.add_trace(
            go.Scatter(
                x=[label for label, _ in scored],
                y=[acc for _, acc in scored],
                mode="lines+markers",
                name="eval token accuracy",
                yaxis="y2",
                line=dict(color=ACCURACY_COLOUR, dash="dot"),
            )
        )
    figure.update_layout(
        **_layout(
            height=200,
            xaxis=_revision_axis(ordered),
            yaxis=dict(title="loss"),
            yaxis2=dict(title="token accuracy", overlaying="y", side="right", range=[0, 1]),
        )
    )
    return _plain(figure)


def loss_curve_figure(loss_points: Sequence[Sequence[float]], total_steps: int = 0) -> dict:
    """A job's training loss per step (`[[step, loss], ...]`); empty axes before the first point."""
    steps = [point[0] for point in loss_points]
    losses = [point[1] for point in loss_points]
    figure = go.Figure(
        go.Scatter(x=steps, y=losses, mode="lines", name="training loss", line=dict(color=LOSS_COLOUR))
    )
    xaxis = dict(title="step")
    if total_steps:
        xaxis["range"] = [0, total_steps]
    figure.update_layout(**_layout(xaxis=xaxis, yaxis=dict(title="loss"), showlegend=False))
    return _plain(figure)


# Modules adapted on both sides, and on one side only.
DIFF_COLOUR = "#9333ea"
ONE_SIDED_COLOUR = "#ea580c"


def weight_delta_figure(weights, a: str, b: str) -> dict:
    """‖ΔW_b - ΔW_a‖ per module as bars; modules adapted on one side only in another colour."""
    names = [module.module.removeprefix("model.") for module in weights.modules]
    figure = go.Figure(
        go.Bar(
            x=names,
            y=[module.norm_diff for module in weights.modules],
            marker=dict(
                color=[DIFF_COLOUR if m.in_a and m.in_b else ONE_SIDED_COLOUR for m in weights.modules]
            ),
            customdata=[
                [m.norm_a, m.norm_b, "" if m.relative_change is None else f"{m.relative_change:.1%}"]
                for m in weights.modules
            ],
            hovertemplate=(
                f"%{{x}}<br>‖ΔW {b} - ΔW {a}‖ %{{y:.4g}}<br>‖ΔW {a}‖ %{{customdata[0]:.4g}}"
                f"<br>‖ΔW {b}‖ %{{customdata[1]:.4g}}<br>relative %{{customdata[2]}}<extra></extra>"
            ),
        )
    )
    figure.update_layout(
        **_layout(
            height=300,
            margin=dict(l=60, r=20, t=10, b=120),
            xaxis=dict(type="category", tickangle=-45, automargin=True),
            yaxis=dict(title=f"‖ΔW {b} - ΔW {a}‖"),
            showlegend=False,
            hovermode="closest",
        )
    )
    return _plain(figure)


def reference_line(y: float, colour: str, *, dash: str, width: float) -> dict:
    """A horizontal line across the whole plot at `y` (a layout shape, not a trace, so
    legends and hover list only the data)."""
    return dict(
        type="line", xref="paper", x0=0, x1=1, y0=y, y1=y, line=dict(color=colour, dash=dash, width=width)
    )


def updates_per_day_figure(per_day: Sequence[dict]) -> dict | None:
    """Personal updates per day, stacked: stated memories and feedback on answers."""
    if not per_day:
        return None
    days = [str(row["day"]) for row in per_day]
    figure = go.Figure(
        [
            go.Bar(
                name="memories", x=days, y=[row.get("memory", 0) for row in per_day], marker_color="#0891b2"
            ),
            go.Bar(
                name="feedback", x=days, y=[row.get("feedback", 0) for row in per_day], marker_color="#9333ea"
            ),
        ],
        layout=_layout(
            barmode="stack",
            height=200,
            xaxis=dict(type="date", tickformat="%b %d", dtick=86_400_000),  # a tick a day
            yaxis=dict(title="updates", rangemode="tozero"),
        ),
    )
    return _plain(figure)
