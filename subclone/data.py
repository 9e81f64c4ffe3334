"""Calibration and evaluation text, as token batches.

A data spec is `builtin` (the stdlib's pydoc_data.topics prose, present in every CPython), a path to a
.txt / .jsonl / .csv / .parquet file, or a datasets hub id. The text is split once: the first 80 % is
calibration (importance, training), the last 20 % held out for evaluation, so the two never overlap.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import SubcloneError

HELD_OUT = 0.2
TEXT_SUFFIXES = (".txt", ".md", ".jsonl", ".json", ".csv", ".parquet")


def _builtin() -> str:
    from pydoc_data.topics import topics

    return "\n\n".join(topics[k] for k in sorted(topics))


def _text_column(frame, where: str) -> str:
    cols = ["text"] if "text" in frame.columns else [c for c in frame.columns if frame[c].dtype == object]
    if not cols:
        raise SubcloneError(f"{where} has no text column: add a column named 'text'")
    return "\n\n".join(str(t) for t in frame[cols[0]].dropna())


def load_text(spec: str = "builtin") -> str:
    """The whole text of a data spec, or a clear error."""
    spec = (spec or "builtin").strip()
    if spec == "builtin":
        return _builtin()
    path = Path(spec).expanduser()
    if path.suffix.lower() in TEXT_SUFFIXES or path.exists():
        import pandas as pd

        if not path.is_file():
            raise SubcloneError(f"data file '{spec}' not found")
        suffix = path.suffix.lower()
        try:
            if suffix in (".jsonl", ".json"):
                return _text_column(pd.read_json(path, lines=suffix == ".jsonl"), spec)
            if suffix == ".csv":
                return _text_column(pd.read_csv(path), spec)
            if suffix == ".parquet":
                return _text_column(pd.read_parquet(path), spec)
            return path.read_text(encoding="utf-8", errors="replace")
        except (ValueError, OSError, UnicodeError) as e:
            raise SubcloneError(f"cannot read data file '{spec}': {e}") from None
    if spec.count("/") == 1:
        import datasets

        try:
            return _text_column(datasets.load_dataset(spec, split="train").to_pandas(), spec)
        except Exception as e:  # the hub raises many types; all mean "could not get this dataset"
            raise SubcloneError(f"cannot load dataset '{spec}' from the hub ({type(e).__name__}); "
                                "offline? use 'builtin' or a local .txt/.jsonl/.csv/.parquet file") from None
    raise SubcloneError(f"unknown data '{spec}': use 'builtin', a .txt/.jsonl/.csv/.parquet file, or a hub dataset id")


@dataclass(frozen=True)
class Tokens:
    """Token chunks of one split, all of the same length: no padding, no masks."""

    ids: torch.Tensor  # (n, seq_len)

    def batches(self, batch_size: int):
        for i in range(0, len(self.ids), batch_size):
            yield self.ids[i : i + batch_size]

    @property
    def count(self) -> int:
        return self.ids.numel()


def split(text: str) -> tuple[str, str]:
    cut = int(len(text) * (1 - HELD_OUT))
    return text[:cut], text[cut:]


def chunk(tokenizer, text: str, seq_len: int, n: int, encoder: bool, what: str) -> Tokens:
    """Up to n chunks of seq_len tokens; encoders get [CLS] ... [SEP] around each chunk."""
    ids = tokenizer(text, add_special_tokens=False, return_attention_mask=False)["input_ids"]
    inner = seq_len - 2 if encoder else seq_len
    have = len(ids) // inner
    if have < 1:
        raise SubcloneError(f"the {what} text is too short: {len(ids)} tokens, need at least {inner}; give a "
                            f"longer text (the held-out {HELD_OUT:.0%} needs {inner} tokens too)")
    rows = torch.tensor(ids[: min(have, n) * inner]).view(-1, inner)
    if encoder:
        cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
        rows = torch.cat([torch.full((len(rows), 1), cls), rows, torch.full((len(rows), 1), sep)], dim=1)
    return Tokens(rows)


def digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]
