"""Writing a child to disk: a plain save_pretrained directory plus subclone.json (how it was made)."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from .errors import SubcloneError

PLAN_FILE = "subclone.json"


def check_writable(out: str | os.PathLike) -> Path:
    """Fail before any slow work if `out` cannot be written."""
    path = Path(out).expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path):
            pass
    except OSError as e:
        raise SubcloneError(f"cannot write to '{out}' ({e.strerror or e}); choose another --out directory") from None
    return path


def save(child, tokenizer, plan, out, extra: dict | None = None) -> Path:
    """save_pretrained of model and tokenizer, plus subclone.json when the child came from a plan."""
    path = check_writable(out)
    child.save_pretrained(path)
    if tokenizer is not None:
        tokenizer.save_pretrained(path)
    if plan is None:  # a random-init child: nothing was subcloned
        return path
    record = {**plan.to_dict(), **(extra or {})}  # one key per line: readable, and still plain JSON
    (path / PLAN_FILE).write_text("{\n" + ",\n".join(f" {json.dumps(k)}: {json.dumps(v)}" for k, v in record.items())
                                  + "\n}\n")
    return path


TRAINING_FILE = "training.json"


def save_trained(child, tokenizer, plan, out, record: dict) -> Path:
    """A trained child: save_pretrained, the plan it started from (none for random init), its training record."""
    path = save(child, tokenizer, plan, out)
    (path / TRAINING_FILE).write_text(json.dumps(record, indent=1))
    return path


def read_plan(model_dir) -> dict | None:
    f = Path(model_dir) / PLAN_FILE
    return json.loads(f.read_text()) if f.exists() else None


def model_card(plan, metrics: dict | None, parent_source: str, data: str, hub_id: str | None = None) -> str:
    """README.md for the exported child: how it was made, from which parent, with which rules, how good."""
    s = plan.shape
    front = ["---", "library_name: transformers", "tags: [subclone, weight-subcloning, pruning]"]
    if hub_id:
        front.append(f"base_model: {hub_id}")
    front.append("---")
    scale = ", ".join(g for g, on in plan.scale.items() if on) or "none"
    lines = [*front, "", f"# {plan.family} child of {plan.parent}", "",
             f"Made with subclone by weight subcloning (Samragh et al., 2023, arXiv 2312.09299) "
             f"from `{parent_source}`, with no training. It is an initialization: train it before serious use.", "",
             "| | |", "|---|---|",
             f"| layers | {s.layers} (parent blocks kept: {', '.join(map(str, plan.layers))}) |",
             f"| hidden | {s.hidden} |", f"| ffn | {s.ffn} |",
             f"| heads / kv heads | {s.heads} / {s.kv_heads} (head dim {s.head_dim}) |",
             f"| parameters | {plan.params:,} |", f"| FLOPs / token | {plan.flops_per_token:,} |",
             f"| block rule | {plan.block_rule} |", f"| neuron rule | {plan.neuron_rule} |",
             f"| weight scaling √(d/d′) | {scale} |", f"| calibration text | {data} |", ""]
    if metrics:
        lines += ["## Evaluation (held-out split of the calibration text, no training)", "", "| metric | value |",
                  "|---|---|", *[f"| {k} | {v} |" for k, v in metrics.items()], ""]
    lines += ["## Use", "", "```python", "from transformers import AutoModel, AutoTokenizer",
              "model = AutoModel.from_pretrained(\"path/to/this/folder\")", "```", "",
              "`subclone.json` in this folder records every kept block, dimension, neuron and head.", ""]
    return "\n".join(lines)


def training_section(result: dict) -> str:
    """The model card's account of a recovery-training run."""
    h = result["history"]
    return "\n".join([
        "## Recovery training", "",
        f"Initialization `{result['init']}`, {result['steps']} steps of {result['config']['batch_size']} × "
        f"{result['config']['seq_len']} tokens per process on {result['world_size']} process(es), AdamW lr "
        f"{result['lr']:g} (warm-up then cosine), weight decay {result['weight_decay']:g}"
        + (f", distillation weight {result['config']['distill']:g}" if result["config"].get("distill") else "") + ".",
        f"Held-out loss {h[0]['eval_loss']} before, {result['eval_loss']} after "
        f"(perplexity {result['eval_perplexity']}). `training.json` holds the whole history.", ""])


def write(child, tokenizer, plan, out, card: str, extra: dict | None = None) -> Path:
    """save() plus the model card."""
    path = save(child, tokenizer, plan, out, extra)
    (path / "README.md").write_text(card)
    return path


def zip_dir(path: Path) -> Path:
    """path.zip next to path, stored uncompressed: float weights barely compress and deflate is slow."""
    import zipfile

    archive = path.with_suffix(".zip")
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as z:
        for f in sorted(path.rglob("*")):
            if f.is_file():
                z.write(f, f.relative_to(path))
    return archive


def push(path: Path, repo: str, token: str) -> str:
    """Upload an exported folder to the Hugging Face Hub; needs a network and a write token."""
    from huggingface_hub import HfApi

    if not repo or "/" not in repo:
        raise SubcloneError(f"hub repository '{repo}' must look like user/name")
    if not token:
        raise SubcloneError("pushing to the Hub needs a write token (huggingface.co/settings/tokens)")
    try:
        api = HfApi(token=token)
        api.create_repo(repo, exist_ok=True)
        return str(api.upload_folder(folder_path=str(path), repo_id=repo).commit_url)
    except Exception as e:  # network and auth errors come in many types; all mean "not pushed"
        raise SubcloneError(f"could not push to the Hub repository '{repo}' ({type(e).__name__}: {str(e)[:200]}); "
                            "offline? download the zip instead") from None
