"""Server-side speed of the app's actions on the bundled SmolLM2, called in-process as Gradio calls them.

    .venv/bin/python bench/app_speed.py        # prints a markdown table (medians of repeated runs)

Targets (2 cores): /preview ≤ 50 ms; Analyze warm (disk cache hit) ≤ 1 s, cold ≤ 30 s; Build & evaluate of a
half-size child ≤ 10 s, and the first one with the default (best) rules, block search included, ≤ 60 s; a 16-shape
sweep ≤ 90 s; Heal's class default (12 steps of subclone and random init, a two-thirds child) a few minutes
(≤ 300 s).
"""
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import app  # noqa: E402
from subclone.importance import cache_path  # noqa: E402
from subclone.plan import PRESETS  # noqa: E402
from subclone.workspace import Workspace  # noqa: E402

P, D = "smollm2-135m", "builtin"
HALF = dict(layers=20, hidden=432, ffn=1024, heads=9, kv_heads=3)  # 45 % of the parent's parameters
TWO_THIRDS = dict(layers=24, hidden=504, ffn=1280, heads=9, kv_heads=3)
PAPER = dict(block_rule="magnitude", neuron_rule="importance", scale=["residual", "embed"], score="activation",
             compensate="none", basis="dims")
BEST = dict(PAPER, **PRESETS["best"])  # the default preset
RULES = PAPER
SESSION = dict(parent=P, data=D, request=None)
# Every callback is called by keyword, as the app's widgets name them: a changed signature fails here at once
# (tests/test_bench.py binds each of these) instead of shifting an argument an hour into `make bench`.
CALLS = {
    "analyze": (app.on_analyze, SESSION),
    "preview": (app.on_preview, dict(SESSION, **HALF, block_rule="search", basis=BEST["basis"])),
    "design": (app.on_design, dict(SESSION, **HALF, **RULES, tab="anatomy")),
    "build paper": (app.on_build, dict(SESSION, **HALF, **RULES)),
    "build best": (app.on_build, dict(SESSION, **HALF, **BEST)),
    "sweep": (app.on_sweep, dict(SESSION, depths="30, 24, 18, 12", widths="100, 87.5, 75, 62.5", heads=9, kv_heads=3,
                                 **RULES)),
    "export": (app.on_export, dict(SESSION, **HALF, **RULES, hub_repo="", hub_token="")),
    "heal": (app.on_heal, dict(SESSION, **TWO_THIRDS, **BEST, steps=app.steps.value, inits=app.inits.value,
                               distill=0)),
}


def quiet(*args, **kwargs):
    pass


class Phases:
    """A progress callback that notes when each phase's first message arrives (its first three words)."""

    def __init__(self):
        self.seen, self.end = {}, None

    def __call__(self, *args, desc="", **kwargs):
        phase = " ".join(str(desc).split(":")[0].split()[:3])
        self.seen.setdefault(phase, time.perf_counter())

    def summary(self) -> str:
        marks = sorted(self.seen.items(), key=lambda kv: kv[1]) + [("end", self.end)]
        return ", ".join(f"{a} {t2 - t1:.1f} s" for (a, t1), (_, t2) in zip(marks, marks[1:]))


def timed(fn, *args, **kwargs):
    t = time.perf_counter()
    fn(*args, **kwargs)
    return time.perf_counter() - t


def median(fn, n, *args, **kwargs):
    return statistics.median(timed(fn, *args, **kwargs) for _ in range(n))


def main():
    rows = []
    ws = app.WS
    t_parent = timed(ws.parent, P)  # from the converted-parent cache
    rows.append(("load the bundled parent (converted-parent cache)", t_parent, None))

    cache_path(ws.parent(P), ws.text(D)).unlink(missing_ok=True)
    analyze, args = CALLS["analyze"]
    rows.append(("Analyze, cold (hooks over 4,096 tokens)", timed(analyze, **args, progress=quiet), 30))

    def warm():  # a fresh workspace: nothing in memory, the record on disk
        fresh = Workspace(ws.limits, ws.folder / "bench")
        fresh.importance(ws.parent(P), fresh.text(D))
    rows.append(("Analyze, warm (disk cache hit), median of 5", median(warm, 5), 1))

    shapes = [dict(layers=L, hidden=h, ffn=f, heads=9, kv_heads=3)
              for L in (30, 24, 20, 12) for h, f in ((576, 1536), (504, 1280), (432, 1024))]
    preview, args = CALLS["preview"]
    times = [timed(preview, **dict(args, **s, block_rule=rule)) for s in shapes * 5 for rule in ("magnitude", "search")]
    rows.append((f"/preview, median of {len(times)} (max {max(times) * 1000:.0f} ms)", statistics.median(times), 0.05))

    design, args = CALLS["design"]
    design(**dict(args, **shapes[0]))  # warm-up
    rows.append(("Anatomy tab redraw (5 figures), median of 5", median(design, 5, **args), None))
    build, paper = CALLS["build paper"]
    best = CALLS["build best"][1]
    rows.append(("Build & evaluate half-size child, first (parent evaluated once)",
                 timed(build, **paper, progress=quiet), None))
    rows.append(("Build & evaluate half-size child, paper rules, median of 3",
                 median(build, 3, **paper, progress=quiet), 10))
    phases = Phases()
    rows.append(("Build & evaluate half-size child, default (best): block search to 20 blocks, first time",
                 timed(build, **best, progress=phases), 60))
    phases.end = time.perf_counter()
    rows.append(("Build & evaluate half-size child, default (best), search and fits cached, median of 3",
                 median(build, 3, **best, progress=quiet), 20))

    def drain(name):  # the sweep and Heal are generators: a row (a step) at a time, streamed
        fn, args = CALLS[name]
        for _ in fn(**args, **({"progress": quiet} if name == "sweep" else {})):
            pass
    rows.append(("Sweep 4 depths × 4 widths = 16 shapes, paper rules", timed(drain, "sweep"), 90))
    export, args = CALLS["export"]
    rows.append(("Export half-size child (zip, metrics cached)", timed(export, **args, progress=quiet), None))
    heal = CALLS["heal"][1]
    rows.append((f"Heal, class default: {heal['steps']} steps × {' + '.join(heal['inits'])} of a two-thirds child "
                 "(24 / 504 / 1280)", timed(drain, "heal"), 300))

    print("| action | seconds | target |\n|---|---|---|")
    for name, t, target in rows:
        mark = "" if target is None else f"≤ {target:g} s {'✓' if t <= target else '✗'}"
        print(f"| {name} | {t:.3f} | {mark} |")
    print(f"\nThe first default build, by phase (from its progress messages): {phases.summary()}.")


if __name__ == "__main__":
    main()
