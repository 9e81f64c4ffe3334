"""`make bench`: run every benchmark and write bench/RESULTS.md (the machine, the versions, every table).

    .venv/bin/python bench/run.py                  # everything (about an hour and a half on 2 cores)
    .venv/bin/python bench/run.py --only quality   # rerun some sections; the others are kept from their last run

Each section's markdown is kept in bench/results/<section>.md with the command and the time it ran, and RESULTS.md is
assembled from them, so a section rerun alone leaves the others as they were measured.
"""
from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

HERE = Path(__file__).resolve().parent
SECTIONS = {  # name -> (title, command)
    "quality": ("Child quality against peers", ["bench/quality.py", "--steps", "20"]),
    "throughput": ("What the measurements cost", ["bench/throughput.py"]),
    "app_speed": ("App speed", ["bench/app_speed.py"]),
    "zero_shot": ("Zero-shot quality of the paper's rule choices", ["bench/zero_shot.py"]),
    "neuron_scores": ("Neuron scores", ["bench/neuron_scores.py"]),
    "train_speedup": ("Recovery training: subcloned vs weight selection vs random init",
                      ["bench/train_speedup.py", "--steps", "40"]),
}
PACKAGES = ("torch", "transformers", "gradio", "optipfair", "torch-pruning", "short-transformers")


def _version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def cpu() -> str:
    return next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                 if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else "?"


def machine() -> str:
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (f"{cpu()}, {os.cpu_count()} cores, {mem:.0f} GiB, no GPU, fp32 (the shared machine's host can change "
            "between runs: each section says the CPU it ran on, where it was recorded). Python "
            f"{platform.python_version()}; " + ", ".join(f"{p} {_version(p)}" for p in PACKAGES) + ".")


def run(name: str) -> None:
    title, cmd = SECTIONS[name]
    load = os.getloadavg()[0]
    t = time.time()
    out = subprocess.run([sys.executable, *cmd], cwd=HERE.parent, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{out.stderr[-3000:]}")
    minutes = (time.time() - t) / 60
    stamp = time.strftime("%Y-%m-%d", time.gmtime(t))
    body = (f"## {title}\n\n`{' '.join(cmd)}` — {stamp}, {minutes:.0f} min, load average {load:.1f} when it "
            f"started, on {cpu()}.\n\n{out.stdout.strip()}\n")
    (HERE / "results").mkdir(exist_ok=True)
    tmp = HERE / "results" / f".{name}.md.tmp"
    tmp.write_text(body)
    tmp.replace(HERE / "results" / f"{name}.md")
    print(f"{name}: {minutes:.1f} min", flush=True)


def assemble() -> None:
    parts = [f"# Benchmark results\n\nMachine: {machine()} The machine is shared and noisy: times are medians, and "
             "anything compared is measured side by side in one run.\n"]
    for name, (title, cmd) in SECTIONS.items():
        path = HERE / "results" / f"{name}.md"
        parts.append(path.read_text() if path.exists() else f"## {title}\n\nNot run yet: `{' '.join(cmd)}`.\n")
    tmp = HERE / ".RESULTS.md.tmp"
    tmp.write_text("\n".join(parts))
    tmp.replace(HERE / "RESULTS.md")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", help=f"comma-separated sections: {', '.join(SECTIONS)}")
    ap.add_argument("--assemble", action="store_true", help="only write RESULTS.md from the kept sections")
    args = ap.parse_args()
    names = [] if args.assemble else [n.strip() for n in (args.only or ",".join(SECTIONS)).split(",")]
    for name in names:
        if name not in SECTIONS:
            sys.exit(f"unknown section '{name}': {', '.join(SECTIONS)}")
        run(name)
    assemble()


if __name__ == "__main__":
    main()
