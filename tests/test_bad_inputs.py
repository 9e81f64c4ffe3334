"""Every odd input a stranger can send, through the CLI, the Python API and the app's API: each one gives one clear
line (CLI: exit 2; library: SubcloneError; app: gr.Error), never a traceback, with memory bounded, and a good
request works afterwards."""
import json
import math
import os
import shutil

import psutil
import pytest
import torch

from subclone import SubcloneError
from subclone.cli import main
from subclone.limits import Limits
from subclone.workspace import Design, Workspace


MB = 2**20


@pytest.fixture(scope="module")
def odd(tmp_path_factory, tiny_dir):
    """Folders and files that look like models or data but are not what they claim."""
    root = tmp_path_factory.mktemp("odd")
    bin_dir = root / "bin-and-empty-safetensors"
    bin_dir.mkdir()
    shutil.copy(tiny_dir / "config.json", bin_dir)
    torch.save({}, bin_dir / "pytorch_model.bin")
    (bin_dir / "model.safetensors").write_bytes(b"")
    for name, fname in (("auto-map-config", "config.json"), ("auto-map-tokenizer", "tokenizer_config.json")):
        shutil.copytree(tiny_dir, root / name)
        record = json.loads((root / name / fname).read_text())
        record["auto_map"] = {"AutoModelForCausalLM": "evil.Model"}
        (root / name / fname).write_text(json.dumps(record))
    someone_elses = root / "someone-elses-model"
    shutil.copytree(tiny_dir, someone_elses)
    child = root / "a-subclone-child"  # a child subclone wrote, used as a parent in turn
    shutil.copytree(tiny_dir, child)
    (child / "subclone.json").write_text("{}")
    (root / "garbage.parquet").write_bytes(b"not parquet at all")
    (root / "empty.txt").write_text("")
    (root / "big.txt").write_bytes(b"x" * (30 * MB))  # over the upload limit
    (root / "notes.exe").write_bytes(b"MZ")
    return dict(root=root, tiny=str(tiny_dir), bin=str(bin_dir), auto_config=str(root / "auto-map-config"),
                auto_tok=str(root / "auto-map-tokenizer"), theirs=str(someone_elses), child=str(child))


# ---- the CLI: (what, argv, says) ------------------------------------------------------------------

CLI = [
    ("unknown parent", ["clone", "--parent", "nope"], "unknown parent 'nope'"),
    ("5,000-character parent", ["clone", "--parent", "p" * 5000], "the parent is 5,000 characters long"),
    ("5,000-character data", ["clone", "--parent", "{tiny}", "--data", "d" * 5000], "the data spec is 5,000 characters"),
    ("30-digit seed", ["clone", "--parent", "{tiny}", "--seed", "9" * 30], "seed must be at most 4,294,967,295"),
    ("huge block list", ["clone", "--parent", "{tiny}", "--layers", "3", "--block-rule", "0-99999999999"],
     "names a block beyond the parent's blocks 0-3"),
    ("backwards block range", ["clone", "--parent", "{tiny}", "--layers", "3", "--block-rule", "3-1"],
     "runs backwards"),
    ("unreadable block list", ["clone", "--parent", "{tiny}", "--block-rule", "1-x"], "cannot read block list"),
    ("block list of the wrong length", ["clone", "--parent", "{tiny}", "--layers", "2", "--block-rule", "0-2"],
     "keeps 3 blocks but layers is 2"),
    ("empty --out", ["clone", "--parent", "{tiny}", "--out", ""], "the output directory is empty"),
    ("--out inside the cache", ["clone", "--parent", "{tiny}", "--out", "{home}/parents/x"], "inside subclone's cache"),
    ("--out is the parent", ["clone", "--parent", "{child}", "--out", "{child}"], "the parent's own directory"),
    ("--out holds another model", ["clone", "--parent", "{tiny}", "--out", "{theirs}"],
     "already holds a model that subclone did not write"),
    ("pytorch_model.bin + empty safetensors", ["clone", "--parent", "{bin}"], "not a readable safetensors file"),
    ("auto_map in config", ["clone", "--parent", "{auto_config}"], "config.json asks for custom code"),
    ("auto_map in tokenizer config", ["clone", "--parent", "{auto_tok}"], "tokenizer_config.json asks for custom code"),
    ("negative layers", ["clone", "--parent", "{tiny}", "--layers", "-3"], "layers must be at least 0"),
    ("impossible hidden", ["clone", "--parent", "{tiny}", "--hidden", "50"], "hidden 50 is not possible"),
    ("heads not in whole groups", ["clone", "--parent", "{tiny}", "--heads", "5"], "whole KV groups"),
    ("unknown neuron rule", ["clone", "--parent", "{tiny}", "--neuron-rule", "best"], "unknown neuron rule 'best'"),
    ("missing data file", ["clone", "--parent", "{tiny}", "--data", "{root}/missing.txt"], "not found"),
    ("data is a directory", ["clone", "--parent", "{tiny}", "--data", "{root}"], "not found"),
    ("garbage parquet", ["clone", "--parent", "{tiny}", "--data", "{root}/garbage.parquet"], "cannot read data file"),
    ("empty text", ["clone", "--parent", "{tiny}", "--data", "{root}/empty.txt"], "too short"),
    ("weight decay NaN", ["train", "--parent", "{tiny}", "--weight-decay", "nan"], "weight decay must be a finite"),
    ("distillation inf", ["train", "--parent", "{tiny}", "--distill", "inf"], "distillation weight must be a finite"),
    ("negative weight decay", ["train", "--parent", "{tiny}", "--weight-decay", "-1"], "weight decay must be at least 0"),
    ("sequence of 20,000 tokens", ["train", "--parent", "{tiny}", "--seq-len", "20000"],
     "sequence length must be at most"),
    ("learning rate 0", ["train", "--parent", "{tiny}", "--lr", "0"], "learning rate must be above 0"),
    ("zero batch", ["train", "--parent", "{tiny}", "--batch-size", "0"], "batch size must be at least 1"),
    ("no fit windows", ["clone", "--parent", "{tiny}", "--fit-windows", "0"], "--fit-windows must be at least 1"),
    ("fit windows not a number", ["train", "--parent", "{tiny}", "--fit-windows", "x"], "invalid int value: 'x'"),
    ("eval of a folder without a model", ["eval", "--model", "{root}"], "not a model directory"),
]


@pytest.mark.parametrize("what, argv, says", CLI, ids=[c[0] for c in CLI])
def test_cli(what, argv, says, odd, capsys, tmp_path):
    fill = {**odd, "home": os.environ["SUBCLONE_HOME"]}
    argv = [a.format(**fill) for a in argv]
    if argv[0] in ("clone", "train") and "--out" not in argv:
        argv += ["--out", str(tmp_path / "out")]
    code = main(argv)
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert code == 2 and captured.out == "" and len(lines) == 1, captured.err[-500:]
    assert lines[0].startswith("error: ") and says in lines[0], lines[0]
    assert len(lines[0]) < 400  # never echoes a long value back


def test_cli_still_works_after_the_bad_inputs_and_touched_nothing(odd, tmp_path):
    theirs = sorted(p.name for p in (odd["root"] / "someone-elses-model").iterdir())
    assert theirs == sorted(p.name for p in __import__("pathlib").Path(odd["tiny"]).iterdir())  # not written to
    assert main(["clone", "--parent", odd["tiny"], "--layers", "3", "--out", str(tmp_path / "good")]) == 0


# ---- the Python API: (what, call, says) -----------------------------------------------------------

SPACE = Limits.space({})
LOCAL = Limits.local({})


def test_limits_read_from_the_environment_are_checked():
    assert Limits.space({"SUBCLONE_FIT_WINDOWS": "96"}).fit_windows == 96 and SPACE.fit_windows == 32
    with pytest.raises(SubcloneError, match="fit_windows must be at least 1"):
        Limits.space({"SUBCLONE_FIT_WINDOWS": "0"})
    with pytest.raises(SubcloneError, match="SUBCLONE_FIT_WINDOWS='many' is not a whole number"):
        Limits.local({"SUBCLONE_FIT_WINDOWS": "many"})


def design(**kw):
    base = dict(parent="smollm2-135m", data="builtin", layers=30, hidden=576, ffn=1536, heads=9, kv_heads=3)
    return Design.of(SPACE, **{**base, **kw})


API = [
    ("server file as data", lambda ws, o: ws.text("/etc/shadow"), "is not accepted here"),
    ("process environment as data", lambda ws, o: ws.text("/proc/self/environ"), "is not accepted here"),
    ("relative path as data", lambda ws, o: ws.text("../secrets.txt"), "is not accepted here"),
    ("2 MB data string", lambda ws, o: ws.text("x" * 2 * MB), "the data spec is 2,097,152 characters long"),
    ("local parent on a Space", lambda ws, o: ws.parent(o["tiny"]), "is not accepted here"),
    ("parent with a newline", lambda ws, o: ws.parent("a\nb"), "is not accepted here"),
    ("upload of another session", lambda ws, o: ws.text("upload:x.txt", ws.session("s")), "not an upload of this"),
    ("upload over the size limit", lambda ws, o: ws.upload("s", o["root"] / "big.txt"), "at most 20 MB"),
    ("upload that is not text", lambda ws, o: ws.upload("s", o["root"] / "notes.exe"), "is not a text file"),
    ("NaN size", lambda ws, o: design(hidden=math.nan), "hidden must be a whole number"),
    ("list for heads", lambda ws, o: design(heads=[3]), "heads must be a number, got list"),
    ("text for layers", lambda ws, o: design(layers="30"), "layers must be a number, got str"),
    ("unknown scaling group", lambda ws, o: design(scale=["everything"]), "unknown scaling group"),
    ("steps beyond the cap", lambda ws, o: ws.train_config(ws_parent(o), 200_000, 0), "steps must be at most 200"),
    ("distillation NaN", lambda ws, o: ws.train_config(ws_parent(o), 2, math.nan), "must be a finite number"),
    ("a sweep of 1,000 children", lambda ws, o: ws.sweep("s", design(), ",".join(["30"] * 100), "1,2,3,4,5,6,7,8,9,10"),
     "a sweep here builds at most 25"),
    ("a 1 MB prompt", lambda ws, o: ws.outputs("s", "smollm2-135m", "p" * MB), "the prompt is 1,048,576 characters"),
    ("an export before a heal", lambda ws, o: ws.export_healed("s", "subclone"), "train the 'subclone' init first"),
    ("a parent bigger than the cap", lambda ws, o: Workspace(
        Limits(allow_local_paths=True, max_parent_params=1000)).parent(o["tiny"]), "this app takes parents up to"),
]


def ws_parent(o):
    return Workspace(LOCAL).parent(o["tiny"])


@pytest.mark.parametrize("what, call, says", API, ids=[c[0] for c in API])
def test_python_api(what, call, says, odd, tmp_path):
    ws = Workspace(SPACE, tmp_path / "sessions")
    with pytest.raises(SubcloneError) as e:
        call(ws, odd)
    assert says in str(e.value) and "\n" not in str(e.value) and len(str(e.value)) < 400, str(e.value)


def test_big_files_are_read_only_as_far_as_needed(tmp_path):
    """A 100 MB text file: read up to the limit, in bounded memory, and calibration tokenizes only what it uses."""
    from subclone.data import load

    big = tmp_path / "big.txt"
    with big.open("w") as f:
        for _ in range(100):
            f.write(("All work and no play makes a model dull. " * 25_000)[: MB])
    before = psutil.Process().memory_info().rss
    text = load(str(big), Limits(allow_local_paths=True))
    assert len(text.text) == Limits().max_text_chars < big.stat().st_size
    assert psutil.Process().memory_info().rss - before < 300 * MB


# ---- the app's API, on an app configured as a public Space ---------------------------------------

APP = [
    ("server file as data", "/build", dict(data="/etc/shadow"), "is not accepted here"),
    ("process environment as data", "/build", dict(data="/proc/self/environ"), "is not accepted here"),
    ("2 MB data string", "/build", dict(data="d" * 2 * MB), "characters long"),
    ("missing slider", "/build", dict(layers=None), "layers must be a number, got nothing"),
    ("list for heads", "/build", dict(heads=[3, 3]), "heads must be a number"),
    ("huge block list", "/build", dict(block_rule="0-9999999"), "names a block beyond"),
    ("local parent", "/analyze", dict(parent="/root"), "is not accepted here"),
    ("5,000-character parent", "/analyze", dict(parent="p" * 5000), "characters long"),
    ("200,000 training steps", "/heal", dict(steps=200_000, inits=["subclone"], distill=0), "steps must be at most"),
    ("negative distillation", "/heal", dict(steps=2, inits=["subclone"], distill=-1), "distillation weight must be"),
    ("unknown init", "/heal", dict(steps=2, inits=["best"], distill=0), "choose initializations among"),
    ("a sweep of 1,000 children", "/sweep", dict(depths=",".join(["30"] * 100), widths="1,2,3,4,5,6,7,8,9,10"),
     "a sweep here builds at most"),
    ("a 1 MB prompt", "/outputs", dict(prompt="p" * MB), "the prompt is"),
    ("export of an untrained child", "/export_trained", dict(init="random"), "train the 'random' init first"),
]
DESIGN = dict(parent="smollm2-135m", data="builtin", layers=30, hidden=576, ffn=1536, heads=9, kv_heads=3,
              block_rule="magnitude", neuron_rule="importance", scale=["residual", "embed"])
ARGS = {"/build": list(DESIGN), "/analyze": ["parent", "data"], "/heal": list(DESIGN),
        "/sweep": ["parent", "data", "heads", "kv_heads", "block_rule", "neuron_rule", "scale"],
        "/outputs": ["parent"], "/export_trained": ["parent", "data"], "/preview": list(DESIGN)[:8]}


@pytest.mark.slow
def test_app_api(space_app):
    from gradio_client import Client

    url, proc = space_app
    client = Client(url, verbose=False)
    for what, endpoint, values, says in APP:
        kwargs = {**{k: DESIGN[k] for k in ARGS[endpoint]}, **values}
        with pytest.raises(Exception) as e:
            client.predict(**kwargs, api_name=endpoint)
        message = str(e.value)
        assert says in message and "Traceback" not in message and len(message) < 400, f"{what}: {message[:300]}"
    readout, _ = client.predict(**{k: DESIGN[k] for k in ARGS["/preview"]}, api_name="/preview")
    assert "134.5 M params" in readout  # a good request works afterwards
    readout, _ = client.predict(**{**{k: DESIGN[k] for k in ARGS["/preview"]}, "layers": None}, api_name="/preview")
    assert readout.startswith("⚠️ layers must be a number")  # the live readout says it instead of raising
    assert proc.memory_info().rss < 3 * 2**30
    client.close()
