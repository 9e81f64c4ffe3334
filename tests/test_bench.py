"""The peer benchmark runs end to end (a seconds-scale smoke: one shape, subclone's two presets, one training step);
the full run is `make bench`."""
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
@pytest.mark.skipif(not Path("/usr/share/common-licenses").is_dir(), reason="the held-out license texts are missing")
def test_quality_bench_smoke():
    out = subprocess.run([sys.executable, "bench/quality.py", "--smoke"], cwd=ROOT, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = [line for line in out.stdout.splitlines() if line.startswith("| subclone") and " M | " in line]
    assert [r.split("|")[1].strip() for r in rows] == ["subclone default (best)", "subclone paper"]
    for row in rows:  # params, zero-shot, healed and other domains' perplexity are real numbers
        cells = [c.strip().strip("*") for c in row.split("|")[2:6]]
        assert cells[0].endswith(" M") and all(float(c.replace(",", "")) > 1 for c in cells[1:])
    assert "default / paper: zero-shot" in out.stdout and "on the other domains" in out.stdout
    each = out.stdout[out.stdout.index("Each of the other domains"):].splitlines()
    assert [r.split("|")[1].strip() for r in each if r.startswith("| subclone")] == [
        "subclone default (best)", "subclone paper"]


def test_results_are_assembled_from_every_section(tmp_path, monkeypatch):
    sys.path.insert(0, str(ROOT / "bench"))
    import run

    monkeypatch.setattr(run, "HERE", tmp_path)
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "quality.md").write_text("## Child quality against peers\n\nmeasured table\n")
    run.assemble()
    text = (tmp_path / "RESULTS.md").read_text()
    assert "measured table" in text and "Machine: " in text and "torch " in text
    assert all(title in text for title, _ in run.SECTIONS.values())
    assert "Not run yet: `bench/app_speed.py`" in text


def test_the_app_speed_bench_calls_the_callbacks_as_they_are_now():
    """bench/app_speed.py runs for minutes; a callback whose parameters changed must fail here, not an hour into
    `make bench`."""
    import inspect

    sys.path.insert(0, str(ROOT / "bench"))
    import app_speed

    assert set(app_speed.CALLS) >= {"analyze", "preview", "design", "build best", "sweep", "export", "heal"}
    for name, (callback, kwargs) in app_speed.CALLS.items():
        bound = inspect.signature(callback).bind(**kwargs)  # TypeError names the parameter that moved
        assert bound.arguments["parent"] == app_speed.P, name
