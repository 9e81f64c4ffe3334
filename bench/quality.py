"""Child quality against peers, side by side in one run, on the bundled SmolLM2-135M.

    .venv/bin/python bench/quality.py [--steps 20] [--smoke]     # prints markdown (make bench puts it in RESULTS.md)

- Calibration: the built-in text's calibration split, 32 × 256 tokens: the same windows for every method that
  calibrates (ShortGPT, OptiPFair, short-transformers, and subclone's fits; subclone measures importance on the
  first 16, as the app does).
- Held out: the license texts Debian ships in /usr/share/common-licenses (legal English, another domain than the
  built-in text), 16 × 256 tokens, the same windows for every child.
- Recovery: the same 20 steps for every child (AdamW, lr 1e-4, batches of 4 × 128 tokens of the calibration split,
  10 % warm-up then cosine, seed 0), then the held-out perplexity again.
- Five more domains (bench/domains.py): every child's zero-shot perplexity on held-out text of Debian changelogs,
  READMEs and NEWS files, Perl's documentation and CPython's source, 16 × 256 tokens each, spread over each text; the
  tables give their geometric mean, and a second table each domain.
- Seconds: wall time to produce the child from the loaded parent, calibration included (for subclone: measuring
  importance, the block search and its span check at that depth when used, the fits and the build). Peak memory:
  the highest resident memory seen while producing it, above what the process held before.
"""
from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import psutil
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import domains  # noqa: E402
import peers  # noqa: E402
from subclone import Limits, Workspace, build, make_plan, resolve_shape  # noqa: E402
from subclone.evaluate import compare_lm, reference  # noqa: E402
from subclone.importance import measure  # noqa: E402
from subclone.plan import PRESETS, measures_heads  # noqa: E402
from subclone.search import choose_span, extend, order_heads  # noqa: E402
from subclone.train import TrainConfig, train  # noqa: E402

LICENSES = Path("/usr/share/common-licenses")
SHAPES = {"depth 20": dict(layers=20), "ffn 768": dict(ffn=768), "hidden 432": dict(hidden=432),
          "24 / 504 / 1280": dict(layers=24, hidden=504, ffn=1280), "6 heads / 2 KV": dict(heads=6, kv_heads=2)}
SMOKE = {"depth 28": dict(layers=28)}  # the smoke's shape: a search of two removals, not ten
PAPER, BEST = PRESETS["paper"], PRESETS["best"]


class Peak:
    """Highest RSS above the starting one while the block runs (sampled every 10 ms)."""

    def __enter__(self):
        self.proc, self.base, self.peak, self.done = psutil.Process(), 0, 0, threading.Event()
        self.base = self.peak = self.proc.memory_info().rss
        self.thread = threading.Thread(target=self._watch, daemon=True)
        self.thread.start()
        return self

    def _watch(self):
        while not self.done.wait(0.01):
            self.peak = max(self.peak, self.proc.memory_info().rss)

    def __exit__(self, *exc):
        self.done.set()
        self.thread.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)
        self.mb = (self.peak - self.base) / 2**20


TP_HEADS_SECONDS = 300  # Torch-Pruning's dependency search on grouped-query heads: given this long, then reported


class Expired(BaseException):  # not an Exception: the peer's own `except Exception` must not swallow it
    pass


def within(seconds: int, fn):
    """fn() or Expired after `seconds` (pure-Python loops: the alarm interrupts them)."""
    def expire(*_):
        raise Expired(f"did not finish within {seconds} s (MetaPruner's dependency-group search)")

    old = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        return fn()
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def held_out_text() -> str:
    if not LICENSES.is_dir():
        sys.exit(f"{LICENSES} is missing: the held-out text of another domain comes from there")
    return "\n\n".join(p.read_text(errors="replace") for p in sorted(LICENSES.iterdir()) if p.is_file())


def methods(parent, ctx, name, sizes):
    """(method, is subclone's, function) for one shape: every method that can make this cut."""
    shape = resolve_shape(parent.family, parent.shape, **sizes)
    cal, keep = ctx["cal"], shape.layers

    def ours(rules):
        def make():
            t_search = 0.0
            if rules["block_rule"] == "search":  # the order is measured once below (nested, cached per parent)
                if keep not in ctx["span_seconds"]:  # the span check at this depth: once, cached per depth
                    t = time.perf_counter()
                    choose_span(parent, ctx["imp"], cal, keep)
                    ctx["span_seconds"][keep] = time.perf_counter() - t
                t_search = ctx["search_seconds"] + ctx["span_seconds"][keep]
            if measures_heads(rules["score"], rules["compensate"]) and shape.heads < parent.shape.heads:
                t_search += ctx["heads_seconds"]  # the heads' order, measured once below
            plan = make_plan(parent, ctx["imp"], shape, **rules)
            return build(parent, plan, cal), ctx["importance_seconds"] + t_search
        return make

    out = [("subclone default (best)", True, ours(BEST)),
           ("subclone paper", True, ours(PAPER))]
    if shape.layers < parent.shape.layers:
        out += [("subclone search, no compensation", True, ours({**BEST, "compensate": "none"})),
                ("subclone angular span", True, ours({**PAPER, "block_rule": "angular"}))]
    if list(sizes) == ["layers"]:  # the depth-only peers cut nothing else
        out += [("ShortGPT block influence (bench/peers.py)", False,
                 lambda: peers.keep_layers(parent, peers.shortgpt_layers(parent, cal, keep)))]
    if sizes == dict(layers=20):
        out += [("OptiPFair 0.4.2 DEPTH, static (last)", False, lambda: peers.optipfair_depth(parent, cal, keep, False)),
                ("OptiPFair 0.4.2 DEPTH, calibrated", False, lambda: peers.optipfair_depth(parent, cal, keep, True)),
                ("short-transformers 1.0.0 angular", False, lambda: peers.short_transformers_depth(parent, cal, keep))]
    if sizes == dict(ffn=768):
        out += [("subclone activation-weight, no compensation", True, ours({**BEST, "compensate": "none"})),
                ("OptiPFair 0.4.2 MLP_GLU, static", False, lambda: peers.optipfair_ffn(parent, cal, shape.ffn, False)),
                ("OptiPFair 0.4.2 MLP_GLU, calibrated", False,
                 lambda: peers.optipfair_ffn(parent, cal, shape.ffn, True))]
    if "hidden" in sizes:
        out.append(("subclone principal directions (tied)", True, ours({**BEST, "basis": "principal"})))
    if len(sizes) == 1 and ("ffn" in sizes or "hidden" in sizes):
        out.append(("Torch-Pruning 1.6.1 (LLM example recipe)", False, lambda: peers.torch_pruning(parent, shape)))
    if "heads" in sizes and len(sizes) == 2:
        out.append(("Torch-Pruning 1.6.1 (LLM example recipe)", False,
                    lambda: within(TP_HEADS_SECONDS, lambda: peers.torch_pruning(parent, shape))))
    out.append(("weight selection (bench/peers.py)", False, lambda: peers.weight_selection(parent, shape)))
    return out


def recover(model, ctx, steps):
    config = TrainConfig(steps=steps, lr=1e-4, batch_size=ctx["batch"], seq_len=128, eval_every=steps, eval_batches=1, seed=0)
    model, _ = train(model, ctx["train"], ctx["train_eval"], config)
    return model.eval()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--smoke", action="store_true", help="one shape, two methods, 1 step of 1 × 128 tokens, 2 windows: seconds")
    ap.add_argument("--shapes", default=",".join(SHAPES))
    args = ap.parse_args()
    torch.manual_seed(0)
    ws = Workspace(Limits.local())
    parent = ws.parent("smollm2-135m")
    text = ws.text("builtin")
    n = 2 if args.smoke else 16
    cal = parent.tokenize(text.calibration, 256, 2 * n, "calibration")  # the first n are importance's (see above)
    held = parent.tokenize(held_out_text(), 256, n, "licenses")
    ref = reference(parent.model, held, "causal-lm", speed=False)
    other, missing = domains.windows(parent, n)
    t = time.perf_counter()
    imp = measure(parent, parent.tokenize(text.calibration, 256, n, "calibration"))
    ctx = dict(cal=cal, imp=imp, importance_seconds=time.perf_counter() - t, span_seconds={},
               train=parent.tokenize(text.calibration, 128, 10**9, "training"), batch=1 if args.smoke else 4,
               train_eval=parent.tokenize(text.held_out, 128, 4, "held-out"))
    shapes = SMOKE if args.smoke else {s.strip(): SHAPES[s.strip()] for s in args.shapes.split(",")}
    targets = [resolve_shape(parent.family, parent.shape, **sizes) for sizes in shapes.values()]
    deepest = min(s.layers for s in targets)
    t = time.perf_counter()
    extend(parent, imp, cal, deepest)
    ctx["search_seconds"] = time.perf_counter() - t
    heads = ""
    if any(s.heads < parent.shape.heads for s in targets):  # the heads' order only where a shape cuts heads
        t = time.perf_counter()
        order_heads(parent, imp, cal)
        ctx["heads_seconds"] = time.perf_counter() - t
        heads = f"; the heads' order {ctx['heads_seconds']:.1f} s"
    steps = 1 if args.smoke else args.steps
    theirs = domains.perplexities(parent.model, other)
    print(f"Parent SmolLM2-135M: held-out perplexity **{ref.perplexity:.2f}** on {held.count:,} license-text tokens; "
          f"on the other domains " + ", ".join(f"{k} {v:.2f}" for k, v in theirs.items() if k != "mean") +
          f" (geometric mean **{theirs['mean']:.2f}**" + (f"; missing here: {', '.join(missing)}" if missing else "") +
          f"). Importance {ctx['importance_seconds']:.1f} s; block search to {deepest} blocks "
          f"{ctx['search_seconds']:.1f} s (nested: one search serves every depth){heads}.\n")
    for name in shapes:
        rows = []
        todo = methods(parent, ctx, name, shapes[name])[: 2 if args.smoke else None]
        for label, ours, make in todo:
            with Peak() as peak:
                t = time.perf_counter()
                try:
                    got = make()
                except (Exception, Expired) as e:  # a peer that cannot make this cut is reported, not fatal
                    rows.append(dict(method=label, error=f"{type(e).__name__}: {str(e).splitlines()[0][:90]}"))
                    continue
                model, extra = got if isinstance(got, tuple) else (got, 0.0)
                seconds = time.perf_counter() - t + extra
            model = model.eval()
            zero = compare_lm(model, ref)["perplexity"]
            elsewhere = domains.perplexities(model, other)
            params = sum(p.numel() for p in model.parameters())  # a tied embedding counts once
            healed = compare_lm(recover(model, ctx, steps), ref)["perplexity"]
            rows.append(dict(method=label, ours=ours, params=params, zero=zero, healed=healed, seconds=seconds,
                             mb=peak.mb, other=elsewhere["mean"], each=elsewhere))
            print(f"<!-- {name}: {label}: {zero:.1f} -> {healed:.1f}; other domains {elsewhere['mean']:.1f} -->",
                  file=sys.stderr, flush=True)
            del model
        table(name, rows, steps)
    print(NOTES)


NOTES = """### Notes on these tables

- Every ridge strength and search setting of subclone's `best` preset was chosen on the held-out split of the
  built-in text (the calibration domain), never on the license text these tables are measured on. One exception to
  say: the refit of the residual reads (hidden cuts) uses the same λ = 0.1 as the other fits, not a λ of its own; on
  the built-in held-out split λ = 0.01 was slightly better at hidden 432 (perplexity 47.9 against 49.5), and on the
  license text worse (182 against 158).
- One setting was chosen on a third domain, neither the calibration text nor the license text: the share of its
  fitted change each depth map keeps (`compensate.DEPTH_SHARE`, T = I + s (T* − I)), on Debian's changelogs
  (`/usr/share/doc/*/changelog.Debian.gz`, the first 60 packages, 16 × 256 tokens; parent 17.24). The full fit
  (s = 1, as before 2026-12-02) is best on the built-in held-out split at depth 20 and was the lowest after training
  there, yet at depth 20 it ended above the search without maps on the license text after training (80.7 against
  79.1). Measured side by side (`/tmp` prototype, the bench's windows and recovery), zero-shot → after 20 steps:

  | share s | depth 20, built-in | changelogs | licenses | 24 / 504 / 1280, built-in | changelogs | licenses |
  |---|---|---|---|---|---|---|
  | 1 | 45.6 → 28.7 | 96.4 → 78.9 | 101.4 → 80.7 | 41.0 → 27.5 | 117.1 → 91.4 | 118.0 → 86.6 |
  | 0.75 | 46.9 → 28.9 | 93.9 → 76.0 | 99.3 → 78.2 | 40.5 → 27.0 | 114.1 → 89.6 | 114.8 → 84.9 |
  | 0.5 | 49.7 → 29.5 | 93.9 → 74.5 | 99.7 → 76.9 | 41.1 → 27.2 | 115.8 → 90.2 | 115.2 → 85.1 |
  | 0.25 | 54.7 → 30.7 | 96.7 → 74.3 | 103.3 → 77.1 | 43.8 → 28.3 | 123.4 → 94.8 | 120.3 → 87.9 |
  | 0 (no maps) | 63.1 → 32.6 | 102.8 → 75.6 | 110.8 → 79.1 | | | |

  On the changelogs 0.75 and 0.5 tie (the four numbers sum to 373.6 and 374.3); 0.75 is the better of the two on the
  built-in held-out split, so it is the default. To be plain about the order: a first prototype measured the shares on
  the built-in split and the license text together, and the license text's preference for s < 1 is what led to
  a third domain; the value was then chosen on the changelogs and the built-in split alone.
- The same way, on the same three texts, the share of its fitted change each refit of a residual read keeps
  (`compensate.RESIDUAL_SHARE`, X = W_K + s (X* − W_K); the full fit before 2026-12-02), measured in the parent's
  own dimensions (the basis then), with the depth maps at 0.75
  (the depth maps' table above was measured with the full residual refits, and so were the other built-in numbers
  of the hidden cuts in these notes where they do not say otherwise):

  | share s | hidden 432, built-in | changelogs | licenses | 24 / 504 / 1280, built-in | changelogs | licenses |
  |---|---|---|---|---|---|---|
  | 1 | 49.0 → 28.2 | 110.5 → 70.2 | 157.5 → 99.9 | 40.5 → 27.0 | 114.1 → 89.6 | 114.8 → 84.9 |
  | 0.75 | 53.3 → 28.5 | 105.0 → 65.9 | 152.7 → 91.2 | 41.8 → 27.1 | 109.4 → 85.6 | 111.3 → 82.3 |
  | 0.5 | 64.3 → 30.7 | 107.2 → 65.7 | 162.9 → 89.9 | 44.9 → 28.0 | 108.3 → 84.1 | 111.8 → 82.1 |

  On the changelogs 0.75 and 0.5 tie again (the eight numbers sum to 365.9 and 365.3) and the full fit is the worst
  of the three; 0.75 is the better of the two on the built-in held-out split, where the full fit is better still.
- The residual width can be cut in the stream's principal directions (basis `principal`, offered; SliceGPT-style: the stream rotated onto its principal directions, one basis for every block) and
  compensated by refitting every layer that reads it (q, k, v, gate, up) on the kept directions. SmolLM2 ties its
  embeddings and LM head; folding the final norm's weights into the rotated head unties them, and until 2026-12-02
  that child carried a second 49,152 × hidden matrix (hidden 432: 122.1 M parameters, 108.6 → 80.9 here;
  24 / 504 / 1280: 114.6 M, 100.4 → 81.0), so it was offered, not the default. Now a tied parent's child is tied
  again (`rotate.tie`): the symmetric A with LM head ≈ embeddings · A (least squares over the vocabulary) is
  R diag(a) Rᵀ; the child is turned by R within its kept directions and its final norm's weights become a. Exact at
  full width; cut, it loses only how the final norm mixed kept and removed directions, and the child is the size
  of one in the parent's own dimensions. Ways of tying measured at hidden 432 (built-in held-out split / this text):
  untied 30.5 / 108.6; the symmetric least-squares A 31.7 / 116.3 (adopted); the unconstrained least-squares A,
  symmetrized, 31.9 / 115.5; the same weighted by each token's count in the calibration text 31.6 / 116.4; A = the
  final norm's weights restricted to the kept directions, 38.9 / 175.8; earlier, the final norm's weights
  approximated on the rotated axes at full width 4.9 million, and rotating only within groups of equal final-norm
  weight (exact) 49.5 against 48.4 for the dimensions. Chosen on the built-in held-out split and the changelogs
  (`/tmp` prototype, the bench's windows and recovery), zero-shot → after 20 steps, with the `best` rules otherwise:

  | basis | hidden 432, built-in | changelogs | licenses | 24 / 504 / 1280, built-in | changelogs | licenses |
  |---|---|---|---|---|---|---|
  | the parent's own dimensions | 53.3 → 28.5 | 105.0 → 65.9 | 152.7 → 91.2 | 41.8 → 27.1 | 109.4 → 85.6 | 111.3 → 82.3 |
  | principal directions, tied | 31.7 → 22.3 | 65.2 → 55.5 | 116.3 → 91.9 | 33.9 → 22.9 | 97.9 → 76.0 | 105.0 → 85.6 |

  It is far ahead on the two texts the choice is made on, zero-shot and after training, and zero-shot on this one;
  after training on this text the parent's own dimensions end lower (by 0.7 at hidden 432 and 3.3 at 24 / 504 /
  1280). It is not the default yet: its first Build of the half-size child took 103 s in bench/app_speed.py
  (the rotation 15.6 s, the search 26.0 s, the span check with the child's fits on the rotated parent 52.2 s),
  against the 60 s a search may take.
- Rows marked failed are peers that could not make the cut, with their own error.
- Peak MB is resident memory above what the process held before; memory freed by earlier methods is reused, so a 0
  means the method fit in what the process already held.
- Where a goal is missed: with 6 heads / 2 KV only the attention's output projection reads a removed head. The refit
  fits the kept heads' values together with it (`compensate.fit_values`: each kept KV head's values a least-squares
  mix of all the parent's value heads, over the kept heads' own attention patterns, fitted to the parent's attention
  output): on the built-in held-out split 19.01 with the output projection alone, 18.77 with the values. What is
  still lost is the removed heads' attention patterns, which no linear fit of the kept weights brings back. Which KV
  group each block loses is chosen by the error the output projection's refit leaves (`search.order_heads`); with
  the value fit, the paper's activation ranking of the groups instead gives 21.6 on the built-in held-out split and
  34.1 on this text. Tried on the built-in held-out split and not adopted (16 fit windows, perplexity there): values
  free in every direction of the stream instead of mixes of the parent's value heads, 18.91 against 18.45; an
  output bias for the mean of what is lost, 19.69 against 19.43 with the output projection alone (on this text it
  helped, 32.6 against 35.6, but choices are not made here); choosing the group each block loses by the error left
  after the value fit (32 windows: it changes 3 of 30 blocks), 19.27 against 18.77. Fitted block by block on the
  child's own stream (earlier blocks already cut and fitted) instead of the parent's, with the parent's attention
  output as the target: 22.97 against 18.75 (this text 46.9 against 30.4); with the stream's drift added to the
  target, 27.6; weighting each token by the inverse mean square of its stream, 18.67 (30.3 here), within noise;
  choosing each block's dropped group by the next-token KL with only that block cut and value-fitted (4 calibration
  windows, from the parent's cached stream; it changes 13 of 30 blocks), 19.54 (37.5 here). Fitting each cut
  attention's q, k, v and o together by Adam (lr 3e-4) to the parent's attention output on the parent's stream,
  after the value fit, lowers the relative error of blocks 10 and 20 by 29 and 36 % but the perplexity little:
  2 epochs over the 32 windows 18.38 (30.1 here, 32 s), 8 epochs 18.21 (29.8 here, 120 s); 64 fit windows
  instead of 32, 17.65 (30.0 here) at twice the fit time. Absorbing what each cut attention still loses after the
  value fit into the same block's FFN output projection (a ridge fit of that loss on the parent's FFN activations,
  added with a share s of 0.25–1; one more pass over the 32 windows): built-in 18.79–19.20 against 18.75, the
  changelogs 25.20–25.57 against 25.56 (this text 29.75–30.25 against 30.41). Keeping a share s = 0.75 of the value
  and output fits' change, as the residual refits do: built-in 21.06, changelogs 30.41 (this text 38.4). The ridge
  strength of the head fits alone, λ = 0.01 / 0.03 / 0.1 (all fits' λ) / 0.3 / 1 / 3: built-in 19.38 / 19.06 / 18.75
  / 18.23 / 18.95 / 20.25, changelogs 26.08 / 25.71 / 25.56 / 25.54 / 25.62 / 26.30 (this text 31.37 / 30.78 /
  30.41 / 30.66 / 31.92 / 34.12); 0.1 and 0.3 tie on the changelogs (0.02 apart), so λ stays the one all fits
  share. None reaches 28.7 here; not adopted.
  Tried on 2026-12-06 (`/tmp` prototypes, the bench's windows; built-in held-out / changelogs / this text, and the
  geometric mean of the five other domains where it says "domains", their Debian texts then the first packages'
  files as this machine had them, before bench/domains.py kept to the required packages; the default 18.76 / 25.56 /
  30.41, domains 30.92):
  - Where the loss is: on this text 14 % of the next tokens repeat a pair seen earlier in their window; on those the
    default loses little (1.20 nats against the parent's 1.05; the paper's rules 2.04), on the rest 3.78 against
    3.32 (the paper's 3.99). Each block cut alone (value-fitted; 8 windows of each text) costs the parent 0.12 /
    0.25 / 0.09 nats summed over the default's choices; all cut together cost 0.23 / 0.39 / 0.41: here the cuts
    compound 4.5× (1.9× on the built-in text). Choosing each block's group by its lone cost measured on 8 windows of
    this very text (a diagnosis, not a method) gives 32.98 here; on the built-in text's, 33.31; on the
    changelogs', 38.62.
  - Coordinate descent over the group each block drops, on the whole cut child (every block cut and value-fitted;
    next-token loss on 8 calibration windows the fits do not see; 2 sweeps, 515 s): 11 of 30 blocks change,
    18.07 / 25.03 / 33.42.
  - The fits on the child's own stream, targeting the parent's full attention on that same input (the function, not
    the drift): 18.62 / 25.37 / 31.02; pooled with the parent-stream sums, 18.67 / 25.47 / 30.38. Refitting q and k
    on the child's stream to give the parent's projections of the parent's stream: 23.5 / 33.9 / 41.5; gate and up
    the same way: 67 / 396 / 80. An output bias for the mean of what is still lost, after the value fit: 18.77 /
    25.57 / 30.43.
  - Calibration sampled from the parent itself (32 × 256 tokens, temperature 1, from the start token; 53 s): this
    text 37.6; half of the windows sampled, 31.0.
  - One KV head shared by query heads of two groups, each group keeping its own frequency pairs of the rotary key:
    not built, because the groups of a block lean on the same pairs (block 20: pairs 29–31 lead all nine heads).
  - Distillation after the fits (KL(parent ‖ child) on the calibration windows, Adam, batches of 4 × 256, about
    7 s a step): the attention's weights, lr 1e-4, 4 / 8 / 12 steps: 18.35 / 25.11 / 29.52, 18.53 / 24.89 / 29.10,
    18.58 / 24.79 / 28.95; every weight, 8 steps: 18.36 / 24.44 / 28.90. Training, a minute and more, and above 28.7.
  - More calibration text for the fits, the groups chosen as now: 64 windows spread over the calibration split
    28.84 (domains 30.95; 45 s of fits), 128: 28.34 (29.86; 96 s), all 354: 28.38 (29.19; 267 s); 128 windows of
    128 tokens 28.69 (29.73; 54 s). But the groups chosen on those same windows: 128 × 128, 30.24 (27.32);
    all 354, 29.23 (29.25); 32 spread windows, 33.16 (30.06). One block decides most of it: with the fits on 32
    spread windows, switching only block 4's dropped group from the second to the first (what the spread windows
    choose) moves the built-in text 18.05 → 17.59, the changelogs 24.04 → 22.75, this text 29.54 → 32.09.
  Tried later on 2026-12-06 (built-in held-out / this text, and in brackets the five domains as in the tables now;
  the default 18.76 / 30.41 (34.29)):
  - A loss-sensitivity metric for the head fits: the Fisher E[g gᵀ] of the next-token loss at each attention output
    (g its gradient; 32 calibration windows, 37 s). Choosing the group each block drops by the refit error in that
    metric: its diagonal 18.88 / 30.82 (domains 36.48), the full metric damped by 0.1 / 1 of its mean diagonal
    19.98 / 31.31 (37.16) and 19.66 / 29.85 (36.18). The value fit in that metric, groups as now: 18.64 / 30.37
    (34.23), 18.92 / 30.72 (34.19), 18.79 / 30.57 (34.05), within noise.
  - More of the first calibration windows for the head fits, the groups chosen on 32 as now: 64, 17.64 / 30.01
    (domains 33.33; 57 s to build, against 28 s); 96, 17.62 / 29.26 (33.60; 72 s). The groups chosen on 64 windows
    as well: 19.43 / 30.59 (34.88) and 18.71 / 29.76 (34.26).
  - The group each block drops chosen by the cross-validated refit error (the output projection fitted on half of
    the 32 windows, its error measured on the other half, both ways), so the choice cannot favour a refit that
    fits its own windows: even / odd windows (2 blocks change) 19.67 / 30.90 (36.38), first / second half (5)
    20.00 / 32.09 (38.80).
  - A query head of the dropped group in a kept head's place, reading a kept group's keys through a map that
    commutes with the rotary positions (per frequency pair a complex scale, k_dropped ≈ α k_kept; in some blocks
    it leaves under 10 % of the key energy the queries weigh: blocks 7, 13, 19, 27), the kept values and output
    projection fitted over the heads' actual patterns: in none of the 30 blocks did one of the 18 swaps lower
    the fit's error (181 s), so it changes nothing.
  Nothing here was adopted: the only choices under 28.7 here pair a group choice from one set of windows with fits
  from another, picked by looking at this text; and the one that only adds data (the fits on all 354 windows)
  takes 267 s of fits where a build may take 60 s (the fits on 32 windows take 26 s, 12.5 s of it the parent's
  forward pass, the rest recomputing the attention's patterns and summing the statistics).
- The fits' calibration windows (`--fit-windows`, `SUBCLONE_FIT_WINDOWS`; 32 by default, which keeps the first
  Build under a minute): the default child at every shape with its fits on the first 96 windows instead of the
  first 32, all else as in the tables (2026-12-06, `/tmp` prototype; built-in held-out / this text / the five other
  domains' geometric mean; seconds to fit and build):

  | shape | fits on 32 | fits on 96 | seconds |
  |---|---|---|---|
  | depth 20 | 46.9 / 99.3 / 93.9 | 45.4 / 97.4 / 92.4 | 15 → 45 |
  | ffn 768 | 25.9 / 83.7 / 55.6 | 23.5 / 81.0 / 53.3 | 23 → 63 |
  | hidden 432 | 53.3 / 152.7 / 117.5 | 49.6 / 150.6 / 114.2 | 17 → 47 |
  | 24 / 504 / 1280 | 41.8 / 111.3 / 95.7 | 38.2 / 108.3 / 92.1 | 26 → 70 |
  | 6 heads / 2 KV | 18.8 / 30.4 / 34.3 | 17.6 / 29.3 / 33.6 | 28 → 72 |

  Lower on all three at every shape, by 1–9 %; of the 25 single domains, only the heads' Python source is higher
  (20.2 → 22.2). Offered, not the default: three times the fit time would take the first Build past a minute.
- The calibration windows are the first of the calibration split, and the split begins with the Python language
  reference ("The assert statement", "Assignment statements"): normative prose, the register of the license texts.
  32 windows spread evenly over the split instead (every prefix spread; importance on the first 16, the search on
  the first 2, as now), measured on 2026-12-06 for the default and the paper's rules at every shape, this text and
  the five other domains (`/tmp` prototype; the domains' Debian texts then the first packages' files, as above):

  | shape | default, first windows: this text / domains | spread: this text / domains | paper, first | paper, spread |
  |---|---|---|---|---|
  | depth 20 | 99.3 / 83.7 | 101.2 / 82.5 | 146.0 / 117.6 | 146.0 / 117.6 |
  | ffn 768 | 83.7 / 50.3 | 117.5 / 49.9 | 278.2 / 92.4 | 281.5 / 93.2 |
  | hidden 432 | 152.7 / 102.9 | 153.4 / 94.4 | 251.4 / 162.9 | 244.8 / 159.8 |
  | 24 / 504 / 1280 | 111.3 / 88.0 | 113.8 / 83.5 | 169.1 / 122.5 | 209.0 / 125.3 |
  | 6 heads / 2 KV | 30.4 / 30.9 | 33.2 / 30.0 | 41.0 / 45.3 | 43.4 / 48.0 |

  Spread windows lower the default's perplexity on the five other domains at every shape (0.8–8 %) and on the built-in
  held-out split at four of five (depth 20 46.9 → 43.4, hidden 432 53.3 → 48.7; the heads 18.8 → 19.2), and raise it
  on this text at every shape (ffn 768 by 40 %). On the domains the default is then ≤ 0.70× the paper's rules at
  every shape (0.70, 0.53, 0.59, 0.67, 0.63; with the first windows 0.71, 0.54, 0.63, 0.72, 0.68). Not adopted
  here: these tables' yardstick is this text, and the choice is the project's, with both sets of numbers in view.
- Tried on the built-in held-out split and not adopted (perplexity there, default first): keeping the residual
  dimensions that best predict the others (pivoted Cholesky of the summed input Gram matrices), hidden 432 49.5
  against 62.9 and 24 / 504 / 1280 44.9 against 50.2; refitting the block after each removed run on the child's own
  inputs, depth 20 45.5 against 46.4–49.4; fitting each depth map on the kept residual dimensions only, 44.9 against
  45.2; fitting the residual reads on the child's own narrower norm (each token's input scaled by the share of its
  stream's energy in the kept dimensions), hidden 432 49.8 against 49.0, 24 / 504 / 1280 44.3 against 43.4. 64 fit
  windows instead of 32 lower it a further 3–7 % but double the fit time (up to 44 s for a new shape).
- The block search is checked at each depth against the angular span (`search.choose_span`): both with depth maps
  fitted on 16 calibration windows, the lower next-token loss on 4 calibration windows no fit saw wins. The search
  has the lower uncompensated KL at every depth, so KL cannot choose; the compensated loss can. On the built-in
  held-out split, greedy against span with full depth maps (s = 1; all fits at 24 / 504 / 1280): 28 blocks 17.8 /
  16.3, 26 20.4 / 24.0, 24 24.3 / 23.5, 22 34.2 / 114.1, 20 45.6 / 586, 24 / 504 / 1280 43.4 / 41.0; the check chose
  the lower one at every depth. It costs about 13 s per new depth, counted in the seconds column.
"""


def table(name, rows, steps):
    ok = [r for r in rows if "error" not in r]
    peers_ok = [r for r in ok if not r["ours"] and r["method"] != "weight selection (bench/peers.py)"]
    best_peer = min(peers_ok, key=lambda r: r["zero"], default=None)
    paper = next((r for r in ok if r["method"] == "subclone paper"), None)
    default = next((r for r in ok if r["method"].startswith("subclone default")), None)
    print(f"### {name}\n")
    print(f"| method | params | zero-shot ppl | after {steps} steps | other domains, zero-shot | seconds | peak MB |\n"
          "|---|---|---|---|---|---|---|")
    low = {key: min((r[key] for r in ok), default=None) for key in ("zero", "healed", "other")}

    def cell(r, key):
        return f"**{r[key]:,.1f}**" if r[key] == low[key] else f"{r[key]:,.1f}"

    for r in rows:
        if "error" in r:
            print(f"| {r['method']} | — | failed: {r['error']} | | | | |")
            continue
        print(f"| {r['method']} | {r['params'] / 1e6:.1f} M | {cell(r, 'zero')} | {cell(r, 'healed')} | "
              f"{cell(r, 'other')} | {r['seconds']:.1f} | {r['mb']:,.0f} |")
    notes = []

    def goal(ratio):
        return "goal ≤ 0.70×: met" if ratio <= 0.7 else f"goal ≤ 0.70×: **missed by {ratio - 0.7:.2f}**"

    if default and best_peer:
        ratio = default["zero"] / best_peer["zero"]
        notes.append(f"default / best peer ({best_peer['method']}): zero-shot **{ratio:.2f}×** ({goal(ratio)}), "
                     f"after training {default['healed'] / best_peer['healed']:.2f}×, on the other domains "
                     f"{default['other'] / best_peer['other']:.2f}×")
    if default and paper:
        ratio = default["zero"] / paper["zero"]
        notes.append(f"default / paper: zero-shot **{ratio:.2f}×** ({goal(ratio)}), after training "
                     f"{default['healed'] / paper['healed']:.2f}×, on the other domains "
                     f"{default['other'] / paper['other']:.2f}×")
    if default:
        notes.append("the default is the lowest of all after training" if default["healed"] == low["healed"] else
                     f"after training the lowest is **{min(ok, key=lambda r: r['healed'])['method']}**, not the "
                     "default")
    print("\n" + "; ".join(notes) + ".\n" if notes else "")
    names = [k for k in ok[0]["each"] if k != "mean"] if ok else []
    print(f"Each of the other domains, zero-shot:\n\n| method | {' | '.join(names)} |\n|---|{'---|' * len(names)}")
    for r in ok:
        print(f"| {r['method']} | " + " | ".join(f"{r['each'][k]:,.1f}" for k in names) + " |")
    print()


if __name__ == "__main__":
    main()
