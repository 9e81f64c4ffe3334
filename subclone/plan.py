"""The child's design: a target shape, which blocks / neurons / heads to keep, and how to scale.

Everything here is instant: no model is built. `valid_values` says which sizes are possible (the
app's sliders snap to them), `resolve_shape` refuses an impossible one and names the nearest valid
values, `count` gives parameters and FLOPs/token from the family spec alone, and `make_plan` turns
an `Importance` record plus rules into a `Plan`: plain data, written to subclone.json by the CLI,
that `clone.build` follows.
"""
from __future__ import annotations

import bisect
import math
from dataclasses import asdict, dataclass, field

import torch

from .arch import F, KV, Q, QKV, R, Family, Shape
from .compensate import COMPENSATE
from .rotate import BASES, require
from .rotate import applies as rotate_applies
from .errors import SubcloneError, shown
from .importance import Importance
from .parents import is_tied  # noqa: F401  (the plans' size counts read it; so do the tests)

SCALE_GROUPS = ("residual", "ffn", "attn", "embed")
# Measured on SmolLM2-135M -> 24 layers / 504 hidden / 1280 ffn, held-out perplexity with no training
# (parent 14.6): no scaling 110.0; residual fan-in 94.5; + embeddings/LM head 85.5; + ffn fan-in 87.7.
DEFAULT_SCALE = {"residual": True, "ffn": False, "attn": False, "embed": True}
FLOPS_CONTEXT = 256  # context length at which attention FLOPs/token are counted


# ---- neuron rules: (scores, k, generator) -> k kept indices, ascending ----------------------------

def _importance(scores, k, gen):
    return scores.topk(k).indices


def _uniform(scores, k, gen):
    """Weight selection (Xu et al., 2023), whatever the scores: evenly spaced from the first, every (d/k)-th when k
    divides d, else floor(i·d/k)."""
    return torch.arange(k) * len(scores) // k


def _first(scores, k, gen):
    return torch.arange(k)


def _random(scores, k, gen):
    return torch.randperm(len(scores), generator=gen)[:k]


NEURON_RULES = {"importance": _importance, "uniform": _uniform, "first": _first, "random": _random}


# ---- neuron scores: what ranks FFN neurons and heads before a neuron rule picks from the ranking ---------

SCORES = {
    "activation": "the paper: mean |activation| of each FFN neuron, mean norm of each head's output",
    "activation-weight": "FFN neurons by root-mean-square activation times the norm of the weights that read it; "
                         "with a refit, KV groups removed one by one, each time the one the refit of the output "
                         "projection makes up best (measured once, at Build); heads otherwise as the paper",
}
# Measured on SmolLM2 (zero-shot perplexity, calibrated on the built-in text; held-out built-in / license texts):
# ffn 768: activation 47.8 / 278.2, activation-weight 41.9 / 153.0. Weighting heads by their out-projection columns
# made 6 heads / 2 KV worse (32.2 / 41.0 -> 46.8 / 65.4). KV groups chosen by the refit's error: with the refit
# 22.7 / 35.2 -> 19.0 / 34.7; without it 1,071 / 1,907 (the groups it drops are the ones only the refit makes up for).


def measures_heads(score: str, compensate: str) -> bool:
    """Whether a plan's heads follow search.order_heads: the activation-weight score with a refit of the output
    projections (the order says what the refit makes up best; without the refit it drops the wrong groups)."""
    return score == "activation-weight" and compensate in ("refit", "all")


def _reading_norms(parent, layer: int, module: str, groups: int) -> torch.Tensor:
    """L2 norm of the weights that read each input of a block's module, pooled in `groups` equal groups."""
    w = parent.model.get_submodule(f"{parent.family.layers}.{layer}.{module}").weight.detach().float()
    per_input = (w if parent.family.weights_in_out else w.T).pow(2).sum(1)
    return per_input.view(groups, -1).sum(1).sqrt()


def neuron_scores(parent, importance: Importance, layer: int, score: str,
                  compensate: str = "none") -> tuple[torch.Tensor, torch.Tensor]:
    """(FFN neuron scores, head scores) of one parent block under the named score (and compensation)."""
    _rule(SCORES, score, "neuron score")
    if score == "activation":
        return importance.ffn[layer], importance.heads[layer]
    ffn = importance.ffn_rms if importance.ffn_rms is not None else importance.ffn
    heads = importance.heads[layer]
    if measures_heads(score, compensate) and importance.heads_order is not None:
        # each KV group's rank in the removal order first, the paper's activation inside a group
        order = importance.heads_order[layer]
        rank = torch.empty_like(order)
        rank[order] = torch.arange(len(order))
        heads = rank.repeat_interleave(len(heads) // len(order)).float() * (heads.sum() + 1) + heads
    return ffn[layer] * _reading_norms(parent, layer, parent.family.ffn_input, parent.shape.ffn), heads


# ---- block rules: (importance, n) -> n kept block indices, ascending -----------------------------

def _keep_top(metric):
    return lambda imp, n: getattr(imp, metric).topk(n).indices.tolist()


def _middle(imp, n):  # the paper: middle blocks are closest to identity, drop them
    L = len(imp.magnitude)
    start = n // 2  # drop L - n blocks centred on the middle
    return [i for i in range(L) if not start <= i < start + L - n]


def _first_blocks(imp, n):
    return list(range(n))


def _angular(imp, n):  # Gromov et al. 2024: drop the span of L - n blocks that moves the stream least
    L = len(imp.magnitude)
    if n >= L:
        return list(range(L))
    if imp.angular is None:
        raise SubcloneError("this importance record has no angular distances: analyze the parent again")
    k = L - n
    start = min(range(L - k + 1), key=lambda s: imp.angular[s, s + k].item())
    return [i for i in range(L) if not start <= i < start + k]


def _greedy(imp, n):
    L = len(imp.magnitude)
    done = [] if imp.removals is None else imp.removals.tolist()
    if L - len(done) > n:
        raise SubcloneError(f"the block search has not yet gone down to {n} blocks: Build runs it "
                            "(subclone.search.extend from Python)")
    return [i for i in range(L) if i not in done[:L - n]]


def _searched(imp, n):  # search.py: the greedy removals, or the angular span where it measured better
    if imp.spans is not None and imp.spans[n] == 1:
        return _angular(imp, n)
    return _greedy(imp, n)


BLOCK_RULES = {"magnitude": _keep_top("magnitude"), "bi": _keep_top("bi"), "middle": _middle,
               "first": _first_blocks, "angular": _angular, "search": _searched}
BLOCK_RULE_HELP = {
    "search": "greedy: remove the block whose removal changes the parent's predictions least, re-measured after each; "
              "or the angular span, where it loses less once linear maps stand in for the removed blocks",
    "magnitude": "the paper: keep the blocks with the largest relative magnitude ‖f(x)‖/‖x+f(x)‖",
    "bi": "ShortGPT's block influence: keep the blocks with the largest 1 − cos(input, output)",
    "angular": "drop the one contiguous span of blocks whose input and output are closest in angle (Gromov et al.)",
    "middle": "drop blocks centred on the middle of the stack",
    "first": "keep the first blocks",
}


def _rule(table: dict, name: str, what: str):
    if name not in table:
        raise SubcloneError(f"unknown {what} '{shown(name)}'. Available: {', '.join(table)}"
                            + (", or a list of block indices like 0-11,20-29" if what == "block rule" else ""))
    return table[name]


def parse_block_list(text: str, n_layers: int) -> list[int] | None:
    """'0-11,20,25-29' -> sorted indices; None when text is a rule name instead. Every index is checked against
    the parent's depth before any range is made, so '0-99999999999' costs nothing."""
    digits = lambda t: t.isascii() and t.isdigit()  # noqa: E731 ('²' is a digit to str.isdigit, not to int)
    if not text or not digits(text[0]):
        return None
    out = set()
    for part in text.split(","):
        lo, _, hi = part.strip().partition("-")
        if not (digits(lo) and (digits(hi) or not hi)) or len(lo) > 6 or len(hi) > 6:
            if digits(lo) and (digits(hi) or not hi):  # digits, just far too many
                raise SubcloneError(f"block list '{shown(text)}' names a block beyond the parent's "
                                    f"blocks 0-{n_layers - 1}")
            raise SubcloneError(f"cannot read block list '{shown(text)}': write indices and ranges like 0-11,20,25-29")
        lo, hi = int(lo), int(hi or lo)
        for i in (lo, hi):
            if not 0 <= i < n_layers:
                raise SubcloneError(f"block list '{shown(text)}' names block {i}; the parent has blocks 0-{n_layers - 1}")
        if hi < lo:
            raise SubcloneError(f"block list '{shown(text)}' has the range {lo}-{hi}, which runs backwards; write {hi}-{lo}")
        out.update(range(lo, hi + 1))
    return sorted(out)


# ---- shapes --------------------------------------------------------------------------------------

def kv_layout(parent: Shape, heads: int, kv_heads: int, merge: bool = True) -> tuple[int, int] | None:
    """How a child of `heads` query heads over `kv_heads` KV heads is cut from the parent: (m, per) keeps
    m × kv_heads whole parent KV groups with `per` query heads in each, and each run of m kept groups shares one KV
    head, their keys and values averaged (mean-pooling, as the GQA paper converts multi-head checkpoints; m = 1: no
    merging). None when no layout gives that pair."""
    group = parent.heads // parent.kv_heads
    if kv_heads < 1 or heads < 1 or heads % kv_heads or kv_heads > parent.kv_heads:
        return None
    per_kv = heads // kv_heads
    for m in range(1, (parent.kv_heads // kv_heads if merge else 1) + 1):
        if per_kv % m == 0 and per_kv // m <= group:
            return m, per_kv // m
    return None


def can_merge(family: Family) -> bool:
    """Only families whose config has a KV-head count can hold fewer KV heads than query heads."""
    return "kv_heads" in family.sizes


def head_pairs(family: Family, parent: Shape) -> list[tuple[int, int]]:
    """Valid (heads, kv_heads): whole KV groups, the same number of query heads in each; fewer KV heads than the
    parent's grouping allows by merging groups, where the family has KV heads."""
    merge = can_merge(family)
    return [(h, kv) for kv in range(1, parent.kv_heads + 1) for h in range(kv, parent.heads + 1, kv)
            if kv_layout(parent, h, kv, merge)]


def valid_values(family: Family, parent: Shape, heads: int | None = None) -> dict[str, list[int]]:
    """Every value each size may take, given the child's head count (the parent's when None)."""
    heads = heads or parent.heads
    if family.head_dim_from_hidden:
        hidden = [heads * parent.head_dim]
    else:
        hidden = list(range(heads, parent.hidden + 1, heads))
    pairs = head_pairs(family, parent)
    return dict(layers=list(range(1, parent.layers + 1)), hidden=hidden, ffn=list(range(1, parent.ffn + 1)),
                heads=sorted({h for h, _ in pairs}), kv_heads=sorted({kv for h, kv in pairs if h == heads}))


def nearest(value: int, valid: list[int]) -> list[int]:
    """The valid values on either side of value (one if value is beyond the ends)."""
    i = bisect.bisect_left(valid, value)
    return sorted({valid[j] for j in (i - 1, i) if 0 <= j < len(valid)})


def snap(value: int, valid: list[int]) -> int:
    return min(valid, key=lambda v: (abs(v - value), -v))


def _check(name: str, value: int, valid: list[int], why: str) -> None:
    if value not in valid:
        near = " or ".join(map(str, nearest(value, valid)))
        raise SubcloneError(f"{name} {value} is not possible: {why}; nearest valid: {near}")


def _why(family: Family, parent: Shape, heads: int) -> dict[str, str]:
    """Why a size may be refused or snapped: one wording for CLI errors and app notes."""
    group = parent.heads // parent.kv_heads
    merged = " (fewer KV heads merge whole groups by averaging)" if can_merge(family) else ""
    return dict(
        heads=f"query heads come in whole KV groups of at most {group} (parent: {parent.heads} heads, "
              f"{parent.kv_heads} kv heads){merged}",
        kv_heads=f"kv_heads must divide heads {heads} with at most {group} query heads from each parent group, "
                 f"and be at most {parent.kv_heads}{merged}",
        hidden=f"hidden must equal heads x {parent.head_dim} in {family.name}" if family.head_dim_from_hidden
        else f"hidden must be a multiple of heads ({heads}) and at most {parent.hidden}")


def resolve_shape(family: Family, parent: Shape, layers=None, hidden=None, ffn=None, heads=None,
                  kv_heads=None) -> Shape:
    """The child's shape from the sizes given (None keeps the parent's), or a clear error."""
    if family.head_dim_from_hidden:  # hidden = heads * head_dim: either one fixes the other
        if hidden is not None and heads is None and hidden % parent.head_dim == 0:
            heads = hidden // parent.head_dim
        if heads is not None and hidden is None:
            hidden = heads * parent.head_dim
    layers = parent.layers if layers is None else layers
    heads = parent.heads if heads is None else heads
    pairs, why = head_pairs(family, parent), _why(family, parent, heads)
    _check("heads", heads, sorted({h for h, _ in pairs}), why["heads"])
    if kv_heads is None:
        kv_heads = max(kv for h, kv in pairs if h == heads)
    _check("kv_heads", kv_heads, [kv for h, kv in pairs if h == heads], why["kv_heads"])
    hidden = parent.hidden if hidden is None else hidden
    v = valid_values(family, parent, heads)
    _check("layers", layers, v["layers"], f"the parent has {parent.layers} blocks; keep 1 to {parent.layers}")
    _check("hidden", hidden, v["hidden"], why["hidden"])
    _check("ffn", ffn if ffn is not None else parent.ffn, v["ffn"], f"ffn must be 1 to {parent.ffn}")
    return Shape(layers=layers, hidden=hidden, ffn=parent.ffn if ffn is None else ffn, heads=heads,
                 kv_heads=kv_heads, head_dim=parent.head_dim)


def _axis_size(axis, shape: Shape, parent_size: int) -> int:
    return {R: shape.hidden, F: shape.ffn, Q: shape.heads * shape.head_dim, KV: shape.kv_heads * shape.head_dim,
            QKV: 3 * shape.heads * shape.head_dim, None: parent_size}[axis]


def count(model, family: Family, shape: Shape, tied: bool, context: int = FLOPS_CONTEXT) -> tuple[int, int]:
    """(parameters, forward FLOPs per token) of a child of `shape`, from the spec: nothing is built."""
    params = flops = 0
    for key, t in model.state_dict().items():
        layer, _, axes = family.locate(key)
        if layer not in (None, 0):
            continue  # every block has the same shape: count block 0, times the child's depth
        n = math.prod(_axis_size(a, shape, s) for a, s in zip(axes, t.shape)) * (shape.layers if layer == 0 else 1)
        if not (tied and key == family.lm_head):
            params += n
        if len(axes) == 2 and key not in family.embeddings:
            flops += 2 * n  # a matmul: one multiply and one add per weight
    flops += 2 * 2 * shape.layers * shape.heads * shape.head_dim * context  # q.k and attn.v
    return params, flops


def stays_tied(parent) -> bool:
    """Whether the parent's children share their embeddings and LM head: a tied parent's do, in either basis (a
    rotated parent is untied, its children tied again: rotate.tie)."""
    return is_tied(parent.model) or parent.ties


# ---- plans ---------------------------------------------------------------------------------------

@dataclass
class Plan:
    parent: str
    family: str
    shape: Shape
    layers: list[int]  # kept parent blocks, ascending
    residual: list[int]  # kept residual dimensions, the same in every block
    ffn: list[list[int]]  # kept FFN neurons, per kept block
    heads: list[list[int]]  # kept query heads, per kept block
    kv_heads: list[list[int]]  # kept parent KV heads, per kept block (kv_merge of them per child KV head)
    block_rule: str = "magnitude"
    neuron_rule: str = "importance"
    scale: dict = field(default_factory=lambda: dict(DEFAULT_SCALE))
    score: str = "activation"
    kv_merge: int = 1  # each run of this many kept parent KV heads is averaged into one child KV head
    compensate: str = "none"  # compensate.COMPENSATE: least-squares fits applied when the child is built
    basis: str = "dims"  # rotate.BASES: the parent's residual dimensions, or its principal directions
    seed: int = 0
    params: int = 0
    flops_per_token: int = 0

    def to_dict(self) -> dict:
        d = asdict(self)
        d["shape"] = self.shape.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Plan":
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        return cls(**{**known, "shape": Shape(**d["shape"])})


def scale_choice(scale) -> dict:
    """True / False for every group, or a dict naming some groups (the rest take the defaults)."""
    if isinstance(scale, bool):
        return dict.fromkeys(SCALE_GROUPS, scale)
    unknown = set(scale or {}) - set(SCALE_GROUPS)
    if unknown:
        raise SubcloneError(f"unknown scaling group '{sorted(unknown)[0]}'. Available: {', '.join(SCALE_GROUPS)}")
    return {**DEFAULT_SCALE, **(scale or {})}


def check_block_rule(block_rule: str, n_layers: int) -> None:
    """A rule name or a block list the parent can take (cheap: nothing is measured)."""
    if parse_block_list(block_rule, n_layers) is None:
        _rule(BLOCK_RULES, block_rule, "block rule")


def choose_layers(importance: Importance, n: int, block_rule: str) -> list[int]:
    L = len(importance.magnitude)
    explicit = parse_block_list(block_rule, L)
    if explicit is not None:
        if len(explicit) != n:
            raise SubcloneError(f"block list '{block_rule}' keeps {len(explicit)} blocks but layers is {n}; "
                                f"give layers {len(explicit)} or a list of {n} blocks")
        return explicit
    return sorted(_rule(BLOCK_RULES, block_rule, "block rule")(importance, n))


def _select_heads(scores, parent: Shape, shape: Shape, rule, gen) -> tuple[list[int], list[int]]:
    """Whole KV groups first (m per child KV head when merging), then the same number of query heads inside each."""
    group = parent.heads // parent.kv_heads
    groups = scores.view(parent.kv_heads, group)
    m, per = kv_layout(parent, shape.heads, shape.kv_heads)
    kv = rule(groups.sum(1), m * shape.kv_heads, gen).sort().values
    q = [g * group + int(w) for g in kv.tolist() for w in rule(groups[g], per, gen).sort().values]
    return q, kv.tolist()


def make_plan(parent, importance: Importance, shape: Shape, block_rule: str = "magnitude",
              neuron_rule: str = "importance", scale=None, seed: int = 0, score: str = "activation",
              compensate: str = "none", basis: str = "dims") -> Plan:
    """Which blocks, residual dims (or principal directions), FFN neurons and heads the child keeps (the paper's
    rules unless told)."""
    family, pshape = parent.family, parent.shape
    rule = _rule(NEURON_RULES, neuron_rule, "neuron rule")
    _rule(SCORES, score, "neuron score")
    _rule(COMPENSATE, compensate, "compensation")
    if compensate != "none" and family.kind != "causal-lm":
        raise SubcloneError(f"compensation fits a causal LM's block outputs; {parent.name} is a {family.kind}")
    _rule(BASES, basis, "residual basis")
    if basis == "principal":
        require(family, parent.name)
        if shape.hidden == pshape.hidden and not parent.basis:  # uncut, the rotation is the same function: not paid
            basis = "dims"
    if measures_heads(score, compensate) and shape.heads < pshape.heads and importance.heads_order is None:
        raise SubcloneError("the score 'activation-weight' with a refit chooses heads by measuring, and they have not "
                            "been measured yet: Build does it (subclone.search.order_heads from Python)")
    gen = torch.Generator().manual_seed(seed)
    layers = choose_layers(importance, shape.layers, block_rule)
    # in principal directions (rotate.py) the coordinates come by decreasing variance: they rank themselves
    ranking = torch.arange(pshape.hidden, 0, -1).float() if basis == "principal" else importance.residual_ranking
    residual = rule(ranking, shape.hidden, gen).sort().values.tolist()
    scores = {i: neuron_scores(parent, importance, i, score, compensate) for i in layers}
    ffn = [rule(scores[i][0], shape.ffn, gen).sort().values.tolist() for i in layers]
    heads, kv = zip(*[_select_heads(scores[i][1], pshape, shape, rule, gen) for i in layers])
    params, flops = count(parent.model, family, shape, stays_tied(parent))
    return Plan(parent=parent.name, family=family.name, shape=shape, layers=layers, residual=residual, ffn=ffn,
                heads=list(heads), kv_heads=list(kv), block_rule=block_rule, neuron_rule=neuron_rule,
                scale=scale_choice(scale), seed=seed, params=params, flops_per_token=flops, score=score,
                kv_merge=kv_layout(pshape, shape.heads, shape.kv_heads)[0], compensate=compensate,
                basis=basis)


PRESETS = {
    "best": dict(block_rule="search", neuron_rule="importance", score="activation-weight", compensate="all",
                 basis="dims"),
    "paper": dict(block_rule="magnitude", neuron_rule="importance", score="activation", compensate="none",
                  basis="dims"),
}
PRESET_HELP = {
    "best": "the strategy that measured best on held-out text of another domain (bench/RESULTS.md)",
    "paper": "the rules of Samragh et al. 2023 as published",
}


def preset(name: str, family: Family) -> dict:
    """Block rule, neuron rule, score, compensation and basis of a preset; `best` falls back to the paper's block rule
    and no fitting for encoders, which the search and the fits (next-token loss, pre-norm blocks) do not cover, and to
    the parent's own dimensions where the stream cannot be rotated (rotate.applies)."""
    chosen = dict(_rule(PRESETS, name, "preset"))
    if family.kind != "causal-lm":
        chosen.update(block_rule="magnitude", compensate="none")
    if not rotate_applies(family):
        chosen.update(basis="dims")
    return chosen


def snap_shape(family: Family, parent: Shape, layers: int, hidden: int, ffn: int, heads: int,
               kv_heads: int) -> tuple[Shape, list[str]]:
    """The nearest valid shape to what the sliders say, and a note for every value that moved."""
    notes = []

    def take(name, value, valid, why):
        got = snap(int(value), valid)
        if got != int(value):
            notes.append(f"{name} {int(value)} → {got}: {why}")
        return got

    pairs = head_pairs(family, parent)
    heads = take("heads", heads, sorted({h for h, _ in pairs}), _why(family, parent, int(heads))["heads"])
    why = _why(family, parent, heads)  # the rest depends on the snapped heads
    kv_heads = take("kv heads", kv_heads, [kv for h, kv in pairs if h == heads], why["kv_heads"])
    hidden = take("hidden", hidden, valid_values(family, parent, heads)["hidden"], why["hidden"])
    shape = resolve_shape(family, parent, layers=int(layers), hidden=hidden, ffn=int(ffn), heads=heads,
                          kv_heads=kv_heads)
    return shape, notes


def describe(parent, shape: Shape) -> dict:
    """Size of a child of this shape next to its parent, without building it."""
    params, flops = count(parent.model, parent.family, shape, stays_tied(parent))
    pparams, pflops = count(parent.model, parent.family, parent.shape, stays_tied(parent))
    return dict(params=params, parent_params=pparams, percent_of_parent=round(100 * params / pparams, 1),
                flops_per_token=flops, parent_flops_per_token=pflops,
                expected_speedup=round(pflops / flops, 2))
