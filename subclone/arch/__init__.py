"""Model families as declarative specs: where the blocks live and which axis of each tensor is what.

A spec names every tensor of a family's state dict and, for each of its axes, what that axis
carries: the residual stream (R), FFN hidden neurons (F), query heads (Q), key/value heads (KV),
GPT-2's fused q|k|v projection (QKV), or something subcloning never cuts (None: vocabulary,
positions). Importance, planning and slicing read only this spec, so adding a family is one file.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Callable

from ..errors import SubcloneError

R, F, Q, KV, QKV = "residual", "ffn", "heads", "kv_heads", "qkv"


def head_dims(heads, head_dim: int) -> list[int]:
    """The indices along a Q or KV axis of the given heads, each head_dim wide, in the order given."""
    return [h * head_dim + d for h in heads for d in range(head_dim)]


@dataclass(frozen=True)
class Shape:
    """The sizes of a model: what the sliders move. head_dim is inherited from the parent."""

    layers: int
    hidden: int
    ffn: int
    heads: int
    kv_heads: int
    head_dim: int

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Family:
    name: str
    model_types: tuple[str, ...]
    kind: str  # "causal-lm" (next-token LM) or "encoder" (embeddings)
    layers: str  # dotted path of the ModuleList of blocks in the loaded model
    sizes: dict[str, str]  # Shape field -> config attribute; kv_heads absent means kv_heads == heads
    tensors: dict[str, tuple]  # global state-dict key -> axes
    block: dict[str, tuple]  # key under "<layers>.<i>." -> axes
    ffn_input: str  # module in a block whose input is the FFN hidden activation
    heads_input: str  # module in a block whose input is the concatenated per-head outputs
    embeddings: tuple[str, ...] = ()  # lookup tables (vocabulary, positions): no fan-in to scale
    lm_head: str | None = None  # output projection to the vocabulary, often tied to the embeddings
    final_norm: str | None = None  # causal LMs: the norm between the last block and the LM head
    weights_in_out: bool = False  # GPT-2's Conv1D stores weights as (in, out) instead of (out, in)
    head_dim_from_hidden: bool = False  # config derives head_dim = hidden / heads (no head_dim field)
    defaults: dict = field(default_factory=dict)  # config attribute -> value when the config says None
    # pre-RMSNorm families: block norm -> the modules that read its output (what a rotation of the residual stream
    # folds the norm's weights into; empty: the stream cannot be rotated)
    norm_reads: dict = field(default_factory=dict)
    # causal LMs with separate value projections: the attention module in a block, its value projection, and
    # probs(attention module, its input, its keyword arguments) -> (batch, heads, T, T), the attention probabilities
    # it computes (what the fit of the kept heads' values reads; None: only their output projection is refit)
    attention: str | None = None
    values: str | None = None
    attention_probs: Callable | None = None

    def fan_in(self, axes: tuple):
        """What the input axis of a weight carries (None for anything but a 2-D weight)."""
        return (axes[0] if self.weights_in_out else axes[1]) if len(axes) == 2 else None

    def locate(self, key: str) -> tuple[int | None, str, tuple]:
        """(block index or None, key inside the block, axes) of a state-dict key; unknown keys fail loudly."""
        prefix = self.layers + "."
        if key.startswith(prefix):
            index, _, rest = key[len(prefix):].partition(".")
            if rest in self.block:
                return int(index), rest, self.block[rest]
        elif key in self.tensors:
            return None, key, self.tensors[key]
        raise SubcloneError(f"the {self.name} spec does not know tensor '{key}': this checkpoint has parts "
                            "subcloning would not cut correctly, so it is refused")

    def read_shape(self, config) -> Shape:
        get = lambda k: getattr(config, self.sizes[k], None) if k in self.sizes else None  # noqa: E731
        hidden, heads = get("hidden"), get("heads")
        ffn = get("ffn") or self.defaults.get("ffn", 0) * hidden
        head_dim = None if self.head_dim_from_hidden else getattr(config, "head_dim", None)
        return Shape(layers=get("layers"), hidden=hidden, ffn=ffn, heads=heads,
                     kv_heads=get("kv_heads") or heads, head_dim=head_dim or hidden // heads)

    def child_config(self, config, shape: Shape, kept_layers: list[int]):
        """The parent's config with the child's sizes: everything else (rope, norms, vocab) unchanged."""
        d = config.to_dict()
        d.pop("quantization_config", None)
        for k, attr in self.sizes.items():
            d[attr] = getattr(shape, k)
        if not self.head_dim_from_hidden:
            d["head_dim"] = shape.head_dim
        if d.get("layer_types"):
            d["layer_types"] = [d["layer_types"][i] for i in kept_layers]
        return type(config).from_dict(d)


def _load_families() -> dict[str, Family]:
    from . import bert, gpt2, llama

    return {f.name: f for f in (llama.FAMILY, gpt2.FAMILY, bert.FAMILY)}


FAMILIES = _load_families()


def supported() -> str:
    return ", ".join(f"{f.name} ({', '.join(f.model_types)})" for f in FAMILIES.values())


def family_for(config) -> Family:
    """The spec for a config, or a clear error naming what is supported."""
    model_type = getattr(config, "model_type", None)
    for fam in FAMILIES.values():
        if model_type in fam.model_types:
            return fam
    raise SubcloneError(f"unsupported model family '{model_type}'. Supported: {supported()}")
