"""Build the child: slice the parent's tensors along the plan's kept indices, scale, load into a plain model.

Every tensor is cut by the axes its family spec declares, so one function serves every family. Kept
indices stay in ascending order: a child of the parent's full shape is the parent itself, and any
smaller child is the parent with some rows and columns removed. The child is a vanilla transformers
model built from an explicit config, with no random initialization of weights that are overwritten.
"""
from __future__ import annotations

import math

import torch

from .arch import F, KV, Q, QKV, R, head_dims
from .compensate import fit
from .errors import SubcloneError
from .parents import Parent, new_model
from .plan import Plan
from .rotate import rotated, tie


def _indices(axis, plan: Plan, j: int | None, parent_heads: int, head_dim: int) -> torch.Tensor | None:
    """Kept indices along one axis; j is the position of the block in the child (None: global tensor)."""
    if axis == R:
        return torch.tensor(plan.residual)
    if axis == F:
        return torch.tensor(plan.ffn[j])
    if axis == Q:
        return torch.tensor(head_dims(plan.heads[j], head_dim))
    if axis == KV:
        return torch.tensor(head_dims(plan.kv_heads[j], head_dim))
    if axis == QKV:  # GPT-2's c_attn: [q | k | v], each parent_heads * head_dim wide
        q = torch.tensor(head_dims(plan.heads[j], head_dim))
        return torch.cat([q + part * parent_heads * head_dim for part in range(3)])
    return None


def _scale_group(family, key: str, axes) -> str | None:
    if key in family.embeddings or key == family.lm_head:
        return "embed"
    return {R: "residual", F: "ffn", Q: "attn"}.get(family.fan_in(axes))  # norms and biases: never scaled


def slice_state(parent: Parent, plan: Plan, fitted: dict | None = None) -> dict[str, torch.Tensor]:
    """The child's state dict; `fitted` replaces some parent tensors (same key, same shape) before slicing."""
    family, pshape = parent.family, parent.shape
    ratio = {"residual": pshape.hidden / plan.shape.hidden, "ffn": pshape.ffn / plan.shape.ffn,
             "attn": pshape.heads / plan.shape.heads, "embed": pshape.hidden / plan.shape.hidden}
    position = {layer: j for j, layer in enumerate(plan.layers)}
    out, done = {}, {}
    for key, tensor in parent.model.state_dict().items():
        tensor = (fitted or {}).get(key, tensor)
        layer, inner, axes = family.locate(key)
        if layer is not None and layer not in position:
            continue
        j = position.get(layer)
        name = key if layer is None else f"{family.layers}.{j}.{inner}"
        if tensor.data_ptr() in done:  # tied weights stay one tensor
            out[name] = out[done[tensor.data_ptr()]]
            continue
        t = tensor
        for dim, axis in enumerate(axes):
            idx = _indices(axis, plan, j, pshape.heads, pshape.head_dim)
            if idx is not None:
                t = t.index_select(dim, idx)
            if axis == KV and plan.kv_merge > 1:  # each run of kv_merge kept KV heads becomes their mean
                t = t.unflatten(dim, (-1, plan.kv_merge, pshape.head_dim)).mean(dim + 1).flatten(dim, dim + 1)
        group = _scale_group(family, key, axes)
        if group and plan.scale.get(group) and ratio[group] != 1:
            t = t * math.sqrt(ratio[group])
        out[name] = t.contiguous()
        done[tensor.data_ptr()] = name
    return out


def build(parent: Parent, plan: Plan, calibration=None, progress=None, fitted: dict | None = None) -> torch.nn.Module:
    """The child as a plain transformers model, in eval mode. A plan with compensation fits it first, on the
    calibration tokens (compensate.fit: seconds, with progress), unless `fitted` gives those fits already; a plan in
    principal directions rotates the parent first (rotate.rotated), unless `parent` is rotated already, and the child of
    a tied parent is tied again (rotate.tie)."""
    family = parent.family
    if plan.basis != "dims" and not parent.basis:
        if calibration is None:
            raise SubcloneError("the plan keeps principal directions of the residual stream, measured on calibration "
                                "text: pass the calibration tokens")
        parent = rotated(parent, calibration)
    if bool(parent.basis) != (plan.basis != "dims"):
        raise SubcloneError(f"the plan's residual basis is '{plan.basis}' but the parent given is "
                            f"{'rotated' if parent.basis else 'not rotated'}")
    config = family.child_config(parent.config, plan.shape, plan.layers)
    if fitted is None and plan.compensate != "none":
        if calibration is None:
            raise SubcloneError(f"the plan's compensation '{plan.compensate}' is fitted on calibration text: "
                                "pass the calibration tokens")
        fitted = fit(parent, plan, calibration, plan.compensate, progress)
    state = slice_state(parent, plan, fitted)
    child = new_model(family, config, state=state).eval()  # strict: a wrongly sliced tensor fails to load
    return tie(child, family) if parent.ties else child
