"""Zero-shot quality of subcloned children of the bundled SmolLM2 (no training), rule by rule.

    .venv/bin/python bench/zero_shot.py            # prints a markdown table

Child: 24 layers, hidden 504, ffn 1280 (the engine issue's acceptance shape), plus a 6-head / 2-KV
variant for the attention-scaling choice. Held-out perplexity on the built-in text's last 20 %.
"""
from subclone import analyze, build, load_parent, make_plan, resolve_shape
from subclone.evaluate import compare_lm, held_out, reference
from subclone.plan import DEFAULT_SCALE

NONE = dict.fromkeys(DEFAULT_SCALE, False)
CASES = [  # (label, sizes, block rule, neuron rule, scaling)
    ("magnitude (paper), default scaling", {}, "magnitude", "importance", None),
    ("bi, default scaling", {}, "bi", "importance", None),
    ("middle, default scaling", {}, "middle", "importance", None),
    ("magnitude, no scaling", {}, "magnitude", "importance", NONE),
    ("magnitude, residual scaling only", {}, "magnitude", "importance", {**NONE, "residual": True}),
    ("magnitude, default + ffn scaling", {}, "magnitude", "importance", {"ffn": True}),
    ("magnitude, neuron rule uniform", {}, "magnitude", "uniform", None),
    ("magnitude, neuron rule random", {}, "magnitude", "random", None),
    ("6 heads / 2 kv, default scaling", {"heads": 6, "kv_heads": 2}, "magnitude", "importance", None),
    ("6 heads / 2 kv, default + attn scaling", {"heads": 6, "kv_heads": 2}, "magnitude", "importance", {"attn": True}),
]


def main():
    parent = load_parent("smollm2-135m")
    imp = analyze(parent)
    tokens = held_out(parent)
    ref = reference(parent.model, tokens, parent.family.kind, speed=False)
    print(f"calibration tokens {imp.meta['tokens']}, held-out tokens {tokens.count}\n")
    print("| child | params | perplexity | × parent | top-1 agreement | KL |\n|---|---|---|---|---|---|")
    for label, sizes, block_rule, neuron_rule, scale in CASES:
        shape = resolve_shape(parent.family, parent.shape, layers=24, hidden=504, ffn=1280, **sizes)
        plan = make_plan(parent, imp, shape, block_rule=block_rule, neuron_rule=neuron_rule, scale=scale)
        r = compare_lm(build(parent, plan), ref)
        print(f"| {label} | {plan.params / 1e6:.1f} M | {r['perplexity']:.1f} | "
              f"{r['perplexity'] / r['parent_perplexity']:.1f} | {r['top1_agreement']:.3f} | {r['kl_to_parent']:.2f} |",
              flush=True)
    print(f"\nparent perplexity {r['parent_perplexity']:.2f}, {parent.model.num_parameters() / 1e6:.1f} M params")


if __name__ == "__main__":
    main()
