"""What matters in a parent, measured with forward hooks on calibration text.

Hands the plan an `Importance` record of plain tensors, per block of the parent:
- residual (L, H): mean |activation| of each residual-stream dimension at each block's output;
  `residual.sum(0)` is the one ranking shared by every layer (the residual stream is shared).
- ffn (L, F): mean |input of the FFN down projection| per hidden neuron; ffn_rms (L, F): its root mean square.
- heads (L, Hq): mean L2 norm of each query head's output (input of the attention out projection).
- magnitude (L,): relative magnitude ||f(x)|| / ||x + f(x)|| of each block y = x + f(x) (the paper).
- bi (L,): block influence 1 - cos(x, y) (ShortGPT).
- angular (L+1, L+1): angular[a, b] = mean arccos(cos(h_a, h_b)) / π between the residual stream entering block a
  and entering block b (h_L leaves the last block): how far a span of blocks a..b-1 moves it (Gromov et al., 2024).
Records are cached on disk, keyed by parent, data and settings.
"""
from __future__ import annotations

import json
import os
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import load_file, save_file

from . import data as data_mod, hooks
from .evaluate import mean_loss, pooled
from .parents import Parent, home

Progress = Callable[[float, str], None]
FIELDS = ("residual", "ffn", "heads", "magnitude", "bi", "ffn_rms", "angular", "removals", "heads_order",
          "spans")
VERSION = 4  # in the cache key: records of an older version (fewer fields, span checks with other depth maps) are
# measured again


@dataclass
class Importance:
    residual: torch.Tensor
    ffn: torch.Tensor
    heads: torch.Tensor
    magnitude: torch.Tensor
    bi: torch.Tensor
    ffn_rms: torch.Tensor | None = None  # None in hand-made records: the neuron score 'activation' does not need it
    angular: torch.Tensor | None = None  # None in hand-made records: only the block rule 'angular' needs it
    removals: torch.Tensor | None = None  # the block search's removals so far, in order (search.extend adds to it)
    heads_order: torch.Tensor | None = None  # (L, KV heads): each block's KV groups in removal order (search.order_heads)
    spans: torch.Tensor | None = None  # (L + 1,): at n blocks, 1 where the angular span beat the search (search.extend)
    meta: dict = field(default_factory=dict)  # parent, data, tokens, seconds

    @property
    def residual_ranking(self) -> torch.Tensor:
        """Per-dimension score summed over layers: one ranking for the whole residual stream."""
        return self.residual.sum(0)

    def layer_consistency(self, top: float = 0.5) -> torch.Tensor:
        """(L, L) overlap of each pair of layers' top residual dimensions (1 = same set)."""
        k = max(1, int(self.residual.shape[1] * top))
        sets = torch.zeros_like(self.residual, dtype=torch.bool)
        sets.scatter_(1, self.residual.topk(k, dim=1).indices, True)
        s = sets.float()
        return (s @ s.T) / k

    def save(self, path) -> None:
        """Written to a temporary file beside path, then renamed: readers see the old entry or the whole new one."""
        path = Path(path)
        tmp = path.with_name(f".{path.name}.{os.getpid()}-{threading.get_ident()}.tmp")
        try:
            save_file({k: getattr(self, k).contiguous() for k in FIELDS if getattr(self, k) is not None}, str(tmp),
                      metadata={"meta": json.dumps(self.meta)})
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)

    @classmethod
    def load(cls, path) -> "Importance":
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            meta = json.loads(f.metadata()["meta"])
        return cls(**load_file(str(path)), meta=meta)


def _load_cached(path: Path) -> Importance | None:
    """The cached record, or None when there is none; a damaged entry is reported once, deleted, and rebuilt."""
    if not path.exists():
        return None
    try:
        imp = Importance.load(path)
        if set(imp.meta) < {"tokens"} or imp.residual.ndim != 2:
            raise ValueError("missing fields")
        return imp
    except Exception as e:  # safetensors, json and key errors all mean the same: not a usable entry
        warnings.warn(f"subclone: the cached importance {path.name} was damaged ({type(e).__name__}); measuring again")
        path.unlink(missing_ok=True)
        return None


def _first(args, kwargs, key="hidden_states"):
    return args[0] if args else kwargs[key]


def _out(output):
    return output[0] if isinstance(output, tuple) else output


@torch.no_grad()
def measure(parent: Parent, tokens: data_mod.Tokens, batch_size: int = 4,
            progress: Progress | None = None) -> Importance:
    """Run the parent on calibration tokens and accumulate the statistics of every block."""
    fam, shape = parent.family, parent.shape
    blocks = parent.model.get_submodule(fam.layers)
    L = len(blocks)
    acc = dict(residual=torch.zeros(L, shape.hidden), ffn=torch.zeros(L, shape.ffn), ffn_rms=torch.zeros(L, shape.ffn),
               heads=torch.zeros(L, shape.heads), magnitude=torch.zeros(L), bi=torch.zeros(L),
               angular=torch.zeros(L + 1, L + 1))
    block_in, units = {}, {}  # units["h"]: (batch, seq, L+1, d), the unit vectors of the stream entering each block
    norm = torch.linalg.vector_norm

    def unit(i, v, n):  # v / n, written straight into its slot of the batch's buffer (no stacking afterwards)
        if "h" not in units:
            units["h"] = torch.empty(*v.shape[:-1], L + 1, v.shape[-1])
        return torch.div(v.float(), n, out=units["h"][..., i, :])

    pre, post = [], []

    def add_hooks(i, block):  # the block's hooks, into pre and post
        def pre_block(_, args, kwargs):
            x = block_in[i] = _first(args, kwargs)
            if i == 0:  # later blocks read what the block before wrote, already normalized there
                unit(0, x, norm(x.float(), dim=-1, keepdim=True).clamp_min(1e-12))

        def post_block(_, args, kwargs, output):
            x, y = block_in.pop(i), _out(output)
            ny = norm(y, dim=-1, keepdim=True).clamp_min(1e-12)
            u = unit(i + 1, y, ny)
            acc["residual"][i] += y.abs().sum((0, 1))
            acc["magnitude"][i] += (norm(y - x, dim=-1, keepdim=True) / ny).sum()
            acc["bi"][i] += (1 - (units["h"][..., i, :] * u).sum(-1)).sum()

        def pre_ffn(_, args, kwargs):
            a = _first(args, kwargs, "input")
            acc["ffn"][i] += a.abs().sum((0, 1))
            acc["ffn_rms"][i] += a.pow(2).sum((0, 1))

        def pre_heads(_, args, kwargs):
            z = _first(args, kwargs, "input")
            acc["heads"][i] += norm(z.unflatten(-1, (shape.heads, shape.head_dim)), dim=-1).sum((0, 1))

        pre.extend([(block, pre_block), (block.get_submodule(fam.ffn_input), pre_ffn),
                    (block.get_submodule(fam.heads_input), pre_heads)])
        post.append((block, post_block))

    for i, block in enumerate(blocks):
        add_hooks(i, block)
    n = len(tokens.ids)
    with hooks.this_thread(pre, post):
        done = 0
        for batch in tokens.batches(batch_size):
            parent.model.base_model(input_ids=batch)  # no LM head: only the blocks matter here
            h = units.pop("h").flatten(0, 1)  # (tokens, L+1, d)
            acc["angular"] += torch.arccos((h @ h.transpose(1, 2)).clamp(-1, 1)).sum(0) / torch.pi  # one matmul
            done += len(batch)
            if progress:
                progress(done / n, f"calibration batch {done}/{n}")
    count = tokens.count
    imp = Importance(**{k: v / count for k, v in acc.items()})
    imp.ffn_rms = imp.ffn_rms.sqrt()
    return imp


def cache_path(parent: Parent, text: data_mod.Text, seq_len: int = 256, samples: int = 16) -> Path:
    """Where the record for this parent (its weights), text and settings is cached."""
    key = f"{parent.fingerprint}-{data_mod.digest(text.calibration)}-{seq_len}x{samples}-v{VERSION}"
    return home() / "importance" / f"{key}.safetensors"


def calibration(parent: Parent, data: data_mod.Text | str = "builtin", seq_len: int = 256,
                samples: int = 16) -> data_mod.Tokens:
    """The calibration windows of `data`: what importance is measured on, and what the block search and the
    compensation fits use."""
    return parent.tokenize(data_mod.as_text(data).calibration, seq_len, samples, "calibration")


def analyze(parent: Parent, data: data_mod.Text | str = "builtin", seq_len: int = 256, samples: int = 16,
            cache: bool = True, progress: Progress | None = None, cached_only: bool = False) -> Importance | None:
    """Importance of a parent on the calibration split of `data`, from the disk cache when it has it.

    With cached_only, a cache miss returns None instead of measuring."""
    text = data_mod.as_text(data)
    path = cache_path(parent, text, seq_len, samples)
    if cache and (imp := _load_cached(path)) is not None:
        return imp
    if cached_only:
        return None
    tokens = calibration(parent, text, seq_len, samples)

    t = time.perf_counter()
    imp = measure(parent, tokens, progress=progress)
    imp.meta = dict(parent=parent.display_name, data=text.name, tokens=tokens.count, seq_len=seq_len,
                    seconds=round(time.perf_counter() - t, 2))
    if cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        imp.save(path)
    return imp


@torch.no_grad()
def drop_one(parent: Parent, tokens: data_mod.Tokens, progress: Progress | None = None) -> torch.Tensor:
    """What removing each block alone costs: Δ held-out loss for causal LMs, and for encoders
    1 − cos between the pooled embeddings with and without the block. Slow: one pass per block."""
    model, kind = parent.model, parent.family.kind
    blocks = model.get_submodule(parent.family.layers)

    def skip(_, args, kwargs, output):  # the block's output becomes its input: y = x
        x = _first(args, kwargs)
        return (x, *output[1:]) if isinstance(output, tuple) else x

    def run():
        return mean_loss(model, tokens) if kind == "causal-lm" else pooled(model, tokens)

    base, out = run(), []
    for i, block in enumerate(blocks):
        if progress:
            progress(i / len(blocks), f"dropping block {i + 1}/{len(blocks)}")
        with hooks.this_thread(post=[(block, skip)]):
            got = run()
        out.append(got - base if kind == "causal-lm"
                   else 1 - torch.nn.functional.cosine_similarity(got, base, dim=-1).mean())
    return torch.stack(out).float()
