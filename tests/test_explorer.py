"""The library behind the explorer views: drop-one scores, sweeps and their Pareto front, figures, export."""
import math
import zipfile

import pandas as pd
import pytest
import torch

from subclone import build, evaluate, make_plan, reference, resolve_shape
from subclone import export, plots
from subclone.data import Tokens
from subclone.errors import SubcloneError
from subclone.importance import drop_one, measure
from subclone.sweep import grid, pareto, parse_list, sweep

from .conftest import ids, tiny_parent


@pytest.fixture(scope="module")
def llama():
    parent = tiny_parent("llama")
    tokens = Tokens(ids(4, 16, seed=3))
    return parent, measure(parent, Tokens(ids(4, 16, seed=7))), reference(parent.model, tokens, "causal-lm", speed=False)


def test_drop_one_is_the_loss_of_the_model_without_that_block(llama):
    parent, imp, ref = llama
    scores = drop_one(parent, ref.tokens)
    assert scores.shape == (4,)
    base = torch.stack([parent.model(input_ids=b, labels=b).loss for b in ref.tokens.batches(4)]).mean()
    for i in (0, 2):  # the same number from a child built without block i
        shape = resolve_shape(parent.family, parent.shape, layers=3)
        plan = make_plan(parent, imp, shape, block_rule=",".join(str(j) for j in range(4) if j != i), scale=False)
        child = build(parent, plan)
        loss = torch.stack([child(input_ids=b, labels=b).loss for b in ref.tokens.batches(4)]).mean()
        assert scores[i].item() == pytest.approx((loss - base).item(), abs=1e-5)


def test_drop_one_for_an_encoder_is_one_minus_cosine():
    parent = tiny_parent("bert")
    scores = drop_one(parent, Tokens(ids(4, 16, seed=3)))
    assert scores.shape == (3,) and ((scores >= 0) & (scores <= 2)).all() and scores.max() > 0


def test_grid_snaps_and_deduplicates(llama):
    parent, _, _ = llama
    shapes = grid(parent, [4, 2], [100, 50, 49])  # 50 % and 49 % of hidden 48 both snap to 24
    assert [(s.layers, s.hidden) for s in shapes] == [(4, 48), (4, 24), (2, 48), (2, 24)]
    assert all(s.hidden % s.heads == 0 for s in shapes)
    with pytest.raises(SubcloneError, match="width 150% is out of range"):
        grid(parent, [4], [150])
    with pytest.raises(SubcloneError, match="depth 9 is out of range: the parent has 4 layers"):
        grid(parent, [9], [100])
    with pytest.raises(SubcloneError, match="comma-separated list"):
        parse_list("4, x", "depths", int)


def test_pareto_front():
    frame = pd.DataFrame(dict(params=[1, 2, 3, 3, 4], perplexity=[50, 20, 30, 10, 10]))
    assert pareto(frame, "params", "perplexity").tolist() == [True, True, False, True, False]
    assert pareto(frame, "params", "perplexity", lower_is_better=False).tolist() == [True, False, False, False, False]


def test_sweep_rows_match_a_direct_build_and_evaluation(llama):
    parent, imp, ref = llama
    frame = sweep(parent, imp, ref, grid(parent, [4, 3], [100, 50]))
    assert len(frame) == 4 and frame["pareto"].any()
    full = frame[(frame.layers == 4) & (frame.hidden == 48)].iloc[0]
    assert full.perplexity == pytest.approx(ref.perplexity) and full.top1_agreement == 1.0 and full.pareto
    row = frame[(frame.layers == 3) & (frame.hidden == 24)].iloc[0]
    plan = make_plan(parent, imp, resolve_shape(parent.family, parent.shape, layers=3, hidden=24, ffn=int(row.ffn)))
    direct = evaluate(build(parent, plan), ref, speed=False)
    assert row.perplexity == direct["perplexity"] and row.params == direct["params"]


def test_figures_grey_out_exactly_what_the_child_drops(llama):
    parent, imp, _ = llama
    shape = resolve_shape(parent.family, parent.shape, layers=3, hidden=24, ffn=20, heads=4, kv_heads=2)
    plan = make_plan(parent, imp, shape)

    def greyed(fig):
        return int(fig.data[1].z.sum())

    L = 4
    assert greyed(plots.heads_map(imp, plan)) == L * 6 - 3 * 4
    assert greyed(plots.ffn_map(imp, plan)) == L * 40 - 3 * 20
    assert greyed(plots.residual_map(imp, plan)) == L * 48 - 3 * 24
    ffn_veil = plots.ffn_map(imp, plan).data[1].z  # importance rule: each kept block keeps its leftmost 20
    kept_row = ffn_veil[plan.layers[0]]
    assert not kept_row[:20].any() and kept_row[20:].all()
    assert len(plots.residual_map(imp).data) == 1  # no plan, no veil
    rows = torch.tensor(plots.residual_map(imp).data[0].z)  # log10 of each block ÷ its own median
    assert rows.median(dim=1).values.abs().max() <= 0.05 and (rows[:, :8].mean() > rows[:, -8:].mean())
    strip = plots.block_strip(L, plan.layers)
    assert strip.count(": kept'") == 3 and "3 of 4 blocks kept" in strip
    bars = plots.blocks_chart(imp, torch.ones(L), plan)
    assert len(bars.data) == 3 and sum(c == "#c8c8c8" for c in bars.data[0].marker.color) == 1
    assert bars.layout.annotations[2].text == "Δ loss when removed"
    assert plots.blocks_chart(imp, torch.ones(L), plan, "encoder").layout.annotations[2].text == "1 − cos when removed"


def test_export_zip_loads_and_the_card_says_how_it_was_made(llama, tmp_path):
    from transformers import AutoModelForCausalLM

    parent, imp, ref = llama
    plan = make_plan(parent, imp, resolve_shape(parent.family, parent.shape, layers=3, hidden=24), block_rule="bi")
    child = build(parent, plan)
    metrics = evaluate(child, ref, speed=False)
    card = export.model_card(parent, child, plan, "builtin", metrics)
    assert "| block rule | bi |" in card and "with no training" in card and "no training)" in card
    assert f"| perplexity | {metrics['perplexity']} |" in card and f"| parameters | {plan.params:,} |" in card
    assert "AutoModelForCausalLM.from_pretrained" in card  # the class that loads it with its head
    folder = export.write(child, None, plan, tmp_path / "child", card)
    archive = export.zip_dir(folder)
    zipfile.ZipFile(archive).extractall(tmp_path / "unzipped")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "unzipped")
    x = ids()
    assert torch.equal(loaded(input_ids=x).logits, child(input_ids=x).logits)
    assert (tmp_path / "unzipped" / "README.md").read_text() == card


def test_push_needs_a_repo_and_a_token(tmp_path):
    with pytest.raises(SubcloneError, match="must look like user/name"):
        export.push(tmp_path, "noslash", "tok")
    with pytest.raises(SubcloneError, match="needs a write token"):
        export.push(tmp_path, "me/child", "")


def test_a_trained_childs_card_says_it_was_trained(llama):
    parent, imp, ref = llama
    plan = make_plan(parent, imp, resolve_shape(parent.family, parent.shape, layers=3, hidden=24))
    child = build(parent, plan)
    training = dict(init="subclone", steps=7, lr=1e-4, weight_decay=0.01, world_size=2, eval_loss=4.0,
                    eval_perplexity=54.6, history=[dict(step=0, eval_loss=5.0)], config=dict(batch_size=8, seq_len=128))
    card = export.model_card(parent, child, plan, "builtin", evaluate(child, ref, speed=False), training=training)
    assert "then trained for 7 steps" in card and "after training)" in card and "no training" not in card
    assert "## Recovery training" in card and "on 2 process(es)" in card and "Held-out loss 5.0 before, 4.0 after" in card
    random_card = export.model_card(parent, child, None, "builtin", training=training)
    assert "from random initialization" in random_card and "block rule" not in random_card
    assert "subclone.json" not in random_card


def test_a_training_loss_of_one_step_is_drawn_as_a_point():
    one = plots.curves({"subclone": [dict(step=0, eval_loss=3.0), dict(step=1, train_loss=2.9, eval_loss=2.8)]}, 1)
    many = plots.curves({"subclone": [dict(step=0, eval_loss=3.0), *(dict(step=s, train_loss=3 - s / 10)
                                                                     for s in (1, 2))]}, 2)
    assert one.data[1].mode == "markers" and list(one.data[1].y) == [2.9]  # a lone point of a line is not drawn
    assert many.data[1].mode == "lines" and many.data[1].line.dash == "dot"
