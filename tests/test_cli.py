"""The CLI contract, end to end: clone writes a plain model directory, eval prints the promised JSON."""
import json
import subprocess
import sys

import pytest
import torch
from transformers import AutoModel, AutoModelForCausalLM

from .conftest import run_cli

LM_FIELDS = {"perplexity", "parent_perplexity", "top1_agreement", "kl_to_parent", "params", "parent_params",
             "ms_per_token"}


def cli(*argv, process=False):
    """The CLI's JSON result: in this process, or (process) as `python -m subclone` in a new one."""
    if process:
        r = subprocess.run([sys.executable, "-m", "subclone", *argv], capture_output=True, text=True)
        code, out, err = r.returncode, r.stdout, r.stderr
    else:
        code, out, err = run_cli(*argv)
    assert code == 0, err[-2000:]
    return json.loads(out)


def test_clone_then_eval_on_a_local_parent(tmp_path, tiny_dir):
    out = tmp_path / "child"
    made = cli("clone", "--parent", str(tiny_dir), "--layers", "3", "--hidden", "24", "--ffn", "20", "--heads", "4",
               "--block-rule", "middle", "--out", str(out))
    assert made["shape"] == dict(layers=3, hidden=24, ffn=20, heads=4, kv_heads=2, head_dim=8)
    child = AutoModelForCausalLM.from_pretrained(out)  # plain transformers, no subclone needed
    assert child.num_parameters() == made["params"] < made["parent_params"]
    record = json.loads((out / "subclone.json").read_text())
    assert record["parent"] == str(tiny_dir) and record["layers"] == made["layers"] and len(record["layers"]) == 3
    assert record["block_rule"] == "middle" and record["scale"]["residual"] is True
    card = (out / "README.md").read_text()  # a model card comes with it
    assert "| block rule | middle |" in card and "AutoModelForCausalLM.from_pretrained" in card
    from subclone import Plan, build, load_parent  # subclone.json is a plan: it rebuilds the same child
    from subclone.compensate import windows

    parent = load_parent(str(tiny_dir))  # with the fits of its compensation, made on the same calibration text
    assert record["compensate"] == "all" and record["data"] == "builtin" and record["fit_windows"] == 32
    rebuilt = build(parent, Plan.from_dict(record), windows(parent, record["data"], record["fit_windows"]))
    x = torch.randint(0, 300, (1, 12))
    assert torch.equal(rebuilt(x).logits, child.eval()(x).logits)
    fewer = cli("clone", "--parent", str(tiny_dir), "--layers", "3", "--hidden", "24", "--ffn", "20", "--heads", "4",
                "--block-rule", "middle", "--fit-windows", "6", "--out", str(tmp_path / "fewer"))
    other = json.loads((tmp_path / "fewer" / "subclone.json").read_text())  # the same child, fitted on 6 windows
    assert fewer["layers"] == made["layers"] and other["fit_windows"] == 6
    six = build(parent, Plan.from_dict(other), windows(parent, other["data"], 6))
    assert torch.equal(six(x).logits, AutoModelForCausalLM.from_pretrained(tmp_path / "fewer")(x).logits)
    assert not torch.allclose(six(x).logits, child(x).logits)  # the fits did use the windows asked for
    assert "| calibration windows the fits read (256 tokens each) | 6 |" in (tmp_path / "fewer/README.md").read_text()
    result = cli("eval", "--model", str(out), "--json")
    assert LM_FIELDS <= set(result) and result["params"] == made["params"]
    assert result["perplexity"] > 0 and 0 <= result["top1_agreement"] <= 1 and result["kl_to_parent"] >= 0


def test_clone_in_principal_directions_rebuilds_from_its_record(tmp_path, tiny_dir):
    out = tmp_path / "turned"
    made = cli("clone", "--parent", str(tiny_dir), "--hidden", "24", "--basis", "principal", "--compensate", "none",
               "--out", str(out))
    child = AutoModelForCausalLM.from_pretrained(out)  # plain transformers: a Llama, tied as the parent is
    assert made["basis"] == "principal" and child.num_parameters() == made["params"]
    assert child.config.tie_word_embeddings and child.lm_head.weight is child.model.embed_tokens.weight
    from subclone import Plan, build, load_parent
    from subclone.compensate import windows

    record = json.loads((out / "subclone.json").read_text())
    parent = load_parent(str(tiny_dir))  # the same principal directions, from the same calibration text
    rebuilt = build(parent, Plan.from_dict(record), windows(parent, record["data"]))
    x = torch.randint(0, 300, (1, 12))
    assert torch.equal(rebuilt(x).logits, child.eval()(x).logits)
    assert "| residual basis | principal |" in (out / "README.md").read_text()
    assert "fit_windows" not in record  # no fits: the record names no fit windows (the card neither)
    assert "calibration windows the fits read" not in (out / "README.md").read_text()


def test_train_starts_from_the_child_clone_makes(tmp_path, tiny_dir):
    """`train --init subclone` builds its start as `clone` does: the parent rotated on the calibration windows, the
    fits on --fit-windows of them. One step at a learning rate of 1e-9 leaves the weights where they started."""
    flags = ["--parent", str(tiny_dir), "--layers", "3", "--hidden", "24", "--basis", "principal", "--fit-windows", "6"]
    cli("clone", *flags, "--out", str(tmp_path / "cloned"))
    cli("train", *flags, "--steps", "1", "--lr", "1e-9", "--batch-size", "2", "--seq-len", "32",
        "--out", str(tmp_path / "trained"), "--json")
    cloned, trained = (AutoModelForCausalLM.from_pretrained(tmp_path / d) for d in ("cloned", "trained"))
    x = torch.randint(0, 300, (1, 12))
    assert torch.allclose(trained(x).logits, cloned(x).logits, atol=1e-4)
    record = json.loads((tmp_path / "trained" / "training.json").read_text())
    assert record["fit_windows"] == 6 and record["steps"] == 1


def test_full_shape_clone_evaluates_as_the_parent(tmp_path, tiny_dir):
    out = tmp_path / "same"
    cli("clone", "--parent", str(tiny_dir), "--out", str(out))
    result = cli("eval", "--model", str(out), "--no-speed")
    assert result["perplexity"] == pytest.approx(result["parent_perplexity"], rel=1e-4)
    assert result["top1_agreement"] == 1.0 and result["kl_to_parent"] == pytest.approx(0, abs=1e-5)


def test_analyze_writes_a_record(tmp_path, tiny_dir):
    from subclone import Importance

    summary = cli("analyze", "--parent", str(tiny_dir), "--out", str(tmp_path))
    imp = Importance.load(tmp_path / "importance.safetensors")
    assert imp.residual.shape == (4, 48) and imp.heads.shape == (4, 6) and imp.ffn.shape == (4, 40)
    assert summary["tokens"] > 0 and json.loads((tmp_path / "analysis.json").read_text()) == summary


@pytest.mark.slow
def test_bundled_smollm2_child_within_8x_parent_perplexity(tmp_path):
    """The issue's acceptance check: 24 layers / 504 hidden / 1280 ffn, no training."""
    out = tmp_path / "smol"
    cli("clone", "--parent", "smollm2-135m", "--layers", "24", "--hidden", "504", "--ffn", "1280", "--heads", "9",
        "--kv-heads", "3", "--out", str(out), process=True)  # as a user runs it
    child = AutoModelForCausalLM.from_pretrained(out)
    assert child.config.num_hidden_layers == 24 and child.config.hidden_size == 504
    result = cli("eval", "--model", str(out), "--json", "--no-speed")  # timed in the tiny clone above
    print(result)
    assert result["perplexity"] <= 8 * result["parent_perplexity"]
    assert result["params"] < 0.7 * result["parent_params"]


@pytest.mark.slow
def test_bundled_minilm_child(tmp_path):
    out = tmp_path / "mini"
    cli("clone", "--parent", "minilm-l6", "--layers", "4", "--heads", "8", "--out", str(out))
    assert AutoModel.from_pretrained(out).config.hidden_size == 256
    assert "model = AutoModel.from_pretrained" in (out / "README.md").read_text()
    result = cli("eval", "--model", str(out), "--json", "--no-speed")
    assert 0.3 < result["cosine_to_parent"] < 1 and result["params"] < result["parent_params"]
    full = tmp_path / "full"
    cli("clone", "--parent", "minilm-l6", "--out", str(full))
    assert cli("eval", "--model", str(full), "--no-speed")["cosine_to_parent"] == pytest.approx(1, abs=1e-4)
