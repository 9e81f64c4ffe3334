"""The app, driven as a user's script would: launched on a free port, called through gradio_client."""
import json
import time
import zipfile

import pytest


@pytest.fixture(scope="module")
def client(app_url):
    from gradio_client import Client

    return Client(app_url, verbose=False)


SCALE = ["residual", "embed"]


def measures(table) -> dict:
    """The results table as {measure: [parent, child]} numbers ('1,234' -> 1234, '× 1.30' -> 1.3, '' -> None)."""
    def number(text):
        text = str(text).replace(",", "").replace("×", "").replace("%", "").strip()
        return float(text) if text else None
    return {r[0]: [number(r[1]), number(r[2])] for r in table["data"]}


@pytest.mark.slow
def test_snapping_rules_and_errors_on_a_local_parent(client, tiny_dir):
    parent = dict(parent=str(tiny_dir), data="builtin")
    card, *sliders = client.predict(**parent, api_name="/analyze")
    assert "llama" in card and "| 4 | 48 | 6 / 3 |" in card
    readout, strip = client.predict(**parent, layers=3, hidden=25, ffn=20, heads=4, kv_heads=2,
                                    block_rule="magnitude", api_name="/preview")
    assert "hidden 25 → 24: hidden must be a multiple of heads (4)" in readout and "3 layers" in readout
    assert "3 of 4 blocks kept" in strip
    verdict, table, history = client.predict(**parent, layers=3, hidden=24, ffn=20, heads=4, kv_heads=2,
                                             block_rule="middle", neuron_rule="importance", scale=SCALE,
                                             api_name="/build")
    rows = measures(table)
    assert rows["held-out perplexity ↓"][1] > 0 and rows["parameters"][1] < rows["parameters"][0]
    assert "of the parent's parameters" in verdict and "lower is better" in verdict
    assert history["data"][0][history["headers"].index("block rule")] == "middle"
    with pytest.raises(Exception, match="unknown parent 'nope'"):
        client.predict(parent="nope", data="builtin", api_name="/analyze")
    with pytest.raises(Exception, match="depths must be a comma-separated list"):
        client.predict(**parent, depths="three", widths="100", heads=6, kv_heads=3, block_rule="magnitude",
                       neuron_rule="importance", scale=SCALE, api_name="/sweep")


@pytest.mark.slow
def test_bundled_parent_end_to_end(client, tmp_path):
    """Analyze SmolLM2, preview, build and evaluate, generate, sweep, export a zip that from_pretrained loads."""
    import torch
    from transformers import AutoModelForCausalLM

    parent = dict(parent="smollm2-135m", data="builtin")
    card, layers, *_ = client.predict(**parent, api_name="/analyze")
    assert "| 30 | 576 | 9 / 3 |" in card
    shape = dict(layers=20, hidden=430, ffn=1024, heads=9, kv_heads=3, block_rule="magnitude")
    readout, strip = client.predict(**parent, **shape, api_name="/preview")
    assert "hidden 430 → 432" in readout and "20 of 30 blocks kept" in strip
    # the paper's rules: this test is the wiring; the default's search and fits are the browser test's, on this app
    shape.update(hidden=432, neuron_rule="importance", scale=SCALE, score="activation", compensate="none", basis="dims")
    _, table, _ = client.predict(**parent, **shape, api_name="/build")
    rows = measures(table)
    ppl = rows["held-out perplexity ↓"]
    assert ppl[0] < ppl[1] < 1000  # worse than the parent, far better than random
    assert 0.4 < rows["parameters"][1] / rows["parameters"][0] < 0.5
    assert rows["speed-up, timed side by side ↑"][1] > 1
    parent_text, child_text = client.predict(parent="smollm2-135m", prompt="The Python interpreter", api_name="/outputs")
    assert parent_text.startswith("##### parent") and child_text.startswith("##### child") and parent_text != child_text

    # the sweep's wiring: without fits (a compensated sweep is test_workspace's, on a tiny parent, and the browser's)
    figure, frame, csv, note = client.predict(**parent, depths="30, 20", widths="100, 75", heads=9, kv_heads=3,
                                              block_rule="magnitude", neuron_rule="importance", scale=SCALE,
                                              compensate="none", api_name="/sweep")
    import pandas as pd

    sweep = pd.read_csv(csv).to_dict("records")  # the raw numbers; the page shows them formatted
    assert len(sweep) == len(frame["data"]) == 4 and note == "4 of 4 children — done"
    assert "held-out perplexity ↓" in frame["headers"]
    full = next(r for r in sweep if r["layers"] == 30 and r["hidden"] == 576)
    assert full["pareto"] and full["top1_agreement"] == 1.0  # the full shape is the parent itself
    assert all(r["perplexity"] > full["perplexity"] for r in sweep if r is not full)

    archive, status, card = client.predict(**parent, **shape, hub_repo="", hub_token="", api_name="/export")
    assert "Wrote" in status and "base_model: HuggingFaceTB/SmolLM2-135M-Instruct" in card
    zipfile.ZipFile(archive).extractall(tmp_path)
    assert {"config.json", "model.safetensors", "tokenizer.json", "README.md", "subclone.json"} <= \
        {p.name for p in tmp_path.iterdir()}
    child = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32)
    assert child.config.num_hidden_layers == 20 and child.config.hidden_size == 432
    assert child.num_parameters() == rows["parameters"][1]


@pytest.mark.slow
def test_bundled_encoder_shows_similarities_and_refuses_training(client):
    parent = dict(parent="minilm-l6", data="builtin")
    card, *_ = client.predict(**parent, api_name="/analyze")
    assert "bert (encoder)" in card
    shape = dict(layers=4, hidden=256, ffn=1024, heads=8, kv_heads=8, block_rule="magnitude", neuron_rule="importance",
                 scale=SCALE)
    _, table, _ = client.predict(**parent, **shape, api_name="/build")
    rows = measures(table)
    assert 0 < rows["embedding cosine to the parent ↑"][1] <= 1 and "held-out perplexity ↓" not in rows
    p, c = client.predict(parent="minilm-l6", prompt="A cat sits on the mat.\nA kitten rests on a rug.\nStocks fell today.",
                          api_name="/outputs")
    assert p.count("|") == c.count("|") and "A cat sits on the mat." in p and "Stocks fell today." in c
    with pytest.raises(Exception, match="training needs a causal LM"):
        client.predict(**parent, **shape, steps=2, inits=["subclone"], distill=0, api_name="/heal")


@pytest.mark.slow
def test_closing_the_tab_stops_its_training_and_a_trained_child_exports(app_url, tiny_dir, tmp_path):
    """A session that goes away mid-training (the unload event) stops its run; otherwise the next Heal would queue
    behind a million steps nobody watches. The next session's trained child exports with its training record."""
    from gradio_client import Client

    args = dict(parent=str(tiny_dir), data="builtin", layers=3, hidden=24, ffn=20, heads=4, kv_heads=2,
                block_rule="magnitude", neuron_rule="importance", scale=SCALE, inits=["random"], distill=0)
    leaver = Client(app_url, verbose=False)
    job = leaver.submit(**args, steps=10**6, api_name="/heal")
    for _curves, status, *_ in job:
        if "step" in status:  # training is under way
            break
    assert not job.done()  # still training when its session goes away
    leaver.close()
    stayer = Client(app_url, verbose=False)
    healed = stayer.submit(**args, steps=2, api_name="/heal").result(timeout=300)
    table = healed[2]
    assert [r[table["headers"].index("steps")] for r in table["data"]] == [2]
    with pytest.raises(Exception, match="train the 'subclone' init first"):
        stayer.predict(parent=str(tiny_dir), data="builtin", init="subclone", api_name="/export_trained")
    archive, _ = stayer.predict(parent=str(tiny_dir), data="builtin", init="random", api_name="/export_trained")
    zipfile.ZipFile(archive).extractall(tmp_path)
    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(tmp_path).config.num_hidden_layers == 3
    card = (tmp_path / "README.md").read_text()
    assert "from random initialization, then trained for 2 steps" in card and "after training)" in card
    assert json.loads((tmp_path / "training.json").read_text())["steps"] == 2


@pytest.mark.slow
def test_cancelling_a_training_run_ends_it(app, tiny_dir):
    """The client stays, but cancels its /heal: the run stops using the CPU within seconds."""
    from gradio_client import Client

    from .test_concurrency import busy

    url, proc = app
    client = Client(url, verbose=False)
    job = client.submit(parent=str(tiny_dir), data="builtin", layers=3, hidden=24, ffn=20, heads=4, kv_heads=2,
                        block_rule="magnitude", neuron_rule="importance", scale=SCALE, inits=["random"], distill=0,
                        steps=10**6, api_name="/heal")
    for _curves, status, *_ in job:
        if "·" in status:  # a tick: training is under way
            break
    assert busy(proc) > 0.5
    job.cancel()
    deadline = time.monotonic() + 30
    while busy(proc) > 0.2:
        assert time.monotonic() < deadline, "the cancelled run still trains"
    client.close()
