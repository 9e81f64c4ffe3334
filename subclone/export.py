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
    path = check_writable(out)
    child.save_pretrained(path)
    if tokenizer is not None:
        tokenizer.save_pretrained(path)
    record = {**plan.to_dict(), **(extra or {})}  # one key per line: readable, and still plain JSON
    (path / PLAN_FILE).write_text("{\n" + ",\n".join(f" {json.dumps(k)}: {json.dumps(v)}" for k, v in record.items())
                                  + "\n}\n")
    return path


def read_plan(model_dir) -> dict | None:
    f = Path(model_dir) / PLAN_FILE
    return json.loads(f.read_text()) if f.exists() else None
