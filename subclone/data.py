"""Calibration and evaluation text, as token batches.

A data spec is `builtin` (the stdlib's pydoc_data.topics prose, present in every CPython), a path to a
.txt / .md / .jsonl / .json / .csv / .parquet file (when local paths are allowed), or a datasets hub id.
Every source is read only as far as `Limits.max_text_chars`, streaming where the format allows.

The text becomes a `Text`, the one definition of the split: its first 80 % is calibration (importance,
training), the last 20 % is held out for evaluation, so the two never overlap. Importance, evaluation,
training and the app all take a `Text` (or a spec, turned into one).
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import torch

from .errors import SubcloneError, shown
from .limits import Limits, text_arg

HELD_OUT = 0.2
TEXT_SUFFIXES = (".txt", ".md", ".jsonl", ".json", ".csv", ".parquet")
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[\w.-]{1,96}$")


@dataclass(frozen=True)
class Text:
    """A text and its split. `name` is what people see (never a server path); `digest` identifies the text."""

    name: str
    text: str

    @cached_property
    def digest(self) -> str:
        return digest(self.text)

    @property
    def calibration(self) -> str:
        return split(self.text)[0]

    @property
    def held_out(self) -> str:
        return split(self.text)[1]


def _builtin() -> str:
    from pydoc_data.topics import topics

    return "\n\n".join(topics[k] for k in sorted(topics))


def _first_text_field(row: dict, where: str):
    if "text" in row:
        return row["text"]
    for v in row.values():
        if isinstance(v, str):
            return v
    raise SubcloneError(f"{where} has no text column: add a column named 'text'")


def _rows_to_text(rows, where: str, max_chars: int) -> str:
    """Join the text field of rows (dicts) until max_chars characters are read."""
    out, n = [], 0
    for row in rows:
        value = _first_text_field(row, where)
        if value is None:
            continue
        out.append(str(value))
        n += len(out[-1]) + 2
        if n >= max_chars:
            break
    return "\n\n".join(out)[:max_chars]


def _frame_rows(frames):
    for frame in frames:
        yield from frame.to_dict("records")


def read_file(path: Path, max_chars: int, name: str) -> str:
    """The text of a data file, read no further than max_chars characters."""
    import pandas as pd

    suffix = path.suffix.lower()
    try:
        if suffix == ".jsonl":
            with path.open(encoding="utf-8", errors="replace") as f:
                return _rows_to_text((json.loads(line) for line in f if line.strip()), name, max_chars)
        if suffix == ".json":
            if path.stat().st_size > 4 * max_chars:
                raise SubcloneError(f"'{shown(name)}' is too big to read as one JSON document; use .jsonl or .txt")
            return _rows_to_text(pd.read_json(path).to_dict("records"), name, max_chars)
        if suffix == ".csv":
            with pd.read_csv(path, chunksize=2_000, dtype=str) as reader:
                return _rows_to_text(_frame_rows(reader), name, max_chars)
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            batches = pq.ParquetFile(path).iter_batches(batch_size=2_000)
            return _rows_to_text((r for b in batches for r in b.to_pylist()), name, max_chars)
        with path.open(encoding="utf-8", errors="replace") as f:
            return f.read(max_chars)
    except SubcloneError:
        raise
    except (ValueError, OSError, UnicodeError, AttributeError, TypeError) as e:  # malformed files, in many ways
        raise SubcloneError(f"cannot read data file '{shown(name)}' as {suffix or 'text'}: {str(e)[:200]}") from None
    except Exception as e:  # pyarrow's own errors (e.g. ArrowInvalid) are not ValueErrors
        raise SubcloneError(f"cannot read data file '{shown(name)}': {type(e).__name__}") from None


def _hub_dataset(spec: str, max_chars: int) -> str:
    import datasets

    try:
        rows = datasets.load_dataset(spec, split="train", streaming=True)
        return _rows_to_text(rows, spec, max_chars)
    except SubcloneError:
        raise
    except Exception as e:  # the hub raises many types; all mean "could not get this dataset"
        raise SubcloneError(f"cannot load dataset '{shown(spec)}' from the hub ({type(e).__name__}); "
                            "offline? use 'builtin' or a text file") from None


def load(spec: str = "builtin", limits: Limits | None = None) -> Text:
    """The Text of a data spec, or a clear error. Local files only when the limits allow them."""
    limits = limits or Limits.local()
    spec = text_arg(spec or "builtin", "the data spec", limits.max_spec_chars)
    if spec.lower() == "builtin":
        return Text("builtin", _builtin()[: limits.max_text_chars])
    looks_like_file = spec.startswith(("/", ".", "~")) or spec.lower().endswith(TEXT_SUFFIXES) or "\\" in spec
    if not limits.allow_local_paths:
        if looks_like_file or not HUB_ID.match(spec):
            raise SubcloneError(f"data '{shown(spec)}' is not accepted here: use 'builtin', upload a text file, or give "
                                "a datasets hub id like user/name (local paths are off; whoever runs the app can "
                                "turn them on with SUBCLONE_ALLOW_LOCAL_PATHS=1)")
        return Text(spec, _hub_dataset(spec, limits.max_text_chars))
    path = Path(spec).expanduser()
    try:
        is_file, exists = path.is_file(), path.exists()
    except OSError as e:  # e.g. a name too long for the file system
        raise SubcloneError(f"cannot use data '{shown(spec)}': {e.strerror}") from None
    if looks_like_file or exists:
        if not is_file:
            raise SubcloneError(f"data file '{shown(spec)}' not found")
        return Text(path.name, read_file(path, limits.max_text_chars, spec))
    if HUB_ID.match(spec):
        return Text(spec, _hub_dataset(spec, limits.max_text_chars))
    raise SubcloneError(f"unknown data '{shown(spec)}': use 'builtin', a .txt/.jsonl/.csv/.parquet file, or a hub "
                        "dataset id")


def as_text(data, limits: Limits | None = None) -> Text:
    """A Text as it is, or the Text a spec names."""
    return data if isinstance(data, Text) else load(data, limits)


def load_text(spec: str = "builtin", limits: Limits | None = None) -> str:
    """The whole text of a data spec (bounded by the limits), or a clear error."""
    return load(spec, limits).text


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


def _token_ids(tokenizer, text: str, need: int) -> list[int]:
    """At least `need` token ids from the start of text (all of them if it has fewer): tokenize only what is
    needed, growing the prefix; a cut prefix drops its last token, which the cut may have split."""
    size = max(need * 8, 4096)
    while True:
        ids = tokenizer(text[:size], add_special_tokens=False, return_attention_mask=False)["input_ids"]
        if size >= len(text):
            return ids
        if len(ids) > need:
            return ids[:-1]
        size *= 4


def chunk(tokenizer, text: str, seq_len: int, n: int, encoder: bool, what: str) -> Tokens:
    """Up to n chunks of seq_len tokens; encoders get [CLS] ... [SEP] around each chunk."""
    inner = seq_len - 2 if encoder else seq_len
    ids = _token_ids(tokenizer, text, min(n, 10**7) * inner)
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
