"""What a running app (or one CLI run) holds, in one place, bounded: the step between the UI and the library.

A `Workspace` (one per process) keeps what is slow and shared, keyed by normalized names so that " builtin" and
"builtin" are one entry:
- parents and their evaluations (`Reference`, ~400 MB for SmolLM2): least recently used dropped first once they
  take more than `Limits.memory_mb`;
- importance records and drop-one scores (small; importance is also cached on disk);
- texts (a spec -> `Text`, the one definition of the calibration / held-out split).

A `Session` (one per browser tab or API client) keeps its own work: uploads, the last built child, metrics and
history, trained children, exports in its own folder, and its running jobs. `end()` (the tab closed, the client
went away) or `session_ttl_s` of idleness stops its jobs and deletes its files. Every request is a `Design` (one
value) checked against the limits before anything is allocated; bad input raises `SubcloneError`.
"""
from __future__ import annotations

import contextlib
import queue
import shutil
import tempfile
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterator

from . import export
from .clone import build
from .data import TEXT_SUFFIXES, Text, load, read_file
from .errors import SubcloneError, shown
from .evaluate import Reference, evaluate, generate, held_out, paired_speed, reference, similarities
from .importance import Importance, analyze, drop_one
from .limits import Limits, float_arg, int_arg, release_memory, text_arg
from .parents import BUILTIN, DEFAULT_PARENT, Parent, load_parent
from .compensate import COMPENSATE, fit, measure, windows
from .rotate import BASES, rotated
from .rotate import applies as rotate_applies
from .importance import cache_path
from .plan import (NEURON_RULES, PRESETS, SCALE_GROUPS, SCORES, Plan, check_block_rule, choose_layers, describe,
                   make_plan, measures_heads, snap_shape)
from .search import Final, extend, order_heads, searched
from .sweep import children, grid, parse_list, plans, table
from .train import INITS, TrainConfig, compare_inits

Progress = Callable[[float, str], None]
UPLOAD = "upload:"
KEEP_EXPORTS = 2  # per session: older archives are deleted when a new one is written
KEEP_HISTORY = 200
TRAIN_BYTES_PER_PARAM = 16  # fp32 weights, gradients and AdamW's two moments, per initialization trained


class Cancelled(SubcloneError):
    """A job was stopped: by its Stop button, or because its session ended."""


@dataclass(frozen=True)
class Design:
    """One request for a child: the parent, the text, the target sizes, and the rules. Checked on creation."""

    parent: str = DEFAULT_PARENT
    data: str = "builtin"
    layers: int | None = None  # None: the parent's
    hidden: int | None = None
    ffn: int | None = None
    heads: int | None = None
    kv_heads: int | None = None
    block_rule: str = PRESETS["best"]["block_rule"]
    neuron_rule: str = "importance"
    scale: tuple[str, ...] = ("residual", "embed")
    score: str = PRESETS["best"]["score"]
    compensate: str = PRESETS["best"]["compensate"]
    basis: str = PRESETS["best"]["basis"]

    @classmethod
    def of(cls, limits: Limits, parent, data, layers=None, hidden=None, ffn=None, heads=None, kv_heads=None,
           block_rule=PRESETS["best"]["block_rule"], neuron_rule="importance", scale=("residual", "embed"),
           score=PRESETS["best"]["score"], compensate=PRESETS["best"]["compensate"],
           basis=PRESETS["best"]["basis"]) -> "Design":
        """A Design from untrusted values (widgets, API calls): anything odd is a clear error, not a traceback."""
        # only the type and a sanity bound here: the shape rules (and their nearest valid values) come later
        size = lambda v, what: None if v is None else int_arg(v, what, 0, 10**6)  # noqa: E731
        if isinstance(scale, str):
            scale = [scale]
        if scale is not None and not isinstance(scale, (list, tuple)):
            raise SubcloneError(f"scale must be a list of groups ({', '.join(SCALE_GROUPS)})")
        for g in scale or ():
            if g not in SCALE_GROUPS:
                raise SubcloneError(f"unknown scaling group '{shown(g)}'. Available: {', '.join(SCALE_GROUPS)}")
        neuron_rule = text_arg(neuron_rule, "the neuron rule", limits.max_spec_chars)
        if neuron_rule not in NEURON_RULES:
            raise SubcloneError(f"unknown neuron rule '{shown(neuron_rule)}'. Available: {', '.join(NEURON_RULES)}")
        score = text_arg(score or "activation", "the neuron score", limits.max_spec_chars)
        if score not in SCORES:
            raise SubcloneError(f"unknown neuron score '{shown(score)}'. Available: {', '.join(SCORES)}")
        compensate = text_arg(compensate or "none", "the compensation", limits.max_spec_chars)
        if compensate not in COMPENSATE:
            raise SubcloneError(f"unknown compensation '{shown(compensate)}'. Available: {', '.join(COMPENSATE)}")
        basis = text_arg(basis or "dims", "the residual basis", limits.max_spec_chars)
        if basis not in BASES:
            raise SubcloneError(f"unknown residual basis '{shown(basis)}'. Available: {', '.join(BASES)}")
        return cls(parent=text_arg(parent, "the parent", limits.max_spec_chars),
                   data=text_arg(data or "builtin", "the data spec", limits.max_spec_chars),
                   layers=size(layers, "layers"), hidden=size(hidden, "hidden"), ffn=size(ffn, "ffn"),
                   heads=size(heads, "heads"), kv_heads=size(kv_heads, "kv heads"),
                   block_rule=text_arg(block_rule, "the block rule", limits.max_spec_chars),
                   neuron_rule=neuron_rule, scale=tuple(g for g in SCALE_GROUPS if g in (scale or ())), score=score,
                   compensate=compensate, basis=basis)

    @property
    def scale_choice(self) -> dict:
        return {g: g in self.scale for g in SCALE_GROUPS}


@dataclass
class Designed:
    """A Design made concrete: the parent, the text, the snapped shape and (once importance exists) the plan."""

    parent: Parent
    text: Text
    shape: object
    notes: list[str]
    importance: Importance | None
    plan: Plan | None
    key: tuple  # identifies the child: the same key, the same weights


@dataclass(eq=False)  # each job is itself: hashable by identity
class Job:
    """A long piece of work (build, sweep, drop-one, training) that its session can stop."""

    name: str
    stop: threading.Event = field(default_factory=threading.Event)

    def check(self) -> None:
        if self.stop.is_set():
            raise Cancelled(f"{self.name} was stopped")


@dataclass
class Pace:
    """Training steps done out of the total, and the time left at the rate of the steps timed so far (from the end
    of the first step: building the children and the first evaluations are not a step's cost)."""

    total: int
    started: float = field(default_factory=time.monotonic)
    first: float | None = None
    last: float | None = None
    doing: str = ""  # what runs before the first step: the search, the fits, the children's first evaluation
    reached: dict = field(default_factory=dict)  # init -> the last step it has done

    @property
    def done(self) -> int:
        return sum(self.reached.values())

    def say(self, _fraction: float, message: str) -> None:
        self.doing = message

    def step(self, init: str, n: int) -> None:
        """Step n of init is done: counted once, whether its evaluation or its end reports it first."""
        if n > self.reached.get(init, 0):
            self.last = time.monotonic()
            self.first = self.first or self.last
            self.reached[init] = n

    def view(self) -> dict:
        eta = None
        if self.done >= 2:
            eta = round((self.last - self.first) / (self.done - 1) * (self.total - self.done))
        return dict(seconds=round(time.monotonic() - self.started), steps=self.done, total=self.total, eta=eta,
                    doing=self.doing)


@dataclass
class Session:
    id: str
    folder: Path  # this session's exports and CSVs, deleted with it
    seen: float = field(default_factory=time.monotonic)
    uploads: dict = field(default_factory=dict)  # spec -> Text
    history: list = field(default_factory=list)  # one row per child built
    metrics: OrderedDict = field(default_factory=OrderedDict)  # Designed.key -> metrics
    built: tuple | None = None  # (parent key, child, plan) of the last child built or trained
    healed: dict = field(default_factory=dict)  # init -> (child, plan, result, metrics, parent key, text)
    jobs: set = field(default_factory=set)
    ended: bool = False

    @contextlib.contextmanager
    def job(self, name: str) -> Iterator[Job]:
        if self.ended:
            raise Cancelled("this session has ended; reload the page")
        job = Job(name)
        self.jobs.add(job)
        try:
            yield job
        finally:
            self.jobs.discard(job)
            release_memory()  # what the job freed, back to the system (see limits.bound_allocator)

    def stop_jobs(self) -> int:
        jobs = list(self.jobs)
        for j in jobs:
            j.stop.set()
        return len(jobs)

    def files(self, pattern: str) -> list[Path]:
        return sorted(self.folder.glob(pattern), key=lambda p: p.stat().st_mtime)


def _nbytes(obj) -> int:
    import torch

    if isinstance(obj, Parent):
        return _nbytes(obj.model)
    if isinstance(obj, torch.nn.Module):
        return sum(p.numel() * p.element_size() for p in {id(p): p for p in obj.parameters()}.values())
    if isinstance(obj, Reference):
        tensors = [*(t.p for t in obj.target or []), *(obj.top1 or []),
                   *([obj.pooled] if obj.pooled is not None else [])]
        return sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor))
    if isinstance(obj, dict):  # compensation fits or their statistics: {key: tensor}, a tensor may serve two keys
        tensors = {id(t): t for t in obj.values() if isinstance(t, torch.Tensor)}
        return sum(t.numel() * t.element_size() for t in tensors.values())
    if isinstance(obj, Session):  # the children it holds (the current one is often also a trained one)
        models = [s.built[1]] if (s := obj).built else []
        models += [h[0] for h in s.healed.values()]
        return sum(_nbytes(m) for m in {id(m): m for m in models}.values())
    return 0


def _progress(job: Job, progress: Progress | None) -> Progress:
    """A progress callback that also ends the work when the job is stopped."""
    def report(fraction: float, message: str) -> None:
        job.check()
        if progress:
            progress(fraction, message)
    return report


class Workspace:
    def __init__(self, limits: Limits | None = None, folder: Path | str | None = None):
        self.limits = limits or Limits.space()
        self.folder = Path(folder) if folder else Path(tempfile.mkdtemp(prefix="subclone-sessions-"))
        self.folder.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._heavy: OrderedDict = OrderedDict()  # key -> (value, bytes): parents and references
        self._small: OrderedDict = OrderedDict()  # key -> value: importance, drop-one scores, texts
        self._making: dict = {}  # key -> Lock: one thread makes an entry, the others wait for it
        self._passes: dict = {}  # (parent, text) -> Lock: one calibration pass at a time (`_measuring`)
        self._child_seconds: dict = {}  # (parent, fitted) -> seconds the last sweep child took: the next estimate
        self._sessions: dict[str, Session] = {}

    # ---- shared, bounded caches -------------------------------------------------------------------

    def _once(self, key, make: Callable, heavy: bool):
        with self._lock:
            table = self._heavy if heavy else self._small
            if key in table:
                table.move_to_end(key)
                return table[key][0] if heavy else table[key]
            lock = self._making.setdefault(key, threading.Lock())
        with lock:
            try:
                with self._lock:
                    table = self._heavy if heavy else self._small
                    if key in table:
                        return table[key][0] if heavy else table[key]
                value = make()
                with self._lock:
                    if heavy:
                        self._heavy[key] = (value, _nbytes(value))
                        self._evict(keep=key)
                    else:
                        self._remember(key, value)
                return value
            finally:
                with self._lock:
                    self._making.pop(key, None)  # made or failed: no lock is left behind for this key

    def _remember(self, key, value) -> None:
        """A small shared entry (importance, drop-one scores, a text): the 64 most recently made are kept."""
        with self._lock:
            self._small[key] = value
            while len(self._small) > 64:
                self._small.popitem(last=False)

    def _evict(self, keep=None, keep_session: Session | None = None) -> None:
        """Back under Limits.memory_mb: first the children of the sessions seen longest ago (they can build
        again), then the least recently used parents and evaluations (they can load again)."""
        bound = self.limits.memory_mb * 2**20
        with self._lock:
            used = self.memory_bytes  # counted once, then kept up to date as entries go
            for s in sorted(self._sessions.values(), key=lambda s: s.seen):
                if used <= bound:
                    return
                if s is not keep_session:
                    used -= _nbytes(s)
                    s.built, s.healed = None, {}
            while used > bound and len(self._heavy) > 1:
                oldest = next(k for k in self._heavy if k != keep)
                used -= self._heavy.pop(oldest)[1]

    @property
    def memory_bytes(self) -> int:
        """What shared parents, parent evaluations and the sessions' children take (bounded by memory_mb)."""
        with self._lock:
            return sum(size for _, size in self._heavy.values()) + sum(map(_nbytes, self._sessions.values()))

    def cached(self) -> list:
        """The keys of the shared entries, least recently used first (for tests and the operator)."""
        with self._lock:
            return [*self._heavy, *self._small]

    def parent_key(self, name: str) -> str:
        name = text_arg(name, "the parent", self.limits.max_spec_chars)
        return name.lower() if name.lower() in BUILTIN else name

    def parent(self, name: str) -> Parent:
        key = self.parent_key(name)
        return self._once(("parent", key), lambda: load_parent(key, self.limits), heavy=True)

    def text(self, spec: str, session: Session | None = None) -> Text:
        spec = text_arg(spec or "builtin", "the data spec", self.limits.max_spec_chars)
        if spec.startswith(UPLOAD):
            if session is None or spec not in session.uploads:
                raise SubcloneError(f"'{shown(spec)}' is not an upload of this session: upload the file again "
                                    "(uploads are kept only while the page is open)")
            return session.uploads[spec]
        key = spec.lower() if spec.lower() == "builtin" else spec
        return self._once(("text", key), lambda: load(key, self.limits), heavy=False)

    def importance(self, parent: Parent, text: Text, compute: bool = False,
                   progress: Progress | None = None) -> Importance | None:
        """From memory, else from the disk cache; measured only when compute."""
        key = ("importance", parent.fingerprint, text.digest)
        with self._lock:
            if key in self._small:
                return self._small[key]
        imp = analyze(parent, text, progress=progress, cached_only=not compute)
        if imp is not None:  # a miss (None) is not remembered: Analyze may measure it later
            self._remember(key, imp)
        return imp

    def reference(self, parent: Parent, text: Text) -> Reference:
        """The parent's evaluation on the held-out split, once per (parent, text)."""
        return self._once(("reference", parent.fingerprint, text.digest),
                          lambda: reference(parent.model, held_out(parent, text), parent.family.kind, speed=False),
                          heavy=True)  # speed is timed next to each child instead (evaluate.paired_speed)

    def has_reference(self, parent: Parent, text: Text) -> bool:
        with self._lock:
            return ("reference", parent.fingerprint, text.digest) in self._heavy

    def drop_scores(self, parent: Parent, text: Text, compute: bool = False, progress: Progress | None = None):
        key = ("drop-one", parent.fingerprint, text.digest)
        with self._lock:
            if key in self._small or not compute:
                return self._small.get(key)
        return self._once(key, lambda: drop_one(parent, held_out(parent, text, seq_len=128, samples=4),
                                                progress=progress), heavy=False)

    # ---- sessions ---------------------------------------------------------------------------------

    def session(self, session_id: str | None) -> Session:
        """This client's session (made on first use); ends the sessions idle past their time-to-live."""
        sid = str(session_id or "local")[:128]
        self.expire()
        with self._lock:
            s = self._sessions.get(sid)
            if s is None:
                folder = self.folder / "".join(c if c.isalnum() else "_" for c in sid)
                folder.mkdir(parents=True, exist_ok=True)
                s = self._sessions[sid] = Session(sid, folder)
            s.seen = time.monotonic()
            return s

    def end(self, session_id: str | None) -> None:
        """The client went away: stop its jobs, forget its children, delete its files."""
        with self._lock:
            s = self._sessions.pop(str(session_id or "local")[:128], None)
        if s is not None:
            s.ended = True
            s.stop_jobs()
            s.built, s.healed, s.uploads = None, {}, {}
            s.metrics.clear()
            shutil.rmtree(s.folder, ignore_errors=True)

    def expire(self, now: float | None = None) -> list[str]:
        now = time.monotonic() if now is None else now
        with self._lock:
            old = [sid for sid, s in self._sessions.items() if now - s.seen > self.limits.session_ttl_s]
        for sid in old:
            self.end(sid)
        return old

    def sessions(self) -> list[str]:
        with self._lock:
            return list(self._sessions)

    def stop(self, session_id: str | None) -> int:
        """Stop this session's running jobs (the Stop button); returns how many were running."""
        with self._lock:
            s = self._sessions.get(str(session_id or "local")[:128])
        return s.stop_jobs() if s else 0

    def upload(self, session_id: str | None, path, filename: str | None = None) -> str:
        """Read an uploaded text file (bounded) into the session; returns the data spec that names it."""
        s = self.session(session_id)
        path = Path(path)
        name = Path(filename or path.name).name[:80] or "upload.txt"
        if not name.lower().endswith(TEXT_SUFFIXES):
            raise SubcloneError(f"upload '{name}' is not a text file: use {', '.join(TEXT_SUFFIXES)}")
        size = path.stat().st_size
        if size > self.limits.max_upload_mb * 2**20:
            raise SubcloneError(f"upload '{name}' is {size / 2**20:.1f} MB; at most {self.limits.max_upload_mb:g} MB")
        text = read_file(path, self.limits.max_text_chars, name)
        spec = f"{UPLOAD}{name}"
        s.uploads[spec] = Text(spec, text)
        return spec

    # ---- the steps, as the app and the CLI call them ----------------------------------------------

    def design(self, design: Design, session: Session | None = None, compute: bool = False,
               progress: Progress | None = None, plan: bool = True) -> Designed:
        """Parent, text, snapped shape, and (with plan) the plan when importance exists (measured only when
        compute)."""
        text = self.text(design.data, session)  # first: a refused spec costs nothing
        parent = self.parent(design.parent)
        given = {k: getattr(design, k) for k in ("layers", "hidden", "ffn", "heads", "kv_heads")}
        sizes = {k: getattr(parent.shape, k) if v is None else v for k, v in given.items()}
        shape, notes = snap_shape(parent.family, parent.shape, **sizes)
        design = self._for_family(design, parent, notes, shape.hidden < parent.shape.hidden)
        check_block_rule(design.block_rule, parent.shape.layers)  # before anything is measured
        imp = self.importance(parent, text, compute=compute, progress=progress)
        blocks = imp is not None and design.block_rule == "search" and not searched(imp, shape.layers)
        heads = imp is not None and measures_heads(design.score, design.compensate) and \
            shape.heads < parent.shape.heads and imp.heads_order is None
        def plan_with(block_rule: str) -> Plan:
            return make_plan(parent, imp, shape, block_rule=block_rule, neuron_rule=design.neuron_rule,
                             scale=design.scale_choice, score=design.score, compensate=design.compensate,
                             basis=design.basis)

        if compute and (blocks or heads):
            # the span check fits the child in its own pass, on the parent the child is cut from
            fitted = plan and design.compensate != "none"
            source = self.rotated(parent, text, progress) if fitted and design.basis != "dims" and \
                shape.hidden < parent.shape.hidden else parent
            # (when the fits read the span check's windows; other windows are fitted at Build, in a pass of their own)
            same = fitted and len(self.fit_calibration(parent, text).ids) == len(self.calibration(parent, text).ids)
            final = (plan_with, lambda p, fits: self._once(self._fits_key(source, text, p), lambda: fits, heavy=True)) \
                if same else None
            self._search(parent, text, imp, shape.layers if blocks else None, heads, progress, final, source)
        elif blocks:
            notes.append(f"the block search for {shape.layers} blocks runs at Build (up to a minute, once)")
        elif heads:
            notes.append("the heads are chosen by measuring at Build (seconds, once)")
        made = None
        if imp is not None and plan and (compute or not (blocks or heads)):
            made = plan_with(design.block_rule)
        key = (self.parent_key(design.parent), text.digest, shape, design.block_rule, design.neuron_rule, design.scale,
               design.score, design.compensate, design.basis)
        return Designed(parent, text, shape, notes, imp, made, key)

    @staticmethod
    def _for_family(design: Design, parent: Parent, notes: list[str], cuts_hidden: bool = True) -> Design:
        """The search and the fits measure next-token loss: for an encoder they give way to the paper's rules. The
        principal directions need a pre-RMSNorm causal LM: other families keep their own dimensions (said where the
        child's hidden size is cut, the only place the basis shows)."""
        if design.basis != "dims" and not rotate_applies(parent.family):
            if cuts_hidden:
                notes.append(f"the principal-directions basis needs a pre-RMSNorm causal LM; {parent.family.name} "
                             "keeps its own residual dimensions")
            design = replace(design, basis="dims")
        if parent.family.kind == "causal-lm" or (design.block_rule != "search" and design.compensate == "none"):
            return design
        notes.append(f"block search and compensation need a causal LM; {parent.family.name} uses the magnitude rule "
                     "and no compensation")
        return replace(design, block_rule="magnitude" if design.block_rule == "search" else design.block_rule,
                       compensate="none")

    def _search(self, parent: Parent, text: Text, imp: Importance, keep: int | None, heads: bool = False,
                progress: Progress | None = None, final: Final | None = None, source: Parent | None = None) -> None:
        """Run (or resume) the heads' removal order (with heads) and the block search down to `keep` blocks (None: no
        block search), whose span check also fits the `final` child, on `source` (the parent the child is cut from:
        the parent or the parent rotated); both are saved with the importance record."""
        source = source or parent
        with self._measuring(parent, text, progress):  # one search per parent and text at once; a second finds it done
            done = heads and order_heads(parent, imp, self.calibration(parent, text), progress=progress)
            key, store = self._statistics(source, text) if final else (None, None)
            done |= keep is not None and extend(parent, imp, self.calibration(parent, text), keep, progress, final,
                                                store, source)
            if done:
                imp.save(cache_path(parent, text))
            if key:
                self._recount(key)

    @contextlib.contextmanager
    def _measuring(self, parent: Parent, text: Text, progress: Progress | None = None):
        """Held over a pass over this parent's calibration windows on this text (the block search, the heads' order,
        a child's or a sweep's fits): one at a time, so a second caller waits and finds what the first measured. A
        caller that waits is told so through `progress`, which also ends the wait when its job is stopped."""
        with self._lock:
            lock = self._passes.setdefault((parent.fingerprint, text.digest), threading.Lock())
        if progress is None:
            lock.acquire()
        elif not lock.acquire(blocking=False):
            while not lock.acquire(timeout=0.5):
                progress(0.0, "waiting for another session's pass over this parent's calibration text")
        try:
            yield
        finally:
            lock.release()

    def calibration(self, parent: Parent, text: Text):
        """The calibration windows the block search, the heads' order and the span check read (the first 16 are the
        ones importance was measured on; the block search reads the first 2)."""
        return windows(parent, text)

    def fit_calibration(self, parent: Parent, text: Text):
        """The calibration windows the fits of a compensated plan use: the first `limits.fit_windows`."""
        return windows(parent, text, self.limits.fit_windows)

    def fits(self, parent: Parent, text: Text, plan: Plan, progress: Progress | None = None) -> dict:
        """A compensated plan's fits, run on the calibration windows once per parent, text and kept structure, and
        kept with the parents (bounded), so a rebuild, an export or a sweep of the same child does not refit. The
        statistics they are solved from are kept too (bounded), so another plan that refits the same layers, at
        another width or depth, measures only what it adds."""
        def make():
            key, store = self._statistics(parent, text)
            fits = fit(parent, plan, self.fit_calibration(parent, text), plan.compensate, progress, store=store)
            self._recount(key)
            return fits
        key = self._fits_key(parent, text, plan)
        with self._lock:
            if key in self._heavy:  # kept: no wait for another caller's pass
                return self._once(key, make, heavy=True)
        # one pass at a time, as the search and the sweep: a second build waits and solves from the first's sums,
        # and the lock is taken before this key's, which the search's pass takes last for the child it fits
        with self._measuring(parent, text, progress):
            return self._once(key, make, heavy=True)

    def measure_fits(self, parent: Parent, text: Text, plans: list[Plan], progress: Progress | None = None) -> None:
        """What the fits of these plans need and neither the fits nor their kept statistics hold yet, measured in one
        pass over the calibration windows (a sweep: one pass for all its children, not one per new structure)."""
        with self._measuring(parent, text, progress):  # two sweeps at once: the second finds the sums in the store
            with self._lock:
                todo = [p for p in plans
                        if p.compensate != "none" and self._fits_key(parent, text, p) not in self._heavy]
            if todo:
                key, store = self._statistics(parent, text)
                measure(parent, todo, self.fit_calibration(parent, text), [p.compensate for p in todo], progress,
                        store=store)
                self._recount(key)

    def _statistics(self, parent: Parent, text: Text) -> tuple[tuple, dict]:
        """(key, store) of the statistics the fits of this parent and text are solved from (see `fits`)."""
        key = ("fit statistics", parent.fingerprint, text.digest)
        return key, self._once(key, dict, heavy=True)

    def _recount(self, key) -> None:
        """A shared entry that grew in place is counted again, and the bound kept."""
        with self._lock:
            if key in self._heavy:
                self._heavy[key] = (self._heavy[key][0], _nbytes(self._heavy[key][0]))
        self._evict(keep=key)

    @staticmethod
    def _fits_key(parent: Parent, text: Text, plan: Plan) -> tuple:
        return ("fits", parent.fingerprint, text.digest, plan.compensate, tuple(plan.layers), tuple(plan.residual),
                tuple(map(tuple, plan.ffn)), tuple(map(tuple, plan.heads)))

    def rotated(self, parent: Parent, text: Text, progress: Progress | None = None) -> Parent:
        """The parent in the principal directions of its residual stream on this text (rotate.rotated: about 10 s for
        the bundled parent), once per parent and text, kept with the parents (bounded)."""
        def make():
            if progress:
                progress(0.0, "measuring the principal directions of the residual stream (once per parent and text)")
            return rotated(parent, self.calibration(parent, text))
        return self._once(("rotated", parent.fingerprint, text.digest), make, heavy=True)

    def source(self, d: "Designed", progress: Progress | None = None) -> Parent:
        """The parent the designed child is cut from: the parent itself, or rotated when the plan says so."""
        return self.rotated(d.parent, d.text, progress) if d.plan.basis != "dims" else d.parent

    def starts(self, d: "Designed", progress: Progress | None = None) -> dict:
        """`rotated` and `fitted` for train.init_child, so a training starts from the child Build makes: the parent it
        is cut from and its fits, both cached (a plan in principal directions is cut from the rotated parent)."""
        turned = self.source(d, progress) if d.plan.basis != "dims" else None
        return dict(rotated=turned, fitted=lambda plan: self.fits(turned if plan.basis != "dims" else d.parent, d.text,
                                                                  plan, progress))

    def child(self, d: "Designed", progress: Progress | None = None):
        """Build the designed child (its fits, if any, from `fits`)."""
        source = self.source(d, progress)
        fitted = self.fits(source, d.text, d.plan, progress) if d.plan.compensate != "none" else None
        return build(source, d.plan, progress=progress, fitted=fitted)

    def preview(self, design: Design, session: Session | None = None) -> tuple[Designed, dict, list[int] | None]:
        """Sizes of the designed child (instant: nothing is built) and the blocks it keeps, when analyzed."""
        d = self.design(design, session, plan=False)  # on every slider move: no plan, no model
        rule = self._for_family(design, d.parent, []).block_rule
        ready = d.importance is not None and (rule != "search" or searched(d.importance, d.shape.layers))
        kept = choose_layers(d.importance, d.shape.layers, rule) if ready else None
        return d, describe(d.parent, d.shape), kept

    def build(self, session_id: str | None, design: Design, progress: Progress | None = None,
              speed: bool = True) -> tuple[Designed, dict]:
        """Build the child and evaluate it against the parent (with speed: parent and child timed side by side); it
        becomes the session's current child."""
        s = self.session(session_id)
        with s.job("building the child") as job:
            step = _progress(job, progress)
            step(0.0, "analyzing the parent")
            t = time.perf_counter()
            d = self.design(design, s, compute=True, progress=step)
            step(0.1, "building the child")
            child = self.child(d, progress=lambda f, m: step(0.1 + 0.1 * f, m))
            first = not self.has_reference(d.parent, d.text)
            step(0.2, "evaluating the parent (once per parent and text)" if first else "evaluating the child")
            ref = self.reference(d.parent, d.text)
            step(0.4, "evaluating the child on held-out text")
            metrics = evaluate(child, ref, d.plan.residual, speed=False)
            if speed:
                step(0.75, "timing parent and child side by side")
                metrics.update(paired_speed(d.parent.model, child, ref.tokens, ref.kind))
            job.check()
        s.metrics[d.key] = metrics
        while len(s.metrics) > 32:
            s.metrics.popitem(last=False)
        s.built = (d.key[0], child, d.plan)
        self._evict(keep_session=s)
        quality = {k: metrics[k] for k in ("perplexity", "top1_agreement", "kl_to_parent", "cosine_to_parent")
                   if k in metrics}
        s.history = [*s.history, dict(n=len(s.history) + 1, parent=design.parent, **_sizes(d.shape),
                                      block_rule=d.plan.block_rule, neuron_rule=d.plan.neuron_rule,
                                      score=d.plan.score, compensate=d.plan.compensate, basis=d.plan.basis,
                                      scale="+".join(design.scale) or "none", params=metrics["params"], **quality,
                                      ms_per_token=metrics.get("ms_per_token"), speedup=metrics.get("speedup"),
                                      seconds=round(time.perf_counter() - t, 1))][-KEEP_HISTORY:]
        return d, metrics

    def outputs(self, session_id: str | None, parent: str, prompt) -> tuple[str, str] | tuple[list, object, object]:
        """Parent and the session's child on the same input: greedy continuations (causal LMs), or the cosine
        similarity matrices of the sentences (encoders)."""
        s = self.session(session_id)
        prompt = text_arg(prompt, "the prompt", self.limits.max_prompt_chars)
        if s.built is None or s.built[0] != self.parent_key(parent):
            raise SubcloneError("build a child of this parent first (Build & evaluate); on a busy app, a child left "
                                "unused while others build may have been dropped to free memory")
        p, (_, child, plan) = self.parent(parent), s.built
        if p.family.kind == "causal-lm":
            return generate(p.model, p.tokenizer, prompt), generate(child, p.tokenizer, prompt)
        sentences = [x.strip() for x in prompt.splitlines() if x.strip()][:16]
        if len(sentences) < 2:
            raise SubcloneError("give at least two sentences, one per line")
        return sentences, similarities(p.model, p.tokenizer, sentences), similarities(child, p.tokenizer, sentences)

    def drop_one(self, session_id: str | None, design: Design, progress: Progress | None = None):
        s = self.session(session_id)
        with s.job("drop-one") as job:
            d = self.design(design, s, compute=True)
            return d, self.drop_scores(d.parent, d.text, compute=True, progress=_progress(job, progress))

    def sweep(self, session_id: str | None, design: Design, depths, widths, progress: Progress | None = None):
        """Build and evaluate every depth × width child; returns (table, CSV path in the session's folder)."""
        for frame, csv, _ in self.sweeping(session_id, design, depths, widths, progress):
            pass
        return frame, csv

    def sweep_plan(self, design: Design, depths, widths, session: Session | None = None) -> tuple[list, float]:
        """The shapes a sweep would build, checked against the bounds, and its estimated seconds on this machine
        (from the children this process has timed for the parent, else a first guess by size)."""
        depths = parse_list(text_arg(str(depths), "depths", self.limits.max_spec_chars), "depths", int)
        widths = parse_list(text_arg(str(widths), "widths", self.limits.max_spec_chars), "widths")
        if len(depths) * len(widths) > self.limits.max_sweep_shapes:
            raise SubcloneError(f"{len(depths)} depths × {len(widths)} widths = {len(depths) * len(widths)} children; "
                                f"a sweep here builds at most {self.limits.max_sweep_shapes}")
        d = self.design(design, session, plan=False)
        shapes = grid(d.parent, depths, widths, d.shape.heads, d.shape.kv_heads)
        fitted = self._for_family(design, d.parent, []).compensate != "none"
        with self._lock:
            per_child = self._child_seconds.get((d.parent.fingerprint, fitted))
        if per_child is None:  # measured on 2 cores for SmolLM2-135M (3.6 s a child, 8 s more to fit), by size
            per_child = (3.6 + 8 * fitted) * d.parent.model.num_parameters() / 135e6
        return shapes, per_child * len(shapes)

    def sweeping(self, session_id: str | None, design: Design, depths, widths, progress: Progress | None = None):
        """The sweep as it goes: yields (table so far, None, (done, total)) after each child, then (table, CSV path,
        (done, total)). Stop (the session's jobs) ends it after the current child, keeping what was measured.
        Checks its arguments at once, before the first child."""
        s = self.session(session_id)
        shapes, _ = self.sweep_plan(design, depths, widths, s)
        return self._sweeping(s, design, shapes, progress)

    def _sweeping(self, s: Session, design: Design, shapes: list, progress: Progress | None):
        with s.job("sweep") as job:
            step = _progress(job, progress)
            d = self.design(design, s, compute=True, plan=False, progress=step)
            rules = self._for_family(design, d.parent, [])
            if rules.block_rule == "search":  # the deepest cut first: one search serves every depth, then each's check
                for keep in sorted({x.layers for x in shapes}):
                    self._search(d.parent, d.text, d.importance, keep, progress=step)
            step(0.0, "evaluating the parent (once per parent and text)")
            ref = self.reference(d.parent, d.text)
            rows = []
            source = self.rotated(d.parent, d.text, step) if rules.basis != "dims" else d.parent
            todo = plans(source, d.importance, shapes, rules.block_rule, rules.neuron_rule, rules.scale_choice,
                         rules.score, rules.compensate, rules.basis)
            t = time.perf_counter()
            self.measure_fits(source, d.text, todo, step)
            measuring = time.perf_counter() - t
            for row in children(source, ref, todo, fitted=lambda plan: self.fits(source, d.text, plan)):
                rows.append(row)
                with self._lock:  # the estimate of the next sweep follows what this machine measures
                    self._child_seconds[(d.parent.fingerprint, rules.compensate != "none")] = \
                        (measuring + sum(r["seconds"] for r in rows)) / len(rows)
                if progress:
                    progress(len(rows) / len(shapes), f"child {len(rows)}/{len(shapes)}: {row['layers']} layers, "
                                                      f"hidden {row['hidden']}")
                if job.stop.is_set() or s.ended:
                    break
                yield table(rows), None, (len(rows), len(shapes))
        frame = table(rows)
        csv = s.folder / f"sweep-{int(time.time() * 1000)}.csv"
        if not s.ended:
            _atomic(csv, lambda tmp: frame.to_csv(tmp, index=False))
            for old in s.files("sweep-*.csv")[:-KEEP_EXPORTS]:
                old.unlink(missing_ok=True)
        yield frame, csv, (len(rows), len(shapes))

    def export(self, session_id: str | None, design: Design, hub_repo: str = "", hub_token: str = "",
               progress: Progress | None = None) -> tuple[Path, str, str]:
        """A zip of the designed child (save_pretrained + tokenizer + subclone.json + card) in the session's
        folder; optionally pushed to the Hub. Returns (zip, card, hub URL or '')."""
        s = self.session(session_id)
        hub_repo = text_arg(hub_repo, "the hub repository", self.limits.max_spec_chars, allow_empty=True)
        with s.job("export") as job:
            step = _progress(job, progress)
            step(0.0, "building the child")
            d = self.design(design, s, compute=True)
            child = self.child(d)
            metrics = s.metrics.get(d.key)
            if metrics is None:
                step(0.3, "evaluating (no latency)")
                metrics = evaluate(child, self.reference(d.parent, d.text), d.plan.residual, speed=False)
            step(0.6, "writing the folder and the zip")
            card = export.model_card(d.parent, child, d.plan, d.text, metrics, fit_windows=self.limits.fit_windows)
            name = f"subclone-{_slug(d.parent.display_name)}-{d.shape.layers}L-{d.shape.hidden}h-{d.shape.ffn}f"
            extra = dict(data=d.text.name, **export.fit_record(d.plan, self.limits.fit_windows), metrics=metrics)
            return self._archive(s, name, lambda out: export.write(child, d.parent.tokenizer, d.plan, out, card, extra),
                                 card, hub_repo, hub_token, step)

    def _archive(self, s: Session, name: str, write: Callable, card: str, hub_repo: str = "", hub_token: str = "",
                 progress: Progress | None = None) -> tuple[Path, str, str]:
        folder = s.folder / f"{name}-{int(time.time() * 1000)}"
        try:
            write(folder)
            archive = export.zip_dir(folder)
            url = ""
            if hub_repo:
                if progress:
                    progress(0.8, "pushing to the Hub")
                url = export.push(folder, hub_repo, (hub_token or "").strip())
        finally:
            shutil.rmtree(folder, ignore_errors=True)  # the zip is what is served; one copy is enough
        for old in s.files("*.zip")[:-KEEP_EXPORTS]:
            old.unlink(missing_ok=True)
        return archive, card, url

    def train_config(self, parent: Parent, steps, distill) -> TrainConfig:
        steps = int_arg(steps, "steps", 1, self.limits.max_steps)
        # Sized for a class on 2 cores: 4 × 128 tokens a step, a held-out loss on 2 × 4 × 128 tokens at five points of
        # each curve (an evaluation costs about as much as a training step). Real runs: the CLI under torchrun.
        config = TrainConfig(steps=steps, distill=float_arg(distill, "distillation weight", 0, 100),
                             batch_size=4, eval_batches=2, eval_every=max(1, steps // 4))
        config.check(self.limits, max_positions(parent))
        return config

    def heal(self, session_id: str | None, design: Design, steps, inits, distill=0.0) -> Iterator[tuple]:
        """Train the designed child from each init on equal terms, one step of each in turn. Yields ("eval", init,
        record) as held-out losses arrive, ("tick", None, Pace.view()) every second in between, then ("done", best
        init, children), or ("stopped", None, None) when Stop came before the first step (nothing was trained). Ends,
        and stops its training thread, on every way out: finished, stopped, the session ended, the consumer closed
        the generator, or an error."""
        s = self.session(session_id)
        inits = [inits] if isinstance(inits, str) else list(inits or [])
        if not inits or any(i not in INITS for i in inits):
            raise SubcloneError(f"choose initializations among {', '.join(INITS)}")
        light = self.design(design, s, plan=False)  # the shape, before anything is measured or allocated
        config = self.train_config(light.parent, steps, distill)
        need = TRAIN_BYTES_PER_PARAM * describe(light.parent, light.shape)["params"] * len(inits) / 2**20
        if need > self.limits.memory_mb:  # the inits train side by side: each holds weights, gradients and AdamW
            raise SubcloneError(f"training {len(inits)} initialization(s) of this child side by side needs about "
                                f"{need / 1024:.1f} GB (weights, gradients and AdamW state); this app allows "
                                f"{self.limits.memory_mb / 1024:.1f} GB: choose fewer initializations or a smaller "
                                "child")
        records, box, pace = queue.Queue(), {}, Pace(config.steps * len(inits))

        with s.job("training") as job:
            def work():
                try:  # what Build has not measured for this shape yet is measured here, in the job: Stop ends it
                    step = _progress(job, pace.say)
                    box["design"] = d = self.design(design, s, compute=True, progress=step)
                    pace.say(0, "building the children and evaluating them before training")
                    box["runs"] = compare_inits(d.parent, d.importance, d.shape, inits, config, d.text,
                                                on_eval=lambda i, r: (pace.step(i, r["step"]), records.put((i, r))),
                                                should_stop=job.stop.is_set,
                                                on_step=pace.step,
                                                block_rule=d.plan.block_rule, neuron_rule=d.plan.neuron_rule,
                                                scale=d.plan.scale, score=d.plan.score, compensate=d.plan.compensate,
                                                basis=d.plan.basis, **self.starts(d, step))
                except BaseException as e:  # handed to the consumer below
                    box["error"] = e
                finally:
                    records.put(None)

            worker = threading.Thread(target=work, daemon=True, name=f"heal-{s.id[:8]}")
            worker.start()
            try:
                while True:
                    try:
                        item = records.get(timeout=1.0)
                    except queue.Empty:  # a tick each second: a consumer that cancels gets control back
                        yield ("tick", None, pace.view())
                        continue
                    if item is None:
                        break
                    yield ("eval", *item)
            finally:
                job.stop.set()  # every way out ends the training: a closed generator lands here too
                worker.join(timeout=600)
        if s.ended:
            raise Cancelled("this session has ended")
        if isinstance(box.get("error"), Cancelled):  # Stop while the child was still being measured or built
            yield ("stopped", None, None)
            return
        if "error" in box:
            raise box["error"]
        d = box["design"]
        ref = self.reference(d.parent, d.text)
        s.healed = {init: (child, plan, result, evaluate(child, ref, speed=False), d)
                    for init, (child, plan, result) in box["runs"].items()}
        best = min(s.healed, key=lambda i: s.healed[i][2]["eval_loss"])
        s.built = (d.key[0], s.healed[best][0], s.healed[best][1])
        self._evict(keep_session=s)
        yield ("done", best, s.healed)

    def export_healed(self, session_id: str | None, init: str) -> tuple[Path, str, str]:
        s = self.session(session_id)
        if init not in s.healed:
            raise SubcloneError(f"train the '{shown(init)}' init first (Start in Heal)")
        child, plan, result, metrics, d = s.healed[init]
        card = export.model_card(d.parent, child, plan, d.text, metrics, training=result,
                                 fit_windows=self.limits.fit_windows)
        shape = d.parent.family.read_shape(child.config)
        name = f"subclone-{_slug(d.parent.display_name)}-{shape.layers}L-{shape.hidden}h-{init}-{result['steps']}steps"
        return self._archive(s, name, lambda out: export.write(
            child, d.parent.tokenizer, plan, out, card, training=dict(parent=d.parent.display_name, data=d.text.name,
                                                                      **export.fit_record(plan, self.limits.fit_windows),
                                                                      **result)), card)


def max_positions(parent: Parent) -> int | None:
    return getattr(parent.config, "max_position_embeddings", None)


def _sizes(shape) -> dict:
    return dict(layers=shape.layers, hidden=shape.hidden, ffn=shape.ffn, heads=shape.heads, kv_heads=shape.kv_heads)


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-." else "-" for c in name.split("/")[-1])[:60]


def _atomic(path: Path, write: Callable[[Path], None]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        write(tmp)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)

