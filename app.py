"""subclone in the browser: load a parent, look inside it, drag the sliders, build, compare, sweep, export.

Layout and wiring only: every callback adapts widget values to library calls and back. What is slow and
shared (parents, importance, the parent's evaluation, drop-one scores) is computed once per process.
Run with `make run` (http://127.0.0.1:7860) or as a Hugging Face Space (app_file: app.py).
"""
from __future__ import annotations

import os
import queue
import tempfile
import threading
import time
from pathlib import Path

import gradio as gr
import pandas as pd
import transformers

from subclone import SubcloneError, analyze, build, load_parent, make_plan
from subclone import export, plots
from subclone.evaluate import evaluate, generate, held_out, reference, similarities
from subclone.importance import drop_one
from subclone.parents import BUILTIN, DEFAULT_PARENT
from subclone.plan import BLOCK_RULES, DEFAULT_SCALE, NEURON_RULES, SCALE_GROUPS, choose_layers, describe, snap_shape
from subclone.sweep import grid, parse_list, sweep
from subclone.train import INITS, TrainConfig, compare_inits

transformers.utils.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parent
LEARN = (ROOT / "docs" / "learn.md").read_text()
EXPORTS = Path(tempfile.mkdtemp(prefix="subclone-exports-"))

_parents: dict = {}  # name -> Parent
_analyses: dict = {}  # (parent, data) -> Importance
_references: dict = {}  # (parent, data) -> evaluate.Reference
_drops: dict = {}  # (parent, data) -> drop-one scores
_metrics: dict = {}  # (parent, data, plan key) -> evaluation of that child
_parent_lock, _reference_lock = threading.Lock(), threading.Lock()
_stops: dict = {}  # browser session -> threading.Event that stops its training


def _fail(e: Exception):
    raise gr.Error(str(e), print_exception=False)


def _parent(name):
    with _parent_lock:  # the page's first preview and Analyze ask at once: load it once
        if name not in _parents:
            _parents[name] = load_parent(name)
        return _parents[name]


def _importance(parent, data, compute=False, progress=None):
    """From memory, else from the disk cache; measured only when compute (Analyze pressed)."""
    if (parent, data) not in _analyses:
        imp = analyze(_parent(parent), data, progress=progress, cached_only=not compute)
        if imp is None:
            return None
        _analyses[(parent, data)] = imp
    return _analyses[(parent, data)]


def _reference(parent, data):
    """The parent's evaluation, once per (parent, data); the lock stops a second thread from redoing it."""
    with _reference_lock:
        if (parent, data) not in _references:
            p = _parent(parent)
            _references[(parent, data)] = reference(p.model, held_out(p, data), p.family.kind)
        return _references[(parent, data)]


def on_warm(parent, data):
    """After Analyze, evaluate the parent in the background while the user reads the anatomy."""
    try:
        _reference(parent, data)
    except SubcloneError:
        pass  # Build reports it


def _scale(groups) -> dict:
    return {g: g in (groups or []) for g in SCALE_GROUPS}


def _plan(parent, data, layers, hidden, ffn, heads, kv_heads, block_rule, neuron_rule, scale, compute=False):
    p = _parent(parent)
    shape, notes = snap_shape(p.family, p.shape, layers, hidden, ffn, heads, kv_heads)
    imp = _importance(parent, data, compute=compute)
    plan = None if imp is None else make_plan(p, imp, shape, block_rule=block_rule, neuron_rule=neuron_rule,
                                              scale=_scale(scale))
    return p, imp, shape, notes, plan


def _key(plan) -> str:
    return f"{plan.shape}|{plan.block_rule}|{plan.neuron_rule}|{sorted(plan.scale.items())}"


def _human(n: int) -> str:
    return f"{n / 1e6:.1f} M" if n >= 1e6 else f"{n / 1e3:.1f} K"


def _archive(folder):
    """Zip an exported folder: (path for the File widget, status line)."""
    archive = export.zip_dir(folder)
    return str(archive), f"Wrote `{archive.name}` ({archive.stat().st_size / 2**20:.0f} MB): `from_pretrained` loads " \
                         "the unzipped folder."


# ---- 1. parent and data --------------------------------------------------------------------------

def on_analyze(parent, data, progress=gr.Progress()):
    try:
        progress(0, desc="loading parent")
        p = _parent(parent)
        imp = _importance(parent, data, compute=True, progress=lambda f, msg: progress(f, desc=msg))
    except SubcloneError as e:
        _fail(e)
    s = p.shape
    card = (f"### {parent}\n| family | layers | hidden | heads / kv heads | head dim | ffn | params |\n"
            "|---|---|---|---|---|---|---|\n"
            f"| {p.family.name} ({p.family.kind}) | {s.layers} | {s.hidden} | {s.heads} / {s.kv_heads} | "
            f"{s.head_dim} | {s.ffn} | {_human(p.model.num_parameters())} |\n\n"
            f"Calibrated on {imp.meta['tokens']:,} tokens of `{data}` in {imp.meta['seconds']} s (cached after the "
            f"first time). Blocks closest to identity: {imp.magnitude.argsort()[:5].tolist()}. "
            "Next: look at the **Anatomy**, then **Design** a child.")
    step = s.head_dim if p.family.head_dim_from_hidden else s.heads
    return (card,
            gr.Slider(minimum=1, maximum=s.layers, value=s.layers, step=1),
            gr.Slider(minimum=step, maximum=s.hidden, value=s.hidden, step=step),
            gr.Slider(minimum=1, maximum=s.ffn, value=s.ffn, step=1),
            gr.Slider(minimum=1, maximum=s.heads, value=s.heads, step=1),
            gr.Slider(minimum=1, maximum=s.kv_heads, value=s.kv_heads, step=1, interactive=s.heads > s.kv_heads))


# ---- 2. anatomy and 3. design --------------------------------------------------------------------

def on_preview(parent, data, layers, hidden, ffn, heads, kv_heads, block_rule):
    """The live readout: sizes from the spec alone, no model built. Must stay well under 50 ms."""
    try:
        p = _parent(parent)
        shape, notes = snap_shape(p.family, p.shape, layers, hidden, ffn, heads, kv_heads)
        d = describe(p, shape)
        imp = _importance(parent, data)
        kept = choose_layers(imp, shape.layers, block_rule) if imp is not None else None
    except SubcloneError as e:
        return f"⚠️ {e}", plots.block_strip(0, None)
    lines = [f"**{_human(d['params'])} params** ({d['percent_of_parent']}% of parent) · "
             f"{d['flops_per_token'] / 1e6:.1f} MFLOPs/token · expected speed-up ×{d['expected_speedup']}",
             f"shape: {shape.layers} layers · hidden {shape.hidden} · ffn {shape.ffn} · "
             f"{shape.heads} heads / {shape.kv_heads} kv"]
    lines += [f"snapped {n}" for n in notes]
    return "  \n".join(lines), plots.block_strip(p.shape.layers, kept)


def on_design(parent, data, layers, hidden, ffn, heads, kv_heads, block_rule, neuron_rule, scale):
    """Redraw the anatomy with what the current child drops greyed out (a separate event: figures are heavier)."""
    try:
        p, imp, _, _, plan = _plan(parent, data, layers, hidden, ffn, heads, kv_heads, block_rule, neuron_rule, scale)
    except SubcloneError:
        return [gr.skip()] * 7  # the readout already says what is wrong
    if imp is None:
        return [gr.skip()] * 7
    residual, heads = plots.residual_map(imp, plan), plots.heads_map(imp, plan)  # shown in Anatomy and Design
    return (residual, plots.consistency_map(imp), heads, plots.ffn_map(imp, plan),
            plots.blocks_chart(imp, _drops.get((parent, data)), plan, p.family.kind), heads, residual)


def on_drop_one(parent, data, layers, hidden, ffn, heads, kv_heads, block_rule, neuron_rule, scale,
                progress=gr.Progress()):
    try:
        p, imp, _, _, plan = _plan(parent, data, layers, hidden, ffn, heads, kv_heads, block_rule, neuron_rule,
                                   scale, compute=True)
        if (parent, data) not in _drops:
            _drops[(parent, data)] = drop_one(p, held_out(p, data, seq_len=128, samples=4),
                                              progress=lambda f, msg: progress(f, desc=msg))
    except SubcloneError as e:
        _fail(e)
    return plots.blocks_chart(imp, _drops[(parent, data)], plan, p.family.kind)


# ---- 4. evaluate ---------------------------------------------------------------------------------

def on_build(parent, data, layers, hidden, ffn, heads, kv_heads, block_rule, neuron_rule, scale, history,
             progress=gr.Progress()):
    try:
        progress(0, desc="analyzing parent")
        t = time.perf_counter()
        p, imp, shape, _, plan = _plan(parent, data, layers, hidden, ffn, heads, kv_heads, block_rule, neuron_rule,
                                       scale, compute=True)
        progress(0.1, desc="building child")
        child = build(p, plan)
        progress(0.2, desc="evaluating the parent (once per parent and data)" if (parent, data) not in _references
                 else "evaluating child on held-out text")
        ref = _reference(parent, data)
        progress(0.4, desc="evaluating child on held-out text")
        r = evaluate(child, ref, plan.residual)
    except SubcloneError as e:
        _fail(e)
    _metrics[(parent, data, _key(plan))] = r
    keys = ["params", "size_mb", "perplexity", "ms_per_token"] if p.family.kind == "causal-lm" else \
        ["params", "size_mb", "ms_per_token"]
    rows = [dict(metric=k, parent=r.get(f"parent_{k}"), child=r[k]) for k in keys]
    rows += [dict(metric=k, parent=None, child=r[k]) for k in
             ("top1_agreement", "kl_to_parent", "cosine_to_parent", "speedup") if k in r]
    quality = {k: r[k] for k in ("perplexity", "top1_agreement", "kl_to_parent", "cosine_to_parent") if k in r}
    history = [*history, dict(n=len(history) + 1, parent=parent, layers=shape.layers, hidden=shape.hidden,
                              ffn=shape.ffn, heads=shape.heads, kv_heads=shape.kv_heads, block_rule=block_rule,
                              neuron_rule=neuron_rule, scale="+".join(g for g, on in plan.scale.items() if on) or "none",
                              params=r["params"], **quality, ms_per_token=r["ms_per_token"], speedup=r.get("speedup"),
                              seconds=round(time.perf_counter() - t, 1))]
    return pd.DataFrame(rows), pd.DataFrame(history), history, (parent, child, plan)


def on_outputs(parent, prompt, built):
    """Parent and child side by side: generations (causal LMs) or sentence similarities (encoders)."""
    if built is None or built[0] != parent:
        _fail(SubcloneError("build a child of this parent first (Build & evaluate)"))
    _, child, plan = built
    p = _parent(parent)
    if p.family.kind == "causal-lm":
        if not prompt.strip():
            _fail(SubcloneError("type a prompt first"))
        return (f"##### parent\n**{prompt}**{generate(p.model, p.tokenizer, prompt)}",
                f"##### child\n**{prompt}**{generate(child, p.tokenizer, prompt)}")
    sentences = [s.strip() for s in prompt.splitlines() if s.strip()]
    if len(sentences) < 2:
        _fail(SubcloneError("give at least two sentences, one per line"))
    sp, sc = similarities(p.model, p.tokenizer, sentences), similarities(child, p.tokenizer, sentences)
    head = "| sentence A | sentence B | cosine |\n|---|---|---|\n"
    pairs = [(i, j) for i in range(len(sentences)) for j in range(i + 1, len(sentences))]
    table = lambda s: head + "\n".join(f"| {sentences[i][:40]} | {sentences[j][:40]} | {s[i, j]:.3f} |" for i, j in pairs)
    return "##### parent\n" + table(sp), "##### child\n" + table(sc)


# ---- 5. tradeoffs --------------------------------------------------------------------------------

def on_sweep(parent, data, depths, widths, heads, kv_heads, block_rule, neuron_rule, scale, progress=gr.Progress()):
    try:
        p = _parent(parent)
        shapes = grid(p, parse_list(depths, "depths", int), parse_list(widths, "widths"), int(heads), int(kv_heads))
        progress(0, desc="analyzing parent")
        imp = _importance(parent, data, compute=True)
        progress(0, desc="evaluating the parent (once per parent and data)")
        ref = _reference(parent, data)
        frame = sweep(p, imp, ref, shapes, block_rule, neuron_rule, _scale(scale),
                      progress=lambda f, msg: progress(f, desc=msg))
    except SubcloneError as e:
        _fail(e)
    csv = EXPORTS / f"sweep-{Path(parent).name}-{int(time.time())}.csv"
    frame.to_csv(csv, index=False)
    return plots.pareto_chart(frame), frame, str(csv)


# ---- 6. export -----------------------------------------------------------------------------------

def on_export(parent, data, layers, hidden, ffn, heads, kv_heads, block_rule, neuron_rule, scale, hub_repo="",
              hub_token="", progress=gr.Progress()):
    try:
        progress(0, desc="building child")
        p, _, shape, _, plan = _plan(parent, data, layers, hidden, ffn, heads, kv_heads, block_rule, neuron_rule,
                                     scale, compute=True)
        child = build(p, plan)
        metrics = _metrics.get((parent, data, _key(plan)))
        if metrics is None:
            progress(0.3, desc="evaluating (no latency)")
            metrics = evaluate(child, _reference(parent, data), plan.residual, speed=False)
        progress(0.6, desc="writing the folder and the zip")
        name = f"subclone-{Path(parent).name}-{shape.layers}L-{shape.hidden}h-{shape.ffn}f-{int(time.time())}"
        card = export.model_card(p, child, plan, data, metrics)
        folder = export.write(child, p.tokenizer, plan, EXPORTS / name, card, extra=dict(data=data, metrics=metrics))
        archive, status = _archive(folder)
        if hub_repo.strip():
            progress(0.8, desc="pushing to the Hub")
            status += f"  \nPushed to the Hub: {export.push(folder, hub_repo.strip(), hub_token.strip())}"
    except SubcloneError as e:
        _fail(e)
    return archive, status, _card_preview(card)


def _card_preview(card: str) -> str:
    """The model card as Markdown can show it: the YAML front matter in a code block, not read as a heading."""
    _, front, body = card.split("---\n", 2)
    return f"```yaml\n{front}```\n{body}"


# ---- heal (recovery training) -------------------------------------------------------------------

def on_heal(parent, data, layers, hidden, ffn, heads, kv_heads, block_rule, neuron_rule, scale, steps, inits, distill,
            request: gr.Request):
    """Train the designed child from each chosen init, streaming the loss curves; Stop ends it early."""
    try:
        p, imp, shape, _, _ = _plan(parent, data, layers, hidden, ffn, heads, kv_heads, block_rule, neuron_rule,
                                    scale, compute=True)
        config = TrainConfig(steps=int(steps), distill=float(distill))
        config.check()
    except SubcloneError as e:
        _fail(e)
    stop = _stops[getattr(request, "session_hash", None)] = threading.Event()
    records, box = queue.Queue(), {}

    def work():
        try:
            box["runs"] = compare_inits(p, imp, shape, list(inits), config, data,
                                        on_eval=lambda i, r: records.put((i, r)), should_stop=stop.is_set,
                                        block_rule=block_rule, neuron_rule=neuron_rule, scale=_scale(scale))
        except Exception as e:  # handed to the event below: a clear error there, or Gradio's own
            box["error"] = e
        finally:
            records.put(None)

    threading.Thread(target=work, daemon=True).start()
    histories = {i: [] for i in inits}
    yield plots.curves(histories), "preparing the training text…", gr.skip(), gr.skip(), gr.skip()
    while (item := records.get()) is not None:
        init, record = item
        histories[init].append(record)
        yield (plots.curves(histories), f"training **{init}**: step {record['step']} of {config.steps}, held-out loss "
               f"{record['eval_loss']}", gr.skip(), gr.skip(), gr.skip())
    if isinstance(box.get("error"), SubcloneError):
        _fail(box["error"])
    if "error" in box:
        raise box["error"]
    ref = _reference(parent, data)
    healed = {init: (child, plan, result, evaluate(child, ref, speed=False))
              for init, (child, plan, result) in box["runs"].items()}
    rows = [dict(init=init, steps=result["steps"], lr=result["lr"], held_out_loss=result["eval_loss"],
                 perplexity=r["perplexity"], parent_perplexity=r["parent_perplexity"],
                 top1_agreement=r["top1_agreement"], kl_to_parent=r["kl_to_parent"], seconds=result["seconds"])
            for init, (_, _, result, r) in healed.items()]
    best = min(healed, key=lambda i: healed[i][2]["eval_loss"])
    child, plan, _, _ = healed[best]
    done = "stopped early" if any(h[2]["stopped"] for h in healed.values()) else "done"
    yield (plots.curves(histories), f"{done}. Best: **{best}**; *Generate with both* in Evaluate now uses it.",
           pd.DataFrame(rows), healed, (parent, child, plan))


def on_leave(request: gr.Request):
    """Stop this browser session's training: the Stop button, and closing or reloading the tab."""
    event = _stops.pop(getattr(request, "session_hash", None), None)
    if event is not None:
        event.set()


def on_stop(request: gr.Request):
    on_leave(request)
    return "stopping after the current step…"


def on_export_healed(parent, data, init, healed, progress=gr.Progress()):
    if not healed or init not in healed:
        _fail(SubcloneError(f"train the '{init}' init first (Start in Heal)"))
    child, plan, result, metrics = healed[init]
    p = _parent(parent)
    shape = p.family.read_shape(child.config)
    name = f"subclone-{Path(parent).name}-{shape.layers}L-{shape.hidden}h-{init}-{result['steps']}steps-{int(time.time())}"
    progress(0.3, desc="writing the folder and the zip")
    folder = export.write(child, p.tokenizer, plan, EXPORTS / name,
                          export.model_card(p, child, plan, data, metrics, training=result),
                          training=dict(parent=parent, data=data, **result))
    return _archive(folder)


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
    history = gr.State([])
    built = gr.State(None)
    healed = gr.State(None)
    with gr.Tabs():
        with gr.Tab("1 · Parent & data", id="parent"):
            with gr.Row():
                parent = gr.Dropdown(list(BUILTIN), value=DEFAULT_PARENT, allow_custom_value=True, label="Parent",
                                     info="a bundled parent, a local model directory, or a hub id (online)")
                data = gr.Textbox("builtin", label="Calibration text",
                                  info="builtin, a .txt/.jsonl/.csv/.parquet path, or a datasets hub id (online)")
                upload = gr.File(label="…or upload a text file", file_types=[".txt", ".md", ".jsonl", ".json", ".csv",
                                                                           ".parquet"], height=90)
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
                block_rule = gr.Dropdown(list(BLOCK_RULES), value="magnitude", allow_custom_value=True,
                                         label="block rule", info="magnitude = the paper; or a list like 0-11,18-29")
                neuron_rule = gr.Dropdown(list(NEURON_RULES), value="importance", label="neuron rule",
                                          info="importance = the paper; uniform = weight selection")
                scale = gr.CheckboxGroup(list(SCALE_GROUPS), value=[g for g, on in DEFAULT_SCALE.items() if on],
                                         label="scale weights by √(d/d′) on", info="fan-in groups")
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
            gr.Markdown("Train the child designed in **Design** for a few steps, from each initialization on equal "
                        "terms (same text, batches, schedule, seed). Defaults follow the paper: lr 1e-4 for inherited "
                        "weights, 1e-3 for random init. About 5 s per step for a SmolLM2 child on 2 CPU cores; for "
                        "real runs use the command line under `torchrun` (see the README).")
            with gr.Row():
                steps = gr.Number(40, label="steps", precision=0, minimum=1)
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

    design_in = [parent, data, layers, hidden, ffn, heads, kv_heads, block_rule, neuron_rule, scale]
    sliders = [layers, hidden, ffn, heads, kv_heads]
    anatomy = [fig_residual, fig_consistency, fig_heads, fig_ffn, fig_blocks, design_heads, design_residual]
    preview_in = [parent, data, *sliders, block_rule]

    upload.upload(lambda f: f, upload, data, api_name=False)
    analyze_btn.click(on_analyze, [parent, data], [card, *sliders], api_name="analyze").then(
        on_preview, preview_in, [readout, strip], api_name=False).then(
        on_design, design_in, anatomy, api_name=False).then(
        on_warm, [parent, data], None, api_name=False, show_progress="hidden")
    gr.on([w.change for w in (*sliders, block_rule)], on_preview, preview_in, [readout, strip],
          api_name="preview", show_progress="hidden", trigger_mode="always_last")
    gr.on([*(w.change for w in sliders), block_rule.change, neuron_rule.change, scale.change], on_design, design_in,
          anatomy, api_name=False, show_progress="hidden", trigger_mode="always_last")
    demo.load(on_preview, preview_in, [readout, strip], api_name=False).then(
        on_design, design_in, anatomy, api_name=False)
    drop_btn.click(on_drop_one, design_in, fig_blocks, api_name="drop_one")
    build_btn.click(on_build, [*design_in, history], [results, history_table, history, built], api_name="build")
    outputs_btn.click(on_outputs, [parent, prompt, built], [parent_out, child_out], api_name="outputs")
    sweep_btn.click(on_sweep, [parent, data, depths, widths, heads, kv_heads, block_rule, neuron_rule, scale],
                    [fig_pareto, sweep_table, sweep_csv], api_name="sweep")
    heal_btn.click(on_heal, [*design_in, steps, inits, distill], [fig_curves, heal_status, heal_table, healed, built],
                   api_name="heal")
    stop_btn.click(on_stop, None, heal_status, api_name="stop")
    demo.unload(on_leave)
    healed_btn.click(on_export_healed, [parent, data, healed_init, healed], [healed_file, healed_status],
                     api_name="export_trained")
    export_btn.click(on_export, [*design_in, hub_repo, hub_token], [export_file, export_status, export_card],
                     api_name="export")

if __name__ == "__main__":
    demo.queue(default_concurrency_limit=1).launch(
        server_name=os.environ.get("HOST"), server_port=int(os.environ["PORT"]) if "PORT" in os.environ else None,
        css=CSS, allowed_paths=[str(EXPORTS)])
