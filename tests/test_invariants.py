"""Invariants of subcloning, over every supported family, on tiny random models."""
import pytest
import torch

from subclone import build, make_plan, resolve_shape
from subclone.data import Tokens
from subclone.importance import measure
from subclone.plan import head_pairs, is_tied, valid_values

from .conftest import ids, tiny_model, tiny_parent


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


def run_masked(parent, module: str, units: tuple[int, ...], kept: list) -> torch.Tensor:
    """The parent's output with the input of each block's `module` zeroed outside its kept units (`units` the shape
    the input's features fold into: (heads, head_dim) or (ffn,))."""
    handles = []
    for b, keep in zip(parent.model.get_submodule(parent.family.layers), kept):
        mask = torch.zeros(units)
        mask[keep] = 1
        handles.append(b.get_submodule(module).register_forward_pre_hook(
            lambda _, args, m=mask.flatten(): (args[0] * m,)))
    try:
        return run(parent.model)
    finally:
        for h in handles:
            h.remove()


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
    expected = run_masked(parent, parent.family.heads_input, (p.heads, p.head_dim), plan.heads)
    assert (run(build(parent, plan)) - expected).abs().max() <= 1e-4


def test_slicing_ffn_neurons_equals_zeroing_them(setup):
    parent, imp = setup
    p = parent.shape
    plan = make_plan(parent, imp, resolve_shape(parent.family, p, ffn=p.ffn - 5), scale=False)
    expected = run_masked(parent, parent.family.ffn_input, (p.ffn,), plan.ffn)
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


def test_the_evaluation_is_perplexity_agreement_and_kl_computed_directly():
    """compare_lm against the definitions in float64: exp of the mean NLL, the share of positions where child and
    parent agree on the argmax, and Σ p (log p − log q) per position; it never forms the child's log-softmax."""
    from subclone.evaluate import Target, compare_lm, reference

    parent, child = tiny_parent("llama"), tiny_model("llama", seed=1)
    tokens = Tokens(ids(6, 16, seed=3))  # two batches of four: the last one short
    got = compare_lm(child, reference(parent.model, tokens, "causal-lm", speed=False))
    with torch.no_grad():
        lp, lq = (m(input_ids=tokens.ids).logits[:, :-1].double().log_softmax(-1) for m in (parent.model, child))
    nll = -lq.gather(-1, tokens.ids[:, 1:, None]).mean()
    assert got["perplexity"] == pytest.approx(nll.exp().item(), rel=1e-5)
    assert got["top1_agreement"] == pytest.approx((lp.argmax(-1) == lq.argmax(-1)).double().mean().item(), abs=1e-4)
    assert got["kl_to_parent"] == pytest.approx((lp.exp() * (lp - lq)).sum(-1).mean().item(), abs=2e-4)
    assert got["kl_to_parent"] > 0.01 and got["eval_tokens"] == 6 * 15
    # at a real vocabulary's size fp32 rounds Σ p away from 1 by ~1e-5, which a large logsumexp would amplify: logits
    # shifted by a constant (the same distribution) must give the same KL
    torch.manual_seed(0)
    a, b = torch.randn(64, 49_152) * 4, torch.randn(64, 49_152) * 4 + 100
    truth = (a.double().softmax(-1) * (a.double().log_softmax(-1) - b.double().log_softmax(-1))).sum(-1)
    assert Target.of(a).kl(b).double().sub(truth).abs().max() < 3e-4
