"""How good is the child: held-out perplexity and agreement with the parent, size and speed.

Causal LMs: perplexity of child and parent on the held-out split, top-1 agreement and KL(parent || child)
of next-token distributions, parameters, ms per generated token. Encoders: cosine between the child's
mean-pooled embedding and the parent's, read on the residual dimensions the child kept.
"""
from __future__ import annotations

import math
import statistics
import time

import torch
import torch.nn.functional as nnf

from .data import Tokens


def n_params(model) -> int:
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def size_mb(model) -> float:
    return round(sum(p.numel() * p.element_size() for p in {id(p): p for p in model.parameters()}.values()) / 2**20, 1)


@torch.no_grad()
def ms_per_token(model, tokens: Tokens, kind: str, new_tokens: int = 32, repeats: int = 3) -> float:
    """Median latency: per generated token (causal LMs, greedy with KV cache) or per encoded token."""
    times = []
    for _ in range(repeats):
        if kind == "causal-lm":
            prompt = tokens.ids[:1, :32]
            t = time.perf_counter()
            model.generate(prompt, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                           pad_token_id=0)
            times.append((time.perf_counter() - t) * 1000 / new_tokens)
        else:
            batch = tokens.ids[:4]
            t = time.perf_counter()
            model(input_ids=batch)
            times.append((time.perf_counter() - t) * 1000 / batch.numel())
    return round(statistics.median(times), 3)


@torch.no_grad()
def compare_lm(child, parent, tokens: Tokens, batch_size: int = 4) -> dict:
    """Perplexities, top-1 agreement and KL(parent || child) over held-out tokens, in one pass."""
    nll_c = nll_p = agree = kl = 0.0
    n = 0
    for batch in tokens.batches(batch_size):
        lc = child(input_ids=batch).logits[:, :-1].float()
        lp = parent(input_ids=batch).logits[:, :-1].float()
        target = batch[:, 1:]
        logq, logp = lc.log_softmax(-1), lp.log_softmax(-1)
        nll_c += nnf.nll_loss(logq.flatten(0, 1), target.flatten(), reduction="sum").item()
        nll_p += nnf.nll_loss(logp.flatten(0, 1), target.flatten(), reduction="sum").item()
        agree += (lc.argmax(-1) == lp.argmax(-1)).sum().item()
        kl += (logp.exp() * (logp - logq)).sum().item()
        n += target.numel()
    return dict(perplexity=round(math.exp(nll_c / n), 3), parent_perplexity=round(math.exp(nll_p / n), 3),
                top1_agreement=round(agree / n, 4), kl_to_parent=round(kl / n, 4), eval_tokens=n)


def _pooled(model, batch):
    return model(input_ids=batch).last_hidden_state.mean(1)


@torch.no_grad()
def compare_encoder(child, parent, tokens: Tokens, residual: list[int] | None, batch_size: int = 8) -> dict:
    """Mean cosine of child and parent sentence embeddings, on the child's kept residual dimensions."""
    cos = []
    for batch in tokens.batches(batch_size):
        p = _pooled(parent, batch)
        p = p[:, residual] if residual is not None else p
        cos.append(nnf.cosine_similarity(_pooled(child, batch), p, dim=-1))
    return dict(cosine_to_parent=round(torch.cat(cos).mean().item(), 4), eval_sequences=len(tokens.ids))


def evaluate(child, parent, tokens: Tokens, kind: str, residual: list[int] | None = None,
             speed: bool = True) -> dict:
    """Everything the CLI's `eval` and the app's results table show, as one flat dict."""
    out = compare_lm(child, parent, tokens) if kind == "causal-lm" else compare_encoder(child, parent, tokens, residual)
    out.update(params=n_params(child), parent_params=n_params(parent), size_mb=size_mb(child),
               parent_size_mb=size_mb(parent))
    if speed:
        out["ms_per_token"] = ms_per_token(child, tokens, kind)
        out["parent_ms_per_token"] = ms_per_token(parent, tokens, kind)
        out["speedup"] = round(out["parent_ms_per_token"] / out["ms_per_token"], 2)
    return out


def held_out(parent, data: str = "builtin", seq_len: int = 256, samples: int = 8) -> Tokens:
    """Evaluation tokens: the held-out split of `data`, never seen by calibration."""
    from . import data as data_mod

    _, text = data_mod.split(data_mod.load_text(data))
    return parent.tokenize(text, seq_len, samples, "held-out evaluation")
