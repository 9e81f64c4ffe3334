"""Blocks and heads chosen by measuring, not by a fixed rule: greedy removal on calibration text.

A block's removal changes only what comes after it. `Stack` runs the parent's blocks one at a time on a few
calibration windows and keeps the residual stream entering each kept block, so trying a removal runs only the
blocks after it, from the cached stream. Each step tries the `width` blocks that move the stream least in the
current stack (lowest 1 − cos between a block's input and output, the cheap screen) and removes the one whose
removal moves the next-token distribution least from the parent's (KL(parent ‖ stack)); the winner's trial is
the cached stream from then on (it is not run again).

Removals are nested: the child with n blocks keeps what the first L − n removals leave, so one search serves
every depth down to where it stopped, and a deeper cut resumes it (`extend`, which keeps the order in the
`Importance` record, so it is cached with it).

At each depth the search is checked against the one contiguous span the angular distance picks (Gromov et al.,
2024): both are built with linear maps standing in for their removed blocks (`compensate.measure`, method `depth`,
one pass for both, on the first FIT_WINDOWS calibration windows), and the one with the lower next-token loss on the
last PROBE_WINDOWS windows (a quarter of a shorter text's), which no fit saw, is kept (`choose_span`, recorded per
depth in `Importance.spans`). Without the maps a span loses (it moves the stream further in one place), but one
map over one span makes up for more than several maps over scattered blocks at moderate depth, and far less when
the span grows. When the check runs for a child being built, that child's own fits (on all the calibration
windows) share its pass, for both candidates, and the winner's are kept.

Heads (`order_heads`): in each block, KV groups (single heads without grouped-query attention) are removed one at a
time, each time the one whose loss the refit of the attention's output projection makes up best: the least
remaining error ‖a_K X − a W‖² of the ridge fit X on the kept inputs a_K, from the Gram matrix of the output
projection's inputs on calibration text (the fit `compensate.refit` makes). The order is kept in the record too.
"""
from __future__ import annotations

from typing import Callable

import torch

from . import hooks
from .compensate import gram_matrix, measure, solve
from .data import Tokens
from .errors import SubcloneError
from .evaluate import Target, mean_loss

Progress = Callable[[float, str], None]
Final = tuple[Callable[[str], object], Callable[[object, dict], None]]  # (plan for a block rule, take its fits)
WIDTH = 4  # candidates tried per removal
WINDOWS, WINDOW_LEN = 2, 256  # calibration tokens the divergence is measured on
LOSS_STRIDE = 4  # the LM head reads every 4th position: over all of them it costs as much as a dozen blocks
FIT_WINDOWS, PROBE_WINDOWS = 16, 4  # the span check: windows its maps are fitted on, windows its loss is read on


def _out(output):
    return output[0] if isinstance(output, tuple) else output


class Stack:
    """The parent's blocks, called one at a time with the arguments the model itself passes them."""

    def __init__(self, parent, ids: torch.Tensor):
        fam = parent.family
        if fam.kind != "causal-lm" or not fam.final_norm:
            raise SubcloneError(f"the block search measures next-token loss: it needs a causal LM, and "
                                f"{parent.name} is a {fam.kind} ({fam.name})")
        self.model, self.ids = parent.model, ids
        self.blocks = parent.model.get_submodule(fam.layers)
        self.norm = parent.model.get_submodule(fam.final_norm)
        self.calls, first = {}, {}

        def record(i):
            def hook(_, args, kwargs):
                if i == 0:
                    first["h"] = args[0] if args else kwargs["hidden_states"]
                self.calls[i] = (args[1:], {k: v for k, v in kwargs.items() if k != "hidden_states"})
            return hook

        with hooks.this_thread(pre=[(b, record(i)) for i, b in enumerate(self.blocks)]), torch.no_grad():
            self.model.base_model(input_ids=ids, use_cache=False)
        self.embedded = first["h"]

    @torch.no_grad()
    def block(self, i: int, h: torch.Tensor) -> torch.Tensor:
        args, kwargs = self.calls[i]
        return _out(self.blocks[i](h, *args, **kwargs))

    @torch.no_grad()
    def stream(self, blocks: list[int], h: torch.Tensor) -> list[torch.Tensor]:
        """The stream entering each of `blocks` from h, and leaving the last: len(blocks) + 1 tensors."""
        out = [h]
        for i in blocks:
            out.append(self.block(i, out[-1]))
        return out

    @torch.no_grad()
    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """Next-token logits (fp32) from the stream leaving the last block, at every LOSS_STRIDE-th position."""
        return self.model.get_output_embeddings()(self.norm(h[:, ::LOSS_STRIDE])).float()

    @torch.no_grad()
    def divergence(self, h: torch.Tensor, parent: Target) -> float:
        """KL(parent ‖ this stack): how far the removals moved the model's predictions, whatever the text. parent =
        the parent's next-token distributions, computed once for every trial."""
        return parent.kl(self.logits(h)).mean().item()


def _moves(a: torch.Tensor, b: torch.Tensor) -> float:
    return (1 - torch.nn.functional.cosine_similarity(a, b, dim=-1)).mean().item()


def greedy_removals(parent, tokens: Tokens, keep: int, done: list[int] = (), width: int = WIDTH,
                    progress: Progress | None = None) -> list[int]:
    """Parent block indices in the order they are removed, continuing `done`, until `keep` blocks remain."""
    L = parent.shape.layers
    if not 1 <= keep <= L:
        raise SubcloneError(f"the search keeps between 1 and {L} blocks, not {keep}")
    order = list(done)
    kept = [i for i in range(L) if i not in order]
    if len(kept) <= keep:
        return order
    if progress:
        progress(0.0, "searching: the parent's stream and predictions on the calibration windows")
    stack = Stack(parent, tokens.ids[:WINDOWS, :WINDOW_LEN])
    target = Target.of(stack.logits(stack.stream(list(range(L)), stack.embedded)[-1]))
    stream = stack.stream(kept, stack.embedded)
    total = len(kept) - keep
    while len(kept) > keep:
        if progress:
            progress((len(order) - len(done)) / total, f"searching: removing block {len(order) - len(done) + 1} of "
                                                       f"{total}")
        screen = sorted(range(len(kept)), key=lambda p: _moves(stream[p], stream[p + 1]))[:width]
        best = None  # (divergence, position, the stream from there on with that block removed)
        for p in screen:
            after = stack.stream(kept[p + 1:], stream[p])
            divergence = stack.divergence(after[-1], target)
            if best is None or divergence < best[0]:
                best = (divergence, p, after)
        _, p, after = best
        stream[p:] = after  # the winner's trial is the new stack's stream: nothing to run again
        order.append(kept.pop(p))
    return order


def extend(parent, importance, tokens: Tokens, keep: int, progress: Progress | None = None,
           final: Final | None = None, store: dict | None = None, check_on=None) -> bool:
    """Make sure the record's removals reach a stack of `keep` blocks and the span check at `keep` is done; True
    when it had to measure. With `final`, the check also fits the child about to be built (see `choose_span`), on
    `check_on` when given: the parent rotated to principal directions (the same function) for a child in them."""
    done = [] if importance.removals is None else importance.removals.tolist()
    searched_now = parent.shape.layers - len(done) > keep
    if searched_now:
        order = greedy_removals(parent, tokens, keep, done, progress=progress)
        importance.removals = torch.tensor(order, dtype=torch.int64)
    return choose_span(check_on or parent, importance, tokens, keep, progress, final, store) or searched_now


def _span_checked(importance, keep: int) -> bool:
    return importance.spans is not None and importance.spans[keep] >= 0


@torch.no_grad()
def choose_span(parent, importance, tokens: Tokens, keep: int, progress: Progress | None = None,
                final: Final | None = None, store: dict | None = None) -> bool:
    """Record at `keep` blocks whether the angular span beats the greedy removals once depth maps stand in for the
    removed blocks of each (see the module's docstring); True when it had to measure.

    `parent` may be rotated to principal directions (rotate.rotated): the same function, so the same choice.
    `final` = (make, fitted): the child about to be built is fitted in the same pass over the calibration windows
    (the check's maps read the sums after its first windows): make(block rule) is its plan with the greedy removals
    ("search", while this depth is unrecorded) or the span ("angular"), and fitted(plan, fits) receives the fits of
    the one that wins. `store` keeps the statistics of those fits (see `compensate.measure`)."""
    from .clone import build  # clone builds on plan, which reads this module's record
    from .plan import make_plan, resolve_shape

    L = parent.shape.layers
    if keep >= L or _span_checked(importance, keep):
        return False
    if importance.spans is None:
        importance.spans = torch.full((L + 1,), -1, dtype=torch.int64)
    shape = resolve_shape(parent.family, parent.shape, layers=keep)
    basis = "principal" if parent.basis else "dims"  # a rotated parent: the same function in its own coordinates
    greedy = make_plan(parent, importance, shape, block_rule="search", compensate="depth", basis=basis)  # unset yet
    span = make_plan(parent, importance, shape, block_rule="angular", compensate="depth", basis=basis)
    n_probe = min(PROBE_WINDOWS, len(tokens.ids) // 4)  # a short text: a quarter of its windows
    if span.layers == greedy.layers or n_probe == 0:  # nothing to check, or no window to check it on: the search
        importance.spans[keep] = 0
        return True
    n_fit = min(FIT_WINDOWS, len(tokens.ids) - n_probe)
    plans, methods, windows = [greedy, span], ["depth"] * 2, [n_fit] * 2
    if final and n_fit % 2 == 0:  # the sums are taken per pair of windows
        plans += [final[0]("search"), final[0]("angular")]
        methods += [p.compensate for p in plans[2:]]
        windows += [len(tokens.ids)] * 2
    fits = measure(parent, plans, tokens, methods, progress and (
        lambda f, _: progress(0.8 * f, f"checking the search against the angular span at {keep} blocks: fitting "
                                       f"maps" + (" and the child" if len(plans) > 2 else ""))), windows, store)
    probe = Tokens(tokens.ids[-n_probe:])
    loss = []
    for n, (plan, fitted) in enumerate(zip((greedy, span), fits)):
        if progress:
            progress(0.8 + 0.1 * n, f"checking the search against the angular span at {keep} blocks: loss {n + 1}/2")
        loss.append(mean_loss(build(parent, plan, fitted=fitted()), probe).item())
    importance.spans[keep] = chosen = int(loss[1] < loss[0])
    if len(plans) > 2:
        final[1](plans[2 + chosen], fits[2 + chosen]())
    return True


def searched(importance, keep: int) -> bool:
    """Whether the record's removals already reach `keep` blocks and the span check there is done (the plan is then
    instant)."""
    L = len(importance.magnitude)
    return keep >= L or (importance.removals is not None and L - len(importance.removals) <= keep
                         and _span_checked(importance, keep))


def _refit_error(gram: torch.Tensor, w: torch.Tensor, kept: torch.Tensor) -> float:
    """‖a_K X − a W‖² less its constant ‖a W‖², for the ridge fit X of compensate.refit (gram = aᵀa, w (inputs, d))."""
    gkk = gram[kept][:, kept]
    rhs = gram[kept] @ w
    x = solve(gkk, rhs, w[kept]).double()
    return ((x * (gkk @ x)).sum() - 2 * (x * rhs).sum()).item()


def group_order(gram: torch.Tensor, w: torch.Tensor, groups: int) -> list[int]:
    """Groups of inputs (equal, consecutive) in the order greedy removal takes them: each time the one whose removal
    leaves the least refit error. The last one is the one kept longest."""
    size = len(gram) // groups
    left, order = list(range(groups)), []
    while len(left) > 1:
        def error(g):
            return _refit_error(gram, w, torch.cat([torch.arange(h * size, (h + 1) * size) for h in left if h != g]))
        order.append(min(left, key=error))
        left.remove(order[-1])
    return order + left


@torch.no_grad()
def order_heads(parent, importance, tokens: Tokens, progress: Progress | None = None) -> bool:
    """Make sure the record has each block's KV groups in removal order (heads_order, (L, KV heads)); True when it
    had to measure. One pass over `tokens` accumulates each attention output projection's input Gram matrix."""
    if importance.heads_order is not None:
        return False
    fam, shape = parent.family, parent.shape
    blocks = parent.model.get_submodule(fam.layers)
    grams = {}

    def hook(i):
        def pre(_, args, kwargs):
            z = (args[0] if args else kwargs["input"]).flatten(0, 1).float()
            grams[i] = grams.get(i, 0) + gram_matrix(z)
        return pre

    with hooks.this_thread(pre=[(b.get_submodule(fam.heads_input), hook(i)) for i, b in enumerate(blocks)]):
        for n, batch in enumerate(tokens.ids.split(2)):
            if progress:
                progress(n * 2 / len(tokens.ids), "choosing heads: measuring what each attention output reads")
            parent.model.base_model(input_ids=batch, use_cache=False)
    order = []
    for i, block in enumerate(blocks):
        w = block.get_submodule(fam.heads_input).weight.detach().double()
        order.append(group_order(grams[i].double(), w if fam.weights_in_out else w.T, shape.kv_heads))
    importance.heads_order = torch.tensor(order, dtype=torch.int64)
    return True
