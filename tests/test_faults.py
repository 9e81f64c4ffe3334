"""Caches survive faults: a torn or damaged entry is detected, reported once and rebuilt; a process killed while
writing leaves no entry behind; new weights in the same folder get a new entry."""
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from subclone import Importance, analyze, load_parent
from subclone.importance import cache_path
from subclone.data import load
from subclone.parents import _cached_conversion_ok

from .conftest import tiny_model


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("SUBCLONE_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def test_an_entry_cut_in_half_is_rebuilt(home, tiny_dir):
    parent = load_parent(str(tiny_dir))
    first = analyze(parent)
    path = cache_path(parent, load("builtin"))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.warns(UserWarning, match="was damaged"):
        again = analyze(parent)
    assert torch.equal(again.residual, first.residual)
    assert torch.equal(Importance.load(path).residual, first.residual)  # a whole entry again
    path.write_bytes(b"")  # empty is damaged too
    with pytest.warns(UserWarning, match="was damaged"):
        analyze(parent)


def test_a_process_killed_while_writing_leaves_no_entry(home, tiny_dir, tmp_path):
    """The writer is stopped half way through writing the cache file (SIGKILL): the next run measures again."""
    script = textwrap.dedent(f"""
        import time, safetensors.torch as st
        import subclone.importance as imp
        def slow_save(tensors, path, metadata=None):
            with open(path, "wb") as f:
                f.write(b"partial")
                f.flush()
                time.sleep(600)
        imp.save_file = slow_save
        from subclone import Importance, analyze, load_parent
        analyze(load_parent({str(tiny_dir)!r}))
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], env={**os.environ, "SUBCLONE_HOME": str(home)})
    folder = home / "importance"
    for _ in range(600):
        if folder.exists() and list(folder.iterdir()):
            break
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert [p.name for p in folder.iterdir()][0].endswith(".tmp")  # killed mid-write: only its temporary file
    parent = load_parent(str(tiny_dir))
    assert not cache_path(parent, load("builtin")).exists()
    imp = analyze(parent)  # measures again, writes a whole entry
    assert imp.residual.shape == (4, 48) and cache_path(parent, load("builtin")).exists()


def test_new_weights_in_the_same_folder_get_a_new_entry(home, tiny_dir, tmp_path):
    folder = tmp_path / "parent"
    shutil.copytree(tiny_dir, folder)
    before = analyze(load_parent(str(folder)))
    time.sleep(0.01)
    tiny_model("llama", seed=5).save_pretrained(folder)  # same path, same config, other weights
    after = analyze(load_parent(str(folder)))
    assert not torch.equal(before.residual, after.residual)
    assert len(list((home / "importance").glob("*.safetensors"))) == 2


def test_a_damaged_converted_parent_is_detected(tmp_path):
    folder = tmp_path / "smollm2-135m"
    tiny_model("llama").save_pretrained(folder)
    assert _cached_conversion_ok(folder)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.warns(UserWarning, match="damaged"):
        assert not _cached_conversion_ok(folder)
    assert not folder.exists()  # removed, so the next load converts it again
    assert not _cached_conversion_ok(Path(tmp_path / "never-written"))


def test_a_conversion_reads_the_gguf_once_and_leaves_gguf_as_it_was():
    import gguf

    from subclone.parents import _gguf_read_once

    reader, name_map = gguf.GGUFReader, gguf.get_tensor_name_map
    arch = gguf.MODEL_ARCH.LLAMA
    with _gguf_read_once():
        assert gguf.get_tensor_name_map(arch, 30) is gguf.get_tensor_name_map(arch, 30)  # built once
        assert gguf.GGUFReader is not reader
    with pytest.raises(RuntimeError):
        with _gguf_read_once():
            raise RuntimeError("a conversion that fails")
    assert gguf.GGUFReader is reader and gguf.get_tensor_name_map is name_map
    assert name_map(arch, 30) is not name_map(arch, 30)  # outside a conversion, as gguf makes them
