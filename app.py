"""subclone in the browser: pick a parent, analyze it, drag the sliders, build and evaluate a child.

Layout and wiring only: every callback adapts widget values to one library call and back.
Run with `make run` (http://127.0.0.1:7860) or as a Hugging Face Space (app_file: app.py).
"""
from __future__ import annotations

import os

import gradio as gr
import pandas as pd
import transformers

from subclone import SubcloneError, analyze, build, load_parent, make_plan
from subclone.evaluate import evaluate, held_out
from subclone.parents import BUILTIN, DEFAULT_PARENT
from subclone.plan import BLOCK_RULES, NEURON_RULES, choose_layers, describe, snap_shape

transformers.utils.logging.set_verbosity_error()
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

_parents: dict = {}  # name -> Parent, loaded once per process
_analyses: dict = {}  # (parent, data) -> Importance


def _parent(name):
    if name not in _parents:
        _parents[name] = load_parent(name)
    return _parents[name]


def _shape(parent, layers, hidden, ffn, heads, kv_heads):
    return snap_shape(parent.family, parent.shape, layers, hidden, ffn, heads, kv_heads)


def _human(n: int) -> str:
    return f"{n / 1e6:.1f} M" if n >= 1e6 else f"{n / 1e3:.1f} K"


def _fail(e: SubcloneError):
    raise gr.Error(str(e), print_exception=False)


# ---- callbacks -----------------------------------------------------------------------------------

def on_analyze(parent, data, progress=gr.Progress()):
    try:
        progress(0, desc="loading parent")
        p = _parent(parent)
        imp = analyze(p, data, progress=lambda f, msg: progress(f, desc=msg))
    except SubcloneError as e:
        _fail(e)
    _analyses[(parent, data)] = imp
    s = p.shape
    card = (f"**{parent}** · {p.family.name} · {s.layers} layers · hidden {s.hidden} · "
            f"{s.heads} heads / {s.kv_heads} kv heads · ffn {s.ffn} · {_human(p.model.num_parameters())} params  \n"
            f"Calibrated on {imp.meta['tokens']} tokens in {imp.meta['seconds']} s. Blocks closest to identity: "
            f"{imp.magnitude.argsort()[:5].tolist()}")
    group = s.heads // s.kv_heads
    return (card,
            gr.Slider(minimum=1, maximum=s.layers, value=s.layers, step=1),
            gr.Slider(minimum=s.head_dim if p.family.head_dim_from_hidden else s.heads, maximum=s.hidden,
                      value=s.hidden, step=s.head_dim if p.family.head_dim_from_hidden else s.heads),
            gr.Slider(minimum=1, maximum=s.ffn, value=s.ffn, step=1),
            gr.Slider(minimum=1, maximum=s.heads, value=s.heads, step=1),
            gr.Slider(minimum=1, maximum=s.kv_heads, value=s.kv_heads, step=1,
                      interactive=group > 1))


def on_preview(parent, data, layers, hidden, ffn, heads, kv_heads, block_rule):
    try:
        p = _parent(parent)
        shape, notes = _shape(p, layers, hidden, ffn, heads, kv_heads)
        d = describe(p, shape)
        imp = _analyses.get((parent, data))
        kept = choose_layers(imp, shape.layers, block_rule) if imp is not None else None
    except SubcloneError as e:
        return f"⚠️ {e}"
    strip = "".join("■" if i in kept else "□" for i in range(p.shape.layers)) if kept else "(analyze to see kept blocks)"
    lines = [f"**{_human(d['params'])} params** ({d['percent_of_parent']}% of parent) · "
             f"{d['flops_per_token'] / 1e6:.1f} MFLOPs/token · expected speed-up ×{d['expected_speedup']}",
             f"shape: {shape.layers} layers · hidden {shape.hidden} · ffn {shape.ffn} · "
             f"{shape.heads} heads / {shape.kv_heads} kv", f"blocks kept: `{strip}`"]
    lines += [f"snapped {n}" for n in notes]
    return "  \n".join(lines)


def on_build(parent, data, layers, hidden, ffn, heads, kv_heads, block_rule, neuron_rule, scale,
             progress=gr.Progress()):
    try:
        p = _parent(parent)
        imp = _analyses.get((parent, data)) or analyze(p, data)
        shape, _ = _shape(p, layers, hidden, ffn, heads, kv_heads)
        progress(0.1, desc="building child")
        plan = make_plan(p, imp, shape, block_rule=block_rule, neuron_rule=neuron_rule,
                         scale=None if scale else False)
        child = build(p, plan)
        progress(0.3, desc="evaluating on held-out text")
        r = evaluate(child, p.model, held_out(p, data), p.family.kind, residual=plan.residual)
    except SubcloneError as e:
        _fail(e)
    keys = ["params", "size_mb", "perplexity", "ms_per_token"] if p.family.kind == "causal-lm" else \
        ["params", "size_mb", "ms_per_token"]
    rows = [dict(metric=k, parent=r.get(f"parent_{k}"), child=r[k]) for k in keys]
    rows += [dict(metric=k, parent=None, child=r[k]) for k in
             ("top1_agreement", "kl_to_parent", "cosine_to_parent", "speedup") if k in r]
    return pd.DataFrame(rows)


# ---- layout --------------------------------------------------------------------------------------

with gr.Blocks(title="subclone") as demo:
    gr.Markdown("# subclone\nMake a smaller transformer out of a larger pretrained one by **weight subcloning** "
                "(Samragh et al., 2023): measure what matters, choose a shape, slice, evaluate.")
    with gr.Row():
        parent = gr.Dropdown(list(BUILTIN), value=DEFAULT_PARENT, allow_custom_value=True, label="Parent",
                             info="a bundled parent, a local model directory, or a hub id")
        data = gr.Textbox("builtin", label="Calibration text",
                          info="builtin, a .txt/.jsonl/.csv/.parquet path, or a datasets hub id")
        analyze_btn = gr.Button("Analyze", variant="primary")
    card = gr.Markdown("Analyze the parent to measure neuron, head and block importance.")
    with gr.Row():
        layers = gr.Slider(1, 30, value=30, step=1, label="layers")
        hidden = gr.Slider(9, 576, value=576, step=9, label="hidden")
        ffn = gr.Slider(1, 1536, value=1536, step=1, label="ffn")
        heads = gr.Slider(1, 9, value=9, step=1, label="heads")
        kv_heads = gr.Slider(1, 3, value=3, step=1, label="kv heads")
    with gr.Row():
        block_rule = gr.Dropdown(list(BLOCK_RULES), value="magnitude", allow_custom_value=True, label="block rule",
                                 info="magnitude = the paper; or a list like 0-11,18-29")
        neuron_rule = gr.Dropdown(list(NEURON_RULES), value="importance", label="neuron rule")
        scale = gr.Checkbox(True, label="scale weights by √(d/d′)")
        build_btn = gr.Button("Build & evaluate", variant="primary")
    readout = gr.Markdown()
    results = gr.Dataframe(headers=["metric", "parent", "child"], label="parent vs child", interactive=False)

    sliders = [layers, hidden, ffn, heads, kv_heads]
    analyze_btn.click(on_analyze, [parent, data], [card, *sliders], api_name="analyze").then(
        on_preview, [parent, data, *sliders, block_rule], readout, api_name=False)
    gr.on([w.change for w in (*sliders, block_rule)], on_preview, [parent, data, *sliders, block_rule], readout,
          api_name="preview", show_progress="hidden")
    demo.load(on_preview, [parent, data, *sliders, block_rule], readout, api_name=False)
    build_btn.click(on_build, [parent, data, *sliders, block_rule, neuron_rule, scale], results, api_name="build")

if __name__ == "__main__":
    demo.queue().launch(server_name=os.environ.get("HOST", "127.0.0.1"), server_port=int(os.environ.get("PORT", 7860)))
