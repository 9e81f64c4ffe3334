"""Lessons: each one measures its observation live on a parent and states it with the numbers it measured; the
precomputed results for the bundled parent cover every lesson and draw."""
import dataclasses
import re

import pytest

from subclone import SubcloneError, lessons, plots
from subclone.limits import Limits
from subclone.workspace import Workspace


@pytest.fixture
def ws(tmp_path):
    return Workspace(dataclasses.replace(Limits.local(), memory_mb=200), tmp_path / "sessions")


@pytest.mark.parametrize("key", list(lessons.LESSONS))
def test_each_lesson_runs_live_and_states_what_it_measured(ws, tiny_dir, key):
    result = lessons.run(ws, "learner", key, live=True, parent=str(tiny_dir))
    assert not result["precomputed"] and result["table"] and re.search(r"\d", result["conclusion"])
    fig = plots.lesson_figure(result)
    assert fig.data and len(fig.to_json()) < 300_000
    if result["figure"]["kind"] == "children":  # every child it compares was built at the lesson's shape
        history = ws.session("learner").history
        assert {h["layers"] for h in history} == {3} and len(history) == len(result["table"])


def test_the_comparisons_compare_what_they_say(ws, tiny_dir):
    """Importance against uniform and random, on a tiny model: the numbers in the conclusion are the table's."""
    result = lessons.run(ws, "learner", "selection", live=True, parent=str(tiny_dir))
    rules = [h["neuron_rule"] for h in ws.session("learner").history]
    assert rules == ["importance", "uniform", "random"]
    assert f"{result['table'][0]['perplexity']:,.1f}" in result["conclusion"]


def test_the_bundled_parent_gets_the_precomputed_results_at_once(ws):
    stored = lessons.precomputed()
    assert set(stored) == set(lessons.LESSONS)
    for key in lessons.LESSONS:
        result = lessons.run(ws, "learner", key)  # no parent is loaded, nothing is measured
        assert result["precomputed"] and result["conclusion"] == stored[key]["conclusion"]
        plots.lesson_figure(result)
    assert not ws.cached()


def test_an_unknown_lesson_is_a_clear_error(ws):
    with pytest.raises(SubcloneError, match="unknown lesson 'nope'"):
        lessons.run(ws, "learner", "nope")
