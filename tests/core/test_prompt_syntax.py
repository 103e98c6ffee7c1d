"""Table-driven tests of the prompt-schedule parser (adjoint/prompt_syntax.py).

Each VALID row: (id, text, num_steps, interpolation, expected keyframes as
[(start_step, prompt), ...], expected hard_after). Each ERROR row: (id, text,
num_steps, interpolation, exact error message).
"""
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))

import pytest  # noqa: E402

from adjoint.prompt_syntax import (  # noqa: E402
    Schedule, ScheduleError, ScheduleSyntaxError, describe_schedule, parse_schedule)
from adjoint.timeline import Position  # noqa: E402

H, L, S = "hold", "linear", "slerp"

VALID = [
    # id, text, steps, interpolation, [(start_step, prompt)], hard_after
    ("plain", "a cat", 20, H, [(0, "a cat")], ()),
    ("plain-multiline", "a cat\n  in a garden  \n", 20, H, [(0, "a cat in a garden")], ()),
    ("plain-edit", "a [cat:dog:0.5]", 20, H, [(0, "a cat"), (10, "a dog")], {0}),
    ("plain-to-only", "a cat [dog:0.5]", 20, H, [(0, "a cat"), (10, "a cat dog")], {0}),
    ("from-only-collapses-spaces", "a [b::0.5] c", 20, H, [(0, "a b c"), (10, "a c")], {0}),
    ("edit-integer-step", "a [cat:dog:5]", 20, H, [(0, "a cat"), (5, "a dog")], {0}),
    ("edit-step-beyond-never-switches", "a [cat:dog:25]", 20, H, [(0, "a cat")], ()),
    ("edit-step-0-switches-at-once", "a [cat:dog:0]", 20, H, [(0, "a dog")], ()),
    ("edit-1.0-is-a-fraction", "a [cat:dog:1.0]", 20, H, [(0, "a cat")], ()),
    ("edit-percent", "a [cat:dog: 25% ]", 20, H, [(0, "a cat"), (5, "a dog")], {0}),
    ("edit-0.29-at-100", "a [cat:dog:0.29]", 100, H, [(0, "a cat"), (29, "a dog")], {0}),
    ("nested-in-from", "a [[b:c:0.2]:d:0.6]", 10, H, [(0, "a b"), (2, "a c"), (6, "a d")], {0, 1}),
    ("nested-in-to", "[a:[b:c:0.7]:0.3]", 10, H, [(0, "a"), (3, "b"), (7, "c")], {0, 1}),
    ("nested-equal-texts-merged", "a [[b:c:0.3]:c:0.6]", 10, H, [(0, "a b"), (3, "a c")], {0}),
    ("same-branches-merged", "a [x:x:0.5]", 10, H, [(0, "a x")], ()),
    ("percentages", "0%: a\n25%: b\n75%: c", 20, H, [(0, "a"), (5, "b"), (15, "c")], ()),
    ("fractions", "0.0: a\n.25: b\n0.5: c", 20, H, [(0, "a"), (5, "b"), (10, "c")], ()),
    ("steps", "0: a\n5: b\n12: c", 20, H, [(0, "a"), (5, "b"), (12, "c")], ()),
    ("mixed-units", "0: a\n25%: b\n0.5: c\n16: d", 20, H,
     [(0, "a"), (5, "b"), (10, "c"), (16, "d")], ()),
    ("keyframe-0.29-at-100", "0: a\n0.29: b", 100, H, [(0, "a"), (29, "b")], ()),
    ("keyframe-29%-at-100", "0: a\n29%: b\n57%: c", 100, H, [(0, "a"), (29, "b"), (57, "c")], ()),
    ("last-step-ok", "0: a\n19: b", 20, H, [(0, "a"), (19, "b")], ()),
    ("end-keyframe-linear", "0: a\n1.0: b", 20, L, [(0, "a"), (20, "b")], ()),
    ("comments-blank-continuation",
     "# title\n\n0: a cat,\n   in a garden\n\n# later\n50%: a dog", 20, H,
     [(0, "a cat, in a garden"), (10, "a dog")], ()),
    ("prompt-on-next-line", "0:\n  a cat\n50%: a dog", 20, H, [(0, "a cat"), (10, "a dog")], ()),
    ("hash-inside-line-literal", "0: a #1 cat", 20, H, [(0, "a #1 cat")], ()),
    ("continuation-word-with-digit", "0: a\n1girl, solo\n50%: b", 20, H,
     [(0, "a 1girl, solo"), (10, "b")], ()),
    ("indented-keyframes-crlf", "  0 : a\r\n  50% :b\r\n", 20, H, [(0, "a"), (10, "b")], ()),
    ("emphasis-untouched", "0: (a cat:1.2), ((garden))\n50%: (dog:0.8)", 20, H,
     [(0, "(a cat:1.2), ((garden))"), (10, "(dog:0.8)")], ()),
    ("colon-outside-brackets-literal", "0: a: b", 20, H, [(0, "a: b")], ()),
    ("escapes", r"0: a \[sic\] 16\:9 \\ \#tag \| x\y", 20, H, [(0, r"a [sic] 16:9 \ #tag | x\y")], ()),
    ("comfy-paren-escapes-kept", r"a \(b\) [\(c\):d:0.5]", 10, H,
     [(0, r"a \(b\) \(c\)"), (5, r"a \(b\) d")], {0}),
    ("escaped-time-colon", r"12\:30 pm", 20, H, [(0, "12:30 pm")], ()),
    ("literal-bracket-kept", "a [abc] [d [x:y:0.5]]", 10, H, [(0, "a [abc] [d x]"), (5, "a [abc] [d y]")], {0}),
    ("escaped-colon-in-edit", r"[a\:b:c:0.5]", 10, H, [(0, "a:b"), (5, "c")], {0}),
    ("escaped-pipe-in-edit", r"[a\|b:c:0.5]", 10, H, [(0, "a|b"), (5, "c")], {0}),
    ("edit-inside-emphasis", "([cat:dog:0.5]:1.2)", 10, H, [(0, "(cat:1.2)"), (5, "(dog:1.2)")], {0}),
    ("parens-opaque-in-edit", "[(cat:1.2):(dog:0.9):0.5]", 10, H, [(0, "(cat:1.2)"), (5, "(dog:0.9)")], {0}),
    ("bracket-spans-lines", "0: a [x:\n  y:0.5]\n", 10, H, [(0, "a x"), (5, "a y")], {0}),
    ("edit-after-keyframe-range-ignored", "0: a [x:y:0.75]\n50%: b", 20, H, [(0, "a x"), (10, "b")], ()),
    ("edit-before-keyframe-start", "0: a\n50%: b [x:y:0.25]", 20, H, [(0, "a"), (10, "b y")], ()),
    ("edit-inside-second-keyframe", "0: a\n50%: b [x:y:15]", 20, H, [(0, "a"), (10, "b x"), (15, "b y")], {1}),
    ("alternation", "a [cat|dog]", 4, H, [(0, "a cat"), (1, "a dog"), (2, "a cat"), (3, "a dog")], {0, 1, 2}),
    ("alternation-empty-option", "a [b|]", 3, H, [(0, "a b"), (1, "a"), (2, "a b")], {0, 1}),
    ("alternation-global-step", "0: x\n50%: [a|b|c]", 6, H, [(0, "x"), (3, "a"), (4, "b"), (5, "c")], {1, 2}),
    ("alternation-in-edit", "[[a|b]:c:0.5]", 4, H, [(0, "a"), (1, "b"), (2, "c")], {0, 1}),
    ("linear-keeps-repeated-prompt", "0: a\n25%: a\n75%: b", 20, L, [(0, "a"), (5, "a"), (15, "b")], ()),
    ("linear-edit-in-first", "0: a [x:y:0.25]\n50%: b", 20, L, [(0, "a x"), (5, "a y"), (10, "b")], {0}),
    ("slerp-edit-in-second", "0: a\n50%: b [c:d:0.75]\n1.0: e", 20, S,
     [(0, "a"), (10, "b c"), (15, "b d"), (20, "e")], {1}),
]

ERRORS = [
    # id, text, steps, interpolation, exact message
    ("empty", "", 20, H,
     "line 1, col 1: expected a prompt or a keyframe line such as '0: a cat', found end of text"),
    ("only-comments", "# a\n\n", 20, H,
     "line 3, col 1: expected a prompt or a keyframe line such as '0: a cat', found end of text"),
    ("empty-prompt", "0:\n50%: b", 20, H,
     "line 1, col 3: expected a prompt after '0:', found end of line"),
    ("empty-prompt-last", "0: a\n50%:  ", 20, H,
     "line 2, col 5: expected a prompt after '50%:', found end of text"),
    ("missing-colon", "0: a\n  0.5 a cat", 20, H,
     "line 2, col 7: expected ':' after the time, found 'a' "
     "(a line that continues a prompt cannot start with a number)"),
    ("missing-colon-end-of-line", "0: a\n50%\n75%: c", 20, H,
     "line 2, col 4: expected ':' after the time, found end of line "
     "(a line that continues a prompt cannot start with a number)"),
    ("missing-colon-first-line", "0 a cat\n50%: b", 20, H,
     "line 1, col 3: expected ':' after the time, found 'a' "
     "(a line that continues a prompt cannot start with a number)"),
    ("unclosed-bracket", "a [cat:dog:0.5", 20, H,
     "line 1, col 15: expected ']' to close the '[' at col 3, found end of text"),
    ("unclosed-bracket-before-next-keyframe", "0: a [b:c:0.5\n50%: d", 20, H,
     "line 1, col 14: expected ']' to close the '[' at col 6, found end of line"),
    ("unclosed-bracket-other-line", "0: a [b:\nc", 20, H,
     "line 2, col 2: expected ']' to close the '[' at line 1, col 6, found end of text"),
    ("unmatched-close", "0: a] b", 20, H,
     "line 1, col 5: expected prompt text, found ']' (no '[' opens it; write '\\]' for a literal ']')"),
    ("text-before-first-keyframe", "a cat\n0: b", 20, H,
     "line 1, col 1: expected a keyframe line such as '0: a cat' before any prompt text, found 'a'"),
    ("schedule-must-start-at-0", "30%: a\n50%: b", 20, H,
     "line 1, col 1: the schedule must start at 0, but the first keyframe is at '30%' "
     "(add a line '0: …' before it)"),
    ("out-of-order", "0: a\n50%: b\n30%: c", 20, H,
     "line 3, col 1: keyframe '30%' (step 6) comes before keyframe '50%' on line 2 (step 10); "
     "keyframes must be in increasing order"),
    ("out-of-order-same-step", "0: a\n0.33: b\n0.31: c", 10, H,
     "line 3, col 1: keyframe '0.31' (step 3) comes before keyframe '0.33' on line 2 (step 3); "
     "keyframes must be in increasing order"),
    ("duplicate-time", "0: a\n50%: b\n50%: c", 20, H,
     "line 3, col 1: keyframe '50%' falls on step 10 like keyframe '50%' on line 2 at 20 steps; "
     "give each keyframe its own step"),
    ("duplicate-across-units", "0: a\n0.5: b\n10: c", 20, H,
     "line 3, col 1: keyframe '10' falls on step 10 like keyframe '0.5' on line 2 at 20 steps; "
     "give each keyframe its own step"),
    ("duplicate-at-low-step-count", "0: a\n0.31: b\n0.33: c", 10, H,
     "line 3, col 1: keyframe '0.33' falls on step 3 like keyframe '0.31' on line 2 at 10 steps; "
     "give each keyframe its own step"),
    ("percent-out-of-range", "0: a\n101%: b", 20, L,
     "line 2, col 1: time '101%' is beyond 100%"),
    ("fraction-out-of-range", "0: a\n1.5: b", 20, H,
     "line 2, col 1: time '1.5' is beyond 1.0 (a number with a '.' is a fraction of the steps, from 0.0 to 1.0)"),
    ("negative-time", "0: a\n-0.1: b", 20, H,
     "line 2, col 1: time '-0.1' is negative (times run from 0 to 100%)"),
    ("step-beyond", "0: a\n50%: b\n25: c", 20, H,
     "line 3, col 1: step 25 is beyond the last step 19 of 20"),
    ("step-equal-to-num-steps", "0: a\n20: b", 20, L,
     "line 2, col 1: step 20 is beyond the last step 19 of 20"),
    ("end-keyframe-in-hold", "0: a\n100%: b", 20, H,
     "line 2, col 1: keyframe '100%' is the end of sampling and is never used with hold "
     "(use linear or slerp to blend towards it)"),
    ("edit-time-not-a-number", "0: a [b:c:soon]", 20, H,
     "line 1, col 11: expected a time after the last ':' (a step such as 10, a fraction such as 0.5, "
     "or a percentage such as 50%), found 'soon' (write '\\:' for a literal ':')"),
    ("edit-two-parts-no-time", "a [b:c]", 20, H,
     "line 1, col 6: expected a time after the last ':' (a step such as 10, a fraction such as 0.5, "
     "or a percentage such as 50%), found 'c' (write '\\:' for a literal ':')"),
    ("edit-time-empty", "a [b:c: ]", 20, H,
     "line 1, col 9: expected a time after the last ':' (a step such as 10, a fraction such as 0.5, "
     "or a percentage such as 50%), found ']' (write '\\:' for a literal ':')"),
    ("edit-too-many-parts", "a [b:c:d:0.5]", 20, H,
     "line 1, col 9: expected ']' (an edit has at most three parts, [from:to:when]), found ':' "
     "(write '\\:' for a literal ':')"),
    ("edit-fraction-out-of-range", "a [b:c:2.5]", 20, H,
     "line 1, col 8: time '2.5' is beyond 1.0 (a number with a '.' is a fraction of the steps, from 0.0 to 1.0)"),
    ("edit-negative-time", "a [b:c:-0.5]", 20, H,
     "line 1, col 8: time '-0.5' is negative (times run from 0 to 100%)"),
    ("edit-mixed-with-alternation", "a [b:c|d:0.5]", 20, H,
     "line 1, col 7: expected ':' or ']' in an edit [from:to:when], found '|' "
     "(nest an alternation instead, e.g. [[a|b]:c:0.5]; write '\\|' for a literal '|')"),
    ("unclosed-paren-in-edit", "a [(b:1.2:c:0.5] d", 20, H,
     "line 1, col 16: expected ')' to close the '(' at col 4, found ']'"),
    ("time-like-text-is-a-keyframe", "12:30 pm, a clock", 20, H,
     "line 1, col 1: the schedule must start at 0, but the first keyframe is at '12' "
     "(add a line '0: …' before it)"),
    ("nesting-too-deep", "[" * 65 + "a" + ":b:0.5]" * 65, 20, H,
     "line 1, col 65: expected at most 64 nested brackets, found '['"),
    ("fizznodes-quotes", '"0": "a cat",\n"12": "a dog"', 20, H,
     "line 1, col 1: expected a time such as 0, 30% or 0.3 at the start of the line, found '\"' "
     "(write keyframes as 12: prompt, without quotes)"),
]


@pytest.mark.parametrize("text, steps, interpolation, expected, hard",
                         [row[1:] for row in VALID], ids=[row[0] for row in VALID])
def test_valid_schedule(text, steps, interpolation, expected, hard):
    schedule = parse_schedule(text, steps, interpolation)
    timeline = schedule.timeline
    assert list(zip(timeline.start_steps(steps), schedule.prompts)) == expected
    assert timeline.hard_after == frozenset(hard)
    assert timeline.labels == schedule.prompts
    assert timeline.interpolation == interpolation
    # The time line covers every step exactly once: starts at 0, strictly increasing.
    starts = timeline.start_steps(steps)
    assert starts[0] == 0 and all(a < b for a, b in zip(starts, starts[1:]))
    assert sum(seg["end_step"] - seg["start_step"] for seg in timeline.segments(steps)) == steps


@pytest.mark.parametrize("text, steps, interpolation, message",
                         [row[1:] for row in ERRORS], ids=[row[0] for row in ERRORS])
def test_malformed_schedule(text, steps, interpolation, message):
    with pytest.raises(ScheduleError) as info:
        parse_schedule(text, steps, interpolation)
    assert str(info.value) == message
    assert isinstance(info.value, ValueError)
    assert message.startswith(f"line {info.value.line}, col {info.value.col}: ")


def test_table_size():
    assert len(VALID) + len(ERRORS) >= 40


def test_syntax_error_attributes():
    with pytest.raises(ScheduleSyntaxError) as info:
        parse_schedule("0: a\n  0.5 a cat", 20)
    e = info.value
    assert (e.line, e.col, e.expected, e.found) == (2, 7, "':' after the time", "'a'")


def test_keyframe_units_are_kept():
    schedule = parse_schedule("0: a\n30%: b [c:d:0.75]\n0.9: e", 20)
    assert schedule.timeline.starts == (Position(0, "step"), Position(0.3), Position(15, "step"),
                                        Position(0.9))
    assert schedule.source_lines == (1, 2, 2, 3)
    assert schedule.num_steps == 20
    assert [schedule.prompt_at(i) for i in (0, 5, 6, 14, 15, 17, 18, 19)] == \
        ["a", "a", "b c", "b c", "b d", "b d", "e", "e"]


def test_linear_blends_and_hard_switches():
    timeline = parse_schedule("0: a [x:y:0.25]\n50%: b", 20, "linear").timeline
    # keyframes: 0 "a x" @0, 1 "a y" @5 (hard switch from 0), 2 "b" @10
    assert timeline.blend_at(4, 20).first == 0 and timeline.blend_at(4, 20).is_pure
    blend = timeline.blend_at(7, 20)
    assert (blend.first, blend.second, blend.weight) == (1, 2, pytest.approx(0.4))
    assert timeline.hard_switches(20) == frozenset({5})


def test_describe_schedule():
    schedule = parse_schedule("0: a [x:y:0.2]\n50%: b", 10, "linear")
    rows = describe_schedule(schedule, 10)
    assert [(r["kind"], r["start_step"], r["end_step"], r["prompts"], r["hard_start"]) for r in rows] == [
        ("hold", 0, 2, ("a x",), False),
        ("hold", 2, 3, ("a y",), True),
        ("blend", 3, 5, ("a y", "b"), False),
        ("hold", 5, 10, ("b",), False),
    ]
    assert rows[2]["weights"] == pytest.approx((1 / 3, 2 / 3))
    assert rows[2]["summary"] == "steps 3–4: a y → b (linear 0.33–0.67)"
    assert rows[1]["summary"] == "step 2: a y"
    assert rows[0]["lines"] == (1,) and rows[2]["lines"] == (1, 2)
    assert (rows[3]["start_percent"], rows[3]["end_percent"]) == (0.5, 1.0)
    with pytest.raises(ValueError, match="resolved for 10 steps"):
        describe_schedule(schedule, 20)


@pytest.mark.parametrize("args, match", [
    (("a", 0), "num_steps"),
    (("a", 20, "cubic"), "interpolation"),
])
def test_bad_arguments(args, match):
    with pytest.raises(ValueError, match=match):
        parse_schedule(*args)


def test_schedule_is_frozen():
    schedule = parse_schedule("a", 5)
    assert isinstance(schedule, Schedule)
    with pytest.raises(Exception):
        schedule.prompts = ("b",)
