"""subclone in the browser: load a parent, look inside it, drag the sliders, build, compare, sweep, export.

Layout and wiring only: every callback adapts widget values to library calls and back. What is slow and
shared (parents, importance, the parent's evaluation, drop-one scores) is computed once per process.
Run with `make run` (http://127.0.0.1:7860) or as a Hugging Face Space (app_file: app.py).
"""
from __future__ import annotations

import contextlib
import functools
import inspect
import math
import os
import sys
import traceback
from pathlib import Path

import gradio as gr
import pandas as pd
import transformers
from gradio.utils import get_upload_folder

from subclone import SubcloneError, lessons, plots
from subclone.limits import Limits, bound_allocator
from subclone.parents import BUILTIN, DEFAULT_PARENT
from subclone.compensate import COMPENSATE
from subclone.rotate import BASES
from subclone.plan import (BLOCK_RULE_HELP, DEFAULT_SCALE, NEURON_RULES, PRESETS, SCALE_GROUPS, SCORES,
                           can_merge)
from subclone.train import INITS, verdict
from subclone.workspace import Design, Workspace

transformers.utils.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parent
LEARN = (ROOT / "docs" / "learn.md").read_text()
# Every session's files live inside Gradio's own cache folder, so Gradio serves them without keeping a copy,
# and they are deleted with the session.
bound_allocator()  # before any model is loaded
WS = Workspace(Limits.space(), Path(get_upload_folder()) / f"subclone-{os.getpid()}")
SLIDERS = ("layers", "hidden", "ffn", "heads", "kv heads")


def _sid(request) -> str | None:
    return getattr(request, "session_hash", None)


def _unexpected(e: Exception):
    """Log a bug for the operator (every line cut short: a request's text stays out of the log), show one line."""
    lines = traceback.format_exception(type(e), e, e.__traceback__)
    print("".join(line[:300] + ("…\n" if len(line) > 300 else "") for line in lines)[-4000:], file=sys.stderr)
    return gr.Error(f"something went wrong ({type(e).__name__}); the request was not completed", print_exception=False)


@contextlib.contextmanager
def _one_line_errors():
    try:
        yield
    except SubcloneError as e:
        raise gr.Error(str(e), print_exception=False) from None
    except gr.Error:
        raise
    except Exception as e:
        raise _unexpected(e) from None


def adapter(fn):
    """Every callback: a SubcloneError becomes one clear line in the page (gr.Error), anything else is logged and
    reported as one line too; never a traceback in the page, never a request's text in the log."""
    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def run_gen(*args, **kwargs):
            with _one_line_errors():
                yield from fn(*args, **kwargs)
        return run_gen

    @functools.wraps(fn)
    def run(*args, **kwargs):
        with _one_line_errors():
            return fn(*args, **kwargs)
    return run


def _design(parent, data, layers, hidden, ffn, heads, kv_heads, block_rule=PRESETS["best"]["block_rule"],
            neuron_rule="importance", scale=(), score=PRESETS["best"]["score"],
            compensate=PRESETS["best"]["compensate"], basis=PRESETS["best"]["basis"]) -> Design:
    """The widgets' values as one Design; a missing slider value is an error, not 'the parent's size'."""
    for name, value in zip(SLIDERS, (layers, hidden, ffn, heads, kv_heads)):
        if value is None:
            raise SubcloneError(f"{name} must be a number, got nothing")
    return Design.of(WS.limits, parent, data, layers, hidden, ffn, heads, kv_heads, block_rule, neuron_rule, scale,
                     score, compensate, basis)


def on_preset(name):
    """The preset's rules into the dropdowns (each can still be changed by hand)."""
    chosen = PRESETS.get(name, PRESETS["best"])
    return chosen["block_rule"], chosen["neuron_rule"], chosen["score"], chosen["compensate"], chosen["basis"]


def _rules_help(block_rule, compensate, basis="dims") -> str:
    """One line each on what the chosen block rule, compensation and residual basis do."""
    rule = BLOCK_RULE_HELP.get(block_rule, "the blocks listed") if isinstance(block_rule, str) else ""
    fit = COMPENSATE.get(compensate, "") if isinstance(compensate, str) else ""
    turn = BASES.get(basis, "") if isinstance(basis, str) else ""
    return f"**block rule:** {rule}  \n**compensation:** {fit}  \n**residual basis:** {turn}"


def _human(n: int) -> str:
    return f"{n / 1e6:.1f} M" if n >= 1e6 else f"{n / 1e3:.1f} K"


def _archive_status(archive: Path) -> str:
    return f"Wrote `{archive.name}` ({archive.stat().st_size / 2**20:.0f} MB): `from_pretrained` loads the unzipped " \
           "folder."


def _gradio_progress(progress):
    return lambda f, msg: progress(f, desc=msg)


# ---- 1. parent and data --------------------------------------------------------------------------

@adapter
def on_upload(file, request: gr.Request):
    """Read the uploaded file into this session (bounded); the data box then names it as upload:<file>."""
    if file is None:
        return gr.skip()
    path = Path(file if isinstance(file, str) else file.name)
    try:
        return WS.upload(_sid(request), path)
    finally:
        path.unlink(missing_ok=True)  # read once: Gradio's upload copy is not kept


@adapter
def on_analyze(parent, data, request: gr.Request, progress=gr.Progress()):
    progress(0, desc="loading parent")
    p = WS.parent(parent)
    text = WS.text(data, WS.session(_sid(request)))
    imp = WS.importance(p, text, compute=True, progress=_gradio_progress(progress))
    s = p.shape
    named = p.name if p.display_name == p.name else f"{p.name} ({p.display_name})"
    card = (f"### {named}\n| family | layers | hidden | heads / kv heads | head dim | ffn | params |\n"
            "|---|---|---|---|---|---|---|\n"
            f"| {p.family.name} ({p.family.kind}) | {s.layers} | {s.hidden} | {s.heads} / {s.kv_heads} | "
            f"{s.head_dim} | {s.ffn} | {_human(p.model.num_parameters())} |\n\n"
            f"Calibrated on {imp.meta['tokens']:,} tokens of `{text.name}` in {imp.meta['seconds']} s (cached after "
            f"the first time). Blocks closest to identity: {imp.magnitude.argsort()[:5].tolist()}. "
            "Next: look at the **Anatomy**, then **Design** a child.")
    step = s.head_dim if p.family.head_dim_from_hidden else s.heads
    return (card,
            gr.Slider(minimum=1, maximum=s.layers, value=s.layers, step=1),
            gr.Slider(minimum=step, maximum=s.hidden, value=s.hidden, step=step),
            gr.Slider(minimum=1, maximum=s.ffn, value=s.ffn, step=1),
            gr.Slider(minimum=1, maximum=s.heads, value=s.heads, step=1),
            gr.Slider(minimum=1, maximum=s.kv_heads, value=s.kv_heads, step=1,
                      interactive=s.kv_heads > 1 and (s.heads > s.kv_heads or can_merge(p.family))))


def on_warm(parent, data, request: gr.Request):
    """After Analyze, evaluate the parent in the background while the user reads the anatomy."""
    with contextlib.suppress(SubcloneError):  # Build reports it
        WS.reference(WS.parent(parent), WS.text(data, WS.session(_sid(request))))


# ---- 2. anatomy and 3. design --------------------------------------------------------------------

def on_preview(parent, data, layers, hidden, ffn, heads, kv_heads, block_rule, basis=PRESETS["best"]["basis"],
               request: gr.Request = None):
    """The live readout: sizes from the spec alone, no model built. Must stay well under 50 ms."""
    try:
        d, size, kept = WS.preview(_design(parent, data, layers, hidden, ffn, heads, kv_heads, block_rule,
                                           basis=basis),
                                   WS.session(_sid(request)))
    except SubcloneError as e:
        return f"⚠️ {e}", plots.block_strip(0, None, "No blocks to show until the design above is fixed.")
    shape = d.shape
    lines = [f"**{_human(size['params'])} params** ({size['percent_of_parent']}% of parent) · "
             f"{size['flops_per_token'] / 1e6:.1f} MFLOPs/token · expected speed-up ×{size['expected_speedup']}",
             f"shape: {shape.layers} layers · hidden {shape.hidden} · ffn {shape.ffn} · "
             f"{shape.heads} heads / {shape.kv_heads} kv"]
    lines += [f"snapped {n}" if "→" in n else n for n in d.notes]
    pending = None if d.importance is None or kept is not None else \
        "The kept blocks show here once Build has chosen them."  # the note above says what runs and how long
    return "  \n".join(lines), plots.block_strip(d.parent.shape.layers, kept, pending)


FIGURE_TABS = {"anatomy": range(5), "design": range(5, 7)}  # positions of each tab's figures in on_design's outputs


def on_design(parent, data, layers, hidden, ffn, heads, kv_heads, block_rule, neuron_rule, scale, score, compensate,
              basis, tab, request: gr.Request):
    """Redraw the figures of the visible tab (Anatomy or Design) with what the current child drops greyed out; the
    other tab's figures are drawn when it opens, at their real size, and nothing is sent for tabs nobody sees."""
    shown = FIGURE_TABS.get(tab, ())
    if not shown:
        return [gr.skip()] * 7
    try:
        d = WS.design(_design(parent, data, layers, hidden, ffn, heads, kv_heads, block_rule, neuron_rule, scale,
                              score, compensate, basis),
                      WS.session(_sid(request)))
    except SubcloneError:
        return [gr.skip()] * 7  # the readout already says what is wrong
    if d.importance is None:
        empty = plots.placeholder("Analyze the parent first (tab 1 · Parent & data)")
        return [empty if i in shown else gr.skip() for i in range(7)]
    imp, plan = d.importance, d.plan  # no plan yet while the block search waits for Build: nothing greyed out
    draw = [lambda: plots.residual_map(imp, plan, top=64), lambda: plots.consistency_map(imp),
            lambda: plots.heads_map(imp, plan), lambda: plots.ffn_map(imp, plan),
            lambda: plots.blocks_chart(imp, WS.drop_scores(d.parent, d.text), plan, d.parent.family.kind),
            lambda: plots.heads_map(imp, plan), lambda: plots.residual_map(imp, plan)]
    return [draw[i]() if i in shown else gr.skip() for i in range(7)]


def on_snap(parent, data, layers, hidden, ffn, heads, kv_heads, request: gr.Request):
    """On release, a slider that asked for a size the architecture cannot have moves to the size that is built."""
    try:
        d = WS.design(_design(parent, data, layers, hidden, ffn, heads, kv_heads), WS.session(_sid(request)),
                      plan=False)
    except SubcloneError:
        return [gr.skip()] * 5
    snapped = [d.shape.layers, d.shape.hidden, d.shape.ffn, d.shape.heads, d.shape.kv_heads]
    return [gr.skip() if v == asked else v for v, asked in zip(snapped, (layers, hidden, ffn, heads, kv_heads))]


@adapter
def on_drop_one(parent, data, layers, hidden, ffn, heads, kv_heads, block_rule, neuron_rule, scale, score, compensate,
                basis, request: gr.Request, progress=gr.Progress()):
    design = _design(parent, data, layers, hidden, ffn, heads, kv_heads, block_rule, neuron_rule, scale,
                     score, compensate, basis)
    d, scores = WS.drop_one(_sid(request), design, progress=_gradio_progress(progress))
    return plots.blocks_chart(d.importance, scores, d.plan, d.parent.family.kind)


# ---- 4. evaluate ---------------------------------------------------------------------------------

# (metrics key, plain name, better when "lower" or "higher", format)
MEASURES = [("params", "parameters", None, "{:,}"), ("size_mb", "size (MB)", None, "{:,.0f}"),
            ("perplexity", "held-out perplexity", "lower", "{:,.1f}"),
            ("top1_agreement", "next token agrees with the parent", "higher", "{:.1%}"),
            ("kl_to_parent", "divergence from the parent (KL, nats/token)", "lower", "{:.3f}"),
            ("cosine_to_parent", "embedding cosine to the parent", "higher", "{:.3f}"),
            ("ms_per_token", "ms per generated token", "lower", "{:,.1f}")]
ARROW = {"lower": " ↓", "higher": " ↑", None: ""}


def results_table(r: dict) -> pd.DataFrame:
    """Parent against child in plain words: formatted numbers, the child as a multiple of the parent, an arrow for
    which way is better."""
    rows = []
    for key, name, better, fmt in MEASURES:
        if key not in r:
            continue
        parent = r.get(f"parent_{key}")
        times = f"× {r[key] / parent:,.2f}" if parent else ""
        rows.append({"measure": name + ARROW[better], "parent": fmt.format(parent) if parent is not None else "",
                     "child": fmt.format(r[key]), "child ÷ parent": times})
    if "speedup" in r:
        low, high = r.get("speedup_range", [r["speedup"]] * 2)
        rows.append({"measure": "speed-up, timed side by side ↑", "parent": "× 1", "child": f"× {r['speedup']:.2f}",
                     "child ÷ parent": f"{low:.2f}–{high:.2f} over the repeats"})
    return pd.DataFrame(rows)


def build_verdict_text(r: dict) -> str:
    """One line a learner can read out: how much smaller, how much faster (measured, with its spread), how much
    worse, and what to expect before training."""
    parts = [f"The child has **{r['params'] / r['parent_params']:.0%}** of the parent's parameters"]
    if "speedup" in r:
        low, high = r.get("speedup_range", [r["speedup"]] * 2)
        parts.append(f"generates **×{r['speedup']:.2f}** as fast (×{low:.2f}–{high:.2f}; {r.get('speed_measured', '')})")
    if "perplexity" in r:
        parts.append(f"and its held-out perplexity is **×{r['perplexity'] / r['parent_perplexity']:,.1f}** the "
                     "parent's (lower is better). Before any training a cut child often repeats itself: *Heal* "
                     "recovers most of it in a few steps")
    elif "cosine_to_parent" in r:
        parts.append(f"and its sentence embeddings have cosine **{r['cosine_to_parent']:.3f}** to the parent's "
                     "(1 = the same)")
    return ", ".join(parts) + "."


@adapter
def on_build(parent, data, layers, hidden, ffn, heads, kv_heads, block_rule, neuron_rule, scale, score, compensate,
             basis, request: gr.Request, progress=gr.Progress()):
    design = _design(parent, data, layers, hidden, ffn, heads, kv_heads, block_rule, neuron_rule, scale,
                     score, compensate, basis)
    _, r = WS.build(_sid(request), design, progress=_gradio_progress(progress))
    return build_verdict_text(r), results_table(r), history_frame(WS.session(_sid(request)).history)


def shown():
    """Makes a table visible once it has rows: the history, sweep and lesson tables start hidden, since an empty table
    shows Gradio's placeholder headers 1, 2, 3. Called on the table's change (a sweep's table as its first row comes),
    so the callbacks and the API return plain tables."""
    return gr.Dataframe(visible=True)


def history_frame(history: list[dict]) -> pd.DataFrame:
    """Every child of the session, newest first, with readable numbers."""
    frame = pd.DataFrame(history[::-1])
    if frame.empty:
        return frame
    frame["params"] = frame["params"].map(_human)
    for key, name, better, fmt in MEASURES[2:]:
        if key in frame:
            frame[key] = frame[key].map(lambda v, fmt=fmt: "" if pd.isna(v) else fmt.format(v))
    frame = frame.rename(columns={k: name + ARROW[better] for k, name, better, _ in MEASURES})
    frame = frame.rename(columns={"speedup": "speed-up ↑", "seconds": "build seconds", "n": "#"})
    return frame.rename(columns=lambda c: c.replace("_", " "))


@adapter
def on_outputs(parent, prompt, request: gr.Request):
    """Parent and child side by side: generations (causal LMs) or sentence similarities (encoders)."""
    out = WS.outputs(_sid(request), parent, prompt)
    if len(out) == 2:
        prompt = prompt.strip()
        return f"##### parent\n**{prompt}**{out[0]}", f"##### child\n**{prompt}**{out[1]}"
    sentences, sp, sc = out
    head = "| sentence A | sentence B | cosine |\n|---|---|---|\n"
    pairs = [(i, j) for i in range(len(sentences)) for j in range(i + 1, len(sentences))]
    table = lambda s: head + "\n".join(f"| {sentences[i][:40]} | {sentences[j][:40]} | {s[i, j]:.3f} |" for i, j in pairs)  # noqa: E731
    return "##### parent\n" + table(sp), "##### child\n" + table(sc)


# ---- 5. tradeoffs --------------------------------------------------------------------------------

@adapter
def on_sweep(parent, data, depths, widths, heads, kv_heads, block_rule, neuron_rule, scale, score, compensate,
             basis=PRESETS["best"]["basis"], request: gr.Request = None, progress=gr.Progress()):
    """The sweep as it goes: the figure and the table grow with each child; Stop keeps what was measured."""
    design = Design.of(WS.limits, parent, data, None, None, None, heads, kv_heads, block_rule, neuron_rule, scale,
                       score, compensate, basis)
    for frame, csv, (done, total) in WS.sweeping(_sid(request), design, depths, widths,
                                                 progress=_gradio_progress(progress)):
        figure = plots.pareto_chart(frame) if len(frame) else gr.skip()
        note = f"{done} of {total} children" + ("" if csv is None else " — stopped" if done < total else " — done")
        yield figure, _sweep_table(frame) if len(frame) else gr.skip(), str(csv) if csv else gr.skip(), note


def _sweep_table(frame: pd.DataFrame) -> pd.DataFrame:
    """The sweep as people read it (the CSV keeps the raw numbers)."""
    if frame.empty:
        return frame
    shown = frame.drop(columns=["seconds"], errors="ignore").rename(columns={
        "percent_of_parent": "% of parent", "flops_per_token": "FLOPs / token", "expected_speedup": "expected speed-up",
        "perplexity": "held-out perplexity ↓", "top1_agreement": "next token agrees ↑", "kl_to_parent": "KL ↓",
        "cosine_to_parent": "cosine ↑", "pareto": "Pareto front", "kv_heads": "kv heads"})
    shown["params"] = frame["params"].map(_human)
    return _readable(shown)


def on_sweep_estimate(parent, data, depths, widths, heads, kv_heads, block_rule, compensate, request: gr.Request):
    """The Sweep button says how many children it builds and about how long that takes here."""
    try:
        design = Design.of(WS.limits, parent, data, None, None, None, heads, kv_heads, block_rule,
                           compensate=compensate)
        shapes, seconds = WS.sweep_plan(design, depths, widths, WS.session(_sid(request)))
    except SubcloneError:
        return gr.Button(value="Sweep")
    return gr.Button(value=f"Sweep {len(shapes)} children (about {_duration(max(5, round(seconds, -1)))})")


# ---- 6. export -----------------------------------------------------------------------------------

@adapter
def on_export(parent, data, layers, hidden, ffn, heads, kv_heads, block_rule, neuron_rule, scale, score, compensate,
              basis, hub_repo="",
              hub_token="", request: gr.Request = None, progress=gr.Progress()):
    design = _design(parent, data, layers, hidden, ffn, heads, kv_heads, block_rule, neuron_rule, scale,
                     score, compensate, basis)
    archive, card, url = WS.export(_sid(request), design, hub_repo, hub_token, progress=_gradio_progress(progress))
    status = _archive_status(archive) + (f"  \nPushed to the Hub: {url}" if url else "")
    return str(archive), status, _card_preview(card)


def _card_preview(card: str) -> str:
    """The model card as Markdown can show it: the YAML front matter in a code block, not read as a heading."""
    _, front, body = card.split("---\n", 2)
    return f"```yaml\n{front}```\n{body}"


# ---- heal (recovery training) -------------------------------------------------------------------

def _pace(p: dict) -> str:
    eta = "estimating the time left…" if p["eta"] is None else f"about {_duration(p['eta'])} left"
    return f"step {p['steps']} of {p['total']} (all initializations) · {_duration(p['seconds'])} · {eta}"


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60} min {seconds % 60:02d} s" if seconds >= 60 else f"{seconds} s"


HEAL_COLUMNS = ["initialization", "steps", "held-out perplexity ↓", "× parent ↓", "top-1 agreement with parent ↑",
                "learning rate", "training seconds"]


def _healed(histories: dict, total, best: str, healed: dict) -> tuple:
    """Heal's outputs once every run has ended: the curves, the verdict, and each trained child on held-out text."""
    # the verdict quotes the table's numbers: each trained child evaluated on the whole held-out split
    results = {i: dict(steps=result["steps"], stopped=result["stopped"], eval_loss=math.log(r["perplexity"]),
                       eval_perplexity=r["perplexity"]) for i, (_, _, result, r, _) in healed.items()}
    rows = [(i, result["steps"], f"{r['perplexity']:,.1f}", f"{r['perplexity'] / r['parent_perplexity']:,.2f}",
             f"{r['top1_agreement']:.1%}", f"{result['lr']:g}", f"{result['seconds']:,.0f}")
            for i, (_, _, result, r, _) in healed.items()]
    done = "Stopped early" if any(r["stopped"] for r in results.values()) else "Done"
    return (plots.curves(histories, total),
            f"{done}: {verdict(results)}. *Generate with both* in Evaluate now uses **{best}**.",
            pd.DataFrame(rows, columns=HEAL_COLUMNS))


@adapter
def on_heal(parent, data, layers, hidden, ffn, heads, kv_heads, block_rule, neuron_rule, scale, score, compensate,
            basis, steps, inits, distill, request: gr.Request):
    """Train the designed child from each chosen init, one step of each in turn, streaming the loss curves into a
    frame as wide as the run; Stop ends every run at the same step."""
    design = _design(parent, data, layers, hidden, ffn, heads, kv_heads, block_rule, neuron_rule, scale,
                     score, compensate, basis)
    histories = {i: [] for i in inits or []}
    total = int(steps) if isinstance(steps, (int, float)) and steps == steps and 0 < steps < 10**9 else None
    status, pace = "building the children and evaluating them before training…", ""
    yield plots.curves(histories, total), status, gr.skip()
    with contextlib.closing(WS.heal(_sid(request), design, steps, inits, distill)) as events:
        for kind, init, payload in events:
            if kind == "tick":
                if payload["steps"]:
                    pace = _pace(payload)
                else:
                    pace = _duration(payload["seconds"])
                    if payload["doing"] and not any(histories.values()):  # what Build had not measured yet
                        status = f"{payload['doing']}…"
                yield gr.skip(), f"{status}  \n{pace}", gr.skip()
            elif kind == "eval":
                histories[init].append(payload)
                status = f"held-out loss of **{init}** at step {payload['step']}: {payload['eval_loss']:.3f}"
                yield plots.curves(histories, total), f"{status}  \n{pace}", gr.skip()
            elif kind == "stopped":
                yield gr.skip(), "Stopped before training began: nothing was trained.", gr.skip()
            else:
                yield _healed(histories, total, init, payload)


# ---- lessons ------------------------------------------------------------------------------------

def _lesson_outputs(key: str, result: dict):
    lesson = lessons.LESSONS[key]
    how = (f"precomputed on the bundled parent ({result['measured']}; {_duration(result['seconds'])} live on 2 "
           "cores) — **Rerun live** measures it again here" if result["precomputed"] else
           f"measured live just now in {_duration(result['seconds'])}")
    head = (f"### {lesson.title}\n*The paper:* {lesson.claim}.  \n<small>{how}. The design is set in "
            "**3 · Design**.</small>")
    d = result["design"]
    return (head, plots.lesson_figure(result), result["conclusion"], _readable(pd.DataFrame(result["table"])), key,
            d["layers"], d["hidden"], d["ffn"], d["heads"], d["kv_heads"], d["block_rule"], d["neuron_rule"],
            list(d["scale"]), d["score"], d["compensate"], d.get("basis", "dims"), gr.Button(interactive=True))


def _readable(frame: pd.DataFrame) -> pd.DataFrame:
    """Numbers as people read them: thousands separators, agreement as a percentage, 3–4 significant digits."""
    def show(column, v):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return v
        if "agree" in column:
            return f"{v:.1%}"
        return f"{v:,}" if isinstance(v, int) else f"{v:,.1f}" if abs(v) >= 100 else f"{v:.3g}"
    return frame.apply(lambda col: col.map(lambda v: show(col.name, v)))


def lesson_button(key: str):
    """A lesson button's callback: the lesson's design into the widgets, its result (precomputed for the bundled
    parent) on screen."""
    @adapter
    def on_lesson(parent, data, request: gr.Request, progress=gr.Progress()):
        return _lesson_outputs(key, lessons.run(WS, _sid(request), key, parent=parent, data=data,
                                                progress=_gradio_progress(progress)))
    on_lesson.__name__ = f"on_lesson_{key}"
    return on_lesson


@adapter
def on_lesson_live(key, parent, data, request: gr.Request, progress=gr.Progress()):
    if key not in lessons.LESSONS:
        raise SubcloneError("choose a lesson first")
    return _lesson_outputs(key, lessons.run(WS, _sid(request), key, live=True, parent=parent, data=data,
                                            progress=_gradio_progress(progress)))


def on_leave(request: gr.Request):
    """The tab was closed or reloaded (or an API client went away): end its session, jobs and files."""
    WS.end(_sid(request))


def on_stop(request: gr.Request):
    WS.stop(_sid(request))
    return "stopping after the current step (Heal) or child (Sweep)…"


@adapter
def on_export_healed(parent, data, init, request: gr.Request, progress=gr.Progress()):
    progress(0.3, desc="writing the folder and the zip")
    archive, _, _ = WS.export_healed(_sid(request), init)
    return str(archive), _archive_status(archive)


# ---- layout --------------------------------------------------------------------------------------

CSS = """
.caption {opacity: 0.75; font-size: 0.9em; margin-top: -6px}
.lessons button {flex: 1 1 30%; min-width: 150px}
@media (max-width: 600px) {
  [role=tablist] button {padding: 4px 8px; font-size: 0.85em}
  .block-strip span {width: 16px !important; height: 16px !important; line-height: 16px !important}
}
@media (prefers-reduced-motion: reduce) {  /* Gradio's spinners and pulsing borders run for as long as a job does */
  *, *::before, *::after {animation-duration: 0.01ms !important; animation-iteration-count: 1 !important;
                          transition-duration: 0.01ms !important; scroll-behavior: auto !important}
}
"""


def _figure(label, caption):
    """A plot with its how-to-read-it caption under it."""
    plot = gr.Plot(label=label)
    gr.Markdown(plots.CAPTIONS[caption], elem_classes="caption")
    return plot


with gr.Blocks(title="subclone") as demo:
    gr.Markdown("# subclone\nMake a smaller transformer out of a larger pretrained one by **weight subcloning** "
                "(Samragh et al., 2023): measure what matters, choose a shape, slice, evaluate, export. "
                "New here? Start with the **Learn** tab.")
    with gr.Tabs(overflow_behavior="wrap"):  # on a phone every tab stays one tap away, on a second row
        with gr.Tab("1 · Parent & data", id="parent") as tab_parent:
            with gr.Row():
                parent = gr.Dropdown(list(BUILTIN), value=DEFAULT_PARENT, allow_custom_value=True, label="Parent",
                                     info="a bundled parent or a hub id (online); local directories when whoever "
                                          "runs the app allows them (an environment setting: see the README)")
                data = gr.Textbox("builtin", label="Calibration text",
                                  info="builtin, an uploaded file (upload:name), or a datasets hub id (online)")
                upload = gr.File(label="…or upload a text file", file_types=[".txt", ".md", ".jsonl", ".json", ".csv",
                                                                           ".parquet"], height=140)
            analyze_btn = gr.Button("Analyze", variant="primary")
            card = gr.Markdown("Analyze the parent to measure neuron, head and block importance on the calibration "
                               "text (80 % for calibration, 20 % held out for evaluation).")
        with gr.Tab("2 · Anatomy", id="anatomy") as tab_anatomy:
            gr.Markdown("The paper's observations, measured on this parent. Grey marks what the current design "
                        "drops; move the sliders in **Design** and come back.")
            with gr.Row():
                with gr.Column():
                    fig_residual = _figure("residual stream", "residual")
                with gr.Column():
                    fig_consistency = _figure("ranking consistency", "consistency")
            with gr.Row():
                with gr.Column():
                    fig_heads = _figure("attention heads", "heads")
                with gr.Column():
                    fig_ffn = _figure("FFN neurons", "ffn")
            fig_blocks = _figure("block contribution", "blocks")
            drop_btn = gr.Button("Compute drop-one Δ loss (one pass per block: about a minute for SmolLM2 on 2 cores)")
        with gr.Tab("3 · Design", id="design") as tab_design:
            with gr.Row():
                layers = gr.Slider(1, 30, value=30, step=1, label="layers")
                hidden = gr.Slider(9, 576, value=576, step=9, label="hidden")
                ffn = gr.Slider(1, 1536, value=1536, step=1, label="ffn")
                heads = gr.Slider(1, 9, value=9, step=1, label="heads")
                kv_heads = gr.Slider(1, 3, value=3, step=1, label="kv heads")
            with gr.Row():
                preset = gr.Radio(list(PRESETS), value="best", label="preset",
                                  info="best = measured best on held-out text; paper = Samragh et al.'s rules")
                block_rule = gr.Dropdown(list(BLOCK_RULE_HELP), value=PRESETS["best"]["block_rule"],
                                         allow_custom_value=True, label="block rule",
                                         info="search = measured, runs once at Build; magnitude = the paper; "
                                              "or a list like 0-11,18-29")
                neuron_rule = gr.Dropdown(list(NEURON_RULES), value="importance", label="neuron rule",
                                          info="importance = the paper; uniform = weight selection")
                scale = gr.CheckboxGroup(list(SCALE_GROUPS), value=[g for g, on in DEFAULT_SCALE.items() if on],
                                         label="scale weights by √(d/d′) on", info="fan-in groups")
                score = gr.Dropdown(list(SCORES), value=PRESETS["best"]["score"], label="neuron score",
                                    info="activation = the paper; activation-weight also weighs the weights that "
                                         "read each FFN neuron, and picks KV groups by what the refit makes up")
                compensate = gr.Dropdown(list(COMPENSATE), value=PRESETS["best"]["compensate"], label="compensation",
                                         info="none = the paper; refit / depth: least-squares fits on calibration "
                                              "text, 10–25 s at Build for a new shape, then cached")
                basis = gr.Dropdown(list(BASES), value=PRESETS["best"]["basis"], label="residual basis",
                                    info="dims = the paper; principal = the stream's principal directions "
                                         "(SliceGPT-style, Llama family): used only when hidden is cut, ~10 s once")
            rules_help = gr.Markdown(_rules_help(PRESETS["best"]["block_rule"], PRESETS["best"]["compensate"],
                                                 PRESETS["best"]["basis"]),
                                     elem_classes="caption")
            readout = gr.Markdown()
            strip = gr.HTML()
            with gr.Row():
                design_heads = gr.Plot(label="kept heads")
                design_residual = gr.Plot(label="kept residual dimensions")
        with gr.Tab("4 · Evaluate", id="evaluate") as tab_evaluate:
            build_btn = gr.Button("Build & evaluate", variant="primary")
            build_verdict = gr.Markdown()
            results = gr.Dataframe(headers=["measure", "parent", "child", "child ÷ parent"],
                                   label="parent vs child (held-out text)", interactive=False)
            prompt = gr.Textbox("The Python interpreter", label="Prompt (encoders: sentences, one per line)", lines=2)
            outputs_btn = gr.Button("Generate with both")
            gr.Markdown("Greedy continuations of the same prompt. A child that has not been trained yet often "
                        "repeats itself or drifts: that is expected, and what **Heal** is for.",
                        elem_classes="caption")
            with gr.Row():
                parent_out = gr.Markdown(label="parent")
                child_out = gr.Markdown(label="child")
            history_table = gr.Dataframe(label="every child built in this session", interactive=False, visible=False)
        with gr.Tab("5 · Tradeoffs", id="tradeoffs") as tab_tradeoffs:
            with gr.Row():
                depths = gr.Textbox("30, 24, 18, 12", label="depths (layers)")
                widths = gr.Textbox("100, 87.5, 75, 62.5", label="widths (% of hidden and ffn)",
                                    info="heads / kv heads come from Design")
                with gr.Column(scale=0, min_width=200):
                    sweep_btn = gr.Button("Sweep", variant="primary")
                    sweep_stop = gr.Button("Stop", variant="stop", size="sm")
            sweep_note = gr.Markdown()
            fig_pareto = _figure("tradeoff", "pareto")
            sweep_table = gr.Dataframe(label="sweep", interactive=False, visible=False)
            sweep_csv = gr.File(label="CSV")
        with gr.Tab("6 · Heal", id="heal") as tab_heal:
            gr.Markdown("Train the child designed in **Design** for a few steps from each initialization on equal "
                        "terms (same text, batches, schedule, seed), one step of each in turn: **Stop** keeps a curve "
                        "for every one. Defaults follow the paper: lr 1e-4 for inherited weights, 1e-3 for random "
                        "init. A SmolLM2 child takes a few seconds per step on 2 CPU cores, so 12 steps of two "
                        "initializations fit in a class; for real runs use the command line under `torchrun` (see "
                        "the README).")
            with gr.Row():
                steps = gr.Number(lessons.CLASS_STEPS, label="steps (each initialization)", precision=0, minimum=1)
                inits = gr.CheckboxGroup(list(INITS), value=["subclone", "random"], label="initializations")
                distill = gr.Slider(0, 2, value=0, step=0.1, label="distillation weight (KL to the parent)")
            with gr.Row():
                heal_btn = gr.Button("Start", variant="primary")
                stop_btn = gr.Button("Stop", variant="stop")
            heal_status = gr.Markdown()
            fig_curves = _figure("loss curves", "curves")
            heal_table = gr.Dataframe(headers=HEAL_COLUMNS, label="trained children on held-out text", interactive=False)
            with gr.Row():
                healed_init = gr.Dropdown(list(INITS), value="subclone", label="export the child trained from")
                healed_btn = gr.Button("Export trained child")
            healed_file = gr.File(label="trained child (zip)")
            healed_status = gr.Markdown()
        with gr.Tab("7 · Export", id="export") as tab_export:
            gr.Markdown("Exports the child designed in **Design**: a `save_pretrained` folder with the tokenizer, "
                        "`subclone.json` (the full plan) and a model card, as a zip.")
            with gr.Row():
                hub_repo = gr.Textbox("", label="Hub repository (optional)", placeholder="user/my-child")
                hub_token = gr.Textbox("", label="Hub write token", type="password")
            export_btn = gr.Button("Export", variant="primary")
            export_file = gr.File(label="child (zip)")
            export_status = gr.Markdown(label="export status")
            with gr.Accordion("model card", open=False):
                export_card = gr.Markdown(label="model card")
        with gr.Tab("8 · Learn", id="learn") as tab_learn:
            gr.Markdown("### Lessons: the paper's observations, one click each\nEach button sets a design and shows "
                        "what the bundled parent measures; the lesson plan below uses them in order.")
            with gr.Row(elem_classes="lessons"):
                lesson_btns = {k: gr.Button(f"{n + 1} · {lesson.title}", size="sm", elem_id=f"lesson-{k}")
                               for n, (k, lesson) in enumerate(lessons.LESSONS.items())}
            lesson_head = gr.Markdown()
            lesson_fig = gr.Plot(label="lesson", show_label=False)
            lesson_text = gr.Markdown(elem_id="lesson-conclusion")
            lesson_table = gr.Dataframe(label="measured", interactive=False, visible=False)
            lesson_key = gr.State("")
            rerun_btn = gr.Button("Rerun live", size="sm", interactive=False)
            gr.Markdown(LEARN)

    tab = gr.State("parent")  # the tab on screen: only its figures are drawn
    design_in = [parent, data, layers, hidden, ffn, heads, kv_heads, block_rule, neuron_rule, scale, score, compensate,
                 basis]
    figures_in = [*design_in, tab]
    sliders = [layers, hidden, ffn, heads, kv_heads]
    anatomy = [fig_residual, fig_consistency, fig_heads, fig_ffn, fig_blocks, design_heads, design_residual]
    preview_in = [parent, data, *sliders, block_rule, basis]

    # Our own checks (Design.of) read the widgets' raw values, so a malformed API value (None, a list, text for a
    # number) gets one clear line instead of Gradio's generic error.
    RAW = dict(preprocess=False)
    upload.upload(on_upload, upload, data, api_name="upload")
    analyze_btn.click(on_analyze, [parent, data], [card, *sliders], api_name="analyze", **RAW).then(
        on_preview, preview_in, [readout, strip], api_name=False, **RAW).then(
        on_design, figures_in, anatomy, api_name=False, **RAW).then(
        on_warm, [parent, data], None, api_name=False, show_progress="hidden", **RAW)
    gr.on([w.change for w in (*sliders, block_rule, basis)], on_preview, preview_in, [readout, strip],
          api_name="preview", show_progress="hidden", trigger_mode="always_last", **RAW)
    preset.change(on_preset, preset, [block_rule, neuron_rule, score, compensate, basis], api_name=False,
                  show_progress="hidden")
    gr.on([block_rule.change, compensate.change, basis.change], _rules_help, [block_rule, compensate, basis],
          rules_help, api_name=False,
          show_progress="hidden")
    for w in sliders:  # figures on release only: dragging sends the readout and the strip, a few KB
        w.release(on_snap, [parent, data, *sliders], sliders, api_name=False, show_progress="hidden",
                  trigger_mode="always_last", **RAW).then(
            on_design, figures_in, anatomy, api_name=False, show_progress="hidden", trigger_mode="always_last", **RAW)
    gr.on([block_rule.change, neuron_rule.change, scale.change, score.change, compensate.change, basis.change],
          on_design,
          figures_in, anatomy, api_name=False, show_progress="hidden", trigger_mode="always_last", **RAW)
    for name, t in dict(parent=tab_parent, anatomy=tab_anatomy, design=tab_design, evaluate=tab_evaluate,
                        tradeoffs=tab_tradeoffs, heal=tab_heal, export=tab_export, learn=tab_learn).items():
        event = t.select(lambda name=name: name, None, tab, api_name=False, show_progress="hidden")
        if name in FIGURE_TABS:  # drawn when the tab opens, so plotly sizes them to the visible width
            event.then(on_design, figures_in, anatomy, api_name=False, show_progress="hidden", **RAW)
    demo.load(on_preview, preview_in, [readout, strip], api_name=False, **RAW)
    drop_btn.click(on_drop_one, design_in, fig_blocks, api_name="drop_one", **RAW)
    build_btn.click(on_build, design_in, [build_verdict, results, history_table], api_name="build", **RAW).then(
        on_preview, preview_in, [readout, strip], api_name=False, show_progress="hidden", **RAW).then(
        on_design, figures_in, anatomy, api_name=False, show_progress="hidden", **RAW).then(  # the search's blocks
        on_snap, [parent, data, *sliders], sliders, api_name=False, show_progress="hidden", **RAW)  # sizes as built
    outputs_btn.click(on_outputs, [parent, prompt], [parent_out, child_out], api_name="outputs", **RAW)
    sweep_btn.click(on_sweep, [parent, data, depths, widths, heads, kv_heads, block_rule, neuron_rule, scale, score,
                               compensate, basis],
                    [fig_pareto, sweep_table, sweep_csv, sweep_note], api_name="sweep", show_progress_on=[fig_pareto],
                    **RAW)
    sweep_stop.click(on_stop, None, sweep_note, api_name=False)
    gr.on([depths.change, widths.change, tab_tradeoffs.select, compensate.change], on_sweep_estimate,
          [parent, data, depths, widths, heads, kv_heads, block_rule, compensate], sweep_btn, api_name=False,
          show_progress="hidden", trigger_mode="always_last", **RAW)
    heal_btn.click(on_heal, [*design_in, steps, inits, distill], [fig_curves, heal_status, heal_table],
                   api_name="heal", **RAW)
    stop_btn.click(on_stop, None, heal_status, api_name="stop")
    lesson_out = [lesson_head, lesson_fig, lesson_text, lesson_table, lesson_key, *sliders, block_rule, neuron_rule,
                  scale, score, compensate, basis, rerun_btn]
    for key, btn in lesson_btns.items():
        btn.click(lesson_button(key), [parent, data], lesson_out, api_name=f"lesson_{key}", **RAW)
    for table in (history_table, sweep_table, lesson_table):
        table.change(shown, None, table, api_name=False, show_progress="hidden")
    rerun_btn.click(on_lesson_live, [lesson_key, parent, data], lesson_out, api_name="lesson_live", **RAW)
    demo.unload(on_leave)
    healed_btn.click(on_export_healed, [parent, data, healed_init], [healed_file, healed_status],
                     api_name="export_trained", **RAW)
    export_btn.click(on_export, [*design_in, hub_repo, hub_token], [export_file, export_status, export_card],
                     api_name="export", **RAW)

if __name__ == "__main__":
    demo.queue(default_concurrency_limit=1, max_size=64).launch(
        server_name=os.environ.get("HOST"), server_port=int(os.environ["PORT"]) if "PORT" in os.environ else None,
        css=CSS, max_file_size=f"{WS.limits.max_upload_mb:g}mb")
