"""Principal directions of the residual stream: a shared orthogonal basis to cut the hidden size in (as SliceGPT,
Ashkboos et al. 2024, with one basis for every block so the child stays a plain model of its family).

A pre-RMSNorm transformer computes the same function when its residual stream is rotated by any orthogonal Q: fold
each norm's weights into the layers that read it, then turn everything that writes the stream (embeddings, attention
and FFN output projections) by Q and everything that reads it by Qᵀ. RMSNorm only divides by the vector's length,
which Q keeps. With Q the eigenvectors of the covariance of the normalized stream at every norm on calibration text,
by decreasing eigenvalue, the first k coordinates carry most of the stream: a child that keeps them keeps more than
one that keeps k of the parent's own dimensions.

The final norm's weights g fold into the LM head, so the rotated parent's LM head is untied from its embeddings: it
is E·diag(g)·Q where the embeddings are E·Q. A tied parent's child is tied again (`tie`): with M its embeddings (E·Q
on the kept directions) and H its LM head, the symmetric A that best gives H ≈ M·A (least squares over the
vocabulary) is R·diag(a)·Rᵀ, so turning the child's stream once more by R, within the kept directions, makes the LM
head its embeddings with the final norm's weights a. Exact at full width; cut, it loses only how diag(g) mixes kept
directions with removed ones (SmolLM2 at hidden 432: built-in held-out perplexity 31.7 tied, 30.5 untied, 53.3 with
the parent's own dimensions).
"""
from __future__ import annotations

import hashlib

import torch

from . import hooks
from .arch import R
from .errors import SubcloneError
from .parents import Parent, is_tied, new_model

BASES = {
    "dims": "keep the residual dimensions that matter most (the paper)",
    "principal": "rotate the residual stream onto its principal directions on calibration text, keep the first "
                 "(SliceGPT-style)",
}
WINDOWS = 16  # calibration windows the covariance is measured on: the ones importance uses


def applies(family) -> bool:
    return bool(family.norm_reads) and family.final_norm is not None


def require(family, name: str) -> None:
    """A clear error unless this family's residual stream can be rotated."""
    if not applies(family):
        raise SubcloneError(f"the principal-directions basis needs a pre-RMSNorm causal LM (the Llama family); "
                            f"{name} is {family.name}: use the basis 'dims'")


@torch.no_grad()
def directions(parent: Parent, tokens) -> torch.Tensor:
    """Q (hidden × hidden, orthogonal): the principal directions of the stream that enters every norm, each token
    divided by its root mean square first (what the norm reads), by decreasing variance."""
    require(parent.family, parent.name)
    fam = parent.family
    blocks = parent.model.get_submodule(fam.layers)
    norms = [b.get_submodule(n) for b in blocks for n in fam.norm_reads] + [parent.model.get_submodule(fam.final_norm)]
    d = parent.shape.hidden
    cov = torch.zeros(d, d, dtype=torch.float64)

    def hook(_, args, kwargs):
        x = (args[0] if args else kwargs["hidden_states"]).flatten(0, 1).double()
        x = x / x.pow(2).mean(1, keepdim=True).sqrt().clamp_min(1e-12)
        cov.add_(x.T @ x)

    with hooks.this_thread(pre=[(n, hook) for n in norms]):
        for batch in tokens.ids[:WINDOWS].split(2):
            parent.model.base_model(input_ids=batch, use_cache=False)
    variance, q = torch.linalg.eigh(cov)
    return q[:, variance.argsort(descending=True)].float()


def _turned(fam, state: dict, q: torch.Tensor, head: torch.Tensor | None) -> dict:
    """`state` with its residual stream turned by q (column i: new coordinate i in the old ones): each norm's weights
    folded into the layers that read it (norms of weight 1), writers turned by q, readers by qᵀ; the LM head is
    `head`, or the embeddings themselves (tied) when None."""
    reads = {m: n for n, modules in fam.norm_reads.items() for m in modules}
    out = {}
    for key, t in state.items():
        layer, inner, axes = fam.locate(key)
        t = t.float()
        module = inner.rsplit(".", 1)[0]
        if key == fam.lm_head:
            continue
        if layer is None and axes[-1:] == (R,) and len(axes) == 2:  # embeddings: they write the stream
            t = t @ q
        elif key == f"{fam.final_norm}.weight" or (layer is not None and module in fam.norm_reads):
            t = torch.ones_like(t)
        elif layer is not None and module in reads and inner.endswith(".weight"):  # reads a norm's output
            t = (t * state[f"{fam.layers}.{layer}.{reads[module]}.weight"].float()) @ q
        elif layer is not None and axes[0] == R:  # writes the stream: output projections and their biases
            t = q.T @ t
        elif R in axes:
            raise SubcloneError(f"cannot rotate tensor '{key}' of {fam.name}: it touches the residual stream in a "
                                "way the rotation does not know")
        out[key] = t.contiguous()
    out[fam.lm_head] = out[fam.embeddings[0]] if head is None else head.contiguous()
    return out


def _with_tie(config, tied: bool):
    return type(config).from_dict({**config.to_dict(), "tie_word_embeddings": tied})


@torch.no_grad()
def rotated(parent: Parent, tokens) -> Parent:
    """The parent with its residual stream in its principal directions: the same function, hidden size and
    tensors' shapes, norms of weight 1, an untied LM head (`ties` says whether its children are tied again).
    Coordinate i is the i-th principal direction, so a child keeps the first k."""
    q = directions(parent, tokens)
    fam = parent.family
    state = parent.model.state_dict()
    final = state[f"{fam.final_norm}.weight"].float()
    lm_head = state[fam.lm_head] if fam.lm_head in state else state[fam.embeddings[0]]
    out = _turned(fam, state, q, (lm_head.float() * final) @ q)
    model = new_model(fam, _with_tie(parent.config, False), state=out)
    digest = hashlib.sha256(q.numpy().tobytes()).hexdigest()[:16]
    return Parent(name=parent.name, model=model.eval(), tokenizer=parent.tokenizer, family=fam, source=parent.source,
                  basis=digest, ties=is_tied(parent.model))


def symmetric_fit(m: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """The symmetric A that minimizes ‖m·A − h‖² (m, h: n × k): G·A + A·G = mᵀh + hᵀm with G = mᵀm, solved in G's
    eigenvectors U, where it reads (λᵢ + λⱼ)·Ãᵢⱼ = (Uᵀ(mᵀh + hᵀm)U)ᵢⱼ."""
    lam, u = torch.linalg.eigh(m.T @ m)
    c = m.T @ h
    return u @ ((u.T @ (c + c.T) @ u) / (lam[:, None] + lam[None, :]).clamp_min(1e-30)) @ u.T


@torch.no_grad()
def tie(model, fam) -> torch.nn.Module:
    """A child cut from a rotated tied parent, tied again (see the module's docstring): its stream turned by R within
    its own directions, the LM head its embeddings, the final norm's weights a, where R·diag(a)·Rᵀ is the symmetric
    A with the LM head (the final norm's weights folded in) ≈ embeddings · A."""
    state = model.state_dict()
    head = state[fam.lm_head].double() * state[f"{fam.final_norm}.weight"].double()
    a, r = torch.linalg.eigh(symmetric_fit(state[fam.embeddings[0]].double(), head))
    out = _turned(fam, state, r.float(), None)
    out[f"{fam.final_norm}.weight"] = a.float()
    return new_model(fam, _with_tie(model.config, True), state=out).eval()
