"""Held-out text of five more domains, for quality claims that do not rest on one text.

The quality tables report the license texts (one register: formal, normative English). Beside them, every child is
also measured on text of five other domains that ship with this machine: Debian's package changelogs, the packages'
READMEs and NEWS files, Perl's documentation (pod) and CPython's standard library source. None is the calibration
text (the built-in Python documentation) or the license texts. Each domain gives WINDOWS × 256 tokens, spread evenly
over its text, the same windows for every child; a domain whose files are missing here is left out and said so.
"""
from __future__ import annotations

import gzip
import math
import sysconfig
from pathlib import Path

import torch

from subclone.data import Tokens
from subclone.evaluate import mean_loss

WINDOWS, SEQ_LEN = 16, 256


def _read(path: Path) -> str:
    if path.suffix == ".gz":
        with gzip.open(path, "rt", errors="replace") as f:
            return f.read()
    return path.read_text(errors="replace")


def _files(pattern: str, first: int | None = None, by_parts: bool = False, once: bool = False) -> list[Path]:
    """The first paths a glob pattern matches, in the order of their path strings (by_parts: of their parts), that
    are files; with `once`, each file once (Debian links /usr/share/perl/5.36 to 5.36.0)."""
    paths = sorted(Path("/").glob(pattern.lstrip("/")), key=None if by_parts else str)
    if once:
        seen = set()
        paths = [p for p in paths if not (p.resolve() in seen or seen.add(p.resolve()))]
    return [p for p in paths[:first] if p.is_file()]


SOURCES = {  # name -> the files of that domain, in a fixed order
    "changelogs": lambda: _files("/usr/share/doc/*/changelog.Debian.gz", 60, by_parts=True),
    "READMEs": lambda: _files("/usr/share/doc/*/README*", 120),
    "NEWS": lambda: _files("/usr/share/doc/*/NEWS*", 60),
    "Perl docs": lambda: _files("/usr/share/perl/*/**/*.pod", once=True),
    "Python source": lambda: _files(sysconfig.get_paths()["stdlib"] + "/*.py", 60),
}


def windows(parent, windows: int = WINDOWS) -> tuple[dict[str, Tokens], list[str]]:
    """({domain: its held-out windows}, [the domains missing on this machine])."""
    out, missing = {}, []
    for name, files in SOURCES.items():
        paths = files()
        if not paths:
            missing.append(name)
            continue
        every = parent.tokenize("\n\n".join(_read(p) for p in paths), SEQ_LEN, 10**7, name).ids
        out[name] = Tokens(every[torch.arange(windows) * len(every) // windows])
    return out, missing


@torch.no_grad()
def perplexities(model, domains: dict[str, Tokens]) -> dict[str, float]:
    """{domain: held-out perplexity}, and under 'mean' their geometric mean."""
    got = {name: math.exp(mean_loss(model, tokens).item()) for name, tokens in domains.items()}
    got["mean"] = math.exp(sum(math.log(p) for p in got.values()) / len(got)) if got else float("nan")
    return got
