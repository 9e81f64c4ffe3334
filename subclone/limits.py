"""Bounds on what one request may ask for, checked before anything is allocated.

The app is a public Space: every string, number and file comes from a stranger. `Limits.space()` holds safe
defaults for a small shared box; `Limits.local()` is for the CLI and the library on a person's own machine.
Every field can be set by an environment variable (`SUBCLONE_<FIELD>` in upper case), e.g.
`SUBCLONE_MAX_STEPS=1000` or `SUBCLONE_ALLOW_LOCAL_PATHS=1`.
"""
from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass

from .errors import SubcloneError


@dataclass(frozen=True)
class Limits:
    max_text_chars: int = 4_000_000  # characters read from any data source (read as far as this, never further)
    max_upload_mb: float = 20.0  # an uploaded text file
    max_spec_chars: int = 300  # a parent name, data spec or block list
    max_prompt_chars: int = 2_000
    max_steps: int = 200  # training steps of one run
    max_sweep_shapes: int = 25
    max_seq_len: int = 1_024  # tokens per training sequence (also bounded by the parent's positions)
    max_parent_params: int = 1_000_000_000  # a bigger parent is refused before its weights are read
    memory_mb: int = 6_000  # parents and parent evaluations kept in memory, least recently used dropped first
    session_ttl_s: float = 3_600.0  # a session idle this long is ended: its jobs stop, its files are deleted
    allow_local_paths: bool = False  # may a request name a file or directory on this machine?
    fit_windows: int = 32  # calibration windows (256 tokens each) the least-squares fits use (compensate.WINDOWS)

    def __post_init__(self):
        if self.fit_windows < 1:
            raise SubcloneError(f"fit_windows must be at least 1 (calibration windows the fits use), got "
                                f"{self.fit_windows}")

    @classmethod
    def space(cls, environ=os.environ) -> "Limits":
        """Safe defaults for a public app, overridden by SUBCLONE_* environment variables."""
        return cls()._from_env(environ)

    @classmethod
    def local(cls, environ=os.environ) -> "Limits":
        """One person on their own machine: their own files, long runs, big parents."""
        return cls(max_steps=10**9, max_sweep_shapes=10_000, max_seq_len=32_768, max_parent_params=10**12,
                   max_text_chars=50_000_000, allow_local_paths=True, memory_mb=10**6)._from_env(environ)

    def _from_env(self, environ) -> "Limits":
        changes = {}
        for f in dataclasses.fields(self):
            raw = environ.get(f"SUBCLONE_{f.name.upper()}")
            if raw is None:
                continue
            kind = type(getattr(self, f.name))
            try:
                changes[f.name] = raw.strip().lower() in ("1", "true", "yes", "on") if kind is bool else kind(raw)
            except ValueError:
                raise SubcloneError(f"environment variable SUBCLONE_{f.name.upper()}={raw!r} is not a "
                                    f"{'whole number' if kind is int else 'number'}") from None
        return dataclasses.replace(self, **changes)


def text_arg(value, what: str, max_chars: int, allow_empty: bool = False) -> str:
    """A string from a request, stripped and bounded; the message never echoes a long value."""
    if value is None:
        value = ""
    if not isinstance(value, str):
        raise SubcloneError(f"{what} must be text, got {type(value).__name__}")
    value = value.strip()
    if len(value) > max_chars:
        raise SubcloneError(f"{what} is {len(value):,} characters long; at most {max_chars:,} are accepted")
    if not value and not allow_empty:
        raise SubcloneError(f"{what} is empty")
    return value


def int_arg(value, what: str, lo: int, hi: int) -> int:
    """A whole number in [lo, hi] from a request (a float like 24.0 is fine; NaN, 2.5, '24', lists are not)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SubcloneError(f"{what} must be a number, got {type(value).__name__ if value is not None else 'nothing'}")
    if not math.isfinite(value) or value != int(value):
        raise SubcloneError(f"{what} must be a whole number, got {value}")
    value = int(value)
    if value < lo:
        raise SubcloneError(f"{what} must be at least {lo:,}, got {value:,}")
    if value > hi:
        raise SubcloneError(f"{what} must be at most {hi:,}, got {value:,}")
    return value


def float_arg(value, what: str, lo: float, hi: float, lo_open: bool = False) -> float:
    """A finite number in [lo, hi] (or (lo, hi] when lo_open) from a request."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SubcloneError(f"{what} must be a number, got {type(value).__name__ if value is not None else 'nothing'}")
    value = float(value)
    if not math.isfinite(value):
        raise SubcloneError(f"{what} must be a finite number, got {value}")
    if not (lo < value if lo_open else lo <= value) or value > hi:
        raise SubcloneError(f"{what} must be {'above' if lo_open else 'at least'} {lo:g} and at most {hi:g}, "
                            f"got {value:g}")
    return value


def _libc():
    import ctypes
    import ctypes.util

    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")


def bound_allocator(mapped: int = 32 << 20) -> bool:
    """Stop glibc from keeping what a long-running app frees. By default glibc raises its thresholds as large blocks
    are freed and then keeps them in per-thread arenas: an app whose worker threads build children, fit and evaluate
    (tens of MB each) grows with every round. Fixed here: an allocation above `mapped` bytes (32 MB, glibc's
    largest) gets its own mapping, returned when freed; free memory above 2 × `mapped` at a heap's top is returned;
    `release_memory` returns the rest after each job. A 1 MB threshold bounded memory as well but gave every
    activation a fresh mapping: the page faults made the block search 1.6× slower (40.8 against 26.1 s, 2 cores).
    False where the C library is not glibc."""
    try:
        libc = _libc()
        return bool(libc.mallopt(-3, mapped)) and bool(libc.mallopt(-1, 2 * mapped))  # M_MMAP_, M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        return False


def release_memory() -> bool:
    """Return the free memory of every glibc arena to the system (malloc_trim); False where there is none to return
    or the C library is not glibc."""
    try:
        return bool(_libc().malloc_trim(0))
    except (OSError, AttributeError):
        return False
