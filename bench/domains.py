"""Held-out text of five more domains, for quality claims that do not rest on one text.

The quality tables report the license texts (one register: formal, normative English). Beside them, every child is
also measured on text of five other domains that ship with this machine: Debian's package changelogs, the packages'
READMEs and NEWS files, Perl's documentation (pod) and CPython's standard library source. None is the calibration
text (the built-in Python documentation) or the license texts. Each domain gives WINDOWS × 256 tokens, spread evenly
over its text, the same windows for every child; a domain whose files are missing here is left out and said so.
The Debian texts are those of the packages of priority "required" only, the ones every Debian system has: a package
installed later (a browser for the tests) does not change the panel.
"""
from __future__ import annotations

import functools
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


def _files(pattern: str, first: int | None = None, once: bool = False) -> list[Path]:
    """The first paths a glob pattern matches, in the order of their path strings, that are files; with `once`, each
    file once (Debian links /usr/share/perl/5.36 to 5.36.0)."""
    paths = sorted(Path("/").glob(pattern.lstrip("/")), key=str)
    if once:
        seen = set()
        paths = [p for p in paths if not (p.resolve() in seen or seen.add(p.resolve()))]
    return [p for p in paths[:first] if p.is_file()]


@functools.cache
def _required() -> tuple[str, ...]:
    """The installed Debian packages of priority "required", by name, from dpkg's database (read once; none where
    there is no database)."""
    try:
        stanzas = Path("/var/lib/dpkg/status").read_text(errors="replace").split("\n\n")
    except OSError:
        return ()
    fields = [dict(line.split(": ", 1) for line in s.splitlines() if ": " in line and line[0] != " ") for s in stanzas]
    required = (f["Package"] for f in fields if f.get("Priority") == "required" and "installed" in f.get("Status", ""))
    return tuple(sorted(required))


def _docs(pattern: str) -> list[Path]:
    """The files under /usr/share/doc/<package>/ matching `pattern`, of the required packages, in package order."""
    return [p for pkg in _required() for p in sorted(Path("/usr/share/doc", pkg).glob(pattern)) if p.is_file()]


SOURCES = {  # name -> the files of that domain, in a fixed order
    "changelogs": lambda: _docs("changelog.Debian.gz"),
    "READMEs": lambda: _docs("README*"),
    "NEWS": lambda: _docs("NEWS*"),
    "Perl docs": lambda: _files("/usr/share/perl/*/**/*.pod", once=True),
    "Python source": lambda: _files(sysconfig.get_paths()["stdlib"] + "/*.py", 60),
}


def windows(parent, n: int = WINDOWS) -> tuple[dict[str, Tokens], list[str]]:
    """({domain: its held-out windows}, [the domains missing on this machine])."""
    out, missing = {}, []
    for name, files in SOURCES.items():
        paths = files()
        if not paths:
            missing.append(name)
            continue
        every = parent.tokenize("\n\n".join(_read(p) for p in paths), SEQ_LEN, 10**7, name).ids
        out[name] = Tokens(every[torch.arange(n) * len(every) // n])
    return out, missing


@torch.no_grad()
def perplexities(model, domains: dict[str, Tokens]) -> dict[str, float]:
    """{domain: held-out perplexity}, and under 'mean' their geometric mean."""
    got = {name: math.exp(mean_loss(model, tokens).item()) for name, tokens in domains.items()}
    got["mean"] = math.exp(sum(math.log(p) for p in got.values()) / len(got)) if got else float("nan")
    return got
