"""The peers `bench/quality.py` measures subclone against, each called the way its documentation says.

Packages (installed by `make bench` from requirements-bench.txt, used by bench/ only):
- OptiPFair 0.4.2: `prune_model(pruning_type="MLP_GLU")`, static (PPM/"MAW" weights only) and hybrid (the same
  with a calibration dataloader); `prune_model(pruning_type="DEPTH")`, static (`layer_selection_method="last"`)
  and calibrated (`analyze_layer_importance`, then the least important layers as `layer_indices`).
- Torch-Pruning 1.6.1: the recipe of its LLM example (`MetaPruner`, group L2 magnitude, lm_head ignored, heads
  pruned whole, head dims kept), restricted to the axis being cut. 1.6.1 calls the importance class
  `GroupMagnitudeImportance`, needs `output_transform` to reach `.logits`, and leaves the embeddings and the LM head
  as two pruned copies: they are tied again afterwards.
- short-transformers 1.0.0: angular distance between a block span's input and output on the last token
  (`ShortTransformer.from_model`, `analyse_layers`, `get_best_pruning_start`, `prune`). On transformers 5 a decoder
  layer returns a tensor, not a tuple, and 1.0.0 takes `result[0]` (the first sequence): each layer is wrapped so
  that it sees a tuple and the model sees a tensor again. Its `prune` numbers the kept layers from 1, so the KV
  cache overflows at the last one: they are numbered from 0 again. Nothing else is changed.

Two methods have no package and are written here from their papers:
- ShortGPT (Men et al., 2024): block influence BI_i = 1 − E_tokens cos(x_i, x_{i+1}) on the calibration windows;
  the blocks with the lowest BI are removed.
- Weight selection (Xu et al., 2023, "Initializing Models with Larger Ones"): the first N blocks, and in every
  other dimension evenly spaced elements (every d/d'-th), weights copied without rescaling.
"""
from __future__ import annotations

import copy
import logging

import torch

from subclone import build
from subclone.plan import Plan, count, is_tied

# ---- written from the papers ------------------------------------------------------------------------------------


@torch.no_grad()
def shortgpt_layers(parent, tokens, keep: int) -> list[int]:
    """ShortGPT: keep the `keep` blocks with the highest block influence on the calibration tokens."""
    blocks = parent.model.get_submodule(parent.family.layers)
    bi = torch.zeros(len(blocks))
    seen = {}

    def pre(i):
        return lambda _, args, kwargs: seen.__setitem__(i, args[0] if args else kwargs["hidden_states"])

    def post(i):
        def hook(_, args, kwargs, out):
            y = out[0] if isinstance(out, tuple) else out
            bi[i] += (1 - torch.nn.functional.cosine_similarity(seen.pop(i), y, dim=-1)).sum()
        return hook

    handles = [h for i, b in enumerate(blocks) for h in (b.register_forward_pre_hook(pre(i), with_kwargs=True),
                                                         b.register_forward_hook(post(i), with_kwargs=True))]
    try:
        for batch in tokens.batches(4):
            parent.model(input_ids=batch)
    finally:
        for h in handles:
            h.remove()
    return sorted(bi.topk(keep).indices.tolist())


def evenly(d: int, k: int) -> list[int]:
    """Weight selection's evenly spaced elements: every (d/k)-th from the first."""
    return [i * d // k for i in range(k)]


def weight_selection(parent, shape) -> torch.nn.Module:
    """Xu et al. 2023: first-N blocks, evenly spaced residual dims, FFN neurons, KV groups and heads, no scaling."""
    p = parent.shape
    group = p.heads // p.kv_heads
    kv = evenly(p.kv_heads, shape.kv_heads)
    q = [g * group + w for g in kv for w in evenly(group, shape.heads // shape.kv_heads)]
    n = shape.layers
    params, flops = count(parent.model, parent.family, shape, is_tied(parent.model))
    plan = Plan(parent=parent.name, family=parent.family.name, shape=shape, layers=list(range(n)),
                residual=evenly(p.hidden, shape.hidden), ffn=[evenly(p.ffn, shape.ffn)] * n, heads=[q] * n,
                kv_heads=[kv] * n, block_rule="first", neuron_rule="uniform", scale=dict.fromkeys(
                    ("residual", "ffn", "attn", "embed"), False), params=params, flops_per_token=flops)
    return build(parent, plan)


def keep_layers(parent, layers: list[int]) -> torch.nn.Module:
    """A copy of the parent with only these blocks (for rules that choose blocks and nothing else)."""
    model = copy.deepcopy(parent.model)
    blocks = model.get_submodule(parent.family.layers)
    kept = torch.nn.ModuleList(blocks[i] for i in layers)
    for j, b in enumerate(kept):  # the KV cache is indexed by position in the stack
        for m in b.modules():
            if hasattr(m, "layer_idx"):
                m.layer_idx = j
    parent_path, _, name = parent.family.layers.rpartition(".")
    setattr(model.get_submodule(parent_path), name, kept)
    model.config.num_hidden_layers = len(layers)
    if getattr(model.config, "layer_types", None):
        model.config.layer_types = [model.config.layer_types[i] for i in layers]
    return model


# ---- OptiPFair ---------------------------------------------------------------------------------------------------

def _loader(tokens):
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(tokens.ids), batch_size=4)


def optipfair_ffn(parent, tokens, ffn: int, calibrated: bool) -> torch.nn.Module:
    from optipfair import prune_model

    model = copy.deepcopy(parent.model)
    percent = 100 * (1 - ffn / parent.shape.ffn)
    return prune_model(model, pruning_type="MLP_GLU", neuron_selection_method="MAW", pruning_percentage=percent,
                       dataloader=_loader(tokens) if calibrated else None, show_progress=False)


def optipfair_depth(parent, tokens, keep: int, calibrated: bool) -> torch.nn.Module:
    from optipfair import analyze_layer_importance, prune_model

    model = copy.deepcopy(parent.model)
    drop = parent.shape.layers - keep
    if not calibrated:
        return prune_model(model, pruning_type="DEPTH", num_layers_to_remove=drop, layer_selection_method="last",
                           show_progress=False)
    scores = analyze_layer_importance(model, _loader(tokens), show_progress=False)
    least = sorted(scores, key=scores.get)[:drop]
    return prune_model(model, pruning_type="DEPTH", layer_indices=sorted(least), layer_selection_method="custom",
                       show_progress=False)


# ---- short-transformers ------------------------------------------------------------------------------------------

def short_transformers_depth(parent, tokens, keep: int) -> torch.nn.Module:
    from short_transformers import ShortTransformer
    from short_transformers.utils import get_best_pruning_start

    model = copy.deepcopy(parent.model)
    layers = model.model.layers
    for layer in layers:  # transformers 5: a layer returns a tensor; 1.0.0 expects a tuple (see the module doc)
        inner = layer.forward
        layer.forward = lambda *a, _f=inner, **k: (_f(*a, **k),)
    model = ShortTransformer.from_model(model)
    for layer in layers:
        outer = layer.forward
        layer.forward = lambda *a, _f=outer, **k: _f(*a, **k)[0]
    texts = [{"text": parent.tokenizer.decode(row)} for row in tokens.ids]
    block = parent.shape.layers - keep
    logging.getLogger("short-transformers").setLevel(logging.WARNING)  # its debug log writes to stdout
    result = model.analyse_layers(dataset=texts, tokenizer=parent.tokenizer, key="text", limit=len(texts),
                                  max_length=tokens.ids.shape[1])
    model = model.prune(start_layer=get_best_pruning_start(result=result, block_size=block), block_size=block)
    for j, layer in enumerate(model.model.layers):  # drop the measuring wrappers; number the layers from 0
        layer.forward = type(layer).forward.__get__(layer)
        layer.layer_idx = layer.self_attn.layer_idx = j
    return model


# ---- Torch-Pruning -----------------------------------------------------------------------------------------------

def torch_pruning(parent, shape) -> torch.nn.Module:
    """Its LLM example's recipe, with only the axes this shape cuts made prunable."""
    import torch_pruning as tp

    model = copy.deepcopy(parent.model)
    p, cfg = parent.shape, model.config
    layers = model.get_submodule(parent.family.layers)
    attn = [b.self_attn for b in layers]
    mlp = [b.mlp for b in layers]
    num_heads = {m: n for a in attn for m, n in ((a.q_proj, p.heads), (a.k_proj, p.kv_heads), (a.v_proj, p.kv_heads))}
    ignored = [model.lm_head]
    ratio = {}
    if shape.ffn == p.ffn:
        ignored += [m.gate_proj for m in mlp] + [m.up_proj for m in mlp]
    else:
        ratio.update({m.gate_proj: 1 - shape.ffn / p.ffn for m in mlp})
    if shape.hidden == p.hidden:
        ignored += [m.down_proj for m in mlp] + [a.o_proj for a in attn]
    else:
        ratio[tuple([m.down_proj for m in mlp] + [a.o_proj for a in attn])] = 1 - shape.hidden / p.hidden
    if shape.heads == p.heads:
        ignored += [m for a in attn for m in (a.q_proj, a.k_proj, a.v_proj)]
    ids = torch.tensor([[1, 2, 3, 4]])
    pruner = tp.pruner.MetaPruner(
        model, example_inputs=ids, importance=tp.importance.GroupMagnitudeImportance(p=2, group_reduction="mean"),
        global_pruning=False, pruning_ratio=0.0, pruning_ratio_dict=ratio or None, ignored_layers=ignored,
        num_heads=num_heads, prune_num_heads=shape.heads != p.heads, prune_head_dims=False,
        head_pruning_ratio=1 - shape.heads / p.heads, output_transform=lambda out: out.logits)
    for group in pruner.step(interactive=True):
        group.prune()
    cfg.hidden_size = model.lm_head.in_features
    cfg.intermediate_size = mlp[0].gate_proj.out_features
    cfg.num_attention_heads = attn[0].q_proj.out_features // p.head_dim
    cfg.num_key_value_heads = attn[0].k_proj.out_features // p.head_dim
    cfg.head_dim = p.head_dim
    for a in attn:
        a.num_key_value_groups = cfg.num_attention_heads // cfg.num_key_value_heads
    if is_tied(parent.model):  # 1.6.1 prunes the tied embedding and LM head as two tensors: tie them again
        model.lm_head.weight = model.get_input_embeddings().weight
    return model
