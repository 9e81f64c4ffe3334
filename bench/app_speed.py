"""Server-side speed of the app's actions on the bundled SmolLM2, called in-process as Gradio calls them.

    .venv/bin/python bench/app_speed.py        # prints a markdown table (medians of repeated runs)

Targets (2 cores): /preview ≤ 50 ms; Analyze warm (disk cache hit) ≤ 1 s, cold ≤ 30 s; Build & evaluate of a
half-size child ≤ 10 s; a 16-shape sweep ≤ 90 s; Heal's class default (12 steps of subclone and random init, a
two-thirds child) a few minutes (≤ 300 s).
"""
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import app  # noqa: E402
from subclone.importance import cache_path  # noqa: E402
from subclone.workspace import Workspace  # noqa: E402

P, D = "smollm2-135m", "builtin"
HALF = dict(layers=20, hidden=432, ffn=1024, heads=9, kv_heads=3)  # 45 % of the parent's parameters
PAPER = dict(block_rule="magnitude", neuron_rule="importance", scale=["residual", "embed"], score="activation",
             compensate="none", basis="dims")  # in the order of the app's design widgets
BEST = dict(PAPER, block_rule="search", score="activation-weight", compensate="all")  # the default preset
RULES = PAPER


def quiet(*args, **kwargs):
    pass


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
    rows.append(("Analyze, cold (hooks over 4,096 tokens)", timed(app.on_analyze, P, D, None, progress=quiet), 30))

    def warm():  # a fresh workspace: nothing in memory, the record on disk
        fresh = Workspace(ws.limits, ws.folder / "bench")
        fresh.importance(ws.parent(P), fresh.text(D))
    rows.append(("Analyze, warm (disk cache hit), median of 5", median(warm, 5), 1))

    shapes = [(L, h, f, 9, 3) for L in (30, 24, 20, 12) for h, f in ((576, 1536), (504, 1280), (432, 1024))]
    times = [timed(app.on_preview, P, D, *s, rule, "dims", None) for s in shapes * 5 for rule in ("magnitude", "search")]
    rows.append((f"/preview, median of {len(times)} (max {max(times) * 1000:.0f} ms)", statistics.median(times), 0.05))

    app.on_design(P, D, *shapes[0], *RULES.values(), "anatomy", None)  # warm-up
    rows.append(("Anatomy tab redraw (5 figures), median of 5",
                 median(app.on_design, 5, P, D, *HALF.values(), *RULES.values(), "anatomy", None), None))
    rows.append(("Build & evaluate half-size child, first (parent evaluated once)",
                 timed(app.on_build, P, D, *HALF.values(), *RULES.values(), None, progress=quiet), None))
    rows.append(("Build & evaluate half-size child, paper rules, median of 3",
                 median(app.on_build, 3, P, D, *HALF.values(), *RULES.values(), None, progress=quiet), 10))
    rows.append(("Build & evaluate half-size child, default (best): block search to 20 blocks, first time",
                 timed(app.on_build, P, D, *HALF.values(), *BEST.values(), None, progress=quiet), 70))
    rows.append(("Build & evaluate half-size child, default (best), search and fits cached, median of 3",
                 median(app.on_build, 3, P, D, *HALF.values(), *BEST.values(), None, progress=quiet), 20))
    def sweep():  # a generator: a row per child, streamed
        for _ in app.on_sweep(P, D, "30, 24, 18, 12", "100, 87.5, 75, 62.5", 9, 3, *RULES.values(), None,
                              progress=quiet):
            pass
    rows.append(("Sweep 4 depths × 4 widths = 16 shapes, paper rules", timed(sweep), 90))
    rows.append(("Export half-size child (zip, metrics cached)",
                 timed(app.on_export, P, D, *HALF.values(), *RULES.values(), "", "", None, progress=quiet), None))

    two_thirds = dict(layers=24, hidden=504, ffn=1280, heads=9, kv_heads=3)
    steps = app.steps.value  # the Heal tab's defaults, as a class gets them
    inits = app.inits.value

    def heal():
        for _ in app.on_heal(P, D, *two_thirds.values(), *BEST.values(), steps, inits, 0, None):
            pass
    rows.append((f"Heal, class default: {steps} steps × {' + '.join(inits)} of a two-thirds child (24 / 504 / 1280)",
                 timed(heal), 300))

    print("| action | seconds | target |\n|---|---|---|")
    for name, t, target in rows:
        mark = "" if target is None else f"≤ {target:g} s {'✓' if t <= target else '✗'}"
        print(f"| {name} | {t:.3f} | {mark} |")


if __name__ == "__main__":
    main()
