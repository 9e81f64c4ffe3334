"""How good is the child: held-out perplexity and agreement with the parent, size and speed.

The parent's side of every comparison is a `Reference`, computed once per (parent, data) and reused for
every child: causal LMs keep the parent's next-token log-probabilities on the held-out tokens (fp32, so
KL stays exact: 2,040 positions × 49,152 × 4 bytes ≈ 400 MB for SmolLM2); encoders keep its mean-pooled
embeddings. `evaluate(child, ref)` then costs one child forward pass.

Causal LMs: perplexity of child and parent, top-1 agreement and KL(parent || child) of next-token
distributions. Encoders: cosine between the child's mean-pooled embedding and the parent's, read on the
residual dimensions the child kept. Both: parameters, MB, ms per generated (or encoded) token.
"""
from __future__ import annotations

import itertools
import math
import os
import statistics
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as nnf
from transformers.generation.streamers import BaseStreamer

from .data import Tokens

BATCH = 4


def n_params(model) -> int:
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def size_mb(model) -> float:
    return round(sum(p.numel() * p.element_size() for p in {id(p): p for p in model.parameters()}.values()) / 2**20, 1)


class _Clock(BaseStreamer):
    """When generate hands over each token (the prompt first, then every new token)."""

    def __init__(self):
        self.times = []

    def put(self, value):
        self.times.append(time.perf_counter())

    def end(self):
        pass


@torch.no_grad()
def ms_per_token(model, tokens: Tokens, kind: str, new_tokens: int = 9, repeats: int = 3) -> float:
    """Median latency: per generated token after the first (causal LMs, greedy with KV cache: the decoding, not the
    prompt's prefill) or per encoded token."""
    if new_tokens < 2:
        raise ValueError("ms_per_token times the steps after the first token: new_tokens must be at least 2")
    times = []
    for _ in range(repeats):
        if kind == "causal-lm":
            clock = _Clock()
            model.generate(tokens.ids[:1, :32], max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                           pad_token_id=0, streamer=clock)
            times.append((clock.times[-1] - clock.times[1]) * 1000 / (new_tokens - 1))
        else:
            batch = tokens.ids[:4]
            t = time.perf_counter()
            model(input_ids=batch)
            times.append((time.perf_counter() - t) * 1000 / batch.numel())
    return round(statistics.median(times), 3)


def pooled(model, tokens: Tokens, batch_size: int = BATCH) -> torch.Tensor:
    """(n, hidden) mean-pooled last hidden states of an encoder, one row per sequence."""
    return torch.cat([model(input_ids=b).last_hidden_state.mean(1) for b in tokens.batches(batch_size)])


def mean_loss(model, tokens: Tokens, batch_size: int = BATCH, batches: int | None = None, device=None) -> torch.Tensor:
    """Mean next-token loss of a causal LM over (the first `batches` batches of) tokens."""
    return torch.stack([model(input_ids=b.to(device), labels=b.to(device)).loss.float()
                        for b in itertools.islice(tokens.batches(batch_size), batches)]).mean()


@dataclass
class Reference:
    """The parent, measured once on the held-out tokens."""

    kind: str
    tokens: Tokens
    params: int
    size_mb: float
    target: list["Target"] | None = None  # causal LM: per batch, the parent's next-token distributions
    top1: list[torch.Tensor] | None = None  # causal LM: per batch argmax, from the fp32 logits
    perplexity: float | None = None
    pooled: torch.Tensor | None = None  # encoder: (n, hidden) mean-pooled embeddings
    ms_per_token: float | None = None


@dataclass
class Target:
    """Next-token distributions p to measure KL(p ‖ q) against, as what that needs of them: KL(p ‖ q) at a position
    is Σ p log p − Σ p · logits_q + logsumexp(logits_q) · Σ p, so another model's log-softmax is never formed (about
    two thirds of an evaluation's cost beyond the forward). Σ p is kept as it is, not 1: p is rounded in fp32."""

    p: torch.Tensor  # (..., vocab)
    negentropy: torch.Tensor  # (...): Σ p log p
    mass: torch.Tensor  # (...): Σ p

    @classmethod
    def of(cls, logits: torch.Tensor) -> "Target":
        logp = logits.float().log_softmax(-1)
        p = logp.exp()
        return cls(p, (p * logp).sum(-1), p.sum(-1))

    def kl(self, logits: torch.Tensor, lse: torch.Tensor | None = None) -> torch.Tensor:
        """KL(p ‖ softmax(logits)) at each position; lse = logits.logsumexp(-1) when the caller has it."""
        lse = logits.logsumexp(-1) if lse is None else lse
        return self.negentropy - (self.p * logits).sum(-1) + lse * self.mass


def _next_token(model, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
    """A causal LM's next-token predictions on one batch: fp32 logits, their logsumexp, summed NLL of the text."""
    logits = model(input_ids=batch).logits[:, :-1].float()
    lse = logits.logsumexp(-1)
    return logits, lse, (lse - logits.gather(-1, batch[:, 1:, None])[..., 0]).sum().item()


@torch.no_grad()
def reference(parent_model, tokens: Tokens, kind: str, speed: bool = True) -> Reference:
    ref = Reference(kind, tokens, n_params(parent_model), size_mb(parent_model))
    if kind == "causal-lm":
        ref.target, ref.top1, nll, n = [], [], 0.0, 0
        for batch in tokens.batches(BATCH):
            logits, _, batch_nll = _next_token(parent_model, batch)
            nll += batch_nll
            n += batch[:, 1:].numel()
            ref.target.append(Target.of(logits))
            ref.top1.append(logits.argmax(-1))
        ref.perplexity = round(math.exp(nll / n), 3)
    else:
        ref.pooled = pooled(parent_model, tokens)
    if speed:
        ref.ms_per_token = ms_per_token(parent_model, tokens, kind)
    return ref


@torch.no_grad()
def compare_lm(child, ref: Reference) -> dict:
    """Perplexity, top-1 agreement and KL(parent || child) over the held-out tokens, in one pass."""
    nll = agree = kl = 0.0
    n = 0
    for batch, target, top1 in zip(ref.tokens.batches(BATCH), ref.target, ref.top1):
        lc, lse, batch_nll = _next_token(child, batch)
        nll += batch_nll
        agree += (lc.argmax(-1) == top1).sum().item()
        kl += target.kl(lc, lse).sum().item()
        n += top1.numel()
    return dict(perplexity=round(math.exp(nll / n), 3), parent_perplexity=ref.perplexity,
                top1_agreement=round(agree / n, 4), kl_to_parent=round(kl / n, 4), eval_tokens=n)


@torch.no_grad()
def compare_encoder(child, ref: Reference, residual: list[int] | None) -> dict:
    """Mean cosine of child and parent sentence embeddings, on the child's kept residual dimensions."""
    p = ref.pooled[:, residual] if residual is not None else ref.pooled
    c = pooled(child, ref.tokens)
    return dict(cosine_to_parent=round(nnf.cosine_similarity(c, p, dim=-1).mean().item(), 4),
                eval_sequences=len(ref.tokens.ids))


@torch.no_grad()
def paired_speed(parent_model, child, tokens: Tokens, kind: str, repeats: int = 3) -> dict:
    """Parent and child timed back to back, alternating, in one call, so that whatever else the machine does hits
    both alike; the speed-up is the median of the paired ratios, with their range."""
    parent_ms, child_ms = [], []
    for _ in range(repeats):
        parent_ms.append(ms_per_token(parent_model, tokens, kind, repeats=1))
        child_ms.append(ms_per_token(child, tokens, kind, repeats=1))
    ratios = sorted(p / c for p, c in zip(parent_ms, child_ms))
    load, cores = os.getloadavg()[0], os.cpu_count() or 1
    busy = f"; the machine was busy (load {load:.1f} on {cores} cores): the milliseconds are inflated, the " \
           "ratio less so" if load > 0.75 * cores else ""
    return dict(ms_per_token=round(statistics.median(child_ms), 3),
                parent_ms_per_token=round(statistics.median(parent_ms), 3),
                speedup=round(statistics.median(ratios), 2), speedup_range=[round(ratios[0], 2), round(ratios[-1], 2)],
                speed_measured=f"parent and child alternately, {repeats} times each, "
                               + ("greedy decoding after the prompt" if kind == "causal-lm" else "encoding")
                               + " on this machine" + busy)


def evaluate(child, ref: Reference, residual: list[int] | None = None, speed: bool = True,
             parent_model=None) -> dict:
    """Everything the CLI's `eval` and the app's results table show, as one flat dict. With the parent model given,
    speed is measured for parent and child side by side (`paired_speed`); else against the Reference's timing."""
    out = compare_lm(child, ref) if ref.kind == "causal-lm" else compare_encoder(child, ref, residual)
    out.update(params=n_params(child), parent_params=ref.params, size_mb=size_mb(child), parent_size_mb=ref.size_mb)
    if speed and parent_model is not None:
        out.update(paired_speed(parent_model, child, ref.tokens, ref.kind))
    elif speed:
        out["ms_per_token"] = ms_per_token(child, ref.tokens, ref.kind)
        if ref.ms_per_token is not None:
            out["parent_ms_per_token"] = ref.ms_per_token
            out["speedup"] = round(ref.ms_per_token / out["ms_per_token"], 2)
    return out


def held_out(parent, data="builtin", seq_len: int = 256, samples: int = 8) -> Tokens:
    """Evaluation tokens: the held-out split of `data` (a Text or a spec), never seen by calibration."""
    from .data import as_text

    return parent.tokenize(as_text(data).held_out, seq_len, samples, "held-out evaluation")


# ---- looking at outputs ---------------------------------------------------------------------------

@torch.no_grad()
def generate(model, tokenizer, prompt: str, new_tokens: int = 40) -> str:
    """Greedy continuation of prompt: what the app shows side by side for parent and child."""
    ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
    out = model.generate(ids, max_new_tokens=new_tokens, do_sample=False,
                         pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id or 0)
    return tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


@torch.no_grad()
def similarities(model, tokenizer, sentences: list[str], residual: list[int] | None = None) -> torch.Tensor:
    """Cosine similarity of every pair of sentences' mean-pooled embeddings: the encoders' demo."""
    enc = tokenizer(sentences, padding=True, truncation=True, max_length=128, return_tensors="pt")
    h = model(**enc).last_hidden_state
    mask = enc["attention_mask"].unsqueeze(-1).to(h.dtype)
    e = (h * mask).sum(1) / mask.sum(1)
    e = nnf.normalize(e, dim=-1)
    return e @ e.T
