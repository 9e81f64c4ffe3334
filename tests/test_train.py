"""Recovery training on a tiny parent: it learns, it is deterministic, it saves, and it runs data-parallel."""
import json
import os
import socket
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM

from subclone import analyze, load_parent, resolve_shape
from subclone.errors import SubcloneError
from subclone.export import model_card, write
from subclone.train import TrainConfig, init_child, text_tokens, train

from .conftest import run_cli

SHAPE = dict(layers=3, hidden=24, ffn=20, heads=4, kv_heads=2)
QUICK = dict(batch_size=4, seq_len=32, eval_batches=2, lr=3e-3)


@pytest.fixture(scope="module")
def setup(tiny_dir):
    parent = load_parent(str(tiny_dir))
    imp = analyze(parent, cache=False)
    shape = resolve_shape(parent.family, parent.shape, **SHAPE)
    return parent, imp, shape, text_tokens(parent, "builtin", 32, eval_sequences=8)


def run(setup, init="subclone", **overrides):
    parent, imp, shape, (train_tokens, eval_tokens) = setup
    child, plan = init_child(parent, imp, shape, init)
    config = TrainConfig(**{**dict(steps=12, eval_every=4, **QUICK), **overrides})
    child, result = train(child, train_tokens, eval_tokens, config, init=init,
                          teacher=parent.model if config.distill else None)
    return child, plan, result


def test_loss_goes_down_and_the_saved_child_reloads(setup, tmp_path):
    parent = setup[0]
    child, plan, result = run(setup, steps=30, eval_every=10)
    h = result["history"]
    assert [r["step"] for r in h] == [0, 10, 20, 30] and result["steps"] == 30
    assert h[-1]["eval_loss"] < h[0]["eval_loss"] - 0.3 and h[-1]["train_loss"] < h[1]["train_loss"]
    assert result["eval_loss"] == h[-1]["eval_loss"] and result["world_size"] == 1 and result["in_sync"]
    write(child, parent.tokenizer, plan, tmp_path, model_card(parent, child, plan, "builtin", training=result),
          training=result)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    x = torch.randint(0, 300, (2, 16))
    assert torch.equal(reloaded(input_ids=x).logits, child(input_ids=x).logits)
    assert json.loads((tmp_path / "training.json").read_text())["history"] == h
    assert (tmp_path / "subclone.json").exists() and "trained for 30 steps" in (tmp_path / "README.md").read_text()


def test_deterministic_under_a_seed(setup):
    _, _, a = run(setup)
    _, _, b = run(setup)
    _, _, c = run(setup, seed=1)
    assert a["history"] == b["history"] and a["ranks"][0]["digest"] == b["ranks"][0]["digest"]
    assert c["ranks"][0]["digest"] != a["ranks"][0]["digest"]


def test_three_inits_same_shape_and_defaults(setup):
    results = {}
    for init in ("subclone", "uniform", "random"):
        child, plan, r = run(setup, init=init, steps=1, lr=None)
        results[init] = (child.num_parameters(), plan, r)
    assert len({n for n, _, _ in results.values()}) == 1  # equal terms: the same architecture
    assert results["random"][1] is None and results["uniform"][1].neuron_rule == "uniform"
    assert results["subclone"][2]["lr"] == 1e-4 and results["random"][2]["lr"] == 1e-3


def test_distillation_adds_the_parents_signal(setup):
    _, _, plain = run(setup, steps=4)
    _, _, distilled = run(setup, steps=4, distill=1.0)
    assert distilled["history"][-1]["train_loss"] > plain["history"][-1]["train_loss"]  # CE + KL > CE
    assert distilled["history"][-1]["eval_loss"] != plain["history"][-1]["eval_loss"]


def test_stop_ends_early_with_a_usable_child(setup):
    parent, imp, shape, (train_tokens, eval_tokens) = setup
    child, _ = init_child(parent, imp, shape, "subclone")
    calls = []  # should_stop is asked after every step: say stop on the fourth
    _, result = train(child, train_tokens, eval_tokens, TrainConfig(steps=50, **QUICK),
                      should_stop=lambda: calls.append(1) or len(calls) == 4)
    assert result["stopped"] and result["steps"] == 4 and result["history"][-1]["step"] == 4


def test_bad_settings_are_clear_errors(setup):
    parent, imp, shape, _ = setup
    with pytest.raises(SubcloneError, match="unknown init 'best'"):
        init_child(parent, imp, shape, "best")
    with pytest.raises(SubcloneError, match="steps must be at least 1"):
        run(setup, steps=0)
    with pytest.raises(SubcloneError, match="learning rate must be above 0 and at most 1, got 5"):
        run(setup, lr=5.0)
    with pytest.raises(SubcloneError, match="fewer than one batch"):
        run(setup, batch_size=60_000)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_cli_train_prints_the_contract(tmp_path, tiny_dir):
    out = tmp_path / "healed"
    code, stdout, stderr = run_cli("train", "--parent", tiny_dir, "--layers", "3", "--hidden", "24", "--init", "random",
                                   "--steps", "6", "--batch-size", "4", "--seq-len", "32", "--out", out, "--json")
    assert code == 0, stderr[-2000:]
    result = json.loads(stdout)
    assert result["init"] == "random" and result["steps"] == 6 and result["eval_loss"] == result["history"][-1]["eval_loss"]
    assert all({"step", "train_loss", "eval_loss"} <= set(h) for h in result["history"])
    assert AutoModelForCausalLM.from_pretrained(out).config.num_hidden_layers == 3
    bad = subprocess.run([sys.executable, "-m", "subclone", "train", "--parent", str(tiny_dir), "--steps", "0",
                          "--out", str(tmp_path / "x")], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.strip() == "error: steps must be at least 1, got 0"


@pytest.mark.slow
def test_torchrun_two_processes_stay_in_sync(tmp_path, tiny_dir):
    """torchrun --nproc_per_node=2 on CPU (gloo): both ranks step, weights agree, rank 0 saves a child that reloads."""
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                        f"--master_port={_free_port()}", "-m", "subclone", "train", "--parent", str(tiny_dir),
                        "--layers", "3", "--hidden", "24", "--steps", "8", "--batch-size", "4", "--seq-len", "32",
                        "--lr", "3e-3", "--out", str(out), "--json"], capture_output=True, text=True, env=env,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = [line for line in r.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 1  # only rank 0 reports
    result = json.loads(lines[0])
    assert result["world_size"] == 2 and [x["rank"] for x in result["ranks"]] == [0, 1]
    assert all(x["steps"] == 8 and x["tokens"] == 8 * 4 * 32 for x in result["ranks"])
    assert result["in_sync"] and len({x["digest"] for x in result["ranks"]}) == 1
    assert result["history"][-1]["eval_loss"] < result["history"][0]["eval_loss"]
    child = AutoModelForCausalLM.from_pretrained(out)
    from subclone.train import digest

    assert digest(child) == result["ranks"][0]["digest"]  # the saved child is the trained one
