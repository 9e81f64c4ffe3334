"""Tiny random models of every supported family, built in the tests (no download)."""
import contextlib
import io
import os
import tempfile
import warnings

import pytest
import torch
import transformers
from transformers import AutoModel, AutoModelForCausalLM

from subclone.arch import family_for
from subclone.parents import Parent

# Tests leave no trace: their own cache (converted parents, importance records), never the user's.
os.environ["SUBCLONE_HOME"] = tempfile.mkdtemp(prefix="subclone-test-home-")
transformers.utils.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

VOCAB = 300
TINY = {
    # Llama with grouped-query attention (3 KV groups of 2 query heads) and tied embeddings, like SmolLM2
    "llama": transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=48, intermediate_size=40, num_hidden_layers=4,
                                      num_attention_heads=6, num_key_value_heads=3, head_dim=8,
                                      tie_word_embeddings=True),
    # Qwen2: q/k/v biases, layer_types, untied head
    "qwen2": transformers.Qwen2Config(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=3,
                                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False),
    "mistral": transformers.MistralConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=40, num_hidden_layers=3,
                                          num_attention_heads=4, num_key_value_heads=4, head_dim=8),
    "gpt2": transformers.GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=3, n_head=4, n_positions=64,
                                    bos_token_id=0, eos_token_id=0),
    "bert": transformers.BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                                    intermediate_size=48),
}


def tiny_model(name: str, seed: int = 0):
    torch.manual_seed(seed)
    config = TINY[name]
    auto = AutoModelForCausalLM if family_for(config).kind == "causal-lm" else AutoModel
    model = auto.from_config(config, dtype=torch.float32).eval()
    with torch.no_grad():  # norms start at exactly 1 / 0: perturb them so slicing mistakes show
        for n, p in model.named_parameters():
            if p.ndim == 1:
                p.add_(0.1 * torch.randn_like(p))
    return model


def tiny_parent(name: str) -> Parent:
    model = tiny_model(name)
    return Parent(name=f"tiny-{name}", model=model, tokenizer=None, family=family_for(model.config), source="memory")


@pytest.fixture(params=list(TINY))
def family_name(request):
    return request.param


def ids(n=2, t=16, seed=1):
    return torch.randint(0, VOCAB, (n, t), generator=torch.Generator().manual_seed(seed))


def run_cli(*argv) -> tuple[int, str, str]:
    """`python -m subclone ARGV` in this process: (exit code, stdout, stderr). A new process costs 7 s of imports
    here, so the CLI's results are checked in process; tests/test_inputs.py, test_train's and test_cli's bundled
    SmolLM2 clone run real processes."""
    from subclone.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), warnings.catch_warnings():
        code = main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


def tiny_tokenizer():
    """A real byte-level BPE tokenizer trained on the built-in text, small enough for tiny models."""
    from tokenizers import Tokenizer, models, pre_tokenizers, decoders, trainers

    from subclone.data import load_text

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=["<eos>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([load_text("builtin")[:20000]], trainer)
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>")


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """A local Hugging Face directory holding a tiny Llama parent (safetensors + tokenizer)."""
    path = tmp_path_factory.mktemp("tiny-llama")
    tiny_model("llama").save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def app():
    """The app, launched as `make run` does, on a free port; shared by the API and browser tests. (url, process)"""
    import psutil

    with launch_app({"SUBCLONE_MAX_STEPS": str(10**6)}) as (url, proc):  # a run that outlasts its session
        yield url, psutil.Process(proc.pid)


@pytest.fixture(scope="session")
def app_url(app):
    return app[0]


SPACE_MEMORY_MB = 1500  # one SmolLM2 parent (540 MB) and its evaluation (400 MB) fit; a second pair would not


@pytest.fixture(scope="session")
def space_app():
    """The app as a public Space runs it: local paths off, default limits, a small memory bound. (url, process)"""
    import psutil

    with launch_app({"SUBCLONE_ALLOW_LOCAL_PATHS": "0", "SUBCLONE_MEMORY_MB": str(SPACE_MEMORY_MB)}) as (url, proc):
        yield url, psutil.Process(proc.pid)


@contextlib.contextmanager
def launch_app(extra_env: dict | None = None):
    """Run app.py on a free port; yields (url, process)."""
    import socket
    import subprocess
    import sys
    import time
    from pathlib import Path

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    root = Path(__file__).resolve().parent.parent
    log = open(Path(os.environ.get("TMPDIR", "/tmp")) / f"subclone-app-{port}.log", "w")
    # The tests use a tiny local parent, so this app allows local paths (a public Space does not).
    env = {**os.environ, "PORT": str(port), "SUBCLONE_ALLOW_LOCAL_PATHS": "1", **(extra_env or {})}
    proc = subprocess.Popen([sys.executable, "app.py"], cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        for _ in range(180):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert proc.poll() is None, f"the app exited during start-up; see {log.name}"
                time.sleep(1)
        yield f"http://127.0.0.1:{port}/", proc
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()
