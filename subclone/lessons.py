"""The paper's observations as one-click lessons, measured on a parent (the bundled SmolLM2 in the app).

Each lesson sets a design, measures what one observation is about, and states its conclusion with the numbers it
measured. A result is plain data (a conclusion, a table, the data of one figure), so lessons that take longer than
about 30 s live ship precomputed on the bundled parent in `lessons.json` (written by `python -m subclone.lessons`)
and can be rerun live.
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

import torch

from .errors import SubcloneError, shown
from .parents import DEFAULT_PARENT
from .plan import PRESETS
from .workspace import Design, Progress, Workspace

PRECOMPUTED = Path(__file__).with_name("lessons.json")
CLASS_STEPS = 12  # Heal's class default: two initializations in a few minutes on 2 cores
PAPER = dict(PRESETS["paper"], scale=("residual", "embed"))
BEST = dict(PRESETS["best"], scale=("residual", "embed"))
TWO_THIRDS = dict(layers=0.8, hidden=0.875, ffn=5 / 6)  # of the parent: SmolLM2 -> 24 / 504 / 1280, 67 % of it


@dataclass(frozen=True)
class Lesson:
    key: str
    title: str  # the button
    claim: str  # the observation, as the paper states it
    shape: dict  # fractions of the parent's layers / hidden / ffn the lesson designs
    rules: dict  # the rules it sets in Design
    run: Callable[[Workspace, str | None, Design, Progress], dict]


def _sizes(ws: Workspace, design: Design, shape: dict) -> Design:
    p = ws.parent(design.parent).shape
    sizes = {k: max(1, round(getattr(p, k) * f)) for k, f in shape.items()}
    return replace(design, **sizes)


def _children(ws, sid, design, variants: dict[str, dict], progress) -> list[dict]:
    """Build and evaluate one child per variant of the design (no timing: only quality is compared)."""
    rows = []
    for n, (name, change) in enumerate(variants.items()):
        progress(n / len(variants), f"building and evaluating '{name}' ({n + 1} of {len(variants)})")
        _, m = ws.build(sid, replace(design, **change), speed=False)
        rows.append({"child": name, "params": m["params"], "perplexity": m["perplexity"],
                     "× parent": round(m["perplexity"] / m["parent_perplexity"], 2),
                     "top-1 agreement": m["top1_agreement"]})
    return rows


def _ranking(ws, sid, design, progress) -> dict:
    d = ws.design(design, ws.session(sid), compute=True, progress=progress, plan=False)
    c = d.importance.layer_consistency(0.5)
    off = c[~torch.eye(len(c), dtype=torch.bool)]
    i, j = divmod(int(torch.where(torch.eye(len(c), dtype=torch.bool), 2.0, c).argmin()), len(c))
    typical = (c > 0.5).sum(dim=1).float().sub(1).div(len(c) - 1)  # share of the other blocks above chance
    return dict(figure=dict(kind="consistency", matrix=c.tolist()),
                table=[{"blocks compared": "every pair", "top-half dimensions shared": f"{off.mean():.0%}"},
                       {"blocks compared": f"{i} and {j} (the least alike)", "top-half dimensions shared": f"{c[i, j]:.0%}"},
                       {"blocks compared": "two random rankings (chance)", "top-half dimensions shared": "50%"}],
                conclusion=f"Any two blocks share **{off.mean():.0%}** of their top-half residual dimensions on average "
                           f"(two random rankings would share 50 %), and {typical.median():.0%} of the other blocks "
                           f"share more than chance with a typical block. The exception is the least alike pair, "
                           f"blocks {i} and {j} ({c[i, j]:.0%})"
                           + (": the first block reads the embeddings, the last one writes for the LM head. "
                              if {i, j} & {0, len(c) - 1} else ". ")
                           + "One ranking of the residual stream can serve every block, so one cut of the "
                           "hidden size keeps what matters nearly everywhere.")


def _middle(ws, sid, design, progress) -> dict:
    d = ws.design(design, ws.session(sid), compute=True, progress=progress, plan=False)
    magnitude = d.importance.magnitude
    drop = ws.drop_scores(d.parent, d.text, compute=True, progress=progress)
    L, k = len(magnitude), max(1, len(magnitude) // 3)
    low_mag = sorted(magnitude.argsort()[:k].tolist())
    low_drop = sorted(drop.argsort()[:k].tolist())
    middle = range(L // 4, L - L // 4)
    outside = [b for b in low_drop if b not in middle]
    worst = int(drop.argmax())
    return dict(figure=dict(kind="bars", series={"relative magnitude ‖f(x)‖/‖x+f(x)‖": magnitude.tolist(),
                                                 "Δ loss when the block alone is removed": drop.tolist()}),
                table=[{"block": b, "relative magnitude": round(float(magnitude[b]), 3),
                        "Δ loss when removed": round(float(drop[b]), 3)} for b in range(L)],
                conclusion=f"The {k} blocks of least relative magnitude are {low_mag}; the {k} cheapest to remove "
                           f"(Δ held-out loss) are {low_drop}: the two measures agree on "
                           f"{len(set(low_mag) & set(low_drop))} of {k}, mostly in the middle of the stack "
                           f"(blocks {middle.start}–{middle.stop - 1}). Exceptions: "
                           + (f"{outside} lie outside the middle; " if outside else "none outside the middle; ")
                           + f"block {worst} costs the most to remove (+{float(drop[worst]):.2f} nats/token). "
                             "Magnitude needs one pass; drop-one needs one pass per block.")


def _selection(ws, sid, design, progress) -> dict:
    rows = _children(ws, sid, design, {"importance (the paper)": dict(neuron_rule="importance"),
                                       "uniform (evenly spaced)": dict(neuron_rule="uniform"),
                                       "random": dict(neuron_rule="random")}, progress)
    best, rest = rows[0], rows[1:]
    ratio = min(r["perplexity"] for r in rest) / best["perplexity"]
    return dict(figure=dict(kind="children", rows=rows), table=rows,
                conclusion=f"Same shape, same blocks and scaling, only the choice of neurons and heads differs: "
                           f"importance gives held-out perplexity **{best['perplexity']:,.1f}**, "
                           + ", ".join(f"{r['child'].split(' (')[0]} {r['perplexity']:,.0f}" for r in rest)
                           + f". Choosing by importance is **×{ratio:,.0f}** better than the better of the two "
                             "(lower is better).")


def _scaling(ws, sid, design, progress) -> dict:
    rows = _children(ws, sid, design, {"no scaling": dict(scale=()),
                                       "√(d/d′) on the residual fan-in": dict(scale=("residual",)),
                                       "+ embeddings and LM head (default)": dict(scale=("residual", "embed"))},
                     progress)
    return dict(figure=dict(kind="children", rows=rows), table=rows,
                conclusion=f"Cutting the hidden size shrinks every sum over it; multiplying the weights that read the "
                           f"residual stream by √(d/d′) restores the scale of their outputs. Held-out perplexity: "
                           f"no scaling **{rows[0]['perplexity']:,.1f}**, residual fan-in "
                           f"**{rows[1]['perplexity']:,.1f}**, with the embeddings too "
                           f"**{rows[2]['perplexity']:,.1f}** (lower is better).")


def _training(ws, sid, design, progress) -> dict:
    histories, last = {"subclone": [], "random": []}, None
    for kind, init, payload in ws.heal(sid, design, CLASS_STEPS, ["subclone", "random"]):
        if kind == "eval":
            histories[init].append(payload)
        elif kind == "tick" and payload["steps"]:
            progress(payload["steps"] / payload["total"], f"training step {payload['steps']} of {payload['total']}")
        elif kind == "done":
            last = payload
    results = {i: h[2] for i, h in last.items()}
    sub, rnd = results["subclone"]["eval_loss"], results["random"]["eval_loss"]
    start = histories["subclone"][0]["eval_loss"]
    reached = next((h["step"] for h in histories["random"] if h["eval_loss"] <= start), None)
    return dict(figure=dict(kind="curves", histories=histories, steps=CLASS_STEPS),
                table=[{"initialization": i, "steps": r["steps"], "held-out loss": r["eval_loss"],
                        "held-out perplexity": r["eval_perplexity"]} for i, r in results.items()],
                conclusion=f"After {CLASS_STEPS} steps each on the same batches, the subcloned child's held-out loss "
                           f"is **{sub:.2f}** and the randomly initialized one's **{rnd:.2f}** nats/token "
                           f"(perplexity {results['subclone']['eval_perplexity']:,.0f} against "
                           f"{results['random']['eval_perplexity']:,.0f}). The subcloned child starts at {start:.2f}; "
                           + ("random init never got there in this run." if reached is None else
                              f"random init needed {reached} steps to get there."))


def _best(ws, sid, design, progress) -> dict:
    rows = _children(ws, sid, design, {"paper's rules": PAPER, "best (this app's default)": BEST}, progress)
    return dict(figure=dict(kind="children", rows=rows), table=rows,
                conclusion=f"At the same shape, the paper's rules (magnitude blocks, mean |activation|, no fitting) "
                           f"give held-out perplexity **{rows[0]['perplexity']:,.1f}**; this app's best preset "
                           f"(block search, activation × weight scores, least-squares compensation) gives "
                           f"**{rows[1]['perplexity']:,.1f}**, ×{rows[0]['perplexity'] / rows[1]['perplexity']:.2f} "
                           "better before any training. On held-out text of another domain the gap is measured in "
                           "bench/RESULTS.md.")


LESSONS = {lesson.key: lesson for lesson in [
    Lesson("ranking", "One ranking for every block", "the important residual dimensions are the same in every block",
           {}, PAPER, _ranking),
    Lesson("middle", "Middle blocks matter least", "blocks in the middle change the residual stream least",
           {}, PAPER, _middle),
    Lesson("selection", "Importance beats uniform and random",
           "neurons chosen by importance beat evenly spaced or random ones by orders of magnitude",
           TWO_THIRDS, PAPER, _selection),
    Lesson("scaling", "√(d/d′) scaling helps", "scaling the weights by √(d/d′) after a cut of the hidden size helps",
           TWO_THIRDS, PAPER, _scaling),
    Lesson("training", "Subcloned trains faster than random",
           "a subcloned child trains far faster than one from random initialization", TWO_THIRDS, PAPER,
           _training),
    Lesson("best", "Best method vs the paper's rules", "what this app adds to the paper, at the same shape",
           TWO_THIRDS, PAPER, _best),
]}


def lesson_design(ws: Workspace, key: str, parent: str = DEFAULT_PARENT, data: str = "builtin") -> Design:
    lesson = _lesson(key)
    return _sizes(ws, Design.of(ws.limits, parent, data, **lesson.rules), lesson.shape)


def _lesson(key) -> Lesson:
    if key not in LESSONS:
        raise SubcloneError(f"unknown lesson '{shown(str(key))}'. Available: {', '.join(LESSONS)}")
    return LESSONS[key]


@functools.lru_cache(maxsize=1)
def _stored(mtime_ns: int) -> dict:
    return json.loads(PRECOMPUTED.read_text())


def precomputed() -> dict:
    """The shipped results, read once (again only if the file changes)."""
    return dict(_stored(PRECOMPUTED.stat().st_mtime_ns)) if PRECOMPUTED.exists() else {}


def run(ws: Workspace, session_id: str | None, key: str, live: bool = False, parent: str = DEFAULT_PARENT,
        data: str = "builtin", progress: Progress | None = None) -> dict:
    """A lesson's result: precomputed for the bundled parent and text when it has one and `live` is not asked,
    else measured now (as a job of the session, so Stop and leaving end it)."""
    lesson = _lesson(key)
    stored = precomputed().get(key)
    if not live and stored and ws.parent_key(parent) == DEFAULT_PARENT and str(data).strip().lower() == "builtin":
        return dict(stored, precomputed=True)
    design = lesson_design(ws, key, parent, data)
    s = ws.session(session_id)
    t = time.perf_counter()
    with s.job(f"lesson '{lesson.title}'") as job:
        def step(fraction, message):
            job.check()
            if progress:
                progress(fraction, message)
        result = lesson.run(ws, session_id, design, step)
    shape = ws.design(design, s, plan=False).shape  # the sizes as built, for the sliders
    sizes = {k: getattr(shape, k) for k in ("layers", "hidden", "ffn", "heads", "kv_heads")}
    return dict(result, design=dict(sizes, **{k: v for k, v in asdict(design).items() if k not in sizes}),
                seconds=round(time.perf_counter() - t, 1), measured=time.strftime("%Y-%m-%d"), precomputed=False)


def main(argv=None) -> None:
    """Measure every lesson on the bundled parent and write lessons.json (atomically)."""
    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("--only", nargs="*", default=list(LESSONS))
    args = ap.parse_args(argv)
    from .limits import Limits

    ws = Workspace(Limits.local())
    out = precomputed()
    for key in args.only:
        out[key] = run(ws, "precompute", key, live=True,
                       progress=lambda f, m: print(f"  {key}: {m}", flush=True))
        out[key].pop("precomputed")
        print(f"{key}: {out[key]['seconds']} s — {out[key]['conclusion']}", flush=True)
        tmp = PRECOMPUTED.with_name(f".{PRECOMPUTED.name}.{os.getpid()}.tmp")  # after each: a stop keeps the rest
        tmp.write_text(json.dumps(out, indent=1, ensure_ascii=False) + "\n")
        tmp.replace(PRECOMPUTED)


if __name__ == "__main__":
    main()
