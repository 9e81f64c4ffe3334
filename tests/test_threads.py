"""Models are built, trained and loaded in several threads at once in the app: no thread may see another's
empty-weight construction (accelerate patches torch.nn.Module for the whole process while it runs)."""
import threading

from subclone import build, make_plan, resolve_shape
from subclone.importance import measure
from subclone.data import Tokens
from subclone.train import init_child

from .conftest import ids, tiny_parent


def test_random_init_is_real_while_another_thread_builds():
    parent = tiny_parent("llama")
    imp = measure(parent, Tokens(ids(4, 16, seed=7)))
    plan = make_plan(parent, imp, resolve_shape(parent.family, parent.shape, layers=3, hidden=24))
    stop, built = threading.Event(), []

    def keep_building():
        while not stop.is_set():
            built.append(build(parent, plan))

    builder = threading.Thread(target=keep_building)
    builder.start()
    try:
        children = [init_child(parent, None, plan.shape, "random", seed=i)[0] for i in range(200)]
    finally:
        stop.set()
        builder.join()
    assert len(built) > 1  # the two threads did overlap
    meta = [n for child in children for n, p in child.named_parameters() if p.is_meta]
    assert not meta, f"{len(meta)} parameters of random-init children were left on the meta device"
    assert not any(p.is_meta for child in built for p in child.parameters())
