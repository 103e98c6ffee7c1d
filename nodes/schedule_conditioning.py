"""ComfyUI glue of the Prompt Schedule: stock CONDITIONING entries, step → percent, the carrier.

A schedule resolved for N sampling steps (a `Timeline` plus one conditioning per
keyframe) leaves the Prompt Schedule / Conditioning Schedule nodes as ordinary
CONDITIONING that both kinds of sampler understand:

- stock samplers (KSampler, SamplerCustomAdvanced) read `start_percent` /
  `end_percent`: a hold run of steps [a, b) becomes one entry with that keyframe's own
  tensors; a blend window becomes one entry per step with the blended tensors. The
  entries tile the sampling range with no gap and no overlap;
- our sampler reads the `ScheduleCarrier` that every entry carries under
  ``SCHEDULE_KEY`` (`find_schedule`): the keyframes as separate tensors and the
  timeline, to evaluate the schedule exactly per step inside its autograd graph.

Step → percent. ComfyUI compares start/end percent with the current σ through the
model's `percent_to_sigma`, inclusively at both ends (timestep_end ≤ σ ≤
timestep_start, comfy/samplers.py get_area_and_mult), in whatever precision σ has. A
boundary between steps k−1 and k must therefore map to a σ strictly between σ_{k−1}
and σ_k, never onto either, in float32 and float64 alike. `step_percents` takes the
geometric mean of the two sigmas of ComfyUI's own `calculate_sigmas(model_sampling,
scheduler, steps)` and inverts the monotone `percent_to_sigma` by bisection, then
checks the landing in both precisions. Without a model it uses ComfyUI's default
discrete schedule (the one SD1.x, SD2.x and SDXL share): exact for those, and for
schedulers spaced in model time (normal, simple, sgm_uniform, beta, ddim_uniform) on
other models too; approximate for σ-spaced schedulers (karras, exponential, ...) there.
"""
from __future__ import annotations

import collections
import functools
import math
import re
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Optional, Sequence

import torch

import comfy.model_sampling
import comfy.samplers

from ..adjoint.conditioning import ScheduledConditioning
from ..adjoint.prompt_syntax import _TIME_RE, ScheduleError, _parse_time
from ..adjoint.timeline import Position, Timeline

SCHEDULE_KEY = "adjoint_guidance_schedule"
# Keys of an input entry that a schedule cannot take over (they would fight its ranges).
CONFLICTING_KEYS = ("start_percent", "end_percent", "clip_start_percent", "clip_end_percent",
                    "timestep_start", "timestep_end")
MAX_STEPS = 10000
_BISECTION_ITERATIONS = 64          # halvings of [0, 1]: below the float64 spacing of percents


# --------------------------------------------------------------------------- the carrier

@dataclass(eq=False)
class ScheduleCarrier:
    """What our sampler needs to evaluate a schedule exactly: one shared object per node run.

    keyframes[k] is keyframe k's conditioning as a dict: "cross_attn" (B, T, C) plus the
    encoder's other entries ("pooled_output", non-tensor extras), directly usable as a
    `ScheduledConditioning` keyframe. `timeline` says which keyframe (or blend of two) is
    active at each of `steps` steps. `percents` maps step boundaries to the
    start/end percent written into the stock entries; `exact` is True when those came
    from the connected model's own sigmas.
    """
    keyframes: list
    timeline: Timeline
    steps: int
    labels: tuple = ()
    node: str = "Prompt Schedule"
    scheduler: str = "normal"
    exact: bool = False
    percents: dict = field(default_factory=dict)

    def scheduled(self) -> ScheduledConditioning:
        return ScheduledConditioning(self.keyframes, self.timeline)

    def check_steps(self, num_steps: int, who: str = "the sampler") -> None:
        """A clear error when a sampler runs another step count than the schedule was resolved for."""
        if num_steps != self.steps:
            raise ValueError(f"{who} runs {num_steps} steps, but the {self.node} was resolved for "
                             f"{self.steps} steps: set the same steps on both")

    def __repr__(self) -> str:   # never dump tensors into logs
        return (f"ScheduleCarrier({self.node}, {len(self.keyframes)} keyframes, {self.steps} steps, "
                f"{self.timeline.interpolation}, scheduler={self.scheduler}, exact={self.exact})")


def _entry_dict(entry) -> Optional[dict]:
    """The options dict of a CONDITIONING entry ([tensor, dict]) or of a processed entry (dict)."""
    if isinstance(entry, dict):
        return entry
    if isinstance(entry, (list, tuple)) and len(entry) == 2 and isinstance(entry[1], dict):
        return entry[1]
    return None


def find_schedule(conditioning) -> Optional[ScheduleCarrier]:
    """The ScheduleCarrier carried by a CONDITIONING (raw or processed entries), or None.

    Raises ValueError when entries of two different schedules were combined: one
    conditioning can follow only one time line.
    """
    found: list[ScheduleCarrier] = []
    for entry in conditioning or ():
        d = _entry_dict(entry)
        carrier = d.get(SCHEDULE_KEY) if d is not None else None
        if carrier is not None and not any(carrier is f for f in found):
            found.append(carrier)
    if len(found) > 1:
        raise ValueError(f"conditioning: it combines {len(found)} different prompt schedules "
                         f"({', '.join(c.node for c in found)}); one conditioning can follow only one "
                         "schedule: put all keyframes into one Prompt Schedule")
    return found[0] if found else None


def split_schedule(conditioning) -> tuple[Optional[ScheduleCarrier], list]:
    """(carrier, the entries that do not belong to it), e.g. a regional prompt combined in."""
    carrier = find_schedule(conditioning)
    others = [e for e in conditioning or ()
              if carrier is None or (_entry_dict(e) or {}).get(SCHEDULE_KEY) is not carrier]
    return carrier, others


# --------------------------------------------------------------------------- step → percent

@functools.lru_cache(maxsize=1)
def default_model_sampling():
    """ComfyUI's default discrete schedule (scaled linear β, 1000 steps): SD1.x, SD2.x, SDXL."""
    return comfy.model_sampling.ModelSamplingDiscrete()


def _p2s(model_sampling, percent: float) -> float:
    return float(model_sampling.percent_to_sigma(percent))


def _strictly_between(b: float, lo: float, hi: float) -> bool:
    """lo < b < hi once all three are rounded to float32, and in float64."""
    for dtype in (torch.float32, torch.float64):
        t = torch.tensor([lo, b, hi], dtype=dtype)
        if not (bool(t[0] < t[1]) and bool(t[1] < t[2])):
            return False
    return True


def boundary_percent(model_sampling, sigma_before: float, sigma_after: float) -> float:
    """A percent whose σ (model_sampling.percent_to_sigma) lies strictly between two step σs.

    Aims at their geometric mean; ValueError when no percent lands strictly between
    them in both float32 and float64 (e.g. a scheduler that repeats a σ).
    """
    hi, lo = float(sigma_before), float(sigma_after)
    if not (math.isfinite(hi) and math.isfinite(lo) and hi > lo > 0):
        raise ValueError(f"the steps on either side have σ = {hi:g} and {lo:g}; no timestep range "
                         "separates them")
    target = math.sqrt(hi * lo)
    p_lo, p_hi = 0.0, 1.0          # invariant: σ(p_lo) > target ≥ σ(p_hi) (σ decreases with p)
    for _ in range(_BISECTION_ITERATIONS):
        mid = 0.5 * (p_lo + p_hi)
        if mid in (p_lo, p_hi):
            break
        if _p2s(model_sampling, mid) > target:
            p_lo = mid
        else:
            p_hi = mid
    best, best_err = None, math.inf
    for p in (p_lo, p_hi):
        if not 0.0 < p < 1.0:
            continue
        s = _p2s(model_sampling, p)
        if s > 0 and _strictly_between(s, lo, hi):
            err = abs(math.log(s / target))
            if err < best_err:
                best, best_err = p, err
    if best is None:
        raise ValueError(f"no timestep percent of this model falls strictly between σ = {hi:g} and "
                         f"σ = {lo:g}")
    return best


def step_percents(boundaries: Iterable[int], steps: int, scheduler: str,
                  model_sampling=None, who: str = "Prompt Schedule") -> dict[int, float]:
    """Step boundary k (0 ≤ k ≤ steps: between steps k−1 and k) → start/end percent.

    0 → 0.0 and steps → 1.0 (ComfyUI maps them to "before any σ" / σ = 0); every other
    boundary lies strictly between σ_{k−1} and σ_k of `calculate_sigmas(model_sampling,
    scheduler, steps)` in float32 and float64. `model_sampling` None: ComfyUI's default
    discrete schedule (exact for SD1.x/SD2.x/SDXL, approximate for other models).
    """
    boundaries = [int(k) for k in boundaries]
    out: dict[int, float] = {}
    inner = sorted({k for k in boundaries if 0 < k < steps})
    for k in boundaries:
        if k <= 0:
            out[k] = 0.0
        elif k >= steps:
            out[k] = 1.0
    if not inner:
        return out
    if scheduler not in comfy.samplers.SCHEDULER_NAMES:
        raise ValueError(f"{who}: scheduler: unknown scheduler {scheduler!r}; one of "
                         f"{', '.join(comfy.samplers.SCHEDULER_NAMES)}")
    ms = default_model_sampling() if model_sampling is None else model_sampling
    sigmas = comfy.samplers.calculate_sigmas(ms, scheduler, steps)
    sig = [float(s) for s in sigmas.flatten()]
    if len(sig) != steps + 1:
        raise ValueError(f"{who}: scheduler: {scheduler!r} makes {len(sig) - 1} sampling steps, not "
                         f"{steps}, for this model; pick another scheduler or step count")
    for k in inner:
        try:
            out[k] = boundary_percent(ms, sig[k - 1], sig[k])
        except ValueError as e:
            raise ValueError(f"{who}: scheduler: between steps {k - 1} and {k} of {steps} ({scheduler}): "
                             f"{e}; pick another scheduler or step count") from None
    return out


# --------------------------------------------------------------------------- stock entries

def step_windows(timeline: Timeline, steps: int,
                 same: Optional[Callable[[int, int], bool]] = None) -> list[dict]:
    """The stock entries' step windows: one per hold run, one per step of a blend window.

    `same(a, b)` says that keyframes a and b are the same conditioning (a prompt repeated
    to hold it before a blend): a "blend" between them is that conditioning itself, and
    it merges with the hold run next to it, so stock samplers get its exact tensors.
    """
    same = same or (lambda a, b: a == b)
    windows: list[dict] = []

    def add(start: int, end: int, kind: str, keys: list[int], weight: float) -> None:
        last = windows[-1] if windows else None
        if kind == "hold" and last is not None and last["kind"] == "hold" \
                and same(last["keyframes"][0], keys[0]) and last["end_step"] == start:
            last["end_step"] = end
            return
        windows.append({"start_step": start, "end_step": end, "kind": kind, "keyframes": keys,
                        "weight": weight})

    for seg in timeline.segments(steps):
        a, b = seg["keys"]
        if seg["kind"] == "hold" or same(a, b):
            add(seg["start_step"], seg["end_step"], "hold", [a], 0.0)
        else:
            for i, w in zip(range(seg["start_step"], seg["end_step"]), seg["weights"]):
                add(i, i + 1, "blend", [a, b], float(w))
    return windows


def build_entries(carrier: ScheduleCarrier, windows: Sequence[dict]) -> list:
    """CONDITIONING: one [cross_attn, options] entry per window, each carrying the carrier."""
    scheduled = carrier.scheduled()
    out = []
    for w in windows:
        if w["kind"] == "hold":
            cond = carrier.keyframes[w["keyframes"][0]]
        else:
            cond = scheduled.at(w["start_step"], carrier.steps)
        options = {k: v for k, v in cond.items() if k != "cross_attn"}
        options["start_percent"] = carrier.percents[w["start_step"]]
        options["end_percent"] = carrier.percents[w["end_step"]]
        options[SCHEDULE_KEY] = carrier
        out.append([cond["cross_attn"], options])
    return out


def plan_windows(timeline: Timeline, steps: int, scheduler: str, model=None,
                 node: str = "Prompt Schedule",
                 same: Optional[Callable[[int, int], bool]] = None) -> list[dict]:
    """The stock entries' windows with their start/end percent (no tensors: cheap, runs first)."""
    model_sampling = None if model is None else model.get_model_object("model_sampling")
    windows = step_windows(timeline, steps, same)
    needed = {w["start_step"] for w in windows} | {w["end_step"] for w in windows}
    percents = step_percents(needed, steps, scheduler, model_sampling, who=node)
    for w in windows:
        w["start_percent"] = percents[w["start_step"]]
        w["end_percent"] = percents[w["end_step"]]
    return windows


def schedule_to_conditioning(keyframes: list, timeline: Timeline, steps: int, labels: Sequence[str],
                             scheduler: str, windows: list[dict], exact: bool,
                             node: str = "Prompt Schedule") -> tuple[list, ScheduleCarrier]:
    """Keyframe dicts on a timeline + planned windows → (CONDITIONING, its carrier)."""
    percents = {}
    for w in windows:
        percents[w["start_step"]] = w["start_percent"]
        percents[w["end_step"]] = w["end_percent"]
    carrier = ScheduleCarrier(keyframes=list(keyframes), timeline=timeline, steps=steps,
                              labels=tuple(labels), node=node, scheduler=scheduler,
                              exact=exact, percents=percents)
    return build_entries(carrier, windows), carrier


# --------------------------------------------------------------------------- encoding

ENCODE_CACHE_SIZE = 64          # prompts remembered per CLIP object
_encoded: "weakref.WeakKeyDictionary[Any, tuple[tuple, collections.OrderedDict]]" = weakref.WeakKeyDictionary()


def _clip_fingerprint(clip) -> tuple:
    """What changes a CLIP object's encodings without making a new object (ComfyUI clones on patch)."""
    patcher = getattr(clip, "patcher", None)
    return (getattr(patcher, "patches_uuid", None), getattr(clip, "layer_idx", None),
            repr(sorted((getattr(clip, "tokenizer_options", None) or {}).items())),
            getattr(clip, "use_clip_schedule", None), id(getattr(patcher, "forced_hooks", None)),
            id(getattr(clip, "apply_hooks_to_conds", None)))


def encode_prompt(clip, text: str, node: str = "Prompt Schedule") -> dict:
    """`text` → keyframe dict {"cross_attn", "pooled_output", ...}, exactly as CLIP Text Encode.

    Remembered per CLIP object (weakly, keyed by its patch state) for the last
    ENCODE_CACHE_SIZE prompts, so re-running an edited schedule encodes only the changed
    prompts. Like ComfyUI's own output cache, this treats the CLIP object and its outputs
    as immutable.
    """
    try:
        fingerprint, memo = _encoded.get(clip, ((), None))
    except TypeError:            # not weak-referenceable: no memo
        fingerprint, memo = (), None
    current = _clip_fingerprint(clip)
    if memo is not None and fingerprint == current and text in memo:
        memo.move_to_end(text)
        return dict(memo[text])
    tokens = clip.tokenize(text)
    out = clip.encode_from_tokens_scheduled(tokens)
    if len(out) != 1:
        raise ValueError(f"{node}: clip: this CLIP has scheduled hooks (Set CLIP Hooks with keyframes) "
                         f"that encode {len(out)} conditionings per prompt; a schedule needs one per "
                         "prompt: remove the hook keyframes")
    cond, options = out[0]
    keyframe = {"cross_attn": cond, **options}
    try:
        if memo is None or fingerprint != current:
            memo = collections.OrderedDict()
            _encoded[clip] = (current, memo)
        memo[text] = keyframe
        while len(memo) > ENCODE_CACHE_SIZE:
            memo.popitem(last=False)
    except TypeError:
        pass
    return dict(keyframe)


# --------------------------------------------------------------------------- keyframes

def _float_tensors(kf: dict) -> dict[str, torch.Tensor]:
    return {k: v for k, v in kf.items() if isinstance(v, torch.Tensor) and v.is_floating_point()}


def separate_keyframes(keyframes: Sequence[dict]) -> list[dict]:
    """Keyframe dicts whose tensors share no storage (a repeated prompt, an input connected
    twice): each keyframe stays its own leaf when our sampler optimises them."""
    seen: set[int] = set()
    out = []
    for kf in keyframes:
        d = {}
        for k, v in kf.items():
            if isinstance(v, torch.Tensor) and v.numel() > 0:
                ptr = v.untyped_storage().data_ptr()
                if ptr in seen:
                    v = v.clone()
                    ptr = v.untyped_storage().data_ptr()
                seen.add(ptr)
            d[k] = v
        out.append(d)
    return out


def same_conditioning(a: dict, b: dict) -> bool:
    """Two keyframe dicts hold the same tensors (values equal, shapes equal) and the same extras."""
    if a is b:
        return True
    if a.keys() != b.keys():
        return False
    for k in a:
        x, y = a[k], b[k]
        if isinstance(x, torch.Tensor) or isinstance(y, torch.Tensor):
            if not (isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor)
                    and x.shape == y.shape and x.dtype == y.dtype and torch.equal(x, y)):
                return False
        elif x is not y and x != y:
            return False
    return True


def check_keyframes(keyframes: Sequence[dict], interpolation: str, name: Callable[[int], str],
                    pair: Callable[[int, int], str], prefix: Callable[[int], str],
                    token_hint: str) -> None:
    """Keyframes must fit together: same encoder outputs; equal shapes where they are blended.

    `name(k)` names keyframe k in messages ("the prompt on line 3", "conditioning_2"),
    `pair(0, k)` two of them ("the keyframes on lines 1 and 3"); `prefix(k)` is "Node: input"
    of the input at fault when keyframe k does not fit;
    `token_hint` ends the message about unequal token counts. Blending timelines need
    equal shapes across all keyframes (what ScheduledConditioning requires).
    """
    ref = _float_tensors(keyframes[0])
    ref_ca = keyframes[0]["cross_attn"]
    for k in range(1, len(keyframes)):
        cur = _float_tensors(keyframes[k])
        ca = keyframes[k]["cross_attn"]
        if ca.shape[-1] != ref_ca.shape[-1]:
            raise ValueError(f"{prefix(k)}: {pair(0, k)} have embeddings of {ref_ca.shape[-1]} and "
                             f"{ca.shape[-1]} channels; a schedule needs conditionings from the same "
                             "text encoder")
        if ca.shape[0] != ref_ca.shape[0]:
            raise ValueError(f"{prefix(k)}: {pair(0, k)} have batch sizes {ref_ca.shape[0]} and "
                             f"{ca.shape[0]}; a schedule needs equal batch sizes")
        if set(cur) != set(ref):
            only_k, only_0 = sorted(set(cur) - set(ref)), sorted(set(ref) - set(cur))
            what = (f"{name(k)} carries {', '.join(only_k)} and {name(0)} does not" if only_k
                    else f"{name(0)} carries {', '.join(only_0)} and {name(k)} does not")
            raise ValueError(f"{prefix(k)}: {what}; a schedule needs conditionings from the same text "
                             "encoder")
        if interpolation == "hold":
            continue
        if ca.shape != ref_ca.shape:
            raise ValueError(f"{prefix(k)}: {pair(0, k)} have {ref_ca.shape[1]} and {ca.shape[1]} "
                             f"tokens; blends need equal lengths — {token_hint}")
        for key, t in cur.items():
            if t.shape != ref[key].shape:
                raise ValueError(f"{prefix(k)}: {pair(0, k)} have {key} of shapes {tuple(ref[key].shape)} "
                                 f"and {tuple(t.shape)}; blends need equal shapes — use hold")


def keyframe_from_conditioning(conditioning: Any, name: str, node: str) -> dict:
    """One CONDITIONING input (a single encoded prompt) → a keyframe dict, or a clear error."""
    if not isinstance(conditioning, (list, tuple)):
        raise ValueError(f"{node}: {name}: expected CONDITIONING (a list of [embedding, options] "
                         f"entries), got {type(conditioning).__name__}")
    if len(conditioning) == 0:
        raise ValueError(f"{node}: {name}: the conditioning is empty")
    if len(conditioning) > 1:
        raise ValueError(f"{node}: {name}: has {len(conditioning)} entries (combined, area or "
                         "scheduled conditioning); each input must be one encoded prompt, e.g. "
                         "straight from CLIP Text Encode")
    entry = conditioning[0]
    if not (isinstance(entry, (list, tuple)) and len(entry) == 2 and isinstance(entry[1], dict)):
        raise ValueError(f"{node}: {name}: its entry is not an [embedding, options] pair")
    cond, options = entry
    if not (isinstance(cond, torch.Tensor) and cond.is_floating_point() and cond.ndim == 3):
        shape = tuple(cond.shape) if isinstance(cond, torch.Tensor) else type(cond).__name__
        raise ValueError(f"{node}: {name}: its embedding must be a float tensor (batch, tokens, "
                         f"channels), got {shape}")
    if options.get(SCHEDULE_KEY) is not None:
        raise ValueError(f"{node}: {name}: comes from a {options[SCHEDULE_KEY].node} already; "
                         "schedules do not nest: connect plain encoded prompts")
    taken = [k for k in CONFLICTING_KEYS if k in options]
    if taken:
        raise ValueError(f"{node}: {name}: already has a timestep range ({', '.join(taken)}); "
                         "the schedule sets the ranges itself: connect the prompt before "
                         "Conditioning Set Timestep Range")
    return {"cross_attn": cond, **options}


# --------------------------------------------------------------------------- times list

_TIME_HINT = "a step such as 12, a fraction such as 0.4, or a percentage such as 40%"


class LocatedError(ValueError):
    """A schedule text the nodes refuse, with where: ``str(e)`` is the full message (node,
    input, location, what was found); ``line`` / ``column`` are 1-based (column None: the
    whole line); ``detail`` is the message after the location."""

    def __init__(self, message: str, line: int, column: Optional[int], detail: str):
        super().__init__(message)
        self.line, self.column, self.detail = line, column, detail


class TimesError(LocatedError):
    """A `times` text that parse_times refuses; the location is that of the time it is about."""

    def __init__(self, message: str, text: str, offset: int, detail: str):
        before = text[:offset]
        super().__init__(message, before.count("\n") + 1, offset - (before.rfind("\n") + 1) + 1, detail)


def _time_error(prefix: str, n: int, text: str, offset: int, detail: str) -> TimesError:
    return TimesError(f"{prefix}: time {n} (col {offset + 1}): {detail}", text, offset, detail)


def _time_items(text: str) -> list[tuple[str, int]]:
    """(raw text, 0-based offset) of each time between separators; a trailing separator is fine."""
    items: list[tuple[str, int]] = []
    start = 0
    for m in re.finditer(r"[,;\n]", text):
        items.append((text[start:m.start()], start))
        start = m.end()
    items.append((text[start:], start))
    while len(items) > 1 and not items[-1][0].strip():
        items.pop()
    return items


def parse_times(text: str, steps: int, interpolation: str,
                node: str = "Conditioning Schedule", name: str = "times") -> tuple[Position, ...]:
    """`0, 40%, 12` → the start Position of each input, with the keyframe lines' time syntax.

    Same rules as keyframe lines (adjoint/prompt_syntax.py): the first is 0; times fall on
    strictly increasing steps at `steps`; a step must be below `steps`; 100 % (1.0) is
    the end of sampling, allowed only for linear / slerp. Mistakes raise TimesError.
    """
    prefix = f"{node}: {name}"
    if not isinstance(text, str):
        raise ValueError(f"{prefix}: expected text such as '0, 40%, 12', got {type(text).__name__}")
    if not text.strip():
        detail = "expected a time for each connected conditioning, such as '0, 40%, 12', found nothing"
        raise TimesError(f"{prefix}: {detail}", text, 0, detail)
    items = _time_items(text)
    positions: list[Position] = []
    resolved: list[int] = []
    for n, (raw, at) in enumerate(items, start=1):
        token = raw.strip()
        offset = at + (len(raw) - len(raw.lstrip()))
        fail = functools.partial(_time_error, prefix, n, text, offset)
        if not token:
            raise fail(f"expected {_TIME_HINT}, found "
                       f"{repr(text[at + len(raw)]) if at + len(raw) < len(text) else 'end of text'}")
        if not _TIME_RE.fullmatch(token):
            raise fail(f"expected {_TIME_HINT}, found {token!r}")
        try:
            pos = _parse_time(token, 1, offset + 1)
        except ScheduleError as e:
            raise fail(e.message) from None
        step = pos.to_step(steps)
        if n == 1:
            if pos.value != 0:
                raise fail(f"the first time must be 0 (conditioning_1 starts the schedule), found {token!r}")
        else:
            prev_token, prev_step = items[n - 2][0].strip(), resolved[-1]
            if pos.unit == "step" and step >= steps:
                raise fail(f"step {int(pos.value)} is beyond the last step {steps - 1} of {steps}")
            if step < prev_step:
                raise fail(f"{token!r} (step {step}) comes before time {n - 1} {prev_token!r} (step "
                           f"{prev_step}); times must increase")
            if step == prev_step:
                raise fail(f"{token!r} falls on step {step} like time {n - 1} {prev_token!r} at {steps} "
                           "steps; give each conditioning its own step")
            if step >= steps and interpolation == "hold":
                raise fail(f"{token!r} is the end of sampling and is never used with hold (use linear or "
                           "slerp to blend towards it)")
        positions.append(pos)
        resolved.append(step)
    return tuple(positions)


def ui_timeline(node: str, steps: int, interpolation: str, scheduler: str, exact: bool,
                labels: Sequence[str], starts: Sequence[int], segments: list[dict],
                windows: list[dict], sources: Sequence[Any],
                origins: Optional[Sequence[str]] = None) -> dict:
    """The JSON payload the frontend draws (sent as ui["adjoint_guidance_timeline"][0]).

    keyframes: index, label (prompt text or input name), start_step, source (line or
    input), origin ("keyframe", or "edit": the prompt an inline [from:to:when] / [a|b] edit
    switches to inside the keyframe before it). segments: describe_schedule's runs of steps
    (kind hold / blend, keyframes, per-step weights, summary; its start/end_percent are
    fractions of the steps).
    entries: the stock CONDITIONING entries, in order: start_step, end_step, kind,
    keyframes, weight, and the start_percent / end_percent written into them (model
    timestep percents). percents: "model" (exact) or "approximate" (no model connected).
    The Prompt Schedule adds warnings: hints for text lines that look like keyframe lines but
    are not (prompt_schedule.keyframe_typos).
    """
    def plain(v):
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v
    return {
        "node": node,
        "steps": steps,
        "interpolation": interpolation,
        "scheduler": scheduler,
        "percents": "model" if exact else "approximate",
        "keyframes": [{"index": k, "label": labels[k], "start_step": int(starts[k]), "source": sources[k],
                       "origin": origins[k] if origins else "keyframe"}
                      for k in range(len(labels))],
        "segments": plain(segments),
        "entries": plain(windows),
    }
