"""Property-based: any shape and rule a person or a client can send, on every tiny family, either builds a child that
loads and runs, or raises the documented error (SubcloneError, one clear line). Nothing else."""
import functools

import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from subclone import SubcloneError, build, make_plan, resolve_shape
from subclone.data import Tokens
from subclone.importance import measure
from subclone.plan import BLOCK_RULES, NEURON_RULES, SCALE_GROUPS, valid_values

from .conftest import TINY, ids, tiny_parent


@functools.cache
def analyzed(name):
    parent = tiny_parent(name)
    return parent, measure(parent, Tokens(ids(4, 16, seed=7)))


block_list = st.lists(st.tuples(st.integers(0, 6), st.integers(0, 6)), min_size=1, max_size=4).map(
    lambda parts: ",".join(f"{a}-{b}" if a != b else str(a) for a, b in parts))


def mostly(usual, *odd):
    """Usually `usual` (so that many children are built), one time in five one of the odd strategies."""
    return st.integers(0, 4).flatmap(lambda i: st.one_of(*odd) if i == 0 else usual)


block_rule = mostly(st.sampled_from(list(BLOCK_RULES)), block_list, st.text(max_size=12))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(family=st.sampled_from(list(TINY)), data=st.data(), block_rule=block_rule,
       neuron_rule=st.sampled_from(list(NEURON_RULES)), scale=st.sets(st.sampled_from(SCALE_GROUPS)),
       seed=st.integers(0, 2**32 - 1))
def test_any_design_builds_a_working_child_or_says_why(family, data, block_rule, neuron_rule, scale, seed):
    parent, imp = analyzed(family)
    h = data.draw(st.sampled_from(valid_values(parent.family, parent.shape)["heads"]))
    valid = {**valid_values(parent.family, parent.shape, h), "heads": [h]}
    # mostly valid sizes, sometimes absent, sometimes anything at all
    layers, hidden, ffn, heads, kv_heads = (
        data.draw(mostly(st.sampled_from(valid[k]), st.none(), st.integers(-3, 60)), k)
        for k in ("layers", "hidden", "ffn", "heads", "kv_heads"))
    try:
        shape = resolve_shape(parent.family, parent.shape, layers=layers, hidden=hidden, ffn=ffn, heads=heads,
                              kv_heads=kv_heads)
        plan = make_plan(parent, imp, shape, block_rule=block_rule, neuron_rule=neuron_rule,
                         scale={g: g in scale for g in SCALE_GROUPS}, seed=seed)
    except SubcloneError as e:
        assert str(e) and "\n" not in str(e)
        event("refused")
        return
    event("built")
    child = build(parent, plan)
    assert len(plan.layers) == shape.layers == len(set(plan.layers))
    assert child.num_parameters() == plan.params
    with torch.no_grad():
        out = child(input_ids=ids(2, 8))
    hidden_out = out.logits if hasattr(out, "logits") else out.last_hidden_state
    assert hidden_out.shape[:2] == (2, 8) and torch.isfinite(hidden_out).all()
