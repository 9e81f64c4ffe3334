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


def init_child(parent, importance, shape, init: str = "subclone", seed: int = 0, calibration=None, **plan_options):
    """(model, plan) for one initialization of a child shape; plan is None for random init. A plan with compensation
    is fitted on `calibration` (the calibration tokens)."""
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
    return build(parent, plan, calibration), plan


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


def train(model, train_tokens: Tokens, eval_tokens: Tokens, config: TrainConfig, init: str = "subclone",
          teacher=None, on_eval: Callable[[dict], None] | None = None,
          should_stop: Callable[[], bool] | None = None) -> tuple[torch.nn.Module, dict]:
    """Train in place; returns (the unwrapped model, a result with the history and a per-process check)."""
    from accelerate import Accelerator
    from accelerate.utils import gather_object, set_seed
    from transformers import get_cosine_schedule_with_warmup

    config.check()
    if config.distill > 0 and teacher is None:
        raise SubcloneError("distillation needs the parent as teacher")
    lr = config.lr if config.lr is not None else DEFAULT_LR[init]
    wd = config.weight_decay if config.weight_decay is not None else DEFAULT_WEIGHT_DECAY[init]
    every = config.eval_every or max(1, config.steps // 10)

    acc = Accelerator(mixed_precision=config.mixed_precision, cpu=not torch.cuda.is_available())
    set_seed(config.seed)
    data = torch.utils.data.TensorDataset(train_tokens.ids)
    if len(data) < config.batch_size * acc.num_processes:
        raise SubcloneError(f"the training text has {len(data)} sequences of {train_tokens.ids.shape[1]} tokens, fewer "
                            f"than one batch ({config.batch_size} × {acc.num_processes} processes); give more text or "
                            "a smaller batch")
    loader = torch.utils.data.DataLoader(data, batch_size=config.batch_size, shuffle=True, drop_last=True,
                                         generator=torch.Generator().manual_seed(config.seed))
    model.train()
    optimizer = torch.optim.AdamW(_param_groups(model, wd), lr=lr, betas=(0.9, 0.95))
    # The schedule counts optimizer steps; it is not handed to accelerate, which would step it once per process.
    schedule = get_cosine_schedule_with_warmup(optimizer, int(config.warmup * config.steps), config.steps)
    model, optimizer, loader = acc.prepare(model, optimizer, loader)
    if teacher is not None:
        teacher = teacher.to(acc.device).eval()

    def evaluate_now():
        return eval_loss(acc.unwrap_model(model), eval_tokens, config.batch_size, config.eval_batches, acc.device)

    history = [dict(step=0, train_loss=None, eval_loss=round(evaluate_now(), 4), lr=0.0)]
    if on_eval:
        on_eval(history[-1])
    batches = (b for _ in itertools.count() for (b,) in loader)  # epochs, reshuffled, as long as needed
    t0, running, seen, step, stopped = time.perf_counter(), [], 0, 0, False
    for step in range(1, config.steps + 1):
        batch = next(batches)
        with acc.autocast():
            out = model(input_ids=batch, labels=batch)
            loss = out.loss
            if config.distill > 0:
                with torch.no_grad():
                    target = teacher(input_ids=batch).logits.float().log_softmax(-1)
                student = out.logits.float().log_softmax(-1)
                kl = nnf.kl_div(student.flatten(0, 1), target.flatten(0, 1), log_target=True, reduction="batchmean")
                loss = loss + config.distill * kl
        acc.backward(loss)
        acc.clip_grad_norm_(model.parameters(), config.clip)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        running.append(loss.detach())
        seen += batch.numel()
        stopped = bool(should_stop and should_stop())
        if step % every == 0 or step == config.steps or stopped:
            train_loss = acc.reduce(torch.stack(running).mean(), "mean").item()
            running = []
            history.append(dict(step=step, train_loss=round(train_loss, 4), eval_loss=round(evaluate_now(), 4),
                                lr=schedule.get_last_lr()[0]))
            if on_eval:
                on_eval(history[-1])
        if stopped:
            break

    acc.wait_for_everyone()
    model = acc.unwrap_model(model).eval()
    ranks = gather_object([dict(rank=acc.process_index, steps=step, tokens=seen, digest=digest(model))])
    final = history[-1]["eval_loss"]
    result = dict(init=init, steps=step, stopped=stopped, eval_loss=final, eval_perplexity=round(math.exp(final), 3),
                  history=history, lr=lr, weight_decay=wd, world_size=acc.num_processes,
                  tokens_per_process=seen, seconds=round(time.perf_counter() - t0, 2),
                  in_sync=len({r["digest"] for r in ranks}) == 1, ranks=ranks,
                  config={k: v for k, v in asdict(config).items() if k not in ("lr", "weight_decay")})
    return model, result


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
                  should_stop: Callable[[], bool] | None = None, **plan_options) -> dict:
    """Train each init of one child shape on equal terms: the same text, batches, schedule and seed.

    steps may give some inits a different number of steps (the paper's comparison: random gets 4×).
    Returns {init: (model, plan, result)}; stops early, keeping what finished, when should_stop says so."""
    for init in inits:
        _check_init(init)
    if not inits:
        raise SubcloneError(f"choose at least one init: {', '.join(INITS)}")
    config.check()
    train_tokens, eval_tokens = text_tokens(parent, data, config.seq_len)
    calibration = None
    if plan_options.get("compensate", "none") != "none":
        from .importance import calibration as calibration_windows

        calibration = calibration_windows(parent, data)
    out = {}
    for init in inits:
        child, plan = init_child(parent, importance, shape, init, seed=config.seed, calibration=calibration,
                                 **plan_options)
        run = replace(config, steps=(steps or {}).get(init, config.steps))
        child, result = train(child, train_tokens, eval_tokens, run, init=init,
                              teacher=parent.model if run.distill > 0 else None,
                              on_eval=(lambda r, i=init: on_eval(i, r)) if on_eval else None, should_stop=should_stop)
        out[init] = (child, plan, result)
        if result["stopped"]:
            break
    return out
