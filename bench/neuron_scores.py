"""Neuron scores side by side on the bundled SmolLM2: zero-shot held-out perplexity, calibrated on the built-in text.

    .venv/bin/python bench/neuron_scores.py      # prints a markdown table

Two held-out texts, the same windows for every child: the held-out 20 % of the built-in text, and text of another
domain, the license texts Debian ships in /usr/share/common-licenses (skipped where that folder is absent).
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from subclone import Limits, Workspace, build, make_plan, resolve_shape  # noqa: E402
from subclone.evaluate import compare_lm, reference  # noqa: E402
from subclone.plan import SCORES  # noqa: E402
from subclone.search import order_heads  # noqa: E402

LICENSES = Path("/usr/share/common-licenses")
SHAPES = {"ffn 768": dict(ffn=768), "6 heads / 2 kv": dict(heads=6, kv_heads=2),
          "24 layers / 504 / 1280": dict(layers=24, hidden=504, ffn=1280)}


def main():
    ws = Workspace(Limits.local())
    parent = ws.parent("smollm2-135m")
    builtin = ws.text("builtin")
    imp = ws.importance(parent, builtin, compute=True)
    calibration = ws.calibration(parent, builtin)
    order_heads(parent, imp, calibration)  # activation-weight chooses KV groups by what the refit leaves
    held = {"built-in, held out": parent.tokenize(builtin.held_out, 256, 16, "held-out")}
    if LICENSES.is_dir():
        legal = "\n\n".join(p.read_text(errors="replace") for p in sorted(LICENSES.iterdir()) if p.is_file())
        held["licenses (another domain)"] = parent.tokenize(legal, 256, 16, "licenses")
    refs = {k: reference(parent.model, t, "causal-lm", speed=False) for k, t in held.items()}
    print("| child | score | compensation | " + " | ".join(held) + " |\n|---|---|---|" + "---|" * len(held))
    print("| parent | | | " + " | ".join(f"{r.perplexity:.2f}" for r in refs.values()) + " |")
    for name, sizes in SHAPES.items():
        shape = resolve_shape(parent.family, parent.shape, **sizes)
        for compensate in ("none", "refit"):
            for score in SCORES:
                child = build(parent, make_plan(parent, imp, shape, score=score, compensate=compensate), calibration)
                print(f"| {name} | {score} | {compensate} | " + " | ".join(
                    f"{compare_lm(child, r)['perplexity']:.2f}" for r in refs.values()) + " |", flush=True)


if __name__ == "__main__":
    main()
