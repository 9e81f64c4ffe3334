"""What the measurements cost on the bundled SmolLM2: hooked calibration against a plain forward over the same tokens,
and the evaluation's tokens/s as a fraction of the machine's measured fp32 matmul peak.

    .venv/bin/python bench/throughput.py [--repeats 9]      # prints markdown

Each pair is timed alternately (plain, hooked, plain, hooked, ...); the ratio reported is the median of the pairs'
ratios, so load from other processes falls on both sides of each.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from subclone import Limits, Workspace  # noqa: E402
from subclone.evaluate import compare_lm, reference  # noqa: E402
from subclone.importance import calibration, measure  # noqa: E402
from subclone.plan import count, is_tied  # noqa: E402


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


@torch.no_grad()
def matmul_peak(n: int = 2048, repeats: int = 10) -> float:
    """Best fp32 GFLOP/s of an n × n matmul (the ceiling a dense forward can reach here)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    return max(2 * n**3 / timed(lambda: a @ b) for _ in range(repeats)) / 1e9


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=9)
    args = ap.parse_args()
    ws = Workspace(Limits.local())
    parent = ws.parent("smollm2-135m")
    text = ws.text("builtin")
    tokens = calibration(parent, text)  # what importance is measured on
    model = parent.model

    @torch.no_grad()
    def plain():
        for batch in tokens.batches(4):
            model.base_model(input_ids=batch)

    plain()
    pairs = [(timed(plain), timed(lambda: measure(parent, tokens))) for _ in range(args.repeats)]
    p, h = statistics.median(a for a, _ in pairs), statistics.median(b for _, b in pairs)
    ratios = sorted(b / a for a, b in pairs)  # each pair ran back to back: its ratio sees one load
    print("| measurement | median seconds | ratio |\n|---|---|---|")
    print(f"| plain forward, {tokens.count:,} calibration tokens (blocks, no LM head) | {p:.2f} | 1 |")
    print(f"| hooked calibration (`importance.measure`) over the same tokens | {h:.2f} | "
          f"**{statistics.median(ratios):.2f}×** median of {len(pairs)} back-to-back pairs ({ratios[0]:.2f}–"
          f"{ratios[-1]:.2f}); ratio of the medians {h / p:.2f}× |")

    held = parent.tokenize(text.held_out, 256, 16, "held-out")
    ref = reference(model, held, "causal-lm", speed=False)
    evals = sorted(timed(lambda: compare_lm(model, ref)) for _ in range(args.repeats))
    e = statistics.median(evals)
    _, flops = count(model, parent.family, parent.shape, is_tied(model))  # per token, LM head and attention included
    peak = matmul_peak()
    achieved = flops * held.count / e / 1e9
    print(f"| evaluation (`compare_lm`: forward, log-softmax, KL, top-1) over {held.count:,} held-out tokens | "
          f"{e:.2f} | {held.count / e:,.0f} tokens/s |")
    print(f"\nfp32 matmul peak (2048², best of 10): **{peak:.0f} GFLOP/s**. The evaluation runs "
          f"{flops / 1e6:.0f} MFLOPs/token × {held.count / e:,.0f} tokens/s = {achieved:.0f} GFLOP/s, "
          f"**{achieved / peak:.0%} of the peak**.")


if __name__ == "__main__":
    main()
