"""Many strangers at once on the app configured as a public Space: sessions keep their results apart, memory stays
under the configured bound however many ways an input is spelled, and a client that dies mid-training stops using
the CPU within seconds."""
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from .conftest import SPACE_MEMORY_MB

SMALL = dict(parent="smollm2-135m", hidden=192, ffn=512, heads=3, kv_heads=1, block_rule="magnitude",
             neuron_rule="importance", scale=["residual", "embed"], score="activation", compensate="none")  # paper
SPELLINGS = ["builtin", " builtin", "builtin ", "BUILTIN", "\tbuiltin", "builtin\n", "Builtin", "  builtin  "]


def cpu_seconds(proc) -> float:
    t = proc.cpu_times()
    return t.user + t.system + t.children_user + t.children_system


def busy(proc, window: float = 2.0) -> float:
    """Cores the process used over the window."""
    start = cpu_seconds(proc)
    time.sleep(window)
    return (cpu_seconds(proc) - start) / window


@pytest.mark.slow
def test_eight_sessions_at_once(space_app):
    from gradio_client import Client

    url, proc = space_app
    clients = [Client(url, verbose=False) for _ in range(8)]
    rss, errors, histories = [], [], {}

    def session(i, client):
        try:
            _, _, histories[i] = client.predict(**SMALL, data=SPELLINGS[i], layers=4 + i, api_name="/build")
        except Exception as e:  # reported below, with the session it came from
            errors.append(f"session {i}: {e}")

    for _ in range(2):  # the second time, every session builds again: its new child replaces the first
        threads = [threading.Thread(target=session, args=(i, c)) for i, c in enumerate(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=900)
        assert not errors, errors
        rss.append(proc.memory_info().rss)
    for i in range(8):  # each session sees exactly its own children
        rows = histories[i]["data"]
        layers = histories[i]["headers"].index("layers")
        assert len(rows) == 2 and {row[layers] for row in rows} == {4 + i}
    for c in clients:
        c.close()
    # one parent and one parent evaluation whatever the spelling; the children come and go
    print("RSS MB", [r // 2**20 for r in rss])
    assert rss[1] - rss[0] < 300 * 2**20, [r // 2**20 for r in rss]
    assert rss[1] < (SPACE_MEMORY_MB + 1500) * 2**20, [r // 2**20 for r in rss]  # the bound plus the runtime


@pytest.mark.slow
def test_a_client_that_dies_mid_training_stops_its_run(space_app):
    url, proc = space_app
    script = textwrap.dedent(f"""
        from gradio_client import Client
        import time
        client = Client({url!r}, verbose=False)
        job = client.submit(**{SMALL!r}, data="builtin", layers=6, steps=200, inits=["subclone", "random"],
                            distill=0, api_name="/heal")
        time.sleep(600)
    """)
    assert busy(proc) < 0.5  # quiet before
    client = subprocess.Popen([sys.executable, "-c", script])
    try:
        deadline = time.monotonic() + 120
        while busy(proc) < 0.5:  # training has started
            assert time.monotonic() < deadline, "training did not start"
    finally:
        client.kill()  # no cancel, no goodbye: the process is gone
        client.wait()
    t = time.monotonic()
    while busy(proc) > 0.2:
        assert time.monotonic() - t < 30, "the dead client's training still runs"
    print(f"training stopped {time.monotonic() - t:.1f} s after its client died")
