"""subclone: make a smaller transformer from a larger pretrained one by weight subcloning.

    parent = load_parent("smollm2-135m")          # parents.py
    imp = analyze(parent, data="builtin")          # importance.py
    shape = resolve_shape(parent.family, parent.shape, layers=24, hidden=504, ffn=1280)
    plan = make_plan(parent, imp, shape)           # plan.py
    child = build(parent, plan)                    # clone.py
    ref = reference(parent.model, held_out(parent), parent.family.kind)
    print(evaluate(child, ref, plan.residual))   # evaluate.py

What an app or a CLI run holds (shared parents and measurements, per-session children, jobs and files, all
bounded by `Limits`) is a `Workspace` (workspace.py); every request to it is a `Design`.
"""
from .errors import SubcloneError
from .parents import load_parent
from .importance import Importance, analyze
from .plan import Plan, make_plan, resolve_shape, valid_values
from .clone import build
from .evaluate import evaluate, held_out, reference
from .limits import Limits
from .workspace import Design, Workspace

__all__ = ["SubcloneError", "load_parent", "Importance", "analyze", "Plan", "make_plan", "resolve_shape",
           "valid_values", "build", "evaluate", "held_out", "reference", "Limits", "Design", "Workspace"]
