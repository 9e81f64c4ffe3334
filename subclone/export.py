"""Writing a child to disk: a plain save_pretrained directory plus subclone.json (how it was made)."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from .errors import SubcloneError, shown

PLAN_FILE = "subclone.json"
TRAINING_FILE = "training.json"


def check_writable(out, protect=()) -> Path:
    """Fail before any slow work if `out` cannot or must not be written: empty, inside subclone's cache, one of the
    `protect`ed directories (the parent), or a directory holding a model that subclone did not write."""
    from .parents import home

    if out is None or not str(out).strip():
        raise SubcloneError("the output directory is empty: give --out a new or empty directory")
    path = Path(str(out).strip()).expanduser()
    try:
        where = path.resolve()
        cache = home().resolve()
        if where == cache or cache in where.parents:
            raise SubcloneError(f"'{shown(out, 200)}' is inside subclone's cache ({cache}); choose a directory outside it")
        if any(where == Path(p).expanduser().resolve() for p in protect if p):
            raise SubcloneError(f"'{shown(out, 200)}' is the parent's own directory; writing there would replace its weights")
        if (path / "config.json").exists() and not any((path / f).exists() for f in (PLAN_FILE, TRAINING_FILE)):
            raise SubcloneError(f"'{shown(out, 200)}' already holds a model that subclone did not write; choose a new or empty "
                                "directory")
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path):
            pass
    except OSError as e:
        raise SubcloneError(f"cannot write to '{shown(out)}' ({e.strerror or e}); choose another --out "
                            "directory") from None
    return path


def save(child, tokenizer, plan, out, extra: dict | None = None, protect=()) -> Path:
    """save_pretrained of model and tokenizer, plus subclone.json when the child came from a plan."""
    path = check_writable(out, protect)
    child.save_pretrained(path)
    if tokenizer is not None:
        tokenizer.save_pretrained(path)
    if plan is None:  # a random-init child: nothing was subcloned
        return path
    record = {**plan.to_dict(), **(extra or {})}  # one key per line: readable, and still plain JSON
    (path / PLAN_FILE).write_text("{\n" + ",\n".join(f" {json.dumps(k)}: {json.dumps(v)}" for k, v in record.items())
                                  + "\n}\n")
    return path


def read_plan(model_dir) -> dict | None:
    f = Path(model_dir) / PLAN_FILE
    return json.loads(f.read_text()) if f.exists() else None


def fit_record(plan, fit_windows: int | None) -> dict:
    """{"fit_windows": n} for a child whose fits read n calibration windows; {} for one with no fits (or no plan)."""
    return {"fit_windows": fit_windows} if fit_windows and plan is not None and plan.compensate != "none" else {}


def model_card(parent, child, plan, data, metrics: dict | None = None, training: dict | None = None,
               fit_windows: int | None = None) -> str:
    """README.md for a child: how it was made (subcloned, or random init for a baseline), from which parent, with
    which rules (and on how many calibration windows its fits were made), whether and how it was trained, and how
    good it is."""
    from .arch import family_for
    from .evaluate import n_params
    from .parents import auto_class

    from .data import Text

    data = data.name if isinstance(data, Text) else data
    family = family_for(child.config)
    s = family.read_shape(child.config)
    front = ["---", "library_name: transformers", "tags: [subclone, weight-subcloning, pruning]"]
    if parent.hub_id:
        front.append(f"base_model: {parent.hub_id}")
    front.append("---")
    if plan is None:
        how = f"A baseline: the shape of a subclone child of `{parent.display_name}`, from random initialization"
    else:
        how = ("Made with subclone by weight subcloning (Samragh et al., 2023, arXiv 2312.09299) from "
               f"`{parent.display_name}`")
    how += (f", then trained for {training['steps']} steps (below)." if training else
            ", with no training. It is an initialization: train it before serious use.")
    kept = f" (parent blocks kept: {', '.join(map(str, plan.layers))})" if plan is not None else ""
    lines = [*front, "", f"# {family.name} child of {parent.display_name}", "", how, "", "| | |", "|---|---|",
             f"| layers | {s.layers}{kept} |", f"| hidden | {s.hidden} |", f"| ffn | {s.ffn} |",
             f"| heads / kv heads | {s.heads} / {s.kv_heads} (head dim {s.head_dim}) |",
             f"| parameters | {n_params(child):,} |"]
    if plan is not None:
        scale = ", ".join(g for g, on in plan.scale.items() if on) or "none"
        lines += [f"| FLOPs / token | {plan.flops_per_token:,} |", f"| block rule | {plan.block_rule} |",
                  f"| neuron rule | {plan.neuron_rule} |", f"| neuron score | {plan.score} |",
                  f"| weight scaling √(d/d′) | {scale} |",
                  f"| compensation (least-squares fits on the calibration text) | {plan.compensate} |",
                  *(f"| calibration windows the fits read (256 tokens each) | {n} |"
                    for n in fit_record(plan, fit_windows).values()),
                  f"| residual basis | {plan.basis} |"]
    lines += [f"| calibration text | {data} |", ""]
    if metrics:
        lines += [f"## Evaluation (held-out split of the calibration text, {'after' if training else 'no'} training)",
                  "", "| metric | value |", "|---|---|", *[f"| {k} | {v} |" for k, v in metrics.items()], ""]
    if training:
        lines += [_training_section(training)]
    lines += ["## Use", "", "```python", f"from transformers import {auto_class(family).__name__}",
              f"model = {auto_class(family).__name__}.from_pretrained(\"path/to/this/folder\")", "```", ""]
    if plan is not None:
        lines += [f"`{PLAN_FILE}` in this folder records every kept block, dimension, neuron and head.", ""]
    return "\n".join(lines)


def _training_section(result: dict) -> str:
    h = result["history"]
    return "\n".join([
        "## Recovery training", "",
        f"Initialization `{result['init']}`, {result['steps']} steps of {result['config']['batch_size']} × "
        f"{result['config']['seq_len']} tokens per process on {result['world_size']} process(es), AdamW lr "
        f"{result['lr']:g} (warm-up then cosine), weight decay {result['weight_decay']:g}"
        + (f", distillation weight {result['config']['distill']:g}" if result["config"].get("distill") else "") + ".",
        f"Held-out loss {h[0]['eval_loss']} before, {result['eval_loss']} after "
        f"(perplexity {result['eval_perplexity']}). `{TRAINING_FILE}` holds the whole history.", ""])


def write(child, tokenizer, plan, out, card: str, extra: dict | None = None, training: dict | None = None,
          protect=()) -> Path:
    """save(), the model card, and the training record when the child was trained."""
    path = save(child, tokenizer, plan, out, extra, protect)
    if training is not None:
        (path / TRAINING_FILE).write_text(json.dumps(training, indent=1))
    (path / "README.md").write_text(card)
    return path


def zip_dir(path: Path) -> Path:
    """path.zip next to path, stored uncompressed: float weights barely compress and deflate is slow."""
    import zipfile

    archive = path.with_suffix(".zip")
    tmp = archive.with_name(f".{archive.name}.tmp")
    try:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as z:
            for f in sorted(path.rglob("*")):
                if f.is_file():
                    z.write(f, f.relative_to(path))
        os.replace(tmp, archive)  # complete or absent, never half a zip
    finally:
        tmp.unlink(missing_ok=True)
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
