"""Bad input gets a clear one-line error (exit 2), and good input of every kind is read."""
import json
import subprocess
import sys

import pandas as pd
import pytest
import torch
import transformers

from subclone import SubcloneError, load_parent, resolve_shape
from subclone.arch import family_for
from subclone.cli import main
from subclone.data import chunk, load_text, split

from .conftest import tiny_parent

PROSE = load_text("builtin")[:40000]


# ---- shapes --------------------------------------------------------------------------------------

@pytest.mark.parametrize("sizes, says", [
    (dict(layers=0), "layers 0 is not possible"),
    (dict(layers=5), "nearest valid: 4"),
    (dict(hidden=50), "multiple of heads (6)"),
    (dict(heads=5), "whole KV groups"),
    (dict(heads=4, kv_heads=3), "kv_heads must divide heads 4"),
    (dict(ffn=41), "ffn must be 1 to 40"),
])
def test_impossible_shapes_name_the_nearest_valid(sizes, says):
    p = tiny_parent("llama")
    with pytest.raises(SubcloneError, match="nearest valid") as e:
        resolve_shape(p.family, p.shape, **sizes)
    assert says in str(e.value)


def test_heads_fix_hidden_where_head_dim_is_derived():
    p = tiny_parent("bert")  # hidden 32 = 4 heads x 8
    assert resolve_shape(p.family, p.shape, heads=2).hidden == 16
    assert resolve_shape(p.family, p.shape, hidden=24).heads == 3
    with pytest.raises(SubcloneError, match="hidden must equal heads x 8"):
        resolve_shape(p.family, p.shape, heads=2, hidden=24)


def test_unsupported_family_names_the_supported_ones():
    with pytest.raises(SubcloneError, match=r"unsupported model family 't5'.*llama.*gpt2.*bert"):
        family_for(transformers.T5Config())


# ---- data ----------------------------------------------------------------------------------------

def test_builtin_calibration_and_evaluation_never_overlap():
    text = load_text("builtin")
    calib, held = split(text)
    assert len(text) > 400_000 and calib + held == text
    assert held[:2000] not in calib


@pytest.mark.parametrize("suffix", [".txt", ".jsonl", ".csv", ".parquet"])
def test_data_files_of_every_kind(tmp_path, suffix):
    rows = [PROSE[i:i + 500] for i in range(0, len(PROSE), 500)]
    f = tmp_path / f"d{suffix}"
    if suffix == ".txt":
        f.write_text("\n\n".join(rows))
    elif suffix == ".jsonl":
        f.write_text("\n".join(json.dumps({"id": i, "text": r}) for i, r in enumerate(rows)))
    elif suffix == ".csv":
        pd.DataFrame({"text": rows}).to_csv(f, index=False)
    else:
        pd.DataFrame({"text": rows}).to_parquet(f)
    assert load_text(str(f)).split() == "\n\n".join(rows).split()


def test_missing_and_short_data(tmp_path, tiny_dir):
    with pytest.raises(SubcloneError, match="not found"):
        load_text(str(tmp_path / "nope.txt"))
    tok = transformers.AutoTokenizer.from_pretrained(tiny_dir)
    with pytest.raises(SubcloneError, match="too short"):
        chunk(tok, "just a few words", 256, 4, False, "calibration")


# ---- parents -------------------------------------------------------------------------------------

def test_local_directory_parent_loads_with_its_family(tiny_dir):
    parent = load_parent(str(tiny_dir))
    assert parent.family.name == "llama" and parent.shape.layers == 4
    assert parent.tokenizer("hello world")["input_ids"]


def test_parents_load_safetensors_only(tmp_path, tiny_dir):
    (tmp_path / "config.json").write_text((tiny_dir / "config.json").read_text())
    torch.save({}, tmp_path / "pytorch_model.bin")
    with pytest.raises(SubcloneError, match="safetensors only"):
        load_parent(str(tmp_path))


def test_tokenizer_that_does_not_match_the_model(tmp_path, tiny_dir):
    import shutil

    from subclone import analyze

    from .conftest import TINY

    small = transformers.LlamaConfig(**{**TINY["llama"].to_dict(), "vocab_size": 50})
    transformers.LlamaForCausalLM(small).save_pretrained(tmp_path)
    for f in tiny_dir.glob("tokenizer*"):
        shutil.copy(f, tmp_path)
    with pytest.raises(SubcloneError, match="tokenizer .* does not match its model"):
        analyze(load_parent(str(tmp_path)), cache=False)


def test_unknown_parent():
    with pytest.raises(SubcloneError, match="unknown parent 'no-such-model'.*smollm2-135m"):
        load_parent("no-such-model")


# ---- the CLI: exit 2, one line on stderr, nothing on stdout ---------------------------------------

@pytest.fixture
def unsupported_dir(tmp_path):
    cfg = transformers.GPTNeoXConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                                     intermediate_size=64)
    transformers.GPTNeoXForCausalLM(cfg).save_pretrained(tmp_path / "neox")
    return tmp_path / "neox"


def cli_error(capsys, *argv):
    code = main(list(argv))
    captured = capsys.readouterr()
    assert code == 2 and captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in captured.err
    return lines[0]


def test_cli_bad_input(capsys, tmp_path, tiny_dir, unsupported_dir):
    out = str(tmp_path / "out")
    P = ["--parent", str(tiny_dir)]
    assert "unknown parent" in cli_error(capsys, "clone", "--parent", "nope", "--out", out)
    assert "unsupported model family 'gpt_neox'" in cli_error(capsys, "clone", "--parent", str(unsupported_dir), "--out", out)
    assert "layers 0" in cli_error(capsys, "clone", *P, "--layers", "0", "--out", out)
    assert "layers 9" in cli_error(capsys, "clone", *P, "--layers", "9", "--out", out)
    assert "hidden 50" in cli_error(capsys, "clone", *P, "--hidden", "50", "--out", out)
    assert "kv_heads 2" in cli_error(capsys, "clone", *P, "--heads", "6", "--kv-heads", "2", "--out", out)
    assert "not found" in cli_error(capsys, "clone", *P, "--data", str(tmp_path / "missing.txt"), "--out", out)
    short = tmp_path / "short.txt"
    short.write_text("too short to calibrate on")
    assert "too short" in cli_error(capsys, "clone", *P, "--data", str(short), "--out", out)
    blocker = tmp_path / "file"
    blocker.write_text("a file where a directory should go")
    assert "cannot write to" in cli_error(capsys, "clone", *P, "--out", str(blocker / "child"))
    assert "unknown block rule 'best'" in cli_error(capsys, "clone", *P, "--block-rule", "best", "--out", out)
    assert "required: --out" in cli_error(capsys, "clone", *P)
    assert "not a model directory" in cli_error(capsys, "eval", "--model", str(tmp_path))


def test_cli_error_from_a_real_process_has_no_traceback(tmp_path):
    r = subprocess.run([sys.executable, "-m", "subclone", "clone", "--parent", "nope", "--out", str(tmp_path)],
                       capture_output=True, text=True)
    assert r.returncode == 2 and r.stdout == "" and "Traceback" not in r.stderr
    assert r.stderr.startswith("error: unknown parent 'nope'")
