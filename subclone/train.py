"""Recovery training: heal a child with a short run, and compare initializations on equal terms.

Next-token loss, optionally plus distillation from the parent (KL(parent || child) on the logits, times a
weight); AdamW with linear warm-up and cosine decay; gradient clipping; held-out loss every few steps;
deterministic under a seed. Accelerate runs it: the same code trains on one CPU, or under `torchrun` /
`accelerate launch` on many GPUs and nodes (DDP; gloo on CPU), with mixed precision where the hardware has it.

Initializations of the same child shape:
- subclone: the paper (importance-ranked neurons, heads and blocks, weights scaled by √(d/d′));
- uniform: weight selection (Xu et al., 2023): evenly spaced neurons and heads, the first blocks, no scaling;
- random: the architecture's own random initialization.
"""
from __future__ import annotations

import hashlib
import itertools
import math
import time
from dataclasses import asdict, dataclass, replace
from typing import Callable

import torch
import torch.nn.functional as nnf

from .data import Tokens
from .errors import SubcloneError
from .evaluate import mean_loss
from .limits import Limits, float_arg, int_arg

INITS = ("subclone", "uniform", "random")
# The paper trains subcloned children with a low learning rate and small weight decay; random init wants more.
DEFAULT_LR = {"subclone": 1e-4, "uniform": 1e-4, "random": 1e-3}
DEFAULT_WEIGHT_DECAY = {"subclone": 0.01, "uniform": 0.01, "random": 0.1}


@dataclass
class TrainConfig:
    steps: int = 100
    lr: float | None = None  # None: DEFAULT_LR of the init
    weight_decay: float | None = None  # None: DEFAULT_WEIGHT_DECAY of the init
    warmup: float = 0.1  # fraction of steps
    batch_size: int = 8  # per process
    seq_len: int = 128
    distill: float = 0.0  # weight of KL(parent || child); needs the parent as teacher
    eval_every: int | None = None  # None: about ten evaluations per run
    eval_batches: int = 4
    clip: float = 1.0
    seed: int = 0
    mixed_precision: str | None = None  # "no", "fp16", "bf16" (GPUs); None: what the launcher says, else fp32

    def check(self, limits: Limits | None = None, max_positions: int | None = None) -> None:
        """Refuse settings that would fail late or save a broken model (NaN, inf, negative, out of bounds)."""
        limits = limits or Limits.local()
        int_arg(self.steps, "steps", 1, limits.max_steps)
        int_arg(self.batch_size, "batch size", 1, 65_536)
        int_arg(self.seq_len, "sequence length", 2, min(limits.max_seq_len, max_positions or limits.max_seq_len))
        int_arg(self.seed, "seed", 0, 2**32 - 1)
        if self.eval_every is not None:
            int_arg(self.eval_every, "eval every", 1, 10**9)
        int_arg(self.eval_batches, "eval batches", 1, 10**6)
        if self.lr is not None:
            float_arg(self.lr, "learning rate", 0, 1, lo_open=True)
        if self.weight_decay is not None:
            float_arg(self.weight_decay, "weight decay", 0, 10)
        float_arg(self.distill, "distillation weight", 0, 100)
        float_arg(self.warmup, "warm-up fraction", 0, 1)
        float_arg(self.clip, "gradient clipping", 0, 1e6, lo_open=True)
        if self.mixed_precision not in (None, "no", "fp16", "bf16"):
            raise SubcloneError(f"mixed precision '{self.mixed_precision}' is not one of no, fp16, bf16")


def _check_init(init: str) -> None:
    if init not in INITS:
        raise SubcloneError(f"unknown init '{init}'. Available: {', '.join(INITS)}")


def init_child(parent, importance, shape, init: str = "subclone", seed: int = 0, calibration=None,
               fitted: Callable | None = None, rotated=None, **plan_options):
    """(model, plan) for one initialization of a child shape; plan is None for random init. A plan with compensation
    is fitted on `calibration` (the calibration tokens), unless `fitted(plan)` gives its fits (a cache); a plan in
    principal directions is cut from `rotated`, when given (the parent rotated on those tokens), else rotated here."""
    from .clone import build
    from .parents import new_model
    from .plan import make_plan

    _check_init(init)
    if parent.family.kind != "causal-lm":
        raise SubcloneError(f"training needs a causal LM; '{parent.name}' is a {parent.family.kind}")
    if init == "random":
        config = parent.family.child_config(parent.config, shape, list(range(shape.layers)))
        return new_model(parent.family, config, seed=seed), None
    if init == "uniform":
        plan_options = dict(block_rule="first", neuron_rule="uniform", scale=False)
    plan = make_plan(parent, importance, shape, seed=seed, **plan_options)
    fits = fitted(plan) if fitted and plan.compensate != "none" else None
    source = rotated if rotated is not None and plan.basis != "dims" else parent
    return build(source, plan, calibration, fitted=fits), plan


def _param_groups(model, weight_decay: float):
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    rest = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]  # norms and biases
    return [dict(params=decay, weight_decay=weight_decay), dict(params=rest, weight_decay=0.0)]


@torch.no_grad()
def eval_loss(model, tokens: Tokens, batch_size: int, batches: int | None = None, device=None) -> float:
    """Mean next-token loss on held-out tokens (the same number on every process), in eval mode."""
    was = model.training
    model.eval()
    loss = mean_loss(model, tokens, batch_size, batches, device).item()
    model.train(was)
    return loss


def digest(model) -> str:
    """A checksum of the weights: equal on every process when data-parallel training kept them in sync."""
    h = hashlib.sha256()
    for name, p in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(p.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


class Run:
    """One training run that advances one optimizer step at a time, so several initializations can take turns
    (`compare_inits`) and a stop leaves each with a curve up to the same step."""

    def __init__(self, model, train_tokens: Tokens, eval_tokens: Tokens, config: TrainConfig, init: str = "subclone",
                 teacher=None, on_eval: Callable[[dict], None] | None = None):
        from accelerate import Accelerator
        from accelerate.utils import set_seed
        from transformers import get_cosine_schedule_with_warmup

        config.check()
        if config.distill > 0 and teacher is None:
            raise SubcloneError("distillation needs the parent as teacher")
        self.config, self.init, self.on_eval = config, init, on_eval
        self.lr = config.lr if config.lr is not None else DEFAULT_LR[init]
        self.wd = config.weight_decay if config.weight_decay is not None else DEFAULT_WEIGHT_DECAY[init]
        self.every = config.eval_every or max(1, config.steps // 10)
        self.eval_tokens = eval_tokens

        acc = self.acc = Accelerator(mixed_precision=config.mixed_precision, cpu=not torch.cuda.is_available())
        set_seed(config.seed)
        data = torch.utils.data.TensorDataset(train_tokens.ids)
        if len(data) < config.batch_size * acc.num_processes:
            raise SubcloneError(f"the training text has {len(data)} sequences of {train_tokens.ids.shape[1]} tokens, "
                                f"fewer than one batch ({config.batch_size} × {acc.num_processes} processes); give "
                                "more text or a smaller batch")
        loader = torch.utils.data.DataLoader(data, batch_size=config.batch_size, shuffle=True, drop_last=True,
                                             generator=torch.Generator().manual_seed(config.seed))
        model.train()
        optimizer = torch.optim.AdamW(_param_groups(model, self.wd), lr=self.lr, betas=(0.9, 0.95))
        # The schedule counts optimizer steps; it is not handed to accelerate, which would step it once per process.
        self.schedule = get_cosine_schedule_with_warmup(optimizer, int(config.warmup * config.steps), config.steps)
        self.model, self.optimizer, loader = acc.prepare(model, optimizer, loader)
        self.teacher = teacher.to(acc.device).eval() if teacher is not None else None
        self.batches = (b for _ in itertools.count() for (b,) in loader)  # epochs, reshuffled, as long as needed
        self.step, self.seen, self.seconds, self.stopped, self.running = 0, 0, 0.0, False, []
        self.history = []
        self._record(train_loss=None)

    @property
    def done(self) -> bool:
        return self.stopped or self.step >= self.config.steps

    def _record(self, train_loss) -> None:
        model = self.acc.unwrap_model(self.model)
        loss = eval_loss(model, self.eval_tokens, self.config.batch_size, self.config.eval_batches, self.acc.device)
        self.history.append(dict(step=self.step, train_loss=train_loss, eval_loss=round(loss, 4),
                                 lr=self.schedule.get_last_lr()[0] if self.step else 0.0))
        if self.on_eval:
            self.on_eval(self.history[-1])

    def _flush(self) -> None:
        """A held-out evaluation at the current step, with the mean training loss since the last one."""
        train_loss = self.acc.reduce(torch.stack(self.running).mean(), "mean").item()
        self.running = []
        self._record(round(train_loss, 4))

    def advance(self) -> None:
        """One optimizer step; a held-out evaluation every `eval_every` steps and at the last."""
        config, model, acc = self.config, self.model, self.acc
        t = time.perf_counter()
        batch = next(self.batches)
        with acc.autocast():
            out = model(input_ids=batch, labels=batch)
            loss = out.loss
            if config.distill > 0:
                with torch.no_grad():
                    target = self.teacher(input_ids=batch).logits.float().log_softmax(-1)
                student = out.logits.float().log_softmax(-1)
                kl = nnf.kl_div(student.flatten(0, 1), target.flatten(0, 1), log_target=True, reduction="batchmean")
                loss = loss + config.distill * kl
        acc.backward(loss)
        acc.clip_grad_norm_(model.parameters(), config.clip)
        self.optimizer.step()
        self.schedule.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.running.append(loss.detach())
        self.seen += batch.numel()
        self.step += 1
        if self.step % self.every == 0 or self.step == config.steps:
            self._flush()
        self.seconds += time.perf_counter() - t

    def stop(self) -> None:
        """End early, with a held-out evaluation at the step reached (once)."""
        if not self.done:
            if self.running:
                self._flush()
            self.stopped = True

    def finish(self) -> tuple[torch.nn.Module, dict]:
        """(the unwrapped model in eval mode, the result: history, settings and a per-process check)."""
        from accelerate.utils import gather_object

        self.acc.wait_for_everyone()
        model = self.acc.unwrap_model(self.model).eval()
        self.optimizer = self.batches = None  # the optimizer's state is the largest thing a run holds
        ranks = gather_object([dict(rank=self.acc.process_index, steps=self.step, tokens=self.seen,
                                    digest=digest(model))])
        final = self.history[-1]["eval_loss"]
        config = self.config
        result = dict(init=self.init, steps=self.step, stopped=self.stopped, eval_loss=final,
                      eval_perplexity=round(math.exp(final), 3), history=self.history, lr=self.lr,
                      weight_decay=self.wd, world_size=self.acc.num_processes, tokens_per_process=self.seen,
                      seconds=round(self.seconds, 2), in_sync=len({r["digest"] for r in ranks}) == 1, ranks=ranks,
                      config={k: v for k, v in asdict(config).items() if k not in ("lr", "weight_decay")})
        return model, result


def train(model, train_tokens: Tokens, eval_tokens: Tokens, config: TrainConfig, init: str = "subclone",
          teacher=None, on_eval: Callable[[dict], None] | None = None,
          should_stop: Callable[[], bool] | None = None) -> tuple[torch.nn.Module, dict]:
    """Train in place; returns (the unwrapped model, a result with the history and a per-process check)."""
    run = Run(model, train_tokens, eval_tokens, config, init, teacher, on_eval)
    while not run.done:
        run.advance()
        if should_stop and should_stop():
            run.stop()
    return run.finish()


def verdict(results: dict[str, dict]) -> str:
    """One line on which initialization trained best, said only when the runs can be compared: two or more,
    trained for the same number of steps."""
    if len(results) < 2:
        return f"only {', '.join(results) or 'nothing'} was trained: choose two initializations to compare them"
    steps = {r["steps"] for r in results.values()}
    if len(steps) > 1:
        done = ", ".join(f"{i} {r['steps']}" for i, r in results.items())
        return f"not comparable: the runs trained for different numbers of steps ({done})"
    ranked = sorted(results, key=lambda i: results[i]["eval_loss"])
    others = ", ".join(f"{i} {results[i]['eval_perplexity']:,.1f}" for i in ranked[1:])
    n = steps.pop()
    return (f"after {n} step{'s' * (n != 1)} each, **{ranked[0]}** has the lowest held-out perplexity "
            f"({results[ranked[0]]['eval_perplexity']:,.1f}; {others}; lower is better)")


def is_main_process() -> bool:
    from accelerate import PartialState

    return PartialState().is_main_process


def end_processes() -> None:
    """Wait for every process (rank 0 may still be saving), then close the process group, so that no rank exits
    while another still talks to it (a rank that leaves early can abort in gloo's teardown). No-op in one process."""
    from accelerate import PartialState

    state = PartialState()
    state.wait_for_everyone()
    state.destroy_process_group()


def text_tokens(parent, data, seq_len: int, eval_sequences: int = 32) -> tuple[Tokens, Tokens]:
    """(training, held-out) token chunks of `data` (a Text or a spec): the calibration split trains, the held-out
    split evaluates."""
    from .data import as_text

    text = as_text(data)
    return (parent.tokenize(text.calibration, seq_len, 10**9, "training"),
            parent.tokenize(text.held_out, seq_len, eval_sequences, "held-out evaluation"))


def compare_inits(parent, importance, shape, inits, config: TrainConfig, data: str = "builtin",
                  steps: dict | None = None, on_eval: Callable[[str, dict], None] | None = None,
                  should_stop: Callable[[], bool] | None = None, on_step: Callable[[str, int], None] | None = None,
                  fitted: Callable | None = None, rotated=None, **plan_options) -> dict:
    """Train each init of one child shape on equal terms: the same text, batches, schedule and seed, one step of
    each in turn (so their curves grow together and can be compared at any moment).

    steps may give some inits a different number of steps (the paper's comparison: random gets 4×). fitted(plan), when
    given, supplies a compensated plan's fits (a cache; None: fitted here); `rotated`, the parent in principal
    directions for a plan in them (see `init_child`).
    Returns {init: (model, plan, result)}. When should_stop says so, every run stops after the current round,
    evaluated at the step it reached: a curve for every init."""
    for init in inits:
        _check_init(init)
    if not inits:
        raise SubcloneError(f"choose at least one init: {', '.join(INITS)}")
    config.check()
    train_tokens, eval_tokens = text_tokens(parent, data, config.seq_len)
    calibration = None
    if plan_options.get("compensate", "none") != "none" or plan_options.get("basis", "dims") != "dims":
        from .compensate import windows

        calibration = windows(parent, data)
    runs = {}
    for init in inits:
        child, plan = init_child(parent, importance, shape, init, seed=config.seed, calibration=calibration,
                                 fitted=fitted, rotated=rotated, **plan_options)
        run = replace(config, steps=(steps or {}).get(init, config.steps))
        runs[init] = (Run(child, train_tokens, eval_tokens, run, init=init,
                          teacher=parent.model if run.distill > 0 else None,
                          on_eval=(lambda r, i=init: on_eval(i, r)) if on_eval else None), plan)
    while not all(r.done for r, _ in runs.values()):
        for init, (r, _) in runs.items():  # one step each, in turn: a stop finds every init at the same step
            if not r.done:
                r.advance()
                if on_step:
                    on_step(init, r.step)
        if should_stop and should_stop():
            for r, _ in runs.values():
                r.stop()
    out = {}
    for init, (r, plan) in runs.items():
        model, result = r.finish()
        out[init] = (model, plan, result)
    return out
