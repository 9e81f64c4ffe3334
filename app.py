"""subclone in the browser: load a parent, look inside it, drag the sliders, build, compare, sweep, export.

Layout and wiring only: every callback adapts widget values to library calls and back. What is slow and
shared (parents, importance, the parent's evaluation, drop-one scores) is computed once per process.
Run with `make run` (http://127.0.0.1:7860) or as a Hugging Face Space (app_file: app.py).
"""
from __future__ import annotations

import contextlib
import functools
import inspect
import os
import sys
import traceback
from pathlib import Path

import gradio as gr
import pandas as pd
import transformers
from gradio.utils import get_upload_folder

from subclone import SubcloneError, plots
from subclone.limits import return_large_allocations
from subclone.limits import Limits
from subclone.parents import BUILTIN, DEFAULT_PARENT
from subclone.compensate import COMPENSATE
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
return_large_allocations()  # before any model is loaded
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
            compensate=PRESETS["best"]["compensate"]) -> Design:
    """The widgets' values as one Design; a missing slider value is an error, not 'the parent's size'."""
    for name, value in zip(SLIDERS, (layers, hidden, ffn, heads, kv_heads)):
        if value is None:
            raise SubcloneError(f"{name} must be a number, got nothing")
    return Design.of(WS.limits, parent, data, layers, hidden, ffn, heads, kv_heads, block_rule, neuron_rule, scale,
                     score, compensate)


def on_preset(name):
    """The preset's rules into the dropdowns (each can still be changed by hand)."""
    chosen = PRESETS.get(name, PRESETS["best"])
    return chosen["block_rule"], chosen["neuron_rule"], chosen["score"], chosen["compensate"]


def _rules_help(block_rule, compensate) -> str:
    """One line on what the chosen block rule and compensation do."""
    rule = BLOCK_RULE_HELP.get(block_rule, "the blocks listed") if isinstance(block_rule, str) else ""
    fit = COMPENSATE.get(compensate, "") if isinstance(compensate, str) else ""
    return f"**block rule:** {rule}  \n**compensation:** {fit}"


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

def on_preview(parent, data, layers, hidden, ffn, heads, kv_heads, block_rule, request: gr.Request):
    """The live readout: sizes from the spec alone, no model built. Must stay well under 50 ms."""
    try:
        d, size, kept = WS.preview(_design(parent, data, layers, hidden, ffn, heads, kv_heads, block_rule),
                                   WS.session(_sid(request)))
    except SubcloneError as e:
        return f"⚠️ {e}", plots.block_strip(0, None)
    shape = d.shape
    lines = [f"**{_human(size['params'])} params** ({size['percent_of_parent']}% of parent) · "
             f"{size['flops_per_token'] / 1e6:.1f} MFLOPs/token · expected speed-up ×{size['expected_speedup']}",
             f"shape: {shape.layers} layers · hidden {shape.hidden} · ffn {shape.ffn} · "
             f"{shape.heads} heads / {shape.kv_heads} kv"]
    lines += [f"snapped {n}" if "→" in n else n for n in d.notes]
    pending = None if d.importance is None or kept is not None else \
        "The block search chooses the blocks at Build (once, up to a minute); after that every depth shows here."
    return "  \n".join(lines), plots.block_strip(d.parent.shape.layers, kept, pending)


def on_design(parent, data, layers, hidden, ffn, heads, kv_heads, block_rule, neuron_rule, scale, score, compensate,
              request: gr.Request):
    """Redraw the anatomy with what the current child drops greyed out (a separate event: figures are heavier)."""
    try:
        d = WS.design(_design(parent, data, layers, hidden, ffn, heads, kv_heads, block_rule, neuron_rule, scale,
                              score, compensate),
                      WS.session(_sid(request)))
    except SubcloneError:
        return [gr.skip()] * 7  # the readout already says what is wrong
    if d.importance is None:
        return [gr.skip()] * 7
    imp, plan = d.importance, d.plan  # no plan yet while the block search waits for Build: nothing greyed out
    residual, heads = plots.residual_map(imp, plan), plots.heads_map(imp, plan)  # shown in Anatomy and Design
    return (residual, plots.consistency_map(imp), heads, plots.ffn_map(imp, plan),
            plots.blocks_chart(imp, WS.drop_scores(d.parent, d.text), plan, d.parent.family.kind), heads, residual)


@adapter
def on_drop_one(parent, data, layers, hidden, ffn, heads, kv_heads, block_rule, neuron_rule, scale, score, compensate,
                request: gr.Request, progress=gr.Progress()):
    design = _design(parent, data, layers, hidden, ffn, heads, kv_heads, block_rule, neuron_rule, scale,
                     score, compensate)
    d, scores = WS.drop_one(_sid(request), design, progress=_gradio_progress(progress))
    return plots.blocks_chart(d.importance, scores, d.plan, d.parent.family.kind)


# ---- 4. evaluate ---------------------------------------------------------------------------------

@adapter
def on_build(parent, data, layers, hidden, ffn, heads, kv_heads, block_rule, neuron_rule, scale, score, compensate,
             request: gr.Request, progress=gr.Progress()):
    design = _design(parent, data, layers, hidden, ffn, heads, kv_heads, block_rule, neuron_rule, scale,
                     score, compensate)
    d, r = WS.build(_sid(request), design, progress=_gradio_progress(progress))
    keys = ["params", "size_mb", "perplexity", "ms_per_token"] if d.parent.family.kind == "causal-lm" else \
        ["params", "size_mb", "ms_per_token"]
    rows = [dict(metric=k, parent=r.get(f"parent_{k}"), child=r[k]) for k in keys]
    rows += [dict(metric=k, parent=None, child=r[k]) for k in
             ("top1_agreement", "kl_to_parent", "cosine_to_parent", "speedup") if k in r]
    return pd.DataFrame(rows), pd.DataFrame(WS.session(_sid(request)).history)


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
             request: gr.Request,
             progress=gr.Progress()):
    design = Design.of(WS.limits, parent, data, None, None, None, heads, kv_heads, block_rule, neuron_rule, scale,
                       score, compensate)
    frame, csv = WS.sweep(_sid(request), design, depths, widths, progress=_gradio_progress(progress))
    return plots.pareto_chart(frame), frame, str(csv)


# ---- 6. export -----------------------------------------------------------------------------------

@adapter
def on_export(parent, data, layers, hidden, ffn, heads, kv_heads, block_rule, neuron_rule, scale, score, compensate,
              hub_repo="",
              hub_token="", request: gr.Request = None, progress=gr.Progress()):
    design = _design(parent, data, layers, hidden, ffn, heads, kv_heads, block_rule, neuron_rule, scale,
                     score, compensate)
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


@adapter
def on_heal(parent, data, layers, hidden, ffn, heads, kv_heads, block_rule, neuron_rule, scale, score, compensate,
            steps, inits, distill, request: gr.Request):
    """Train the designed child from each chosen init, one step of each in turn, streaming the loss curves into a
    frame as wide as the run; Stop ends every run at the same step."""
    design = _design(parent, data, layers, hidden, ffn, heads, kv_heads, block_rule, neuron_rule, scale,
                     score, compensate)
    histories = {i: [] for i in inits or []}
    total = int(steps) if isinstance(steps, (int, float)) and steps == steps and 0 < steps < 10**9 else None
    yield plots.curves(histories, total), "building the children and evaluating them before training…", gr.skip()
    status, pace = "building the children and evaluating them before training…", ""
    with contextlib.closing(WS.heal(_sid(request), design, steps, inits, distill)) as events:
        for kind, init, payload in events:
            if kind == "tick":
                pace = _pace(payload) if payload["steps"] else f"{_duration(payload['seconds'])}"
                yield gr.skip(), f"{status}  \n{pace}", gr.skip()
                continue
            if kind == "eval":
                histories[init].append(payload)
                status = f"held-out loss of **{init}** at step {payload['step']}: {payload['eval_loss']:.3f}"
                yield plots.curves(histories, total), f"{status}  \n{pace}", gr.skip()
                continue
            healed = payload
            results = {i: result for i, (_, _, result, _, _) in healed.items()}
            rows = [{"initialization": i, "steps": result["steps"],
                     "held-out perplexity ↓": f"{r['perplexity']:,.1f}",
                     "× parent ↓": f"{r['perplexity'] / r['parent_perplexity']:,.2f}",
                     "top-1 agreement with parent ↑": f"{r['top1_agreement']:.1%}",
                     "learning rate": f"{result['lr']:g}", "training seconds": f"{result['seconds']:,.0f}"}
                    for i, (_, _, result, r, _) in healed.items()]
            done = "Stopped early" if any(r["stopped"] for r in results.values()) else "Done"
            yield (plots.curves(histories, total),
                   f"{done}: {verdict(results)}. *Generate with both* in Evaluate now uses **{init}**.",
                   pd.DataFrame(rows))


def on_leave(request: gr.Request):
    """The tab was closed or reloaded (or an API client went away): end its session, jobs and files."""
    WS.end(_sid(request))


def on_stop(request: gr.Request):
    WS.stop(_sid(request))
    return "stopping after the current step…"


@adapter
def on_export_healed(parent, data, init, request: gr.Request, progress=gr.Progress()):
    progress(0.3, desc="writing the folder and the zip")
    archive, _, _ = WS.export_healed(_sid(request), init)
    return str(archive), _archive_status(archive)


# ---- layout --------------------------------------------------------------------------------------

CSS = ".caption {color: #555; font-size: 0.9em; margin-top: -6px}"


def _figure(label, caption):
    """A plot with its how-to-read-it caption under it."""
    plot = gr.Plot(label=label)
    gr.Markdown(plots.CAPTIONS[caption], elem_classes="caption")
    return plot


with gr.Blocks(title="subclone") as demo:
    gr.Markdown("# subclone\nMake a smaller transformer out of a larger pretrained one by **weight subcloning** "
                "(Samragh et al., 2023): measure what matters, choose a shape, slice, evaluate, export. "
                "New here? Start with the **Learn** tab.")
    with gr.Tabs():
        with gr.Tab("1 · Parent & data", id="parent"):
            with gr.Row():
                parent = gr.Dropdown(list(BUILTIN), value=DEFAULT_PARENT, allow_custom_value=True, label="Parent",
                                     info="a bundled parent or a hub id (online); local directories when whoever "
                                          "runs the app allows them (SUBCLONE_ALLOW_LOCAL_PATHS=1)")
                data = gr.Textbox("builtin", label="Calibration text",
                                  info="builtin, an uploaded file (upload:name), or a datasets hub id (online)")
                upload = gr.File(label="…or upload a text file", file_types=[".txt", ".md", ".jsonl", ".json", ".csv",
                                                                           ".parquet"], height=140)
            analyze_btn = gr.Button("Analyze", variant="primary")
            card = gr.Markdown("Analyze the parent to measure neuron, head and block importance on the calibration "
                               "text (80 % for calibration, 20 % held out for evaluation).")
        with gr.Tab("2 · Anatomy", id="anatomy"):
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
            drop_btn = gr.Button("Compute drop-one Δ loss (one pass per block, ~40 s for SmolLM2)")
        with gr.Tab("3 · Design", id="design"):
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
                                         "read each FFN neuron")
                compensate = gr.Dropdown(list(COMPENSATE), value=PRESETS["best"]["compensate"], label="compensation",
                                         info="none = the paper; refit / depth: least-squares fits on calibration "
                                              "text, a few seconds at Build")
            rules_help = gr.Markdown(_rules_help(PRESETS["best"]["block_rule"], PRESETS["best"]["compensate"]),
                                     elem_classes="caption")
            readout = gr.Markdown()
            strip = gr.HTML()
            with gr.Row():
                design_heads = gr.Plot(label="kept heads")
                design_residual = gr.Plot(label="kept residual dimensions")
        with gr.Tab("4 · Evaluate", id="evaluate"):
            build_btn = gr.Button("Build & evaluate", variant="primary")
            results = gr.Dataframe(headers=["metric", "parent", "child"], label="parent vs child (held-out text)",
                                   interactive=False)
            prompt = gr.Textbox("The Python interpreter", label="Prompt (encoders: sentences, one per line)", lines=2)
            outputs_btn = gr.Button("Generate with both")
            with gr.Row():
                parent_out = gr.Markdown(label="parent")
                child_out = gr.Markdown(label="child")
            history_table = gr.Dataframe(label="every child built in this session", interactive=False)
        with gr.Tab("5 · Tradeoffs", id="tradeoffs"):
            with gr.Row():
                depths = gr.Textbox("30, 24, 18, 12", label="depths (layers)")
                widths = gr.Textbox("100, 87.5, 75, 62.5", label="widths (% of hidden and ffn)",
                                    info="heads / kv heads come from Design")
                sweep_btn = gr.Button("Sweep", variant="primary")
            fig_pareto = _figure("tradeoff", "pareto")
            sweep_table = gr.Dataframe(label="sweep", interactive=False)
            sweep_csv = gr.File(label="CSV")
        with gr.Tab("6 · Heal", id="heal"):
            gr.Markdown("Train the child designed in **Design** for a few steps from each initialization on equal "
                        "terms (same text, batches, schedule, seed), one step of each in turn: **Stop** keeps a curve "
                        "for every one. Defaults follow the paper: lr 1e-4 for inherited weights, 1e-3 for random "
                        "init. A SmolLM2 child takes a few seconds per step on 2 CPU cores, so 12 steps of two "
                        "initializations fit in a class; for real runs use the command line under `torchrun` (see "
                        "the README).")
            with gr.Row():
                steps = gr.Number(12, label="steps (each initialization)", precision=0, minimum=1)
                inits = gr.CheckboxGroup(list(INITS), value=["subclone", "random"], label="initializations")
                distill = gr.Slider(0, 2, value=0, step=0.1, label="distillation weight (KL to the parent)")
            with gr.Row():
                heal_btn = gr.Button("Start", variant="primary")
                stop_btn = gr.Button("Stop", variant="stop")
            heal_status = gr.Markdown()
            fig_curves = _figure("loss curves", "curves")
            heal_table = gr.Dataframe(label="trained children on held-out text", interactive=False)
            with gr.Row():
                healed_init = gr.Dropdown(list(INITS), value="subclone", label="export the child trained from")
                healed_btn = gr.Button("Export trained child")
            healed_file = gr.File(label="trained child (zip)")
            healed_status = gr.Markdown()
        with gr.Tab("7 · Export", id="export"):
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
        with gr.Tab("8 · Learn", id="learn"):
            gr.Markdown(LEARN)

    design_in = [parent, data, layers, hidden, ffn, heads, kv_heads, block_rule, neuron_rule, scale, score, compensate]
    sliders = [layers, hidden, ffn, heads, kv_heads]
    anatomy = [fig_residual, fig_consistency, fig_heads, fig_ffn, fig_blocks, design_heads, design_residual]
    preview_in = [parent, data, *sliders, block_rule]

    # Our own checks (Design.of) read the widgets' raw values, so a malformed API value (None, a list, text for a
    # number) gets one clear line instead of Gradio's generic error.
    RAW = dict(preprocess=False)
    upload.upload(on_upload, upload, data, api_name="upload")
    analyze_btn.click(on_analyze, [parent, data], [card, *sliders], api_name="analyze", **RAW).then(
        on_preview, preview_in, [readout, strip], api_name=False, **RAW).then(
        on_design, design_in, anatomy, api_name=False, **RAW).then(
        on_warm, [parent, data], None, api_name=False, show_progress="hidden", **RAW)
    gr.on([w.change for w in (*sliders, block_rule)], on_preview, preview_in, [readout, strip],
          api_name="preview", show_progress="hidden", trigger_mode="always_last", **RAW)
    preset.change(on_preset, preset, [block_rule, neuron_rule, score, compensate], api_name=False,
                  show_progress="hidden")
    gr.on([block_rule.change, compensate.change], _rules_help, [block_rule, compensate], rules_help, api_name=False,
          show_progress="hidden")
    gr.on([*(w.change for w in sliders), block_rule.change, neuron_rule.change, scale.change, score.change,
           compensate.change], on_design,
          design_in,
          anatomy, api_name=False, show_progress="hidden", trigger_mode="always_last", **RAW)
    demo.load(on_preview, preview_in, [readout, strip], api_name=False, **RAW).then(
        on_design, design_in, anatomy, api_name=False, **RAW)
    drop_btn.click(on_drop_one, design_in, fig_blocks, api_name="drop_one", **RAW)
    build_btn.click(on_build, design_in, [results, history_table], api_name="build", **RAW).then(
        on_preview, preview_in, [readout, strip], api_name=False, show_progress="hidden", **RAW).then(
        on_design, design_in, anatomy, api_name=False, show_progress="hidden", **RAW)  # the search's blocks
    outputs_btn.click(on_outputs, [parent, prompt], [parent_out, child_out], api_name="outputs", **RAW)
    sweep_btn.click(on_sweep, [parent, data, depths, widths, heads, kv_heads, block_rule, neuron_rule, scale, score,
                               compensate],
                    [fig_pareto, sweep_table, sweep_csv], api_name="sweep", **RAW)
    heal_btn.click(on_heal, [*design_in, steps, inits, distill], [fig_curves, heal_status, heal_table],
                   api_name="heal", **RAW)
    stop_btn.click(on_stop, None, heal_status, api_name="stop")
    demo.unload(on_leave)
    healed_btn.click(on_export_healed, [parent, data, healed_init], [healed_file, healed_status],
                     api_name="export_trained", **RAW)
    export_btn.click(on_export, [*design_in, hub_repo, hub_token], [export_file, export_status, export_card],
                     api_name="export", **RAW)

if __name__ == "__main__":
    demo.queue(default_concurrency_limit=1, max_size=64).launch(
        server_name=os.environ.get("HOST"), server_port=int(os.environ["PORT"]) if "PORT" in os.environ else None,
        css=CSS, max_file_size=f"{WS.limits.max_upload_mb:g}mb")
