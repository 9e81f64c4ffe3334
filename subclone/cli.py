"""The command line: analyze, clone, train, eval. One JSON object on stdout; errors are one line and exit 2.

    python -m subclone analyze --parent smollm2-135m --out runs/analysis
    python -m subclone clone --parent smollm2-135m --layers 24 --hidden 504 --ffn 1280 --out runs/child
    python -m subclone train --parent smollm2-135m --layers 24 --hidden 504 --ffn 1280 --steps 200 --out runs/healed
    torchrun --nproc_per_node=8 -m subclone train ...      # the same training, data-parallel
    python -m subclone eval --model runs/child --json
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import warnings

from .errors import SubcloneError
from .limits import int_arg, text_arg
from .parents import BUILTIN, DEFAULT_PARENT
from .plan import DEFAULT_SCALE, PRESETS
from .train import INITS


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2, like every other bad input
        raise SubcloneError(f"{message} (see python -m subclone {self.prog.split()[-1]} --help)")


def _shape_flags(p):
    g = p.add_argument_group("child shape (left out: the parent's size)")
    for name in ("layers", "hidden", "ffn", "heads", "kv-heads"):
        g.add_argument(f"--{name}", type=int)
    p.add_argument("--preset", default="best", choices=list(PRESETS),
                   help="best: the strategy measured best on held-out text (block search, activation-weight score, "
                        "least-squares compensation); paper: Samragh et al.'s rules. The flags below override it")
    p.add_argument("--block-rule", help="search, magnitude (the paper), bi, angular, middle, first, or a block list "
                                        "like 0-11,18-29")
    p.add_argument("--neuron-rule", default="importance",
                   help="importance (the paper), uniform (weight selection), first, random")
    p.add_argument("--score", help="what ranks FFN neurons and heads: activation (the paper) or activation-weight")
    p.add_argument("--compensate", help="least-squares fits on calibration text: none (the paper), refit, depth, all")
    p.add_argument("--basis", help="the residual width is cut in: dims (the parent's own dimensions) or principal "
                                   "(the stream's principal directions on calibration text, Llama family; a tied "
                                   "parent's child stays tied)")
    p.add_argument("--no-scale", action="store_true", help="do not rescale sliced weights by sqrt(d/d')")
    p.add_argument("--seed", type=int, default=0, help="for the random neuron rule")
    p.add_argument("--fit-windows", type=int,
                   help="calibration windows of 256 tokens the least-squares fits use (default 32, a first Build under "
                        "a minute on 2 cores; 96 lower the held-out perplexity 1-9 %% at three times the fit time)")


def parser() -> argparse.ArgumentParser:
    top = _Parser(prog="python -m subclone", description="Make a smaller transformer by weight subcloning.")
    sub = top.add_subparsers(dest="command", required=True, parser_class=_Parser)
    data_help = "builtin (default), a .txt/.jsonl/.csv/.parquet file, or a datasets hub id"
    out_help = ("a new or empty directory, or one subclone wrote before (its files are overwritten): the child is "
                "saved there as a Hugging Face model with its tokenizer, subclone.json and a model card (README.md)")
    parent_help = (f"a bundled parent ({', '.join(BUILTIN)}; default {DEFAULT_PARENT}), a local Hugging Face model "
                   "directory (safetensors), or a hub id when online")

    a = sub.add_parser("analyze", help="measure which neurons, heads and blocks matter")
    a.add_argument("--parent", default=DEFAULT_PARENT, help=parent_help)
    a.add_argument("--data", default="builtin", help=data_help)
    a.add_argument("--out", help="also write importance.safetensors and analysis.json here")

    c = sub.add_parser("clone", help="build a child and save it as a Hugging Face model directory")
    c.add_argument("--parent", default=DEFAULT_PARENT, help=parent_help)
    c.add_argument("--data", default="builtin", help=data_help)
    _shape_flags(c)
    c.add_argument("--out", required=True, help=out_help)

    t = sub.add_parser("train", help="train a child (subcloned, uniform or random init) and save it; "
                                     "runs under torchrun / accelerate launch too")
    t.add_argument("--parent", default=DEFAULT_PARENT, help=parent_help)
    t.add_argument("--data", default="builtin", help=data_help + "; its first 80%% trains, the rest evaluates")
    _shape_flags(t)
    t.add_argument("--init", default="subclone", choices=INITS,
                   help="subclone (the paper), uniform (weight selection), random")
    t.add_argument("--steps", type=int, default=100)
    t.add_argument("--lr", type=float, help="default: 1e-4 for subclone / uniform, 1e-3 for random")
    t.add_argument("--weight-decay", type=float, help="default: 0.01 for subclone / uniform, 0.1 for random")
    t.add_argument("--batch-size", type=int, default=8, help="sequences per step and process")
    t.add_argument("--seq-len", type=int, default=128)
    t.add_argument("--distill", type=float, default=0.0, help="weight of KL(parent || child) on the logits")
    t.add_argument("--eval-every", type=int, help="default: about ten evaluations per run")
    t.add_argument("--mixed-precision", choices=["no", "fp16", "bf16"],
                   help="default: what accelerate launch says, else fp32 (fastest on CPUs)")
    t.add_argument("--out", required=True, help=out_help + " (the trained child)")
    t.add_argument("--json", action="store_true", help="print one JSON object (the default output too)")

    e = sub.add_parser("eval", help="evaluate a saved child against its parent")
    e.add_argument("--model", required=True, help="a directory written by clone")
    e.add_argument("--parent", help="default: the parent named in the model's subclone.json")
    e.add_argument("--data", default="builtin", help=data_help)
    e.add_argument("--json", action="store_true", help="print one JSON object (the default output too)")
    e.add_argument("--no-speed", action="store_true", help="skip the latency measurement")
    return top


def _analysis_summary(parent, imp) -> dict:
    order = imp.magnitude.argsort().tolist()
    return dict(imp.meta, parent=parent.name, family=parent.family.name, shape=parent.shape.to_dict(),
                blocks_closest_to_identity=order[: max(1, len(order) // 4)],
                layer_consistency=round(imp.layer_consistency().mean().item(), 3))


def _workspace(args=None):
    from dataclasses import replace

    from .limits import Limits
    from .workspace import Workspace

    limits = Limits.local()
    if getattr(args, "fit_windows", None) is not None:
        limits = replace(limits, fit_windows=int_arg(args.fit_windows, "--fit-windows", 1, 100_000))
    return Workspace(limits)


def _design(ws, args):
    from .workspace import Design

    chosen = {**PRESETS[args.preset], **{k: v for k, v in (("block_rule", args.block_rule), ("score", args.score),
                                                            ("compensate", args.compensate), ("basis", args.basis))
                                                if v is not None}}
    return Design.of(ws.limits, args.parent, args.data, args.layers, args.hidden, args.ffn, args.heads, args.kv_heads,
                     chosen["block_rule"], args.neuron_rule, () if args.no_scale else tuple(k for k, on in
                                                                                            DEFAULT_SCALE.items() if on),
                     chosen["score"], chosen["compensate"], chosen["basis"])


def cmd_analyze(args) -> dict:
    from .export import check_writable

    ws = _workspace()
    if args.out:
        check_writable(args.out)
    parent = ws.parent(args.parent)
    imp = ws.importance(parent, ws.text(args.data), compute=True)
    summary = _analysis_summary(parent, imp)
    if args.out:
        from pathlib import Path

        imp.save(Path(args.out) / "importance.safetensors")
        (Path(args.out) / "analysis.json").write_text(json.dumps(summary, indent=1))
    return summary


def _stderr_progress(fraction: float, message: str) -> None:
    """On a terminal, long steps (analysis, the block search, the fits) say what they do on stderr; stdout stays one
    JSON result."""
    if sys.stderr.isatty():
        print(f"[{fraction:4.0%}] {message}", file=sys.stderr, flush=True)


def cmd_clone(args) -> dict:
    from dataclasses import replace

    from . import make_plan, resolve_shape
    from .export import check_writable, fit_record, model_card, write

    ws = _workspace(args)
    design = _design(ws, args)
    int_arg(args.seed, "seed", 0, 2**32 - 1)
    check_writable(args.out)
    parent = ws.parent(design.parent)
    check_writable(args.out, protect=[parent.source])
    resolve_shape(parent.family, parent.shape, layers=args.layers, hidden=args.hidden, ffn=args.ffn,
                  heads=args.heads, kv_heads=args.kv_heads)  # the CLI refuses a shape instead of snapping it
    d = ws.design(design, compute=True, progress=_stderr_progress)
    if args.seed and design.neuron_rule == "random":
        d = replace(d, plan=make_plan(parent, d.importance, d.shape, block_rule=design.block_rule,
                                      neuron_rule=design.neuron_rule, scale=design.scale_choice, seed=args.seed,
                                      score=design.score, compensate=design.compensate, basis=d.plan.basis))
    plan, text = d.plan, d.text
    child = ws.child(d, progress=_stderr_progress)
    card = model_card(parent, child, plan, text, fit_windows=ws.limits.fit_windows)
    write(child, parent.tokenizer, plan, args.out, card,
          extra=dict(data=text.name, **fit_record(plan, ws.limits.fit_windows),
                     parent_params=parent.model.num_parameters()),
          protect=[parent.source])
    return dict(out=args.out, parent=parent.name, shape=plan.shape.to_dict(), layers=plan.layers,
                params=plan.params, parent_params=parent.model.num_parameters(),
                flops_per_token=plan.flops_per_token, block_rule=plan.block_rule, neuron_rule=plan.neuron_rule,
                scale=plan.scale, score=plan.score, compensate=plan.compensate, basis=plan.basis)


def cmd_eval(args) -> dict:
    from pathlib import Path

    import torch
    from transformers import AutoConfig

    from .arch import family_for
    from .evaluate import evaluate, held_out, reference
    from .export import read_plan
    from .parents import auto_class, _check_no_remote_code, _check_safetensors

    ws = _workspace()
    model_dir = Path(text_arg(args.model, "--model", 4096))
    if not (model_dir / "config.json").exists():
        raise SubcloneError(f"'{args.model}' is not a model directory (no config.json); give a directory written by clone")
    _check_no_remote_code(model_dir, args.model)
    _check_safetensors(model_dir, args.model)
    try:
        record = read_plan(model_dir) or {}
    except ValueError:
        raise SubcloneError(f"'{args.model}': subclone.json is not valid JSON") from None
    parent_name = args.parent or record.get("parent")
    if not parent_name or not isinstance(parent_name, str):
        raise SubcloneError(f"'{args.model}' has no subclone.json naming its parent; give --parent")
    family = family_for(AutoConfig.from_pretrained(model_dir))
    try:
        child = auto_class(family).from_pretrained(model_dir, dtype=torch.float32, use_safetensors=True).eval()
    except (OSError, ValueError) as e:
        raise SubcloneError(f"cannot load '{args.model}': {str(e).splitlines()[0][:200]}") from None
    parent = ws.parent(parent_name)
    if parent.family.kind != family.kind:
        raise SubcloneError(f"the child is a {family.name} model but parent '{parent_name}' is {parent.family.name}")
    ref = reference(parent.model, held_out(parent, ws.text(args.data)), family.kind, speed=False)
    residual = record.get("residual")
    result = evaluate(child, ref, residual=residual if isinstance(residual, list) else None, speed=not args.no_speed,
                      parent_model=parent.model)
    return dict(model=str(model_dir), parent=parent.name, **result)


def cmd_train(args) -> dict | None:
    from . import resolve_shape
    from .export import check_writable, fit_record, model_card, write
    from .train import TrainConfig, end_processes, init_child, is_main_process, text_tokens, train
    from .workspace import max_positions

    ws = _workspace(args)
    design = _design(ws, args)
    config = TrainConfig(steps=args.steps, lr=args.lr, weight_decay=args.weight_decay, batch_size=args.batch_size,
                         seq_len=args.seq_len, distill=args.distill, eval_every=args.eval_every, seed=args.seed,
                         mixed_precision=args.mixed_precision)
    config.check(ws.limits)
    check_writable(args.out)
    parent = ws.parent(design.parent)
    config.check(ws.limits, max_positions(parent))
    check_writable(args.out, protect=[parent.source])
    shape = resolve_shape(parent.family, parent.shape, layers=args.layers, hidden=args.hidden, ffn=args.ffn,
                          heads=args.heads, kv_heads=args.kv_heads)
    text = ws.text(design.data)
    imp, rules = None, dict(block_rule=design.block_rule, neuron_rule=design.neuron_rule,
                            scale=design.scale_choice, score=design.score, compensate=design.compensate,
                            basis=design.basis)
    starts = {}
    if args.init != "random":  # runs the search, whose span check also fits a subcloned child in its pass
        d = ws.design(design, compute=True, progress=_stderr_progress, plan=args.init == "subclone")
        imp = d.importance
        if args.init == "subclone":  # the child clone and Heal build, from the same cached parent and fits
            starts = ws.starts(d, _stderr_progress)
    child, plan = init_child(parent, imp, shape, args.init, seed=args.seed, **rules, **starts)
    train_tokens, eval_tokens = text_tokens(parent, text, args.seq_len)
    child, result = train(child, train_tokens, eval_tokens, config, init=args.init,
                          teacher=parent.model if args.distill > 0 else None)
    try:
        if not is_main_process():
            return None  # rank 0 saves and reports
        record = dict(parent=parent.name, data=text.name, **fit_record(plan, ws.limits.fit_windows), **result)
        write(child, parent.tokenizer, plan, args.out, model_card(parent, child, plan, text, training=record,
                                                              fit_windows=ws.limits.fit_windows),
              training=record, protect=[parent.source])
        return dict(out=args.out, parent=parent.name, shape=shape.to_dict(), params=child.num_parameters(), **result)
    finally:
        end_processes()


COMMANDS = {"analyze": cmd_analyze, "clone": cmd_clone, "train": cmd_train, "eval": cmd_eval}


def main(argv=None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.getLogger("transformers").setLevel(logging.ERROR)
    import transformers

    transformers.utils.logging.disable_progress_bar()
    warnings.filterwarnings("ignore")
    try:
        args = parser().parse_args(argv)
        result = COMMANDS[args.command](args)
    except SubcloneError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # a bug, not bad input: still one line, with the traceback on request
        if os.environ.get("SUBCLONE_DEBUG"):
            raise
        print(f"error: unexpected {type(e).__name__}: {str(e)[:200]} (SUBCLONE_DEBUG=1 shows the traceback)",
              file=sys.stderr)
        return 1
    if result is not None:
        print(json.dumps(result))
    return 0
