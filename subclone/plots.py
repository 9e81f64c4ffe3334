"""Figures of a parent's anatomy and of a child's design (plotly), plus the kept-block strip (HTML).

Every anatomy figure takes an optional `Plan`; with one, what the child drops is greyed out, so the
same picture shows what the parent has and what the child keeps. CAPTIONS says how to read each one.
"""
from __future__ import annotations

import html
import math

import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from .importance import Importance
from .plan import Plan

CAPTIONS = {
    "residual": "Each row is a block, each column a residual-stream dimension, ordered by the one ranking shared "
                "by all blocks (most important left), each row divided by its block's median so that every block "
                "counts alike. Bright on the left in every row: the same dimensions matter everywhere, which is why "
                "one cut can serve every block. Grey = dropped by the child.",
    "consistency": "Share of top-half residual dimensions that two blocks have in common (1 = the same set). "
                   "Bright everywhere means the ranking is consistent across layers, as the paper observes.",
    "heads": "Output norm of each attention head (rows: blocks). Heads are kept or dropped whole; grouped-query "
             "models keep whole KV groups. Grey = dropped by the child.",
    "ffn": "FFN neurons of each block, sorted by importance within the block (left = most important). Each block "
           "keeps its own top neurons. Grey = dropped by the child.",
    "blocks": "How much each block changes the residual stream: relative magnitude ‖f(x)‖/‖x+f(x)‖ (the paper), "
              "block influence 1 − cos(x, y) (ShortGPT) and, on demand, the loss increase when the block alone "
              "is removed. Low bars are near-identity blocks, the cheapest to drop. Grey bars = dropped.",
    "curves": "Held-out loss (solid) and training loss (dotted) of the same child shape from each initialization, "
              "trained on the same text with the same batches and seed. Lower is better; the gap at equal steps is "
              "what subcloning buys.",
    "pareto": "Every child of the sweep: size against held-out quality with no training. Circled points are the "
              "Pareto front: no other child is both smaller and better. Hover for the shape.",
}

_VEIL = [[0, "rgba(0,0,0,0)"], [1, "rgba(200,200,200,0.8)"]]
MAX_COLUMNS = 384  # a heatmap wider than this shows every n-th rank: a slider move stays light (a few 100 KB)
_FONT = "#888"  # readable on the light and the dark theme


def _layout(fig: go.Figure, title: str, x: str, y: str, height: int = 360) -> go.Figure:
    """Transparent background and mid-grey text and grid: the figure follows the page's light or dark theme."""
    fig.update_layout(title=dict(text=title, x=0.01), height=height, margin=dict(l=60, r=20, t=40, b=45),
                      xaxis_title=x, yaxis_title=y, template="none", paper_bgcolor="rgba(0,0,0,0)",
                      plot_bgcolor="rgba(0,0,0,0)", font=dict(color=_FONT), autosize=True)
    fig.update_xaxes(gridcolor="rgba(128,128,128,0.25)", zeroline=False)
    fig.update_yaxes(gridcolor="rgba(128,128,128,0.25)", zeroline=False)
    return fig


def _heatmap(z: torch.Tensor, title: str, x: str, colorbar: str, dropped: torch.Tensor | None,
             hover: str = "10^%{z:.1f}", columns: torch.Tensor | None = None) -> go.Figure:
    """(layers × units) map of log10 values, one decimal (what the eye can tell apart; it keeps the figure small);
    `dropped` (same shape, bool) is veiled in grey on top, as a 0/1 byte array. `columns` labels the x positions."""
    x_values = (columns if columns is not None else torch.arange(z.shape[1])).tolist()
    fig = go.Figure(go.Heatmap(z=z.double().log10().mul(10).round().div(10).tolist(), x=x_values, colorscale="Viridis",
                               colorbar=dict(title=dict(text=colorbar, side="right")),
                               hovertemplate="block %{y}, " + x + " %{x}: " + hover + "<extra></extra>"))
    if dropped is not None and dropped.any():
        fig.add_trace(go.Heatmap(z=dropped.to(torch.uint8).numpy(), x=x_values, colorscale=_VEIL, zmin=0, zmax=1,
                                 showscale=False, hoverinfo="skip"))
    fig.update_yaxes(autorange="reversed")
    return _layout(fig, title, x, "block")


def _every(n: int, cap: int = MAX_COLUMNS) -> torch.Tensor:
    """The positions shown of n ranks: all of them up to `cap`, else `cap` evenly spaced from the first."""
    return torch.arange(n) if n <= cap else torch.arange(cap) * n // cap


def _dropped_rows(n_layers: int, plan: Plan | None) -> torch.Tensor:
    rows = torch.ones(n_layers, dtype=torch.bool)
    if plan is not None:
        rows[plan.layers] = False
    return rows


def residual_map(imp: Importance, plan: Plan | None = None, top: int | None = None) -> go.Figure:
    """Each block's residual activations in the order of the one shared ranking, divided by that block's median:
    blocks deeper in the stack have larger activations everywhere, and without the division their rows would
    outshine the pattern across columns that the figure is about. With `top`, the view opens on the first `top`
    ranks (the leading dimensions are a pixel wide at full width); the rest is a drag or a double-click away."""
    order = imp.residual_ranking.argsort(descending=True)
    shown = _every(len(order), 2 * MAX_COLUMNS)  # each leading rank is its own column
    values = imp.residual.clamp_min(1e-8)
    values = (values / values.median(dim=1, keepdim=True).values)[:, order][:, shown]
    dropped = None
    if plan is not None:
        cols = torch.ones(imp.residual.shape[1], dtype=torch.bool)
        cols[plan.residual] = False
        dropped = cols[order][shown].expand_as(values) | _dropped_rows(len(imp.residual), plan)[:, None]
    title = "Residual-stream dimensions (each block ÷ its median)"
    if top and top < len(order):
        title = f"Top {top} of {len(order)} residual dimensions (each block ÷ its median; double-click: all)"
    fig = _heatmap(values, title, "rank", "log10 (÷ median)", dropped, hover="10^%{z:.1f} × the block's median",
                   columns=shown)
    if top and top < len(order):
        fig.update_xaxes(range=[-0.5, top - 0.5])
    return fig


def consistency_map(imp: Importance, top: float = 0.5) -> go.Figure:
    return _consistency(imp.layer_consistency(top), top)


def _consistency(c: torch.Tensor, top: float = 0.5) -> go.Figure:
    fig = go.Figure(go.Heatmap(z=c.tolist(), zmin=0, zmax=1, colorscale="Viridis",
                               hovertemplate="blocks %{y} and %{x}: %{z:.2f} shared<extra></extra>"))
    fig.update_yaxes(autorange="reversed")
    return _layout(fig, f"Top-{top:.0%} residual dimensions shared between blocks (mean {c.mean():.2f})",
                   "block", "block")


def heads_map(imp: Importance, plan: Plan | None = None) -> go.Figure:
    dropped = None
    if plan is not None:
        dropped = torch.ones_like(imp.heads, dtype=torch.bool)
        for i, heads in zip(plan.layers, plan.heads):
            dropped[i, heads] = False
    return _heatmap(imp.heads.clamp_min(1e-8), "Attention heads", "head", "log10 output norm", dropped)


def ffn_map(imp: Importance, plan: Plan | None = None) -> go.Figure:
    order = imp.ffn.argsort(dim=1, descending=True)
    shown = _every(imp.ffn.shape[1])
    dropped = None
    if plan is not None:
        dropped = torch.ones_like(imp.ffn, dtype=torch.bool)
        for i, kept in zip(plan.layers, plan.ffn):
            dropped[i, kept] = False
        dropped = dropped.gather(1, order)[:, shown]
    return _heatmap(imp.ffn.gather(1, order)[:, shown].clamp_min(1e-8), "FFN neurons (sorted within each block)",
                    "rank", "log10 mean |act|", dropped, columns=shown)


def blocks_chart(imp: Importance, drop_one: torch.Tensor | None = None, plan: Plan | None = None,
                 kind: str = "causal-lm") -> go.Figure:
    metrics = [("relative magnitude", imp.magnitude), ("block influence (1 − cos)", imp.bi)]
    if drop_one is not None:  # what importance.drop_one measures for this kind of model
        metrics.append(("Δ loss when removed" if kind == "causal-lm" else "1 − cos when removed", drop_one))
    L = len(imp.magnitude)
    kept = set(plan.layers) if plan is not None else set(range(L))
    fig = make_subplots(rows=len(metrics), cols=1, shared_xaxes=True, vertical_spacing=0.06,
                        subplot_titles=[m for m, _ in metrics])
    for r, (name, values) in enumerate(metrics, start=1):
        colors = ["#3b6fb6" if i in kept else "#c8c8c8" for i in range(L)]
        fig.add_trace(go.Bar(x=list(range(L)), y=values.tolist(), marker_color=colors, name=name, showlegend=False,
                             hovertemplate="block %{x}: %{y:.3f}<extra>" + name + "</extra>"), row=r, col=1)
    _layout(fig, "", "", "", height=150 + 130 * len(metrics))
    fig.update_xaxes(title_text="block", row=len(metrics), col=1)
    fig.update_layout(margin=dict(t=30))
    return fig


def pareto_chart(frame, x: str = "params") -> go.Figure:
    quality = "perplexity" if "perplexity" in frame else "cosine_to_parent"
    text = [f"{r.layers} layers · hidden {r.hidden} · ffn {r.ffn} · {r.heads}/{r.kv_heads} heads"
            for r in frame.itertuples()]
    fig = go.Figure(go.Scatter(x=frame[x], y=frame[quality], mode="markers", text=text, name="child",
                               marker=dict(size=9, color=frame["layers"], colorscale="Viridis",
                                           colorbar=dict(title=dict(text="layers", side="right"))),
                               hovertemplate="%{text}<br>" + x + " %{x:,}<br>" + quality + " %{y:.3g}<extra></extra>"))
    front = frame[frame["pareto"]].sort_values(x)
    fig.add_trace(go.Scatter(x=front[x], y=front[quality], mode="lines+markers", name="Pareto front",
                             marker=dict(size=15, symbol="circle-open", color="#d62728"), line=dict(color="#d62728"),
                             hoverinfo="skip"))
    fig.update_layout(legend=dict(x=0.99, xanchor="right", y=0.99))
    if quality == "perplexity":
        fig.update_yaxes(type="log")
    fig.update_xaxes(tickformat=".3~s")  # 135M, not 134.515007M when the sweep has one shape
    return _layout(fig, "Size against quality, no training", x, quality + (" (log)" if quality == "perplexity" else ""),
                   height=420)


def placeholder(message: str) -> go.Figure:
    """An empty figure that says why it is empty."""
    fig = go.Figure()
    fig.add_annotation(text=message, showarrow=False, font=dict(size=15), x=0.5, y=0.5, xref="paper", yref="paper")
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    return _layout(fig, "", "", "", height=220)


def block_strip(n_layers: int, kept: list[int] | None, pending: str | None = None) -> str:
    """One square per parent block: filled = kept, hollow = dropped. Plain HTML, no figure needed. `pending` says
    why there are no blocks to show yet, when the parent is analyzed."""
    if kept is None:
        return f"<p class='strip-empty'>{html.escape(pending or 'Analyze the parent to see which blocks the child keeps.')}</p>"
    cells = "".join(
        f"<span title='block {i}: {'kept' if i in kept else 'dropped'}' style='display:inline-block;width:22px;"
        f"height:22px;margin:1px;border:2px solid #3b6fb6;border-radius:3px;font:10px sans-serif;"
        f"line-height:22px;text-align:center;background:{'#3b6fb6;color:white' if i in kept else 'transparent;color:#3b6fb6'}'>"
        f"{i}</span>" for i in range(n_layers))
    return (f"<div class='block-strip' aria-label='{html.escape(f'{len(kept)} of {n_layers} blocks kept')}'>{cells}"
            f"<div style='font:12px sans-serif;color:#666'>{len(kept)} of {n_layers} blocks kept "
            f"(filled) · dropped: {', '.join(str(i) for i in range(n_layers) if i not in kept) or 'none'}</div></div>")


INIT_COLORS = {"subclone": "#3b6fb6", "uniform": "#e08a1e", "random": "#7f7f7f"}


def curves(histories: dict[str, list[dict]], steps: int | None = None) -> go.Figure:
    """Train and held-out loss against step, one colour per initialization; the x-axis spans the whole run
    (`steps`) from the start, so the curves grow into a fixed frame (the points are not clipped by it: the last step's
    sit on its right edge)."""
    fig = go.Figure()
    for init, history in histories.items():
        color = INIT_COLORS.get(init)
        evals = [h for h in history if h.get("eval_loss") is not None]
        trains = [h for h in history if h.get("train_loss") is not None]
        fig.add_trace(go.Scatter(x=[h["step"] for h in evals], y=[h["eval_loss"] for h in evals], name=f"{init} held-out",
                                 mode="lines+markers", line=dict(color=color), cliponaxis=False))
        fig.add_trace(go.Scatter(x=[h["step"] for h in trains], y=[h["train_loss"] for h in trains], name=f"{init} train",
                                 mode="lines" if len(trains) > 1 else "markers",  # one step: a line would not show
                                 line=dict(color=color, dash="dot"), marker=dict(color=color, symbol="circle-open"),
                                 cliponaxis=False))
    fig = _layout(fig, "Recovery training", "step", "loss (nats / token)", height=420)
    if steps:
        fig.update_xaxes(range=[0, steps], dtick=max(1, steps // 6))
    return fig


def lesson_figure(result: dict) -> go.Figure:
    """The figure of a lesson's result (lessons.py), drawn from its plain data."""
    f = result["figure"]
    if f["kind"] == "consistency":
        return _consistency(torch.tensor(f["matrix"]))
    if f["kind"] == "curves":
        return curves(f["histories"], f["steps"])
    if f["kind"] == "bars":
        names = list(f["series"])
        fig = make_subplots(rows=len(names), cols=1, shared_xaxes=True, vertical_spacing=0.08, subplot_titles=names)
        for r, name in enumerate(names, start=1):
            values = f["series"][name]
            fig.add_trace(go.Bar(x=list(range(len(values))), y=values, marker_color="#3b6fb6", showlegend=False,
                                 hovertemplate="block %{x}: %{y:.3f}<extra></extra>"), row=r, col=1)
        _layout(fig, "", "", "", height=420)
        fig.update_xaxes(title_text="block", row=len(names), col=1)
        return fig
    rows = f["rows"]  # children: held-out perplexity of each, log scale (they differ by orders of magnitude)
    parent = rows[0]["perplexity"] / rows[0]["× parent"]
    fig = go.Figure(go.Bar(x=[r["child"] for r in rows], y=[r["perplexity"] for r in rows],
                           text=[f"{r['perplexity']:,.1f}" for r in rows], textposition="outside",
                           marker_color=["#3b6fb6"] + ["#c8a24a"] * (len(rows) - 1),
                           hovertemplate="%{x}: %{y:,.1f}<extra></extra>"))
    top = max(r["perplexity"] for r in rows)
    fig.update_yaxes(type="log", range=[0, math.log10(top) * 1.12])  # from 1, a perfect model: heights compare
    fig.add_hline(y=parent, line=dict(color=_FONT, dash="dash"), annotation_text=f"parent {parent:,.1f}",
                  annotation_position="bottom right", annotation_font=dict(color=_FONT))
    return _layout(fig, "Held-out perplexity before training (log scale; lower is better)", "", "perplexity",
                   height=380)
