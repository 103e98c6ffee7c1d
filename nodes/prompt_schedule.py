"""Prompt Schedule and Conditioning Schedule: the prompt changes with the sampling step.

Both nodes output ordinary CONDITIONING (see schedule_conditioning.py): entries with
start/end percent for the stock samplers, and on every entry the keyframes and their
time line for our sampler. The nodes only translate: schedule text → the parser
(adjoint/prompt_syntax.py), prompts → CLIP, keyframes → the glue module.
"""
from __future__ import annotations

import logging
import re

from comfy_api.latest import io

import comfy.samplers

from ..adjoint.prompt_syntax import Schedule, ScheduleError, describe_schedule, parse_schedule
from ..adjoint.timeline import INTERPOLATIONS, Timeline
from . import schedule_conditioning as sc
from .input_checks import WidgetChecks, check_inputs, conditioning as check_conditioning

CATEGORY = "Adjoint Guidance"
MAX_INPUTS = 8

_INTERPOLATION_TOOLTIP = (
    "hold: each keyframe holds until the next one starts (a hard switch). "
    "linear: the embedding moves in a straight line from each keyframe to the next, reaching "
    "it at that keyframe's start step, one value per sampling step. "
    "slerp: the same along the sphere (spherical interpolation of every token vector). "
    "Inline [from:to:when] edits stay hard switches in every mode.")
_STEPS_TOOLTIP = (
    "The sampler's step count. Percentages and fractions resolve to steps for it and blends "
    "get one value per step. Give the sampler the same steps (at denoise 1.0).")
_SCHEDULER_TOOLTIP = (
    "The sampler's scheduler: the stock samplers' start/end percents are computed from the sigmas "
    "it gives for these steps. Give the sampler the same scheduler.")
_MODEL_TOOLTIP = (
    "Optional: the MODEL the sampler uses (after any Model Sampling patch). Connected, every "
    "keyframe switches exactly at its step in the stock KSampler / SamplerCustomAdvanced, computed "
    "from this model's own sigmas. Not connected, the percents come from the default SD1.x / SD2.x "
    "/ SDXL noise schedule: exact for those models, APPROXIMATE for others (SD3, Flux, ...: a "
    "switch can move by a step or more). The Adjoint Sampler is always exact.")
_OUTPUT_TOOLTIP = (
    "Ordinary CONDITIONING: one entry per held run of steps and one per step of a blend, with "
    "start/end percent for the stock samplers; each entry also carries the keyframes and their "
    "time line, which the Adjoint Sampler evaluates exactly per step.")


def _common_inputs() -> list:
    return [
        io.Combo.Input("interpolation", options=list(INTERPOLATIONS), default="hold",
                       tooltip=_INTERPOLATION_TOOLTIP),
        io.Int.Input("steps", default=20, min=1, max=sc.MAX_STEPS, tooltip=_STEPS_TOOLTIP),
        io.Combo.Input("scheduler", options=list(comfy.samplers.SCHEDULER_NAMES), default="normal",
                       tooltip=_SCHEDULER_TOOLTIP),
        io.Model.Input("model", optional=True, tooltip=_MODEL_TOOLTIP),
    ]


# A line that starts like a keyframe but is not one (the parser reads it as prompt text):
# a letter O / o / l / I typed for a digit (`5O%:`), blanks before the % (`30 %:`), a
# decimal comma (`0,5:`), a doubled % (`50%%:`).
_TYPO_TIME_RE = re.compile(r"\s*((?=[0-9OoIl.,]*[0-9])[0-9OoIl.,]+\s*%*\s*:)")
# A real keyframe line (adjoint/prompt_syntax.py's _KEYFRAME_RE).
_KEYFRAME_LINE_RE = re.compile(r"\s*-?(?:\d+(?:\.\d*)?|\.\d+)%?\s*:")


def keyframe_typos(text: str) -> list[str]:
    """Hints for lines that look like keyframe lines but are not (warnings, not errors)."""
    hints = []
    for number, line in enumerate(re.split(r"\r\n|\r|\n", text), start=1):
        m = _TYPO_TIME_RE.match(line)
        if m is None or _KEYFRAME_LINE_RE.match(line):
            continue
        written = m.group(1)
        head = written.rstrip(":").strip()
        fixed = re.sub(r"\s+", "", head).replace(",", ".").translate(str.maketrans("OoIl", "0011"))
        fixed = re.sub(r"%+", "%", fixed)
        hints.append(f"line {number}, col {m.start(1) + 1}: {written!r} looks like a keyframe time but is not "
                     f"one, so this line is read as prompt text; did you mean '{fixed}:'?")
    return hints


def source_lines(schedule: Schedule) -> tuple[int, ...]:
    """The text line each keyframe comes from (1 for every keyframe of a text without times)."""
    return schedule.source_lines or (1,) * len(schedule.prompts)


def keyframe_origins(lines: tuple[int, ...]) -> list[str]:
    """"edit" for a keyframe an inline edit switches to (it shares its line with the keyframe
    before it: two keyframe lines never share a line), else "keyframe"."""
    return ["edit" if k > 0 and lines[k] == lines[k - 1] else "keyframe" for k in range(len(lines))]


# --------------------------------------------------------------------------- Prompt Schedule

class PromptSchedule(io.ComfyNode):
    NAME = "Prompt Schedule"

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="AdjointGuidance_PromptSchedule",
            display_name=cls.NAME,
            category=CATEGORY,
            description=(
                "A prompt that changes with the sampling step: keyframe lines 'when: prompt' and "
                "A1111 edits [from:to:when], held or blended (linear / slerp) per step. Works with the "
                "stock samplers and, exactly per step, with the Adjoint Sampler."),
            inputs=[
                io.Clip.Input("clip", tooltip="The text encoder; every distinct prompt of the schedule "
                                              "is encoded once, exactly as CLIP Text Encode does."),
                io.String.Input("text", multiline=True, default="0: a castle on a hill\n60%: a castle on a hill at night",
                                tooltip=(
                    "One keyframe per line, 'when: prompt'. when = a step (12, 0-based), a percentage "
                    "(40%) or a fraction with a dot (0.4); the first keyframe is at 0. A line without "
                    "a time continues the prompt above; lines starting with # are comments. Inside a "
                    "prompt: [from:to:when], [to:when], [from::when] switch words at a step, [a|b] "
                    "alternates every step, \\[ \\] \\: \\| \\# are literal. A text without times is "
                    "one prompt.")),
                *_common_inputs(),
            ],
            outputs=[io.Conditioning.Output(tooltip=_OUTPUT_TOOLTIP)],
        )

    # widget values when the prompt is queued (input_checks.py); linked ones in execute
    validate_inputs = WidgetChecks()

    @classmethod
    def input_problems(cls, v: dict, connected):
        """The text parsed for these steps and interpolation (the cross-check of the widgets)."""
        if {"text", "steps", "interpolation"} <= v.keys():
            try:
                cls._parse(v["text"], v["steps"], v["interpolation"])
            except ValueError as e:
                yield "text", str(e)

    @classmethod
    def _parse(cls, text, steps: int, interpolation: str) -> Schedule:
        if not isinstance(text, str):
            raise ValueError(f"{cls.NAME}: text: expected text, got {type(text).__name__}")
        try:
            return parse_schedule(text, steps, interpolation)
        except ScheduleError as e:
            raise sc.LocatedError(f"{cls.NAME}: text: {e}", e.line, e.column, e.message) from None

    @classmethod
    def plan(cls, text, steps: int, interpolation: str, scheduler: str, model=None) -> tuple[Schedule, list]:
        """The parsed schedule and its stock windows (no encoding): execute and the preview share it."""
        schedule = cls._parse(text, steps, interpolation)
        prompts = schedule.prompts
        windows = sc.plan_windows(schedule.timeline, steps, scheduler, model, node=cls.NAME,
                                  same=lambda a, b: prompts[a] == prompts[b])
        return schedule, windows

    @classmethod
    def timeline_ui(cls, text: str, schedule: Schedule, windows: list, steps: int, interpolation: str,
                    scheduler: str, exact: bool) -> dict:
        """The ui["adjoint_guidance_timeline"] payload of a planned schedule (warnings included)."""
        lines = source_lines(schedule)
        ui = sc.ui_timeline(cls.NAME, steps, interpolation, scheduler, exact,
                            labels=schedule.prompts, starts=schedule.timeline.start_steps(steps),
                            segments=describe_schedule(schedule, steps), windows=windows,
                            sources=[{"line": line} for line in lines], origins=keyframe_origins(lines))
        ui["warnings"] = [f"{cls.NAME}: text: {hint}" for hint in keyframe_typos(text)]
        return ui

    @classmethod
    def preview(cls, text, steps: int, interpolation: str, scheduler: str) -> dict:
        """The time line the node shows for these widgets, before anything is encoded (no model:
        approximate percents, as the node without a model). Raises the node's ValueErrors."""
        schedule, windows = cls.plan(text, steps, interpolation, scheduler)
        return cls.timeline_ui(text, schedule, windows, steps, interpolation, scheduler, exact=False)

    @classmethod
    def execute(cls, clip, text, interpolation, steps, scheduler, model=None) -> io.NodeOutput:
        check_inputs(PromptSchedule, dict(text=text, interpolation=interpolation, steps=steps, scheduler=scheduler))
        if clip is None:
            raise ValueError(f"{cls.NAME}: clip: no text encoder (if it comes from a checkpoint loader, "
                             "that checkpoint has no text encoder: load one with a CLIP loader)")
        schedule, windows = cls.plan(text, steps, interpolation, scheduler, model)
        prompts = schedule.prompts

        encoded: dict[str, dict] = {}
        for prompt in prompts:
            if prompt not in encoded:
                encoded[prompt] = sc.encode_prompt(clip, prompt, node=cls.NAME)
        # A repeated prompt is encoded once but stays its own leaf for optimisation.
        keyframes = sc.separate_keyframes([encoded[p] for p in prompts])
        lines = source_lines(schedule)
        sc.check_keyframes(
            keyframes, interpolation,
            name=lambda k: f"the prompt on line {lines[k]}",
            pair=lambda a, b: (f"the keyframes on lines {lines[a]} and {lines[b]}" if lines[a] != lines[b]
                               else f"two prompts of line {lines[a]}"),
            prefix=lambda k: f"{cls.NAME}: text",
            token_hint="shorten the longer prompt (77 tokens per chunk) or use hold")

        conditioning, carrier = sc.schedule_to_conditioning(
            keyframes, schedule.timeline, steps, schedule.prompts, scheduler, windows,
            exact=model is not None, node=cls.NAME)
        ui = cls.timeline_ui(text, schedule, windows, steps, interpolation, scheduler, carrier.exact)
        for warning in ui["warnings"]:
            logging.warning("%s", warning)
        return io.NodeOutput(conditioning, ui={"adjoint_guidance_timeline": [ui]})


# --------------------------------------------------------------------------- Conditioning Schedule

class ConditioningSchedule(io.ComfyNode):
    NAME = "Conditioning Schedule"
    INPUTS = tuple(f"conditioning_{i}" for i in range(1, MAX_INPUTS + 1))

    @classmethod
    def define_schema(cls) -> io.Schema:
        conditionings = [
            io.Conditioning.Input(name, optional=i > 0, tooltip=(
                f"Keyframe {i + 1}: one encoded prompt from any text encoder node (SD1.x, SDXL, SD3, "
                f"Flux, ...), active from time {i + 1} of 'times'."
                + (" Connect them in order; unconnected ones are skipped." if i > 0 else "")))
            for i, name in enumerate(cls.INPUTS)]
        return io.Schema(
            node_id="AdjointGuidance_ConditioningSchedule",
            display_name=cls.NAME,
            category=CATEGORY,
            description=(
                "The Prompt Schedule's time line over CONDITIONING you already have (from any text "
                "encoder node): conditioning_k becomes active at the k-th time, held or blended per "
                "step. For models whose prompts need their own encoder nodes."),
            inputs=[
                *conditionings,
                io.String.Input("times", default="0, 50%", tooltip=(
                    "When each connected conditioning starts, in order, separated by commas: a step "
                    "(12, 0-based), a percentage (40%) or a fraction with a dot (0.4), as in the Prompt "
                    "Schedule's keyframe lines. The first is 0; one time per connected conditioning.")),
                *_common_inputs(),
            ],
            outputs=[io.Conditioning.Output(tooltip=_OUTPUT_TOOLTIP)],
        )

    validate_inputs = WidgetChecks()

    @classmethod
    def input_problems(cls, v: dict, connected):
        """The times parsed for these steps and interpolation; one per connected conditioning."""
        if not {"times", "steps", "interpolation"} <= v.keys():
            return
        try:
            starts = sc.parse_times(v["times"], v["steps"], v["interpolation"], node=cls.NAME)
        except ValueError as e:
            yield "times", str(e)
            return
        if connected is not None and "conditioning_1" in connected:
            message = cls._count_problem(starts, [n for n in cls.INPUTS if n in connected])
            if message:
                yield "times", message

    @classmethod
    def _count_problem(cls, starts, names):
        if len(starts) == len(names):
            return None
        return (f"{cls.NAME}: times: gives {len(starts)} time{'s' * (len(starts) != 1)} but "
                f"{len(names)} conditioning{'s are' if len(names) != 1 else ' is'} connected "
                f"({', '.join(names)}); give one time per connected conditioning, in order")

    @classmethod
    def plan(cls, times, steps: int, interpolation: str, scheduler: str, names: list[str], model=None,
             same=None) -> tuple[Timeline, list]:
        """The time line of `times` over the inputs `names` and its stock windows; `same(a, b)`:
        keyframes a and b are the same conditioning (default: only a == b)."""
        starts = sc.parse_times(times, steps, interpolation, node=cls.NAME)
        problem = cls._count_problem(starts, names)
        if problem:
            raise ValueError(problem)
        timeline = Timeline(starts, interpolation, tuple(names))
        return timeline, sc.plan_windows(timeline, steps, scheduler, model, node=cls.NAME, same=same)

    @classmethod
    def timeline_ui(cls, names: list[str], timeline: Timeline, windows: list, steps: int, interpolation: str,
                    scheduler: str, exact: bool) -> dict:
        """The ui["adjoint_guidance_timeline"] payload of a planned schedule."""
        schedule = Schedule(tuple(names), timeline, steps, tuple(range(1, len(names) + 1)))
        segments = describe_schedule(schedule, steps)
        for seg in segments:
            seg["inputs"] = [names[k] for k in seg["keyframes"]]
            del seg["lines"]
        return sc.ui_timeline(cls.NAME, steps, interpolation, scheduler, exact,
                              labels=names, starts=timeline.start_steps(steps), segments=segments,
                              windows=windows, sources=[{"input": n} for n in names])

    @classmethod
    def preview(cls, times, steps: int, interpolation: str, scheduler: str, names=None) -> dict:
        """The time line the node shows for these widgets, with `names` connected (default: the
        first conditioning inputs, one per time) holding distinct conditionings; no model."""
        if names is None:
            count = len(sc.parse_times(times, steps, interpolation, node=cls.NAME))
            names = list(cls.INPUTS[:count])
        unknown = [n for n in names if n not in cls.INPUTS]
        if unknown:
            raise ValueError(f"{cls.NAME}: {unknown[0]}: not an input of this node; the inputs are "
                             f"{', '.join(cls.INPUTS)}")
        timeline, windows = cls.plan(times, steps, interpolation, scheduler, list(names))
        return cls.timeline_ui(list(names), timeline, windows, steps, interpolation, scheduler, exact=False)

    @classmethod
    def execute(cls, times, interpolation, steps, scheduler, conditioning_1, model=None,
                **more) -> io.NodeOutput:
        given = {"conditioning_1": conditioning_1, **more}
        unknown = sorted(set(given) - set(cls.INPUTS))
        if unknown:
            raise ValueError(f"{cls.NAME}: {unknown[0]}: not an input of this node")
        check_inputs(ConditioningSchedule, dict(times=times, interpolation=interpolation, steps=steps,
                                                scheduler=scheduler, **given))
        names = [n for n in cls.INPUTS if given.get(n) is not None]   # as many as times (checked above)
        keyframes = sc.separate_keyframes([sc.keyframe_from_conditioning(given[n], n, cls.NAME)
                                           for n in names])
        for n in names:         # one encoded prompt each (above); finite
            check_conditioning(cls.NAME, n, given[n])
        sc.check_keyframes(
            keyframes, interpolation,
            name=lambda k: names[k],
            pair=lambda a, b: f"{names[a]} and {names[b]}",
            prefix=lambda k: f"{cls.NAME}: {names[k]}",
            token_hint="use prompts of the same length or hold")
        timeline, windows = cls.plan(times, steps, interpolation, scheduler, names, model,
                                     same=lambda a, b: sc.same_conditioning(keyframes[a], keyframes[b]))
        conditioning, carrier = sc.schedule_to_conditioning(
            keyframes, timeline, steps, names, scheduler, windows, exact=model is not None,
            node=cls.NAME)
        ui = cls.timeline_ui(names, timeline, windows, steps, interpolation, scheduler, carrier.exact)
        return io.NodeOutput(conditioning, ui={"adjoint_guidance_timeline": [ui]})


NODES = [PromptSchedule, ConditioningSchedule]
