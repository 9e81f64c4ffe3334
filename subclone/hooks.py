"""Forward hooks that act on one thread's calls only, on a model other threads may be running.

The app holds one copy of each parent for all its sessions: while one session records the parent's activations
(calibration, the block search, the fits) or skips one of its blocks (drop-one scores), another may evaluate or
calibrate that same parent. A plain hook fires on every thread's calls: it would record theirs too (other texts,
other batch sizes, a KV cache) and skip their blocks. These fire only on the thread that registered them.
"""
from __future__ import annotations

import contextlib
import threading
from typing import Callable, Iterable

from torch import nn

Pre = Callable[[nn.Module, tuple, dict], object]  # (module, args, kwargs) -> None, or (args, kwargs) to use
Post = Callable[[nn.Module, tuple, dict, object], object]  # (module, args, kwargs, output) -> None, or an output


@contextlib.contextmanager
def this_thread(pre: Iterable[tuple[nn.Module, Pre]] = (), post: Iterable[tuple[nn.Module, Post]] = ()):
    """Hooks before (pre) and after (post) modules' forward calls, as torch's with_kwargs hooks, acting on this
    thread's calls only; always removed, even on error."""
    me = threading.get_ident()

    def mine(hook):
        def call(*a):
            return hook(*a) if threading.get_ident() == me else None
        return call

    handles = []
    try:
        handles += [m.register_forward_pre_hook(mine(h), with_kwargs=True) for m, h in pre]
        handles += [m.register_forward_hook(mine(h), with_kwargs=True) for m, h in post]
        yield
    finally:
        for h in handles:
            h.remove()
