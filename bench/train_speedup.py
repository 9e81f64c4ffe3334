"""The paper's claim on the bundled SmolLM2: a subcloned child learns faster than the same child from random
init (and than weight selection's uniform init), on equal terms: same shape, data, batch, seed.

    .venv/bin/python bench/train_speedup.py [--steps N]     # prints markdown; writes bench/train_speedup.json

Child: 24 layers / hidden 504 / ffn 1280 (89.8 M params). subclone and uniform train N steps, random 4N;
each with its default learning rate (1e-4 inherited weights, 1e-3 random). Held-out loss on the last 20 % of
the built-in text (32 sequences of 128 tokens).
"""
import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from subclone import analyze, load_parent, resolve_shape  # noqa: E402
from subclone.train import TrainConfig, compare_inits, text_tokens  # noqa: E402

SHAPE = dict(layers=24, hidden=504, ffn=1280)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=128)
    args = ap.parse_args()
    n = args.steps
    parent = load_parent("smollm2-135m")
    imp = analyze(parent)
    shape = resolve_shape(parent.family, parent.shape, **SHAPE)
    train_tokens, eval_tokens = text_tokens(parent, "builtin", args.seq_len)  # what compare_inits trains on
    config = TrainConfig(steps=n, batch_size=args.batch_size, seq_len=args.seq_len, eval_every=max(1, n // 4))
    trained = compare_inits(parent, imp, shape, ["subclone", "uniform", "random"], config, steps={"random": 4 * n},
                            on_eval=lambda i, r: print(f"  {i} step {r['step']}: eval {r['eval_loss']}", flush=True))
    runs = {init: result for init, (_, _, result) in trained.items()}
    out = Path(__file__).with_name("train_speedup.json")
    out.write_text(json.dumps(dict(shape=shape.to_dict(), steps=n, train_tokens=train_tokens.count,
                                   eval_tokens=eval_tokens.count, runs=runs), indent=1))

    def at(init, step):
        return next(h["eval_loss"] for h in runs[init]["history"] if h["step"] == step)

    print(f"\nchild {SHAPE}, {n} steps of {args.batch_size} × {args.seq_len} tokens; "
          f"training text {train_tokens.count:,} tokens, held-out {eval_tokens.count:,}\n")
    print("| init | lr | held-out loss at 0 | at N | at 4N | train seconds |\n|---|---|---|---|---|---|")
    for init, r in runs.items():
        last = at(init, 4 * n) if init == "random" else "—"
        print(f"| {init} | {r['lr']:g} | {at(init, 0):.3f} | {at(init, n):.3f} | {last if isinstance(last, str) else f'{last:.3f}'} "
              f"| {r['seconds']} |")
    ok = at("subclone", n) < at("random", 4 * n) and at("subclone", n) < at("uniform", n)
    print(f"\nsubclone after N ({at('subclone', n):.3f}) < random after 4N ({at('random', 4 * n):.3f}) and "
          f"< uniform after N ({at('uniform', n):.3f}): {ok}")


if __name__ == "__main__":
    main()
