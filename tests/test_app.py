"""The app, driven as a user's script would: launched on a free port, called through gradio_client."""
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def app_url():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env={**os.environ, "PORT": str(port)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/"
    try:
        for _ in range(120):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert proc.poll() is None, "the app exited during start-up"
                time.sleep(1)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.mark.slow
def test_analyze_preview_build_through_the_api(app_url, tiny_dir):
    from gradio_client import Client

    c = Client(app_url, verbose=False)
    parent = dict(parent=str(tiny_dir), data="builtin")
    card, *sliders = c.predict(**parent, api_name="/analyze")
    assert "llama" in card and "4 layers" in card
    readout = c.predict(**parent, layers=3, hidden=25, ffn=20, heads=4, kv_heads=2, block_rule="magnitude",
                        api_name="/preview")
    assert "hidden 25 → 24: hidden must be a multiple of heads (4)" in readout and "3 layers" in readout and readout.count("■") == 3
    table = c.predict(**parent, layers=3, hidden=24, ffn=20, heads=4, kv_heads=2, block_rule="middle",
                      neuron_rule="importance", scale=True, api_name="/build")
    rows = {r[0]: r[1:] for r in table["data"]}
    assert rows["perplexity"][1] > 0 and rows["params"][1] < rows["params"][0]
    with pytest.raises(Exception, match="unknown parent 'nope'"):
        c.predict(parent="nope", data="builtin", api_name="/analyze")
