"""The Workspace: what a running app holds, with normalized keys, a memory bound, and sessions that end cleanly."""
import dataclasses
import re
import threading
import time
import zipfile

import pytest
import torch

from subclone import SubcloneError
from subclone.limits import Limits
from subclone.plan import PRESETS, is_tied
from subclone.workspace import Cancelled, Design, Workspace

from .conftest import tiny_model, tiny_parent

LOCAL = Limits.local()


@pytest.fixture
def ws(tmp_path):
    return Workspace(dataclasses.replace(LOCAL, memory_mb=100), tmp_path / "sessions")


def small(tiny_dir, **kw):
    return Design.of(LOCAL, str(tiny_dir), "builtin", 3, 24, 20, 4, 2, **kw)


def _another_parent(path, tiny_dir, seed=0):
    """A tiny Llama parent in its own folder, with the tiny parent's tokenizer: nothing measured on it yet."""
    tiny_model("llama", seed=seed).save_pretrained(path)
    for f in tiny_dir.glob("tokenizer*"):
        (path / f.name).write_bytes(f.read_bytes())
    return path


def test_every_spelling_of_an_input_is_one_entry(ws, tiny_dir):
    texts = {id(ws.text(s)) for s in ("builtin", " builtin", "builtin ", "BUILTIN", "\tbuiltin\n")}
    parents = {id(ws.parent(s)) for s in (str(tiny_dir), f" {tiny_dir}", f"{tiny_dir}\n")}
    assert len(texts) == 1 and len(parents) == 1
    assert len([k for k in ws.cached() if k[0] == "text"]) == 1


def test_shared_parents_and_references_stay_under_the_memory_bound(tmp_path, tiny_dir):
    other = _another_parent(tmp_path / "other", tiny_dir, seed=1)
    one_parent = sum(p.numel() * 4 for p in tiny_model("llama").parameters())
    ws = Workspace(dataclasses.replace(LOCAL, memory_mb=1.5 * one_parent / 2**20), tmp_path / "s")
    a = ws.parent(str(tiny_dir))
    ws.parent(str(other))  # the bound holds one: the least recently used goes
    assert [k[1] for k in ws.cached() if k[0] == "parent"] == [str(other)]
    assert ws.memory_bytes <= 1.5 * one_parent
    assert ws.parent(str(tiny_dir)) is not a  # loaded again, once asked for again


def test_the_sessions_children_count_against_the_bound_too(ws, tiny_dir):
    """Children are dropped before shared entries, the least recently active session's first."""
    ws.build("alice", small(tiny_dir))
    alice = ws.memory_bytes
    child = sum(p.numel() * 4 for p in ws.session("alice").built[1].parameters())
    bound = alice + child / 2  # room for half a child more
    ws.limits = dataclasses.replace(ws.limits, memory_mb=bound / 2**20)
    ws.outputs("alice", str(tiny_dir), "fits")  # alice's child is still there
    ws.build("bob", small(tiny_dir))
    assert ws.memory_bytes <= bound
    assert ws.session("bob").built is not None and ws.session("alice").built is None
    with pytest.raises(SubcloneError, match="build a child of this parent first"):
        ws.outputs("alice", str(tiny_dir), "dropped to free memory")
    assert ("parent", str(tiny_dir)) in ws.cached()  # the shared parent stayed


def test_a_session_builds_exports_and_ends_without_a_trace(ws, tiny_dir):
    d, metrics = ws.build("alice", small(tiny_dir))
    assert metrics["params"] < metrics["parent_params"] and ws.session("alice").history[-1]["layers"] == 3
    archive, card, _ = ws.export("alice", small(tiny_dir))
    assert zipfile.ZipFile(archive).getinfo("config.json") and str(tiny_dir) not in card  # no server path
    assert archive.parent == ws.session("alice").folder and archive.exists()
    for _ in range(3):  # older exports are deleted as new ones come
        ws.export("alice", small(tiny_dir))
    assert len(list(ws.session("alice").folder.glob("*.zip"))) == 2
    assert not [p for p in ws.session("alice").folder.iterdir() if p.is_dir()]  # only the zips stay
    ws.build("bob", small(tiny_dir, block_rule="first"))
    assert ws.session("bob").history[-1]["block_rule"] == "first" and len(ws.session("alice").history) == 1
    folder = ws.session("alice").folder
    ws.end("alice")
    assert not folder.exists() and "alice" not in ws.sessions() and "bob" in ws.sessions()
    assert ws.session("alice").history == []  # a new session, empty


def test_idle_sessions_expire(tmp_path, tiny_dir):
    ws = Workspace(dataclasses.replace(LOCAL, session_ttl_s=0.05), tmp_path / "s")
    ws.build("idle", small(tiny_dir))
    folder = ws.session("idle").folder
    time.sleep(0.1)
    ws.session("someone-else")  # any request sweeps the expired sessions
    assert "idle" not in ws.sessions() and not folder.exists()


def _heal_threads():
    return [t for t in threading.enumerate() if t.name.startswith("heal-")]


def test_closing_the_training_generator_ends_the_training(ws, tiny_dir):
    events = ws.heal("carol", small(tiny_dir), steps=10_000, inits=["random"])
    kind, _, _ = next(events)
    assert kind in ("tick", "eval") and _heal_threads()  # under way, and the consumer has control
    events.close()  # what Gradio does when the client disconnects or cancels
    assert not _heal_threads() and not ws.session("carol").jobs


def test_ending_the_session_stops_its_training_from_another_thread(ws, tiny_dir):
    events = ws.heal("dave", small(tiny_dir), steps=10_000, inits=["subclone"])
    next(events)
    threading.Timer(0.2, ws.end, args=("dave",)).start()  # the tab closed while the run goes on
    with pytest.raises(Cancelled):
        list(events)
    assert not _heal_threads()


def test_stop_ends_a_run_and_keeps_what_it_trained(ws, tiny_dir):
    events = ws.heal("erin", small(tiny_dir), steps=10_000, inits=["subclone"])
    next(e for e in events if e[0] == "eval")  # training has begun (a stop before it ends the heal: test above)
    assert ws.stop("erin") == 1
    kind, best, healed = list(events)[-1]
    assert kind == "done" and healed[best][2]["stopped"] and healed[best][2]["steps"] < 10_000
    archive, card, _ = ws.export_healed("erin", "subclone")
    assert "then trained for" in card and archive.exists()


@pytest.mark.parametrize("values, says", [
    (dict(layers=None), "layers must be a number, got nothing"),
    (dict(heads=[3]), "heads must be a number, got list"),
    (dict(hidden=float("nan")), "hidden must be a whole number"),
    (dict(ffn=2.5), "ffn must be a whole number"),
    (dict(layers=10**9), "layers must be at most"),
    (dict(scale=["bogus"]), "unknown scaling group 'bogus'"),
    (dict(neuron_rule="best"), "unknown neuron rule 'best'"),
    (dict(block_rule="x" * 1000), "the block rule is 1,000 characters long"),
])
def test_a_design_from_odd_values_is_a_clear_error(values, says):
    base = dict(parent="smollm2-135m", data="builtin", layers=30, hidden=576, ffn=1536, heads=9, kv_heads=3)
    with pytest.raises(SubcloneError, match=says.replace("(", r"\(")):
        import app

        app._design(**{**base, **values})


@pytest.mark.slow
def test_a_two_thirds_child_is_measurably_faster(tmp_path):
    """Parent and child are timed side by side in the same call, so a smaller child shows a speed-up above 1 even
    on a busy machine (SmolLM2 -> 24 layers / 504 / 1280, 67 % of the parameters; the paper's rules: the size is
    what is timed, not how the child was chosen)."""
    ws = Workspace(Limits.local(), tmp_path / "s")
    _, m = ws.build("me", Design.of(ws.limits, "smollm2-135m", "builtin", 24, 504, 1280, 9, 3, **PRESETS["paper"]))
    assert 0.6 < m["params"] / m["parent_params"] < 0.7
    assert m["speedup"] > 1 and m["speedup_range"][0] <= m["speedup"] <= m["speedup_range"][1]
    assert "alternately" in m["speed_measured"]


def test_latency_is_read_on_the_decoding_not_on_the_prompt():
    """ms per generated token is the time between the tokens after the first one: a slow prefill does not count."""
    from subclone.data import Tokens
    from subclone.evaluate import ms_per_token

    class Model:  # generate as transformers streams it: the prompt, the first token after the prefill, then the rest
        def generate(self, prompt, max_new_tokens, streamer, **_):
            streamer.put(prompt)
            time.sleep(0.4)  # the prefill
            for _ in range(max_new_tokens):
                streamer.put(prompt[:, :1])
                time.sleep(0.01)  # a decoding step
            streamer.end()

    tokens = Tokens(torch.zeros(1, 32, dtype=torch.long))
    assert 10 <= ms_per_token(Model(), tokens, "causal-lm") < 30
    with pytest.raises(ValueError, match="at least 2"):  # one token has no step after the first to time
        ms_per_token(Model(), tokens, "causal-lm", new_tokens=1)


def test_the_block_search_runs_once_at_build_and_is_kept_with_the_importance_record(ws, tiny_dir, tmp_path):
    from subclone.importance import cache_path

    design = small(tiny_dir)  # the default preset: block search, activation-weight, compensation
    assert (design.block_rule, design.compensate) == ("search", "all")
    parent, text = ws.parent(str(tiny_dir)), ws.text("builtin")
    cache_path(parent, text).unlink(missing_ok=True)
    ws.importance(parent, text, compute=True)
    d, _, kept = ws.preview(design)
    assert kept is None and any("runs at Build" in n for n in d.notes)  # a slider move never searches
    built, _ = ws.build("alice", design)
    assert built.plan.block_rule == "search" and built.plan.compensate == "all" and len(built.plan.layers) == 3
    fresh = Workspace(ws.limits, tmp_path / "fresh")  # a new process: the removals come from the disk cache
    d, _, kept = fresh.preview(design)
    assert kept == built.plan.layers and not any("runs at Build" in n for n in d.notes)
    assert fresh.importance(parent, text).removals.tolist() == ws.importance(parent, text).removals.tolist()
    assert fresh.importance(parent, text).spans[3] == ws.importance(parent, text).spans[3] >= 0  # the span check too


def test_an_encoder_gets_the_paper_rules_where_the_best_preset_cannot_apply(ws):
    d = ws.design(Design.of(LOCAL, "minilm-l6", "builtin", 4))
    assert any("need a causal LM" in n for n in d.notes)


def _passes(monkeypatch) -> list:
    """Records the plans of every pass the fits make over the calibration windows (the span check's too)."""
    import subclone.compensate as compensate
    import subclone.search as search

    calls, real = [], compensate.measure

    def counted(parent, plans, *args, **kwargs):
        calls.append(plans)
        return real(parent, plans, *args, **kwargs)
    monkeypatch.setattr(compensate, "measure", counted)
    monkeypatch.setattr(search, "measure", counted)
    return calls


@pytest.mark.parametrize("basis", ["dims", "principal"])
def test_the_first_build_at_a_new_depth_fits_the_child_in_the_span_checks_pass(ws, tiny_dir, monkeypatch, basis):
    """The span check's one pass also fits the child for either outcome; the winner's fits are the ones kept, equal
    to the child's own pass over the calibration windows, so the build makes no second pass. In principal directions
    the pass runs on the rotated parent the child is cut from."""
    from subclone.compensate import fit
    from subclone.importance import cache_path

    cache_path(ws.parent(str(tiny_dir)), ws.text("builtin")).unlink(missing_ok=True)  # no depth checked yet
    calls = _passes(monkeypatch)
    d, _ = ws.build("alice", small(tiny_dir, basis=basis))
    assert len(calls) == 1 and len(calls[0]) == 4  # the check's two candidates and the child with each
    assert {tuple(p.layers) for p in calls[0][2:]} == {tuple(p.layers) for p in calls[0][:2]}
    assert tuple(d.plan.layers) in {tuple(p.layers) for p in calls[0][2:]}
    source = ws.source(d)  # the parent, or the parent rotated
    assert d.plan.basis == basis and bool(source.basis) == (basis == "principal")
    kept, alone = ws.fits(source, d.text, d.plan), fit(source, d.plan, ws.fit_calibration(d.parent, d.text), "all")
    assert len(calls) == 2 and kept.keys() == alone.keys() and all(torch.equal(kept[k], alone[k]) for k in kept)


def test_fits_on_other_windows_than_the_span_checks_get_a_pass_of_their_own(tmp_path, tiny_dir, monkeypatch):
    """With `fit_windows` other than the span check's windows, the check fits only its two candidates and the child
    is fitted on the first `fit_windows` windows, in a pass of its own."""
    from subclone.compensate import fit, windows
    from subclone.importance import cache_path

    ws = Workspace(dataclasses.replace(LOCAL, memory_mb=100, fit_windows=6), tmp_path / "sessions")
    cache_path(ws.parent(str(tiny_dir)), ws.text("builtin")).unlink(missing_ok=True)  # no depth checked yet
    calls = _passes(monkeypatch)
    d, _ = ws.build("alice", small(tiny_dir))
    assert [len(plans) for plans in calls] == [2, 1]  # the span check's candidates, then the child
    kept = ws.fits(d.parent, d.text, d.plan)
    six, every = (fit(d.parent, d.plan, windows(d.parent, d.text, n), "all") for n in (6, 32))
    assert len(ws.fit_calibration(d.parent, d.text).ids) == 6 and kept.keys() == six.keys()
    assert all(torch.equal(kept[k], six[k]) for k in kept) and not all(torch.equal(kept[k], every[k]) for k in kept)


def test_the_fits_run_once_per_kept_structure(ws, tiny_dir, monkeypatch):
    """A rebuild or an export of the same design reuses the compensation fits; another shape fits again."""
    calls = _passes(monkeypatch)
    design = small(tiny_dir)
    first, _ = ws.build("alice", design)
    ws.build("alice", design)
    ws.export("alice", design)
    assert len(calls) == 1
    ws.build("alice", dataclasses.replace(design, ffn=16))
    assert len(calls) == 2
    ws.build("alice", dataclasses.replace(design, hidden=28))  # other residual dimensions: the reads are refit
    assert len(calls) == 3
    ws.child(first)  # the first shape's fits are still kept
    assert len(calls) == 3
    assert sum(key[0] == "fit statistics" for key in ws.cached()) == 1  # one store for the parent and text


def test_another_width_after_a_searched_build_measures_nothing_again(ws, tiny_dir):
    """The default rules search the blocks at Build and fit the child in the span check's pass; the statistics of
    that pass are kept, so another FFN width at the same depth is solved without running the parent again."""
    design = small(tiny_dir)
    d, _ = ws.build("ivy", design, speed=False)
    assert d.plan.block_rule in ("search", "angular") and d.plan.compensate == "all"
    passes = []
    handle = d.parent.model.get_submodule(d.parent.family.layers)[0].register_forward_pre_hook(
        lambda *a: passes.append(1))
    try:
        ws.build("ivy", dataclasses.replace(design, ffn=16), speed=False)
    finally:
        handle.remove()
    assert passes == []


def test_heal_trains_from_the_fits_build_made(ws, tiny_dir, monkeypatch):
    """The subclone init of Heal is the child Build fitted: no second pass over the calibration windows."""
    calls = _passes(monkeypatch)
    design = small(tiny_dir)
    ws.build("gus", design)
    assert len(calls) == 1
    events = list(ws.heal("gus", design, steps=1, inits=["subclone", "random"]))
    assert events[-1][0] == "done" and len(calls) == 1
    list(ws.heal("gus", dataclasses.replace(design, ffn=16), steps=1, inits=["subclone"]))  # a shape not built
    assert len(calls) == 2


def test_principal_directions_are_measured_once_per_parent_and_text(ws, tiny_dir, monkeypatch):
    """A child in principal directions is cut from the rotated parent, made once and kept: another shape reuses it,
    and so does Heal. The tiny parent ties its LM head, and so does the child: the size of a child in the parent's own
    dimensions, in the readout before anything is built too. A family that cannot rotate keeps its own dimensions,
    and says so where the hidden size is cut."""
    import subclone.workspace as workspace
    from subclone.plan import describe

    calls = []
    real = workspace.rotated
    monkeypatch.setattr(workspace, "rotated", lambda *a: calls.append(1) or real(*a))
    design = small(tiny_dir, basis="principal", compensate="none", block_rule="magnitude")
    d, metrics = ws.build("ann", design)
    size = describe(d.parent, d.shape)["params"]
    assert d.plan.basis == "principal" and metrics["params"] == d.plan.params == size
    assert is_tied(ws.session("ann").built[1])
    assert ws.preview(design)[1]["params"] == size
    fitted = dataclasses.replace(design, hidden=20, compensate="all")
    ws.build("ann", fitted)
    events = list(ws.heal("ann", fitted, steps=1, inits=["subclone"]))
    assert events[-1][0] == "done" and len(calls) == 1
    notes = []
    assert Workspace._for_family(design, tiny_parent("gpt2"), notes).basis == "dims" and "principal" in notes[0]
    assert Workspace._for_family(design, tiny_parent("gpt2"), [], cuts_hidden=False).basis == "dims"


def test_heal_stopped_early_keeps_a_curve_for_every_initialization(ws, tiny_dir):
    """The inits take turns step by step: stopped at any moment, each has trained to the same step, with a held-out
    evaluation there, and the verdict compares them; the pace says how far the run is."""
    from subclone.train import verdict

    events = ws.heal("fay", small(tiny_dir), steps=10_000, inits=["subclone", "uniform", "random"])
    paces = []
    for kind, init, payload in events:
        paces += [payload] if kind == "tick" else []
        if paces and paces[-1]["steps"] >= 4:
            ws.stop("fay")
            break
    kind, best, healed = list(events)[-1]
    assert kind == "done" and set(healed) == {"subclone", "uniform", "random"}
    steps = {i: h[2]["steps"] for i, h in healed.items()}
    assert len(set(steps.values())) == 1 and 0 < steps["random"] < 10_000
    for init, h in healed.items():
        history = h[2]["history"]
        assert history[0]["step"] == 0 and history[-1]["step"] == steps[init] and h[2]["stopped"]
    assert paces[-1]["total"] == 30_000 and paces[-1]["steps"] >= 1
    said = verdict({i: h[2] for i, h in healed.items()})
    assert re.search(rf"after {steps['random']} steps? each, \*\*{best}\*\*", said), said


def test_the_pace_counts_a_step_once_whichever_of_its_evaluation_or_its_end_reports_it_first():
    from subclone.workspace import Pace

    pace = Pace(total=4)
    pace.step("subclone", 0)  # the evaluation before training is not a step
    assert pace.view()["steps"] == 0
    pace.step("subclone", 1)  # its evaluation at step 1 (Heal shows "loss at step 1")...
    pace.step("subclone", 1)  # ...then the end of the step
    pace.step("random", 1)
    assert pace.view()["steps"] == 2 and pace.view()["eta"] is not None


def test_the_verdict_is_given_only_for_comparable_runs():
    from subclone.train import verdict

    one = dict(steps=5, eval_loss=3.0, eval_perplexity=20.1)
    assert verdict({"subclone": one}).startswith("only subclone was trained")
    assert verdict({"subclone": one, "random": dict(one, steps=4)}).startswith("not comparable")
    text = verdict({"subclone": dict(one, eval_loss=4.0, eval_perplexity=54.6), "random": one})
    assert text.startswith("after 5 steps each, **random** has the lowest") and "subclone 54.6" in text
    assert verdict({"subclone": dict(one, steps=1), "random": dict(one, steps=1)}).startswith("after 1 step each,")


def test_a_sweep_shows_each_child_as_it_finishes_and_stop_keeps_them(ws, tiny_dir):
    design = small(tiny_dir, block_rule="magnitude", compensate="none")
    shapes, seconds = ws.sweep_plan(design, "4, 3, 2, 1", "100, 50")
    assert len(shapes) == 8 and seconds > 0
    steps = ws.sweeping("gil", design, "4, 3, 2, 1", "100, 50")
    frame, csv, (done, total) = next(steps)
    assert (len(frame), csv, done, total) == (1, None, 1, 8) and "pareto" in frame
    ws.stop("gil")
    frame, csv, (done, total) = list(steps)[-1]
    assert done == len(frame) < 8 and csv.read_text().count("\n") == len(frame) + 1
    assert not ws.session("gil").jobs
    assert ws.sweep_plan(design, "4, 3, 2, 1", "100, 50")[1] != seconds  # the estimate now follows what was timed


def test_a_compensated_sweep_measures_all_its_children_in_one_pass(ws, tiny_dir):
    """The statistics of every child's fits are measured in one pass over the calibration windows, before the first
    child: not one pass for each new structure (here the depth maps at 3 blocks, the refits at half width, the maps
    at 2 blocks). The children are the ones fitted each on its own."""
    from subclone.sweep import sweep

    design = small(tiny_dir, block_rule="magnitude", basis="principal")  # no search: only the fits run the parent
    d = ws.design(design, compute=True)  # importance and the heads' order (a pass of its own)
    parent, text, imp = d.parent, d.text, d.importance
    ref, tokens = ws.reference(parent, text), ws.calibration(parent, text)
    source = ws.rotated(parent, text)  # half width in principal directions: the sweep cuts every child from it
    batches = []
    handle = source.model.get_submodule(parent.family.layers)[0].register_forward_pre_hook(
        lambda _, args: batches.append(len(args[0])))
    try:
        frame, _ = ws.sweep("hal", design, "3, 2", "100, 50")
    finally:
        handle.remove()
    assert len(frame) == 4 and sum(batches) == len(tokens.ids)  # every calibration window, once
    shapes, _ = ws.sweep_plan(design, "3, 2", "100, 50")
    alone = sweep(source, imp, ref, shapes, score=design.score, compensate=design.compensate, calibration=tokens,
                  basis=design.basis)
    assert alone["perplexity"].tolist() == pytest.approx(frame["perplexity"].tolist(), rel=1e-4)


def _at_once(model, family, work: dict) -> tuple[dict, list[int]]:
    """{name: what work[name]() returned or raised}, each started at the same moment on its own thread, and the batch
    sizes the model's first block ran, slowed so that two unlocked passes would overlap."""
    batches, start, done = [], threading.Barrier(len(work)), {}

    def slow(_, args):
        batches.append(len(args[0]))
        time.sleep(0.05)

    def session(name):
        start.wait()
        try:
            done[name] = work[name]()
        except Exception as e:  # reported by the caller
            done[name] = e

    handle = model.get_submodule(family.layers)[0].register_forward_pre_hook(slow)
    try:
        threads = [threading.Thread(target=session, args=(n,)) for n in work]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
    finally:
        handle.remove()
    assert not [e for e in done.values() if isinstance(e, Exception)], done
    return done, batches


def test_two_sweeps_at_once_make_one_pass(ws, tiny_dir):
    """Two sessions sweeping the same parent and text at the same moment: the second waits for the first's pass
    over the calibration windows and solves its fits from the same sums, without a pass of its own."""
    design = small(tiny_dir, block_rule="magnitude", basis="principal")
    d = ws.design(design, compute=True)
    ws.reference(d.parent, d.text)
    source = ws.rotated(d.parent, d.text)  # the sweep's half width is cut in principal directions, from it
    frames, batches = _at_once(source.model, d.parent.family,
                               {n: lambda n=n: ws.sweep(n, design, "3, 2", "100, 50")[0] for n in ("ann", "bob")})
    assert sum(batches) == len(ws.calibration(d.parent, d.text).ids)  # every calibration window once, for both
    assert frames["ann"]["perplexity"].tolist() == frames["bob"]["perplexity"].tolist()


def test_two_builds_at_once_make_one_pass(ws, tiny_dir):
    """Two sessions building children of two FFN widths at the same moment: the second waits for the first's pass
    over the calibration windows and solves its fits from the sums it kept (the cut FFN's input Gram matrix serves
    either width), so the parent runs over the windows once."""
    design = small(tiny_dir, block_rule="magnitude")
    d = ws.design(design, compute=True)
    ws.reference(d.parent, d.text)
    built, batches = _at_once(d.parent.model, d.parent.family, {
        n: lambda n=n, ffn=ffn: ws.build(n, dataclasses.replace(design, ffn=ffn), speed=False)[1]
        for n, ffn in (("ann", 20), ("bob", 16))})
    assert sum(batches) == len(ws.calibration(d.parent, d.text).ids)  # every calibration window once, for both
    assert built["ann"]["perplexity"] != built["bob"]["perplexity"]  # two children, each with its own fits


def test_a_build_waiting_for_another_sessions_pass_says_so_and_stop_ends_the_wait(ws, tiny_dir):
    design = small(tiny_dir, block_rule="magnitude")
    d = ws.design(design, compute=True)
    ws.reference(d.parent, d.text)
    told, outcome, waiting = [], {}, threading.Event()

    def progress(fraction, desc=""):
        told.append(desc)
        if desc.startswith("waiting"):
            waiting.set()

    def build(name):
        try:
            outcome[name] = ws.build(name, design, progress=progress, speed=False)[1]["perplexity"]
        except Exception as e:
            outcome[name] = e

    with ws._measuring(d.parent, d.text):  # another session's pass, holding the parent and text
        first = threading.Thread(target=build, args=("kim",))
        first.start()
        assert waiting.wait(timeout=30)
        ws.stop("kim")
        first.join(timeout=30)
        assert isinstance(outcome["kim"], Cancelled) and not first.is_alive()  # it did not wait for the pass to end
    build("lee")  # the pass over: the next build fits at once
    assert isinstance(outcome["lee"], float)
    assert "waiting for another session's pass over this parent's calibration text" in told


def test_heal_on_a_shape_not_built_says_what_it_measures_first_and_stop_ends_that_too(ws, tiny_dir, tmp_path):
    """Heal measures, in its job, what Build has not: its ticks say what, before the first step; Stop ends it,
    nothing trained, and a Heal after it measures and trains."""
    design = small(_another_parent(tmp_path / "fresh", tiny_dir))  # no other test measured it: no search, no fits
    d = ws.design(design, compute=False, plan=False)
    ws.reference(d.parent, d.text)
    held, done = threading.Event(), threading.Event()

    def other_pass():  # another session's pass over the same parent and text, for at most 30 s
        with ws._measuring(d.parent, d.text):
            held.set()
            done.wait(timeout=30)

    threading.Thread(target=other_pass).start()
    assert held.wait(timeout=30)
    events = ws.heal("max", design, steps=2, inits=["subclone"])
    kind, _, pace = next(events)
    assert kind == "tick" and pace["steps"] == 0 and pace["doing"].startswith("waiting for another session's")
    assert ws.stop("max") == 1
    assert list(events)[-1] == ("stopped", None, None)
    done.set()
    assert not _heal_threads() and not ws.session("max").jobs and not ws.session("max").healed
    kind, best, healed = list(ws.heal("max", design, steps=2, inits=["subclone"]))[-1]
    assert kind == "done" and healed[best][2]["steps"] == 2


def test_a_sweep_of_the_best_preset_checks_the_span_at_every_depth_it_cuts_to(ws, tiny_dir):
    design = small(tiny_dir)  # block search, compensation; 3 blocks, which the sweep below does not cut to
    list(ws.sweeping("gil", design, "2, 1", "100"))
    imp = ws.importance(ws.parent(str(tiny_dir)), ws.text("builtin"))
    assert imp.spans[1] >= 0 and imp.spans[2] >= 0


def test_heal_refuses_what_would_not_fit_in_memory_before_allocating(ws, tiny_dir, tmp_path):
    """The inits train side by side; their weights, gradients and AdamW state must fit the app's memory bound."""
    from subclone.plan import describe

    design = small(tiny_dir)
    d = ws.design(design, plan=False)
    one = 16 * describe(d.parent, d.shape)["params"] / 2**20  # MB for one init
    tight = Workspace(dataclasses.replace(LOCAL, memory_mb=2.5 * one), tmp_path / "s")
    events = tight.heal("hal", design, steps=2, inits=["subclone", "random"])
    assert next(events)[0] in ("tick", "eval")  # two fit
    events.close()
    with pytest.raises(SubcloneError, match="3 initialization.* side by side needs about .* choose fewer"):
        next(tight.heal("hal", design, steps=2, inits=["subclone", "uniform", "random"]))
    assert not tight.session("hal").jobs


def test_what_a_job_frees_goes_back_to_the_system():
    import gc

    import psutil

    from subclone.limits import bound_allocator

    if not bound_allocator():  # as the app sets it (the process keeps it: allocations above 32 MB mapped)
        pytest.skip("not glibc")
    s = Workspace().session("s")
    rss = lambda: psutil.Process().memory_info().rss  # noqa: E731
    with s.job("a job"):
        blocks = [torch.ones(2**18) for _ in range(400)]  # 400 MB in 1 MB blocks, from the heap
        held = rss()
        del blocks[::2]  # every other block: holes between blocks in use, which no heap-top trim can return
        gc.collect()
        assert rss() > held - 50 * 2**20  # freed, and still held by the allocator
    assert rss() < held - 150 * 2**20  # the job's end gave it back
    del blocks


def test_fit_windows_past_a_short_texts_end_still_fit_the_child_in_the_span_checks_pass(tmp_path, tiny_dir,
                                                                                          monkeypatch):
    """A text shorter than the span check's 32 windows gives the fits the same windows whatever `fit_windows` asks
    beyond them: the check's pass fits the child too, and no second pass is made."""
    from subclone.importance import cache_path

    path = tmp_path / "short.txt"
    path.write_text("\n\n".join(f"Paragraph {i}: the quick brown fox jumps over the lazy dog, then rests a while "
                                "before it runs home again." for i in range(60)))
    ws = Workspace(dataclasses.replace(LOCAL, memory_mb=100, fit_windows=64), tmp_path / "sessions")
    text = ws.text(str(path))
    n = len(ws.calibration(ws.parent(str(tiny_dir)), text).ids)
    assert 4 <= n < 32 and len(ws.fit_calibration(ws.parent(str(tiny_dir)), text).ids) == n
    cache_path(ws.parent(str(tiny_dir)), text).unlink(missing_ok=True)
    calls = _passes(monkeypatch)
    ws.build("alice", Design.of(LOCAL, str(tiny_dir), str(path), 3, 24, 20, 4, 2))
    assert [len(plans) for plans in calls] == [4]
