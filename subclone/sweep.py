"""The size / quality tradeoff: build and evaluate a grid of depth × width children, find the Pareto front.

Width is a fraction of the parent's hidden and FFN sizes (snapped to valid values); heads stay as given.
Each child costs one build and one forward pass over the held-out tokens against a cached `Reference`.
"""
from __future__ import annotations

import time
from typing import Callable, Iterator

import pandas as pd

from .arch import Shape
from .clone import build
from .errors import SubcloneError
from .evaluate import Reference, evaluate
from .plan import Plan, describe, make_plan, snap_shape


def parse_list(text: str, what: str, cast=float) -> list:
    """'30, 24, 18' -> [30, 24, 18], with a clear error for anything else."""
    try:
        values = [cast(v) for v in str(text).replace(";", ",").split(",") if v.strip()]
    except ValueError:
        raise SubcloneError(f"{what} must be a comma-separated list of numbers, got '{text}'") from None
    if not values:
        raise SubcloneError(f"{what} is empty: give a comma-separated list like 30, 24, 18")
    return values


def grid(parent, depths: list[int], widths: list[float], heads: int | None = None,
         kv_heads: int | None = None) -> list[Shape]:
    """Every depth × width (percent of the parent's hidden / ffn), snapped; duplicates dropped."""
    s = parent.shape
    for w in widths:
        if not 0 < w <= 100:
            raise SubcloneError(f"width {w:g}% is out of range: give percentages of the parent in (0, 100]")
    for d in depths:
        if not 1 <= d <= s.layers or d != int(d):
            raise SubcloneError(f"depth {d:g} is out of range: the parent has {s.layers} layers")
    shapes = []
    for d in depths:
        for w in widths:
            shape, _ = snap_shape(parent.family, s, int(d), max(1, round(s.hidden * w / 100)),
                                  max(1, round(s.ffn * w / 100)), heads or s.heads, kv_heads or s.kv_heads)
            if shape not in shapes:
                shapes.append(shape)
    return shapes


def pareto(frame: pd.DataFrame, x: str, y: str, lower_is_better: bool = True) -> pd.Series:
    """True where no other row is at least as small in x and strictly better in y (or vice versa)."""
    sign = 1 if lower_is_better else -1
    front = []
    for _, row in frame.iterrows():
        better = (frame[x] <= row[x]) & (sign * frame[y] <= sign * row[y]) & \
                 ((frame[x] < row[x]) | (sign * frame[y] < sign * row[y]))
        front.append(not better.any())
    return pd.Series(front, index=frame.index)


def plans(parent, importance, shapes: list[Shape], block_rule: str = "magnitude", neuron_rule: str = "importance",
          scale=None, score: str = "activation", compensate: str = "none", basis: str = "dims") -> list[Plan]:
    """Each shape's plan under one set of rules."""
    return [make_plan(parent, importance, shape, block_rule=block_rule, neuron_rule=neuron_rule, scale=scale,
                      score=score, compensate=compensate, basis=basis) for shape in shapes]


def children(parent, ref: Reference, plans: list[Plan], calibration=None,
             fitted: Callable | None = None) -> Iterator[dict]:
    """Build and evaluate each plan in turn, yielding its row (size and zero-shot quality) as soon as it is measured.
    A compensated plan is fitted on the calibration tokens first (seconds per child); `fitted(plan)`, when given,
    supplies those fits (a cache). In principal directions, give the rotated parent (rotate.rotated) once rather than
    rotating for every child."""
    for plan in plans:
        t = time.perf_counter()
        fits = fitted(plan) if fitted and plan.compensate != "none" else None
        r = evaluate(build(parent, plan, calibration, fitted=fits), ref, plan.residual, speed=False)
        d = describe(parent, plan.shape)
        yield {**{k: v for k, v in plan.shape.to_dict().items() if k != "head_dim"},
               **{k: d[k] for k in ("params", "percent_of_parent", "flops_per_token", "expected_speedup")},
               **{k: r[k] for k in ("perplexity", "top1_agreement", "kl_to_parent", "cosine_to_parent") if k in r},
               "seconds": round(time.perf_counter() - t, 2)}


def table(rows: list[dict]) -> pd.DataFrame:
    """The rows measured so far as a frame; `pareto` marks the best tradeoffs among them."""
    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame
    quality = "perplexity" if "perplexity" in frame else "cosine_to_parent"
    frame["pareto"] = pareto(frame, "params", quality, lower_is_better=quality == "perplexity")
    return frame


def sweep(parent, importance, ref: Reference, shapes: list[Shape], block_rule: str = "magnitude",
          neuron_rule: str = "importance", scale=None,
          progress: Callable[[float, str], None] | None = None, score: str = "activation", compensate: str = "none",
          calibration=None, basis: str = "dims") -> pd.DataFrame:
    """One row per shape: its size and its zero-shot quality; `pareto` marks the best tradeoffs. In principal
    directions, give the rotated parent (see `children`)."""
    rows = []
    for row in children(parent, ref, plans(parent, importance, shapes, block_rule, neuron_rule, scale, score,
                                           compensate, basis), calibration):
        rows.append(row)
        if progress:
            progress(len(rows) / len(shapes), f"child {len(rows)}/{len(shapes)}: {row['layers']} layers, "
                                              f"hidden {row['hidden']}")
    return table(rows)
