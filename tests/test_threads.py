"""Models are built, trained and loaded in several threads at once in the app: no thread may see another's
empty-weight construction (accelerate patches torch.nn.Module for the whole process while it runs)."""
import threading

from subclone import build, make_plan, resolve_shape
from subclone.importance import measure
from subclone.data import Tokens
from subclone.train import init_child

from .conftest import ids, tiny_parent


def test_random_init_is_real_while_other_threads_build():
    """Two builders (each child constructed on the meta device, then given its sliced weights) and a random init
    at once: every parameter of every model is real."""
    parent = tiny_parent("llama")
    imp = measure(parent, Tokens(ids(4, 16, seed=7)))
    plan = make_plan(parent, imp, resolve_shape(parent.family, parent.shape, layers=3, hidden=24))
    stop, built = threading.Event(), []

    def keep_building():
        while not stop.is_set():
            built.append(build(parent, plan))

    builders = [threading.Thread(target=keep_building) for _ in range(2)]
    for b in builders:
        b.start()
    try:
        children = [init_child(parent, None, plan.shape, "random", seed=i)[0] for i in range(100)]
    finally:
        stop.set()
        for b in builders:
            b.join()
    assert len(built) > 2  # the threads did overlap
    meta = [n for child in children for n, p in child.named_parameters() if p.is_meta]
    assert not meta, f"{len(meta)} parameters of random-init children were left on the meta device"
    assert not any(p.is_meta for child in built for p in child.parameters()), "a built child has meta parameters"


def test_what_is_measured_on_a_parent_ignores_another_thread_running_it():
    """The app shares one parent among its sessions: while one records activations (calibration, the fits, the
    principal directions, the block search) or skips a block (drop-one scores), another evaluates the same model on
    other tokens. Neither may see the other's calls."""
    import torch

    from subclone.compensate import fit
    from subclone.importance import drop_one
    from subclone.rotate import directions
    from subclone.search import greedy_removals, order_heads

    parent = tiny_parent("llama")  # 6 heads / 3 KV, 4 blocks
    tokens = Tokens(ids(8, 16, seed=3))
    other = ids(3, 9, seed=5)  # another batch size and length than any of the measurements'
    with torch.no_grad():
        expected = parent.model(input_ids=other).logits

    def measurements():
        imp = measure(parent, tokens)
        order_heads(parent, imp, tokens)
        plan = make_plan(parent, imp, resolve_shape(parent.family, parent.shape, layers=3, ffn=24, heads=4,
                                                    kv_heads=2), compensate="all")
        return dict(imp.__dict__, drop_one=drop_one(parent, tokens), directions=directions(parent, tokens).abs(),
                    removals=torch.tensor(greedy_removals(parent, tokens, keep=2)),
                    **fit(parent, plan, tokens, "all"))

    alone = measurements()
    stop, moved, failed = threading.Event(), [], []

    def keep_evaluating():
        with torch.no_grad():
            while not stop.is_set():
                try:
                    moved.append((parent.model(input_ids=other).logits - expected).abs().max().item())
                except Exception as e:  # reported below
                    failed.append(repr(e))

    evaluator = threading.Thread(target=keep_evaluating)
    evaluator.start()
    try:
        together = [measurements() for _ in range(3)]
    finally:
        stop.set()
        evaluator.join()
    assert not failed, f"the other thread's evaluation failed {len(failed)} times: {failed[0]}"
    assert len(moved) > 10  # the two threads did overlap
    assert max(moved) < 1e-5, "another thread's skipped block or recording changed this thread's outputs"
    for got in together:
        for key, value in alone.items():
            if isinstance(value, torch.Tensor):
                assert torch.allclose(got[key].float(), value.float(), atol=1e-5, rtol=1e-4), key
