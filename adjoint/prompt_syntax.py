"""Prompt-schedule text → prompts on a `Timeline`, resolved for one step count.

Pure Python (no torch, no ComfyUI). `parse_schedule(text, num_steps, interpolation)`
returns a `Schedule`: the concrete prompt text of every keyframe (ready for the CLIP
tokenizer) and the `Timeline` that says which keyframe, or which blend of two, is
active at each sampling step. Every mistake raises a `ScheduleError` (a `ValueError`)
whose message starts with ``line L, col C:``.

Grammar
=======

Keyframe lines ``when: prompt``::

    0: a cat in a garden
    30%: a dog in a garden          # 30 % → step floor(0.30·N)
    0.6: a fox in a garden          # a number with a '.' is a fraction, 0.0 … 1.0
    15: a wolf in a garden          # an integer is a step index (0-based)

* ``when``: ``30%`` (0 … 100 %), a fraction with a ``.`` (``0.3``, ``.3``, ``1.0``;
  0 … 1), or an integer step index (``12``; must be below the number of steps).
  A fraction f starts at step floor(f·N) (so 0.29 at N = 100 is step 29).
* The first keyframe must be at 0 (``0``, ``0%`` or ``0.0``); later ones must fall on
  strictly increasing steps at the given step count (two keyframes on one step is an
  error naming both lines).
* ``100%`` / ``1.0`` is the end of sampling: allowed in ``linear`` / ``slerp`` (the
  blend reaches that prompt at the end) and an error in ``hold`` (it is never used).
* A line that does not start with a time continues the previous keyframe's prompt
  (joined with a space); text before the first keyframe line is an error. In a text
  with keyframe lines, a line that starts with a number not followed by ':' is an
  error (``expected ':' after the time``); so a continuation line cannot start with a
  number (a word such as ``1girl`` is fine).
* Blank lines and lines whose first non-blank character is ``#`` are ignored
  everywhere (a ``#`` later in a line is literal; ``\\#`` starts a line with ``#``).
* A text without any keyframe line is one prompt active from step 0 (all its lines
  joined), e.g. ``a cat [dog:0.5]``.
* A ``:`` after the time is part of the prompt (``0: a: b`` → ``a: b``); a line such
  as ``12:30 pm`` IS a keyframe line (write ``12\\:30 pm``).
* FizzNodes-style ``"12": "a dog"`` lines are rejected with a hint.

Inside a prompt (A1111 prompt editing)::

    a [cat:dog:0.5] in a garden     # cat for steps i < floor(0.5·N), dog from there on
    a cat [wearing a hat:10]        # [to:when]: nothing, then "wearing a hat" from step 10
    a cat [in a garden::0.25]       # [from::when]: "in a garden", then nothing
    a [[cat:fox:0.2]:dog:0.6]       # nested
    a [cat|dog] hybrid              # alternation: cat at even steps, dog at odd steps
    (a cat:1.2), \\[sic\\], 16\\:9     # emphasis untouched; escapes

* ``when`` of an edit: a fraction with a ``.`` (``0.5``) → step floor(when·N); an
  integer → that step (an integer ≥ N simply never switches, as in A1111); ``50%`` is
  accepted too. Fractions above 1 and negative times are errors.
* Edits nest; a ``:`` or ``|`` inside ``( … )`` within brackets is not a separator, so
  ``[(cat:1.2):dog:0.5]`` works; ``(word:1.2)`` outside brackets is plain text.
* ``[a|b|c]`` alternates per sampling step (option i mod 3 at step i, A1111's rule).
  ``|`` and ``:`` cannot be mixed in one bracket (nest them instead).
* A bracket with no ``:`` or ``|`` (``[abc]``) is kept as written (ComfyUI reads it as
  plain text).
* Escapes: ``\\[ \\] \\: \\| \\\\ \\#`` give the literal character; ``\\( \\)`` are kept
  as they are (ComfyUI's tokenizer reads them); any other backslash is literal.
* After expansion whitespace runs collapse to one space and ends are trimmed
  (``a [b::0.5] c`` → ``a c``).

Expansion and interpolation
===========================

Each keyframe line covers the steps from its start to the next keyframe's start. The
edits inside it are evaluated at every step where one of them switches within that
range; each change of text starts a sub-keyframe (``Position(step, "step")``) and the
transitions between a line's sub-keyframes are listed in ``Timeline.hard_after``: they
are hard switches even in ``linear`` / ``slerp`` mode. Consecutive identical texts of
one line are merged; two keyframe lines with the same text are kept (that is how a
prompt is held before a blend). In ``linear`` / ``slerp`` mode the last text of a line
blends into the next line's text (evaluated at that line's start step).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

from .timeline import INTERPOLATIONS, Position, Timeline

__all__ = ["Schedule", "ScheduleError", "ScheduleSyntaxError", "parse_schedule",
           "describe_schedule"]


# --------------------------------------------------------------------------- errors

class ScheduleError(ValueError):
    """A schedule the parser cannot accept; ``str(e)`` starts with ``line L[, col C]:``.

    ``line`` and ``column`` (alias ``col``; None when the error is about a whole line) are
    1-based; ``message`` is the text after the location.
    """

    def __init__(self, line: int, col: Optional[int], message: str):
        self.line = line
        self.col = col
        self.column = col
        self.message = message
        where = f"line {line}" if col is None else f"line {line}, col {col}"
        super().__init__(f"{where}: {message}")


class ScheduleSyntaxError(ScheduleError):
    """``line L, col C: expected X, found 'Y'`` (found may be ``end of line`` / ``end of text``)."""

    def __init__(self, line: int, col: int, expected: str, found: str,
                 hint: Optional[str] = None):
        self.expected = expected
        self.found = found
        self.hint = hint
        message = f"expected {expected}, found {found}" + (f" ({hint})" if hint else "")
        super().__init__(line, col, message)


def _quote(text: str, limit: int = 24) -> str:
    if len(text) > limit:
        text = text[:limit - 1] + "…"
    return f'"{text}"' if "'" in text else f"'{text}'"


def _word_at(text: str, i: int) -> str:
    j = i
    while j < len(text) and not text[j].isspace():
        j += 1
    return text[i:j] if j > i else text[i:i + 1]


# --------------------------------------------------------------------------- times

_NUM = r"(?:\d+(?:\.\d*)?|\.\d+)"
_TIME_RE = re.compile(rf"-?{_NUM}%?")
# A keyframe line: optional indentation, a time, optional blanks, ':'.
_KEYFRAME_RE = re.compile(rf"(\s*)(-?{_NUM}%?)\s*:")
# A line that starts with a time-like token (not a word such as "1girl" or "3d").
_TIME_START_RE = re.compile(rf"(\s*)(-?{_NUM}%?)(?![\w.%])")
# FizzNodes habit: "12": "a dog",
_QUOTED_KEY_RE = re.compile(rf'(\s*)"\s*-?{_NUM}%?\s*"\s*:')
_TIME_EXAMPLES = "a step such as 10, a fraction such as 0.5, or a percentage such as 50%"


def _parse_time(token: str, line: int, col: int) -> Position:
    """A time token (already matching _TIME_RE) → Position; range errors name line/col."""
    if token.startswith("-"):
        raise ScheduleError(line, col, f"time {_quote(token)} is negative (times run from 0 to 100%)")
    if token.endswith("%"):
        value = float(token[:-1])
        if value > 100:
            raise ScheduleError(line, col, f"time {_quote(token)} is beyond 100%")
        return Position(value / 100.0, "fraction")
    if "." in token:
        value = float(token)
        if value > 1:
            raise ScheduleError(line, col, f"time {_quote(token)} is beyond 1.0 (a number with a '.' "
                                           f"is a fraction of the steps, from 0.0 to 1.0)")
        return Position(value, "fraction")
    return Position(int(token), "step")


# --------------------------------------------------------------------------- source text

class _Source:
    """One keyframe's prompt: the joined text of its lines, with a (line, col) per character."""

    def __init__(self, end_found: str):
        self.chars: list[str] = []
        self.where: list[tuple[int, int]] = []
        self.joins: set[int] = set()          # synthetic spaces joining two lines
        self.end: tuple[int, int] = (1, 1)
        self.end_found = end_found

    def add_line(self, text: str, line: int, col: int) -> None:
        """Append `text` (which starts at 1-based column `col` of `line`), trimmed."""
        stripped = text.lstrip()
        col += len(text) - len(stripped)
        stripped = stripped.rstrip()
        if not stripped:
            return
        if self.chars:
            self.joins.add(len(self.chars))
            self.chars.append(" ")
            self.where.append(self.end)
        for k, c in enumerate(stripped):
            self.chars.append(c)
            self.where.append((line, col + k))
        self.end = (line, col + len(stripped))

    @property
    def text(self) -> str:
        return "".join(self.chars)

    def found(self, i: int) -> str:
        if i >= len(self.chars):
            return self.end_found
        if i in self.joins:
            return "end of line"
        return _quote(self.chars[i])

    def error(self, i: int, expected: str, found: Optional[str] = None,
              hint: Optional[str] = None) -> ScheduleSyntaxError:
        line, col = self.where[i] if i < len(self.chars) else self.end
        return ScheduleSyntaxError(line, col, expected, self.found(i) if found is None else found, hint)

    def describe_at(self, i: int, relative_to: int) -> str:
        line, col = self.where[i]
        other_line = self.where[relative_to][0] if relative_to < len(self.chars) else self.end[0]
        return f"col {col}" if line == other_line else f"line {line}, col {col}"


# --------------------------------------------------------------------------- prompt AST

@dataclass
class _Edit:
    before: list
    after: list
    when: Position
    switch: int = 0        # resolved step at the schedule's num_steps


@dataclass
class _Alt:
    options: list


_ESCAPES = "[]:|\\#"
_MAX_DEPTH = 64            # bracket nesting; far beyond any real prompt, well within recursion limits


class _PromptParser:
    def __init__(self, src: _Source):
        self.src = src
        self.s = src.text
        self.depth = 0

    def parse(self) -> list:
        nodes, _ = self._sequence(0, inside=False)
        return nodes

    def _sequence(self, i: int, inside: bool) -> tuple[list, int]:
        """Text up to the end, or (inside brackets) up to a top-level ':', '|' or ']'."""
        s, src = self.s, self.src
        nodes: list = []
        buf: list[str] = []
        parens: list[int] = []     # open '(' inside this bracket: ':' and '|' are literal there

        def flush():
            if buf:
                nodes.append("".join(buf))
                buf.clear()

        while i < len(s):
            c = s[i]
            if c == "\\" and i + 1 < len(s) and i + 1 not in src.joins:
                d = s[i + 1]
                if d in _ESCAPES:
                    buf.append(d)
                    i += 2
                    continue
                if d in "()":       # ComfyUI's own emphasis escapes go to the tokenizer as is
                    buf.append(c + d)
                    i += 2
                    continue
            if c == "[":
                flush()
                node, i = self._bracket(i)
                nodes.extend(node)
                continue
            if c == "]":
                if not inside:
                    raise src.error(i, "prompt text", hint="no '[' opens it; write '\\]' for a literal ']'")
                if parens:
                    raise src.error(i, f"')' to close the '(' at {src.describe_at(parens[-1], i)}")
                break
            if inside:
                if c in ":|" and not parens:
                    break
                if c == "(":
                    parens.append(i)
                elif c == ")" and parens:
                    parens.pop()
            buf.append(c)
            i += 1
        flush()
        return nodes, i

    def _bracket(self, i: int) -> tuple[list, int]:
        """`[` at i → ([node] or the literal bracket's nodes, index after `]`)."""
        src = self.src
        if self.depth >= _MAX_DEPTH:
            raise src.error(i, f"at most {_MAX_DEPTH} nested brackets")
        self.depth += 1
        try:
            return self._bracket_body(i)
        finally:
            self.depth -= 1

    def _bracket_body(self, i: int) -> tuple[list, int]:
        s, src = self.s, self.src
        parts: list[tuple[list, int, int]] = []
        seps: list[tuple[str, int]] = []
        j = i + 1
        while True:
            nodes, k = self._sequence(j, inside=True)
            parts.append((nodes, j, k))
            if k >= len(s):
                raise src.error(k, f"']' to close the '[' at {src.describe_at(i, k)}")
            if s[k] == "]":
                end = k + 1
                break
            seps.append((s[k], k))
            j = k + 1

        if not seps:                       # [abc]: no edit, kept as written
            return ["["] + parts[0][0] + ["]"], end
        first = seps[0][0]
        for c, k in seps:
            if c != first:
                if first == ":":
                    raise src.error(k, "':' or ']' in an edit [from:to:when]",
                                    hint="nest an alternation instead, e.g. [[a|b]:c:0.5]; "
                                         "write '\\|' for a literal '|'")
                raise src.error(k, "'|' or ']' in an alternation [a|b]",
                                hint="nest an edit instead, e.g. [[a:b:0.5]|c]; "
                                     "write '\\:' for a literal ':'")
        if first == "|":
            return [_Alt([p[0] for p in parts])], end
        if len(seps) > 2:
            raise src.error(seps[2][1], "']' (an edit has at most three parts, [from:to:when])",
                            hint="write '\\:' for a literal ':'")

        _, start, stop = parts[-1]
        raw = s[start:stop]
        token = raw.strip()
        at = start + (len(raw) - len(raw.lstrip()))
        if not _TIME_RE.fullmatch(token):
            found = src.found(stop) if not token else _quote(_word_at(s[:stop], at))
            raise src.error(at, f"a time after the last ':' ({_TIME_EXAMPLES})", found=found,
                            hint="write '\\:' for a literal ':'")
        line, col = src.where[at]
        when = _parse_time(token, line, col)
        before = parts[0][0] if len(parts) == 3 else []
        return [_Edit(before, parts[-2][0], when)], end


def _resolve(nodes: list, num_steps: int, switches: set[int]) -> bool:
    """Fix every edit's switch step; collect them; True when an alternation is present."""
    has_alt = False
    for node in nodes:
        if isinstance(node, _Edit):
            node.switch = node.when.to_step(num_steps) if node.when.unit == "fraction" \
                else int(node.when.value)
            switches.add(node.switch)
            has_alt |= _resolve(node.before, num_steps, switches)
            has_alt |= _resolve(node.after, num_steps, switches)
        elif isinstance(node, _Alt):
            has_alt = True
            for option in node.options:
                _resolve(option, num_steps, switches)
    return has_alt


def _render(nodes: list, step: int, out: list[str]) -> None:
    for node in nodes:
        if isinstance(node, str):
            out.append(node)
        elif isinstance(node, _Edit):
            _render(node.before if step < node.switch else node.after, step, out)
        else:
            _render(node.options[step % len(node.options)], step, out)


def _text_at(nodes: list, step: int) -> str:
    out: list[str] = []
    _render(nodes, step, out)
    return " ".join("".join(out).split())


# --------------------------------------------------------------------------- schedule

@dataclass(frozen=True)
class Schedule:
    """Concrete prompts (one per timeline keyframe) and when each is active.

    `source_lines[k]` is the text line of the keyframe line that keyframe k came from
    (1 for a text without keyframe lines); `num_steps` is the step count it was
    resolved for (inline edits depend on it).
    """
    prompts: tuple[str, ...]
    timeline: Timeline
    num_steps: int = 0
    source_lines: tuple[int, ...] = ()

    def prompt_at(self, step: int) -> str:
        """The prompt of the keyframe that is (or starts the blend that is) active at `step`."""
        return self.prompts[self.timeline.blend_at(step, self.num_steps).first]


@dataclass
class _Keyframe:
    line: int
    col: int
    token: str
    position: Position
    step: int
    src: _Source
    nodes: list = None


def _split_lines(text: str) -> list[str]:
    return re.split(r"\r\n|\r|\n", text)


def _is_ignored(line: str) -> bool:
    stripped = line.lstrip()
    return not stripped or stripped.startswith("#")


def parse_schedule(text: str, num_steps: int, interpolation: str = "hold") -> Schedule:
    """Parse a prompt schedule and resolve it for a sampler with `num_steps` steps."""
    if not isinstance(text, str):
        raise TypeError(f"the schedule must be a str, got {type(text).__name__}")
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps must be a positive integer, got {num_steps!r}")
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {INTERPOLATIONS}, got {interpolation!r}")

    lines = _split_lines(text)
    content = [k for k, line in enumerate(lines) if not _is_ignored(line)]
    last_content = content[-1] if content else -1

    for k in content:
        m = _QUOTED_KEY_RE.match(lines[k])
        if m:
            raise ScheduleSyntaxError(k + 1, len(m.group(1)) + 1,
                                      "a time such as 0, 30% or 0.3 at the start of the line", "'\"'",
                                      "write keyframes as 12: prompt, without quotes")
    scheduled = any(_KEYFRAME_RE.match(lines[k]) for k in content)

    if not scheduled:
        if not content:
            raise ScheduleSyntaxError(len(lines), len(lines[-1]) + 1,
                                      "a prompt or a keyframe line such as '0: a cat'", "end of text")
        src = _Source("end of text")
        for k in content:
            src.add_line(lines[k], k + 1, 1)
        keyframes = [_Keyframe(content[0] + 1, 1, "0", Position(0.0), 0, src)]
        keyframes[0].nodes = _PromptParser(src).parse()
    else:
        keyframes = _parse_keyframe_lines(lines, content, last_content, num_steps, interpolation)

    return _expand(keyframes, num_steps, interpolation)


def _parse_keyframe_lines(lines: list[str], content: list[int], last_content: int,
                          num_steps: int, interpolation: str) -> list[_Keyframe]:
    keyframes: list[_Keyframe] = []

    def finish(kf: _Keyframe) -> None:
        if not kf.src.chars:
            line_text = lines[kf.line - 1].rstrip()
            raise ScheduleSyntaxError(kf.line, len(line_text) + 1, f"a prompt after {_quote(kf.token + ':')}",
                                      kf.src.end_found)
        kf.nodes = _PromptParser(kf.src).parse()

    for k in content:
        line, lineno = lines[k], k + 1
        m = _KEYFRAME_RE.match(line)
        if not m:
            t = _TIME_START_RE.match(line)
            if t:
                at = t.end()
                while at < len(line) and line[at].isspace():
                    at += 1
                found = _quote(line[at]) if at < len(line) else (
                    "end of text" if k == last_content else "end of line")
                raise ScheduleSyntaxError(lineno, at + 1, "':' after the time", found,
                                          "a line that continues a prompt cannot start with a number")
            if not keyframes:
                indent = len(line) - len(line.lstrip())
                raise ScheduleSyntaxError(lineno, indent + 1, "a keyframe line such as '0: a cat' "
                                          "before any prompt text", _quote(_word_at(line, indent)))
            keyframes[-1].src.add_line(line, lineno, 1)
            continue

        if keyframes:
            keyframes[-1].src.end_found = "end of line"     # its prompt ends where this line starts
            finish(keyframes[-1])
        token, col = m.group(2), len(m.group(1)) + 1
        position = _parse_time(token, lineno, col)
        step = position.to_step(num_steps)
        if not keyframes:
            if position.value != 0:
                raise ScheduleError(lineno, col, f"the schedule must start at 0, but the first keyframe "
                                                 f"is at {_quote(token)} (add a line '0: …' before it)")
        else:
            prev = keyframes[-1]
            if position.unit == "step" and step >= num_steps:
                raise ScheduleError(lineno, col, f"step {int(position.value)} is beyond the last step "
                                                 f"{num_steps - 1} of {num_steps}")
            if step < prev.step or (step == prev.step and position.unit == prev.position.unit
                                    and position.value < prev.position.value):
                raise ScheduleError(lineno, col, f"keyframe {_quote(token)} (step {step}) comes before "
                                                 f"keyframe {_quote(prev.token)} on line {prev.line} "
                                                 f"(step {prev.step}); keyframes must be in increasing order")
            if step == prev.step:
                raise ScheduleError(lineno, col, f"keyframe {_quote(token)} falls on step {step} like "
                                                 f"keyframe {_quote(prev.token)} on line {prev.line} "
                                                 f"at {num_steps} steps; give each keyframe its own step")
            if step >= num_steps and interpolation == "hold":
                raise ScheduleError(lineno, col, f"keyframe {_quote(token)} is the end of sampling and is "
                                                 f"never used with hold (use linear or slerp to blend "
                                                 f"towards it)")
        src = _Source("end of text")
        keyframes.append(_Keyframe(lineno, col, token, position, step, src))
        src.end = (lineno, m.end() + 1)
        src.add_line(line[m.end():], lineno, m.end() + 1)

    finish(keyframes[-1])
    return keyframes


def _expand(keyframes: list[_Keyframe], num_steps: int, interpolation: str) -> Schedule:
    starts: list[Position] = []
    prompts: list[str] = []
    source_lines: list[int] = []
    hard_after: set[int] = set()
    for n, kf in enumerate(keyframes):
        begin = kf.step
        end = keyframes[n + 1].step if n + 1 < len(keyframes) else num_steps
        switches: set[int] = set()
        has_alt = _resolve(kf.nodes, num_steps, switches)
        candidates = range(begin + 1, end) if has_alt else sorted(t for t in switches if begin < t < end)
        text = _text_at(kf.nodes, begin)
        starts.append(kf.position)
        prompts.append(text)
        source_lines.append(kf.line)
        for t in candidates:
            new = _text_at(kf.nodes, t)
            if new != text:
                hard_after.add(len(starts) - 1)
                starts.append(Position(t, "step"))
                prompts.append(new)
                source_lines.append(kf.line)
                text = new
    timeline = Timeline(tuple(starts), interpolation, tuple(prompts), frozenset(hard_after))
    return Schedule(tuple(prompts), timeline, num_steps, tuple(source_lines))


# --------------------------------------------------------------------------- UI summary

def describe_schedule(schedule: Schedule, num_steps: int) -> list[dict]:
    """Segments for a UI: which prompt (or blend of two) is active over which steps.

    Each dict: kind ("hold" | "blend"), start_step, end_step (exclusive), start_percent,
    end_percent (fractions of the steps), keyframes (1 or 2 indices), prompts, lines
    (source text lines), weights (per step, towards the second prompt; zeros for
    hold), hard_start (the conditioning jumps at start_step) and a one-line summary.
    """
    if schedule.num_steps and num_steps != schedule.num_steps:
        raise ValueError(f"the schedule was resolved for {schedule.num_steps} steps, not {num_steps}; "
                         f"parse it again for {num_steps} steps")
    timeline = schedule.timeline
    hard = timeline.hard_switches(num_steps)
    lines = schedule.source_lines or (1,) * len(schedule.prompts)
    out = []
    for seg in timeline.segments(num_steps):
        a, b = seg["keys"]
        keys = (a,) if seg["kind"] == "hold" else (a, b)
        start, end = seg["start_step"], seg["end_step"]
        steps = f"step {start}" if end == start + 1 else f"steps {start}–{end - 1}"
        if seg["kind"] == "hold":
            summary = f"{steps}: {schedule.prompts[a]}"
        else:
            w = seg["weights"]
            summary = (f"{steps}: {schedule.prompts[a]} → {schedule.prompts[b]} "
                       f"({timeline.interpolation} {w[0]:.2f}–{w[-1]:.2f})")
        out.append({
            "kind": seg["kind"],
            "start_step": start,
            "end_step": end,
            "start_percent": start / num_steps,
            "end_percent": end / num_steps,
            "keyframes": keys,
            "prompts": tuple(schedule.prompts[k] for k in keys),
            "lines": tuple(lines[k] for k in keys),
            "weights": tuple(seg["weights"]),
            "hard_start": start in hard,
            "summary": summary,
        })
    return out
