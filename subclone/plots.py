"""Figures of a parent's anatomy and of a child's design (plotly), plus the kept-block strip (HTML).

Every anatomy figure takes an optional `Plan`; with one, what the child drops is greyed out, so the
same picture shows what the parent has and what the child keeps. CAPTIONS says how to read each one.
"""
from __future__ import annotations

import html

import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from .importance import Importance
from .plan import Plan

CAPTIONS = {
    "residual": "Each row is a block, each column a residual-stream dimension, ordered by the one ranking shared "
                "by all blocks (most important left). A few bright columns in every row: the same dimensions matter "
                "everywhere, which is why one cut can serve every block. Grey = dropped by the child.",
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

_GREY = [[0, "rgba(255,255,255,0.78)"], [1, "rgba(255,255,255,0.78)"]]


def _layout(fig: go.Figure, title: str, x: str, y: str, height: int = 360) -> go.Figure:
    fig.update_layout(title=dict(text=title, x=0.01), height=height, margin=dict(l=60, r=20, t=40, b=45),
                      xaxis_title=x, yaxis_title=y, template="plotly_white")
    return fig


def _heatmap(z: torch.Tensor, title: str, x: str, colorbar: str, dropped: torch.Tensor | None) -> go.Figure:
    """Log-coloured (layers × units) map; `dropped` (same shape, bool) is greyed out on top."""
    fig = go.Figure(go.Heatmap(z=z.clamp_min(1e-8).log10().mul(1000).round().div(1000).tolist(), colorscale="Viridis",
                               colorbar=dict(title=dict(text=colorbar, side="right")),
                               hovertemplate="block %{y}, " + x + " %{x}: 10^%{z:.2f}<extra></extra>"))
    if dropped is not None and dropped.any():
        veil = torch.where(dropped, 1.0, float("nan"))
        fig.add_trace(go.Heatmap(z=veil.tolist(), colorscale=_GREY, showscale=False, hoverinfo="skip"))
    fig.update_yaxes(autorange="reversed")
    return _layout(fig, title, x, "block")


def _dropped_rows(n_layers: int, plan: Plan | None) -> torch.Tensor:
    rows = torch.ones(n_layers, dtype=torch.bool)
    if plan is not None:
        rows[plan.layers] = False
    return rows


def residual_map(imp: Importance, plan: Plan | None = None) -> go.Figure:
    order = imp.residual_ranking.argsort(descending=True)
    dropped = None
    if plan is not None:
        cols = torch.ones(imp.residual.shape[1], dtype=torch.bool)
        cols[plan.residual] = False
        dropped = cols[order].expand_as(imp.residual) | _dropped_rows(len(imp.residual), plan)[:, None]
    return _heatmap(imp.residual[:, order], "Residual-stream dimensions", "rank", "log10 mean |act|", dropped)


def consistency_map(imp: Importance, top: float = 0.5) -> go.Figure:
    c = imp.layer_consistency(top)
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
    return _heatmap(imp.heads, "Attention heads", "head", "log10 output norm", dropped)


def ffn_map(imp: Importance, plan: Plan | None = None) -> go.Figure:
    order = imp.ffn.argsort(dim=1, descending=True)
    dropped = None
    if plan is not None:
        dropped = torch.ones_like(imp.ffn, dtype=torch.bool)
        for i, kept in zip(plan.layers, plan.ffn):
            dropped[i, kept] = False
        dropped = dropped.gather(1, order)
    return _heatmap(imp.ffn.gather(1, order), "FFN neurons (sorted within each block)", "rank", "log10 mean |act|",
                    dropped)


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
    return _layout(fig, "Size against quality, no training", x, quality + (" (log)" if quality == "perplexity" else ""),
                   height=420)


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
    (`steps`) from the start, so the curves grow into a fixed frame."""
    fig = go.Figure()
    for init, history in histories.items():
        color = INIT_COLORS.get(init)
        evals = [h for h in history if h.get("eval_loss") is not None]
        trains = [h for h in history if h.get("train_loss") is not None]
        fig.add_trace(go.Scatter(x=[h["step"] for h in evals], y=[h["eval_loss"] for h in evals], name=f"{init} held-out",
                                 mode="lines+markers", line=dict(color=color)))
        fig.add_trace(go.Scatter(x=[h["step"] for h in trains], y=[h["train_loss"] for h in trains], name=f"{init} train",
                                 mode="lines", line=dict(color=color, dash="dot")))
    fig = _layout(fig, "Recovery training", "step", "loss (nats / token)", height=420)
    if steps:
        fig.update_xaxes(range=[0, steps])
    return fig
