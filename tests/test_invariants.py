"""Invariants of subcloning, over every supported family, on tiny random models."""
import pytest
import torch

from subclone import build, make_plan, resolve_shape
from subclone.data import Tokens
from subclone.importance import measure
from subclone.plan import head_pairs, is_tied, valid_values

from .conftest import ids, tiny_parent


def out(model, x):
    o = model(input_ids=x)
    return o.logits if hasattr(o, "logits") else o.last_hidden_state


@pytest.fixture
def setup(family_name):
    parent = tiny_parent(family_name)
    return parent, measure(parent, Tokens(ids(4, 16, seed=7)))


def run(model, x=None):
    with torch.no_grad():
        return out(model, ids() if x is None else x)


def test_full_shape_child_reproduces_parent(setup):
    parent, imp = setup
    for rule in ("importance", "random"):  # every rule keeps everything at full shape
        child = build(parent, make_plan(parent, imp, parent.shape, neuron_rule=rule))
        assert (run(child) - run(parent.model)).abs().max() <= 1e-4


def test_saved_child_reloads_bit_exact(setup, tmp_path):
    parent, imp = setup
    shape = resolve_shape(parent.family, parent.shape, layers=2, heads=2, ffn=20)
    child = build(parent, make_plan(parent, imp, shape))
    child.save_pretrained(tmp_path)
    again = type(child).from_pretrained(tmp_path).eval()
    assert torch.equal(run(child), run(again))
    assert is_tied(again) == is_tied(parent.model)


def test_every_reduced_shape_loads_runs_and_counts_right(setup):
    parent, imp = setup
    p = parent.shape
    for heads, kv in head_pairs(parent.family, p):
        hidden = valid_values(parent.family, p, heads)["hidden"]
        for h in (hidden[0], hidden[-1]):
            for layers, ffn in ((1, 1), (p.layers - 1, p.ffn // 2)):
                shape = resolve_shape(parent.family, p, layers=layers, hidden=h, ffn=ffn, heads=heads, kv_heads=kv)
                plan = make_plan(parent, imp, shape)
                child = build(parent, plan)
                assert run(child).shape[:2] == ids().shape
                assert plan.params == child.num_parameters()


def test_dropping_a_block_equals_skipping_it(setup):
    parent, imp = setup
    blocks = parent.model.get_submodule(parent.family.layers)
    k = 1
    keep = [i for i in range(len(blocks)) if i != k]
    shape = resolve_shape(parent.family, parent.shape, layers=len(keep))
    child = build(parent, make_plan(parent, imp, shape, block_rule=",".join(map(str, keep)), scale=False))
    skip = blocks[k].forward
    blocks[k].forward = lambda hidden_states, *a, **kw: hidden_states
    try:
        expected = run(parent.model)
    finally:
        blocks[k].forward = skip
    assert (run(child) - expected).abs().max() <= 1e-4


def test_slicing_heads_equals_zeroing_them(setup):
    """Dropping KV groups (with their query heads) == zeroing those heads' outputs in the parent."""
    parent, imp = setup
    p = parent.shape
    if parent.family.head_dim_from_hidden:
        pytest.skip("in this family hidden = heads x head_dim: dropping heads also drops residual dims")
    group = p.heads // p.kv_heads
    kv = max(k for k in range(1, p.kv_heads) if p.hidden % (k * group) == 0)
    plan = make_plan(parent, imp, resolve_shape(parent.family, p, heads=kv * group, kv_heads=kv), scale=False)
    blocks = parent.model.get_submodule(parent.family.layers)
    handles = []
    for j, b in enumerate(blocks):
        mask = torch.zeros(p.heads, p.head_dim)
        mask[plan.heads[j]] = 1
        handles.append(b.get_submodule(parent.family.heads_input).register_forward_pre_hook(
            lambda _, args, m=mask.flatten(): (args[0] * m,)))
    try:
        expected = run(parent.model)
    finally:
        for h in handles:
            h.remove()
    assert (run(build(parent, plan)) - expected).abs().max() <= 1e-4


def test_slicing_ffn_neurons_equals_zeroing_them(setup):
    parent, imp = setup
    p = parent.shape
    plan = make_plan(parent, imp, resolve_shape(parent.family, p, ffn=p.ffn - 5), scale=False)
    blocks = parent.model.get_submodule(parent.family.layers)
    handles = []
    for j, b in enumerate(blocks):
        mask = torch.zeros(p.ffn)
        mask[plan.ffn[j]] = 1
        handles.append(b.get_submodule(parent.family.ffn_input).register_forward_pre_hook(
            lambda _, args, m=mask: (args[0] * m,)))
    try:
        expected = run(parent.model)
    finally:
        for h in handles:
            h.remove()
    assert (run(build(parent, plan)) - expected).abs().max() <= 1e-4


def test_scaling_multiplies_by_sqrt_of_fan_in_ratio(setup):
    parent, imp = setup
    p = parent.shape
    shape = resolve_shape(parent.family, p, ffn=p.ffn // 2)
    plain = build(parent, make_plan(parent, imp, shape, scale=False)).state_dict()
    scaled = build(parent, make_plan(parent, imp, shape, scale={"ffn": True})).state_dict()
    changed = {k for k in plain if not torch.equal(plain[k], scaled[k])}
    assert changed and len(changed) == p.layers  # exactly the FFN output projections, once per block
    k = sorted(changed)[0]
    assert torch.allclose(scaled[k], plain[k] * (p.ffn / (p.ffn // 2)) ** 0.5)
