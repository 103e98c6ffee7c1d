"""Prompt Schedule glue in-process: step → percent, stock entries, the carrier, node errors.

Coverage is checked with ComfyUI's own code: the entries go through
comfy.samplers.calculate_start_end_timesteps and get_area_and_mult exactly as a stock
sampler does, at every step σ of calculate_sigmas, with σ in float32 and float64, on
the tiny UNet's ModelSamplingDiscrete and on flow samplings (ModelSamplingSD3 /
ModelSamplingFlux patches).
"""
import json
import types

import pytest
import torch

from comfy_harness import pack_submodule, tiny_unet32_patcher

STEP_COUNTS = (1, 2, 3, 7, 10, 20, 37)


@pytest.fixture(scope="module")
def sc(comfy_nodes):
    return pack_submodule("nodes.schedule_conditioning")


@pytest.fixture(scope="module")
def ps(comfy_nodes):
    return pack_submodule("nodes.prompt_schedule")


@pytest.fixture(scope="module")
def tl(comfy_nodes):
    return pack_submodule("adjoint.timeline")


@pytest.fixture(scope="module")
def models(comfy_nodes):
    """name → ModelPatcher: the tiny SD1.5-style UNet and flow-patched copies of it."""
    from comfy_extras.nodes_model_advanced import ModelSamplingDiscrete, ModelSamplingFlux, ModelSamplingSD3
    base = tiny_unet32_patcher()
    return {
        "sd15": base,
        "sd3-flow": ModelSamplingSD3().patch(base, 3.0)[0],
        "flux-flow": ModelSamplingFlux().patch(base, 1.15, 0.5, 1024, 1024)[0],
        "vpred-zsnr": ModelSamplingDiscrete().patch(base, "v_prediction", True)[0],
    }


def _sigmas(model, scheduler, steps):
    import comfy.samplers
    return comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), scheduler, steps)


def _processed(conditioning, model_sampling):
    """The entries as a stock sampler holds them: timestep_start/end from ComfyUI's own code."""
    import comfy.samplers
    conds = [{**c[1], "cross_attn": c[0], "model_conds": {}, "uuid": i} for i, c in enumerate(conditioning)]
    comfy.samplers.calculate_start_end_timesteps(types.SimpleNamespace(model_sampling=model_sampling), conds)
    return conds


def _active_entries(conds, sigma, dtype):
    """Indices of the processed entries a stock sampler uses at σ (get_area_and_mult), σ in `dtype`."""
    import comfy.samplers
    x = torch.zeros(1, 4, 2, 2, dtype=dtype)
    t = torch.tensor([sigma], dtype=dtype)
    return [c["uuid"] for c in conds if comfy.samplers.get_area_and_mult(c, x, t) is not None]


def _every_step_timeline(tl, steps):
    return tl.Timeline(tuple(tl.Position(k, "step") for k in range(steps)), "hold")


def _fake_keyframes(n, tokens=4, channels=3):
    g = torch.Generator().manual_seed(n)
    return [{"cross_attn": torch.randn(1, tokens, channels, generator=g),
             "pooled_output": torch.randn(1, channels, generator=g)} for _ in range(n)]


def _schedule(sc, keyframes, timeline, steps, scheduler, model=None):
    windows = sc.plan_windows(timeline, steps, scheduler, model)
    cond, carrier = sc.schedule_to_conditioning(keyframes, timeline, steps, [str(i) for i in range(len(keyframes))],
                                                scheduler, windows, exact=model is not None)
    return cond, carrier, windows


def _check_coverage(sc, conditioning, windows, model, scheduler, steps):
    conds = _processed(conditioning, model.get_model_object("model_sampling"))
    sigmas = _sigmas(model, scheduler, steps)
    for i in range(steps):
        expected = [n for n, w in enumerate(windows) if w["start_step"] <= i < w["end_step"]]
        assert len(expected) == 1
        for dtype in (torch.float32, torch.float64):
            got = _active_entries(conds, float(sigmas[i]), dtype)
            assert got == expected, (f"{scheduler} {steps} steps, step {i} (σ={float(sigmas[i])!r}, {dtype}): "
                                     f"entries {got}, expected {expected}")


# --------------------------------------------------------------------------- step → percent

@pytest.mark.parametrize("model_name", ["sd15", "sd3-flow", "flux-flow", "vpred-zsnr"])
def test_every_step_is_covered_by_exactly_its_own_entry(sc, tl, models, model_name):
    """A keyframe at every step: each step σ falls into exactly its entry, in float32 and float64."""
    import comfy.samplers
    model = models[model_name]
    checked = 0
    for scheduler in comfy.samplers.SCHEDULER_NAMES:
        for steps in STEP_COUNTS:
            if steps == 1 and scheduler == "kl_optimal":
                continue   # ComfyUI's kl_optimal gives σ = nan at 1 step
            timeline = _every_step_timeline(tl, steps)
            n_sigmas = len(_sigmas(model, scheduler, steps))
            if n_sigmas != steps + 1:
                with pytest.raises(ValueError, match=f"scheduler: '{scheduler}' makes {n_sigmas - 1} sampling steps, "
                                                     f"not {steps}"):
                    sc.plan_windows(timeline, steps, scheduler, model)
                continue
            cond, carrier, windows = _schedule(sc, _fake_keyframes(steps), timeline, steps, scheduler, model)
            assert len(cond) == steps
            assert cond[0][1]["start_percent"] == 0.0 and cond[-1][1]["end_percent"] == 1.0
            for a, b in zip(cond, cond[1:]):
                assert a[1]["end_percent"] == b[1]["start_percent"]       # no gap, no overlap
                assert 0.0 <= a[1]["start_percent"] < a[1]["end_percent"] <= 1.0
            _check_coverage(sc, cond, windows, model, scheduler, steps)
            checked += 1
    assert checked >= 50


@pytest.mark.parametrize("interpolation", ["hold", "linear", "slerp"])
@pytest.mark.parametrize("scheduler", ["normal", "karras", "sgm_uniform", "beta"])
def test_mixed_schedule_entries_cover_the_right_keyframe(sc, tl, models, interpolation, scheduler):
    """Percent, fraction and step keyframes: hold runs and per-step blend entries hit their steps."""
    P = tl.Position
    steps = 20
    timeline = tl.Timeline((P(0.0), P(0.3), P(12, "step"), P(0.85)), interpolation)
    keyframes = _fake_keyframes(4)
    for model in (models["sd15"], models["sd3-flow"]):
        cond, carrier, windows = _schedule(sc, keyframes, timeline, steps, scheduler, model)
        _check_coverage(sc, cond, windows, model, scheduler, steps)
        scheduled = carrier.scheduled()
        for i in range(steps):
            (entry,) = [c for c, w in zip(cond, windows) if w["start_step"] <= i < w["end_step"]]
            want = scheduled.at(i, steps)
            assert torch.equal(entry[0], want["cross_attn"])
            assert torch.equal(entry[1]["pooled_output"], want["pooled_output"])
    if interpolation == "hold":
        assert [(w["start_step"], w["end_step"]) for w in windows] == [(0, 6), (6, 12), (12, 17), (17, 20)]
        assert all(c[0] is kf["cross_attn"] for c, kf in zip(cond, keyframes))   # their own tensors
    else:
        # one entry per blended step: 1–5, 7–11, 13–16; step 0 and steps 17–19 are pure keyframes
        assert [w["start_step"] for w in windows if w["kind"] == "blend"] == [*range(1, 6), *range(7, 12),
                                                                               *range(13, 17)]


def test_without_a_model_the_default_sd_schedule_is_used(sc, tl, models):
    """No model: exact for SD1.x-family samplings (the tiny UNet's), flagged approximate."""
    import comfy.samplers
    for scheduler in comfy.samplers.SCHEDULER_NAMES:
        for steps in (10, 20):
            timeline = _every_step_timeline(tl, steps)
            if len(_sigmas(models["sd15"], scheduler, steps)) != steps + 1:
                continue
            exact = sc.plan_windows(timeline, steps, scheduler, models["sd15"])
            approx = sc.plan_windows(timeline, steps, scheduler, None)
            assert [w["start_percent"] for w in approx] == [w["start_percent"] for w in exact]
            cond, carrier, windows = _schedule(sc, _fake_keyframes(steps), timeline, steps, scheduler, None)
            assert carrier.exact is False
            _check_coverage(sc, cond, windows, models["sd15"], scheduler, steps)


@pytest.mark.parametrize("scheduler", ["normal", "simple", "sgm_uniform", "beta", "ddim_uniform"])
def test_without_a_model_time_based_schedulers_stay_exact_on_flow_models(sc, tl, models, scheduler):
    """The README's claim: schedulers spaced in model time give the same step percents on any model."""
    for name in ("sd3-flow", "flux-flow"):
        for steps in (10, 20):
            if len(_sigmas(models[name], scheduler, steps)) != steps + 1:
                continue
            cond, _, windows = _schedule(sc, _fake_keyframes(steps), _every_step_timeline(tl, steps), steps,
                                         scheduler, None)
            _check_coverage(sc, cond, windows, models[name], scheduler, steps)


def test_naive_step_fraction_percents_would_double_cover(models):
    """Why percents are never k/steps: for sgm_uniform that σ IS step k's σ (two entries active)."""
    ms = models["sd15"].get_model_object("model_sampling")
    sigmas = _sigmas(models["sd15"], "sgm_uniform", 20)
    hits = sum(torch.tensor(ms.percent_to_sigma(k / 20), dtype=torch.float32) == sigmas[k] for k in range(1, 20))
    assert hits >= 10


def test_boundary_percent_errors_when_steps_share_a_sigma(sc, models):
    ms = models["sd15"].get_model_object("model_sampling")
    with pytest.raises(ValueError, match="no timestep range separates them"):
        sc.boundary_percent(ms, 1.5, 1.5)
    p = sc.boundary_percent(ms, 2.0, 1.0)
    assert 1.0 < ms.percent_to_sigma(p) < 2.0


# --------------------------------------------------------------------------- carrier

def test_find_schedule_on_raw_and_processed_conditioning(sc, tl, models):
    timeline = tl.Timeline((tl.Position(0.0), tl.Position(0.5)), "linear")
    cond, carrier, _ = _schedule(sc, _fake_keyframes(2), timeline, 10, "normal", models["sd15"])
    assert sc.find_schedule(cond) is carrier
    import comfy.sampler_helpers
    assert sc.find_schedule(comfy.sampler_helpers.convert_cond(cond)) is carrier
    plain = [[torch.zeros(1, 4, 3), {"pooled_output": torch.zeros(1, 3)}]]
    assert sc.find_schedule(plain) is None and sc.find_schedule([]) is None
    found, others = sc.split_schedule(cond + plain)
    assert found is carrier and len(others) == 1 and others[0] is plain[0]
    cond2, _, _ = _schedule(sc, _fake_keyframes(2), timeline, 10, "normal", models["sd15"])
    with pytest.raises(ValueError, match="combines 2 different prompt schedules"):
        sc.find_schedule(cond + cond2)
    # What our sampler builds from it: keyframes as ScheduledConditioning keyframes.
    scheduled = carrier.scheduled()
    assert scheduled.num_keyframes == 2 and len(scheduled.leaves()) == 4
    carrier.check_steps(10)
    with pytest.raises(ValueError, match="runs 12 steps, but the Prompt Schedule was resolved for 10 steps"):
        carrier.check_steps(12)
    assert "tensor" not in repr(carrier)


# --------------------------------------------------------------------------- nodes, fake CLIP

class FakeClip:
    """tokenize / encode_from_tokens_scheduled like comfy.sd.CLIP; 77 tokens per 75-word chunk."""

    def __init__(self, channels=8, hooked=False):
        self.channels = channels
        self.hooked = hooked
        self.encoded = []

    def tokenize(self, text):
        return text

    def encode_from_tokens_scheduled(self, text):
        self.encoded.append(text)
        chunks = max(1, -(-len(text.split()) // 75))
        g = torch.Generator().manual_seed(sum(map(ord, text)) + 7)
        out = [[torch.randn(1, 77 * chunks, self.channels, generator=g),
                {"pooled_output": torch.randn(1, self.channels, generator=g)}]]
        return out * 2 if self.hooked else out


def test_prompt_schedule_encodes_each_prompt_once_and_keeps_keyframes_separate(ps, sc, models):
    clip = FakeClip()
    out = ps.PromptSchedule.execute(clip, "0: a cat\n25%: a dog\n50%: a cat\n15: a [fox:owl:17]",
                                    "hold", 20, "normal", models["sd15"])
    cond = out.args[0]
    assert sorted(clip.encoded) == ["a cat", "a dog", "a fox", "a owl"]
    carrier = sc.find_schedule(cond)
    assert carrier.labels == ("a cat", "a dog", "a cat", "a fox", "a owl")
    assert carrier.timeline.start_steps(20) == (0, 5, 10, 15, 17)
    k0, k2 = carrier.keyframes[0]["cross_attn"], carrier.keyframes[2]["cross_attn"]
    assert torch.equal(k0, k2) and k0.data_ptr() != k2.data_ptr()    # same prompt, separate leaves
    assert all(c[1][sc.SCHEDULE_KEY] is carrier for c in cond)
    ui = json.loads(json.dumps(out.ui))       # JSON-serialisable
    (timeline,) = ui["adjoint_guidance_timeline"]
    assert timeline["percents"] == "model" and timeline["steps"] == 20
    assert [k["source"]["line"] for k in timeline["keyframes"]] == [1, 2, 3, 4, 4]
    assert [(e["start_step"], e["end_step"]) for e in timeline["entries"]] == [(0, 5), (5, 10), (10, 15), (15, 17), (17, 20)]
    assert [e["start_percent"] for e in timeline["entries"]] == [c[1]["start_percent"] for c in cond]
    assert [s["summary"] for s in timeline["segments"]][-1] == "steps 17–19: a owl"


@pytest.mark.parametrize("text, expected", [
    # the README's example: a repeated prompt holds it (one entry), then one entry per blended step
    ("0: day\n30%: day\n80%: night", [("hold", 0, 7), *[("blend", i, i + 1) for i in range(7, 16)], ("hold", 16, 20)]),
    # a blend towards the end of sampling: only step 0 is the first prompt itself
    ("0: day\n1.0: night", [("hold", 0, 1), *[("blend", i, i + 1) for i in range(1, 20)]]),
    # an inline edit inside a blended schedule stays a hard switch
    ("0: a [cat:dog:5]\n50%: a fox", [("hold", 0, 5), ("hold", 5, 6), *[("blend", i, i + 1) for i in range(6, 10)],
                                       ("hold", 10, 20)]),
])
def test_linear_windows(ps, models, text, expected):
    out = ps.PromptSchedule.execute(FakeClip(), text, "linear", 20, "normal", models["sd15"])
    entries = out.ui["adjoint_guidance_timeline"][0]["entries"]
    assert [(e["kind"], e["start_step"], e["end_step"]) for e in entries] == expected
    assert len(out.args[0]) == len(expected)


def test_single_keyframe_hold_is_the_encoded_prompt(ps):
    clip = FakeClip()
    (cond,) = ps.PromptSchedule.execute(clip, "a lighthouse", "hold", 12, "karras").args
    (ref,) = FakeClip().encode_from_tokens_scheduled("a lighthouse")
    assert len(cond) == 1 and torch.equal(cond[0][0], ref[0])
    assert cond[0][1]["start_percent"] == 0.0 and cond[0][1]["end_percent"] == 1.0


def test_blend_of_unequal_token_counts_is_a_clear_error(ps):
    long = " ".join(["word"] * 80)
    with pytest.raises(ValueError, match=r"^Prompt Schedule: text: the keyframes on lines 1 and 3 have 77 and 154 "
                                         r"tokens; blends need equal lengths — shorten"):
        ps.PromptSchedule.execute(FakeClip(), f"0: a cat\n\n50%: {long}", "linear", 20, "normal")
    out = ps.PromptSchedule.execute(FakeClip(), f"0: a cat\n\n50%: {long}", "hold", 20, "normal")
    assert [c[0].shape[1] for c in out.args[0]] == [77, 154]


@pytest.mark.parametrize("text, interpolation, steps, message", [
    ("0: a\n  0.5 a cat", "hold", 20,
     "Prompt Schedule: text: line 2, col 7: expected ':' after the time, found 'a' "
     "(a line that continues a prompt cannot start with a number)"),
    ("", "hold", 20, "Prompt Schedule: text: line 1, col 1: expected a prompt or a keyframe line such as "
                     "'0: a cat', found end of text"),
    ("0: a\n50%: b\n30%: c", "hold", 20, "Prompt Schedule: text: line 3, col 1: keyframe '30%' (step 6) comes "
                                         "before keyframe '50%' on line 2 (step 10); keyframes must be in increasing order"),
    ("0: a\n101%: b", "linear", 20, "Prompt Schedule: text: line 2, col 1: time '101%' is beyond 100%"),
    ("0: a\n25: b", "hold", 20, "Prompt Schedule: text: line 2, col 1: step 25 is beyond the last step 19 of 20"),
    ("0:\n50%: b", "hold", 20, "Prompt Schedule: text: line 1, col 3: expected a prompt after '0:', found end of line"),
    ("0: a", "cubic", 20, "Prompt Schedule: interpolation: expected one of hold, linear, slerp, found 'cubic'"),
    ("0: a", "hold", 0, "Prompt Schedule: steps: expected a whole number from 1 to 10000, found 0"),
])
def test_prompt_schedule_errors_name_node_and_input(ps, text, interpolation, steps, message):
    assert ps.PromptSchedule.validate_inputs(text=text, interpolation=interpolation, steps=steps) == message
    clip = FakeClip()
    with pytest.raises(ValueError) as e:
        ps.PromptSchedule.execute(clip, text, interpolation, steps, "normal")
    assert str(e.value) == message
    assert clip.encoded == []           # raised before any CLIP work


def test_validate_inputs_skips_linked_values(ps):
    assert ps.PromptSchedule.validate_inputs(text=None, interpolation="hold", steps=20) is True
    assert ps.PromptSchedule.validate_inputs(text="0: a", interpolation="hold", steps=None) is True
    assert ps.PromptSchedule.validate_inputs(text="0: a\n50%: b", interpolation="slerp", steps=20) is True
    assert ps.ConditioningSchedule.validate_inputs(times=None, interpolation="hold", steps=20) is True


@pytest.mark.parametrize("text, hints", [
    ("5O%: a cat", ["line 1, col 1: '5O%:' looks like a keyframe time but is not one, so this line is read as "
                    "prompt text; did you mean '50%:'?"]),
    ("0: a cat\n30 %: a dog", ["line 2, col 1: '30 %:' looks like a keyframe time but is not one, so this line "
                               "is read as prompt text; did you mean '30%:'?"]),
    ("0,5: a cat", ["line 1, col 1: '0,5:' looks like a keyframe time but is not one, so this line is read as "
                    "prompt text; did you mean '0.5:'?"]),
    ("0: a cat\n  1O: a dog\n# 5O%: no", ["line 2, col 3: '1O:' looks like a keyframe time but is not one, so "
                                          "this line is read as prompt text; did you mean '10:'?"]),
    ("0: a cat\n50%: a dog\n12:30 pm", []),
    ("1girl: a cat\nlol: a dog\n3d render", []),
])
def test_keyframe_typos_get_a_hint(ps, text, hints):
    assert ps.keyframe_typos(text) == hints


def test_a_keyframe_typo_is_a_warning_in_the_timeline(ps):
    out = ps.PromptSchedule.execute(FakeClip(), "0: a cat\n5O%: a dog", "hold", 10, "normal")
    (ui,) = out.ui["adjoint_guidance_timeline"]
    assert ui["warnings"] == ["Prompt Schedule: text: line 2, col 1: '5O%:' looks like a keyframe time but is not "
                              "one, so this line is read as prompt text; did you mean '50%:'?"]
    assert len(ui["keyframes"]) == 1            # still one keyframe: a hint, not an error


def test_validate_inputs_outside_comfyui_names_every_widget(ps):
    import inspect
    params = list(inspect.signature(ps.PromptSchedule.validate_inputs).parameters)
    assert params == ["text", "interpolation", "steps", "scheduler"]
    assert ps.PromptSchedule.validate_inputs(scheduler="foo", steps=0).startswith("Prompt Schedule: scheduler: ")


def test_prompts_are_remembered_per_clip_object_and_patch_state(ps):
    clip = FakeClip()
    ps.PromptSchedule.execute(clip, "0: a cat\n50%: a dog", "hold", 10, "normal")
    ps.PromptSchedule.execute(clip, "0: a cat\n50%: a dog\n80%: a fox", "linear", 10, "normal")
    assert clip.encoded == ["a cat", "a dog", "a fox"]          # an edit re-encodes only the new prompt
    clip.layer_idx = -2                                          # what CLIPSetLastLayer sets (on a clone)
    ps.PromptSchedule.execute(clip, "0: a cat", "hold", 10, "normal")
    assert clip.encoded[-1] == "a cat" and len(clip.encoded) == 4
    other = FakeClip()
    ps.PromptSchedule.execute(other, "0: a cat", "hold", 10, "normal")
    assert other.encoded == ["a cat"]


def test_prompt_schedule_rejects_clip_hook_keyframes(ps):
    with pytest.raises(ValueError, match="^Prompt Schedule: clip: this CLIP has scheduled hooks"):
        ps.PromptSchedule.execute(FakeClip(hooked=True), "0: a\n50%: b", "hold", 10, "normal")


# --------------------------------------------------------------------------- Conditioning Schedule

def _encoded(text, channels=8):
    return FakeClip(channels).encode_from_tokens_scheduled(text)


def test_conditioning_schedule_matches_prompt_schedule(ps, models):
    for interpolation in ("hold", "linear", "slerp"):
        a = ps.PromptSchedule.execute(FakeClip(), "0: red\n40%: green\n12: blue", interpolation, 20, "karras",
                                      models["sd15"])
        b = ps.ConditioningSchedule.execute("0, 40%, 12", interpolation, 20, "karras", _encoded("red"),
                                            models["sd15"], conditioning_2=_encoded("green"),
                                            conditioning_4=_encoded("blue"))
        ca, cb = a.args[0], b.args[0]
        assert len(ca) == len(cb)
        for x, y in zip(ca, cb):
            assert torch.equal(x[0], y[0]) and torch.equal(x[1]["pooled_output"], y[1]["pooled_output"])
            assert (x[1]["start_percent"], x[1]["end_percent"]) == (y[1]["start_percent"], y[1]["end_percent"])
        tl_b = b.ui["adjoint_guidance_timeline"][0]
        assert [k["source"]["input"] for k in tl_b["keyframes"]] == ["conditioning_1", "conditioning_2",
                                                                     "conditioning_4"]
        json.dumps(b.ui)


def test_conditioning_schedule_same_input_twice_holds_it(ps):
    """The same conditioning on two inputs (held before a blend) is one hold entry, its own tensors."""
    a, b = _encoded("a"), _encoded("b")
    out = ps.ConditioningSchedule.execute("0, 30%, 80%", "linear", 10, "normal", a, conditioning_2=a,
                                          conditioning_3=b)
    entries = out.ui["adjoint_guidance_timeline"][0]["entries"]
    assert [(e["kind"], e["start_step"]) for e in entries][:2] == [("hold", 0), ("blend", 4)]
    assert out.args[0][0][0] is a[0][0]
    k0, k1 = ps_carrier(out).keyframes[:2]
    assert torch.equal(k0["cross_attn"], k1["cross_attn"]) and k0["cross_attn"].data_ptr() != k1["cross_attn"].data_ptr()


def ps_carrier(out):
    return pack_submodule("nodes.schedule_conditioning").find_schedule(out.args[0])


def _cs(times="0, 50%", interpolation="hold", steps=10, c1=None, **more):
    return dict(times=times, interpolation=interpolation, steps=steps, scheduler="normal",
                conditioning_1=_encoded("a") if c1 is None else c1, **more)


@pytest.mark.parametrize("kwargs, message", [
    (_cs(times="0, 50%, 80%", conditioning_2=_encoded("b")),
     "Conditioning Schedule: times: gives 3 times but 2 conditionings are connected (conditioning_1, "
     "conditioning_2); give one time per connected conditioning, in order"),
    (_cs(times="0", conditioning_2=_encoded("b")),
     "Conditioning Schedule: times: gives 1 time but 2 conditionings are connected (conditioning_1, "
     "conditioning_2); give one time per connected conditioning, in order"),
    (_cs(c1=_encoded("a") + _encoded("b"), times="0"),
     "Conditioning Schedule: conditioning_1: has 2 entries (combined, area or scheduled conditioning); each "
     "input must be one encoded prompt, e.g. straight from CLIP Text Encode"),
    (_cs(c1=[], times="0"), "Conditioning Schedule: conditioning_1: the conditioning is empty"),
    (_cs(c1="a cat", times="0"),
     "Conditioning Schedule: conditioning_1: expected CONDITIONING (a list of [embedding, options] entries), got str"),
    (_cs(c1=[[torch.zeros(1, 77), {}]], times="0"),
     "Conditioning Schedule: conditioning_1: its embedding must be a float tensor (batch, tokens, channels), "
     "got (1, 77)"),
    (_cs(conditioning_2=[[torch.zeros(1, 77, 8), {"start_percent": 0.5}]]),
     "Conditioning Schedule: conditioning_2: already has a timestep range (start_percent); the schedule sets the "
     "ranges itself: connect the prompt before Conditioning Set Timestep Range"),
    (_cs(conditioning_2=_encoded("b", channels=16)),
     "Conditioning Schedule: conditioning_2: conditioning_1 and conditioning_2 have embeddings of 8 and 16 "
     "channels; a schedule needs conditionings from the same text encoder"),
    (_cs(conditioning_2=[[torch.zeros(1, 77, 8), {}]]),
     "Conditioning Schedule: conditioning_2: conditioning_1 carries pooled_output and conditioning_2 does not; "
     "a schedule needs conditionings from the same text encoder"),
    (_cs(interpolation="linear", conditioning_2=_encoded(" ".join(["w"] * 80))),
     "Conditioning Schedule: conditioning_2: conditioning_1 and conditioning_2 have 77 and 154 tokens; blends "
     "need equal lengths — use prompts of the same length or hold"),
    (_cs(times="0, 40%x", conditioning_2=_encoded("b")),
     "Conditioning Schedule: times: time 2 (col 4): expected a step such as 12, a fraction such as 0.4, or a "
     "percentage such as 40%, found '40%x'"),
])
def test_conditioning_schedule_errors_name_node_and_input(ps, kwargs, message):
    with pytest.raises(ValueError) as e:
        ps.ConditioningSchedule.execute(**kwargs)
    assert str(e.value) == message


def test_conditioning_schedule_rejects_nested_schedules(ps):
    inner = ps.PromptSchedule.execute(FakeClip(), "a", "hold", 10, "normal").args[0]
    with pytest.raises(ValueError, match="^Conditioning Schedule: conditioning_1: comes from a Prompt Schedule "
                                         "already; schedules do not nest"):
        ps.ConditioningSchedule.execute(**_cs(c1=inner, times="0"))


@pytest.mark.parametrize("times, interpolation, message", [
    ("0, 40%, 12", "hold", None),
    ("0,40%,12,", "hold", None),
    ("0\n0.4\n12\n", "hold", None),
    ("0, 1.0", "linear", None),
    ("", "hold", "times: expected a time for each connected conditioning, such as '0, 40%, 12', found nothing"),
    ("0,, 12", "hold", "times: time 2 (col 3): expected a step such as 12, a fraction such as 0.4, or a percentage "
                       "such as 40%, found ','"),
    ("10%, 50%", "hold", "times: time 1 (col 1): the first time must be 0 (conditioning_1 starts the schedule), "
                         "found '10%'"),
    ("0, 50%, 30%", "hold", "times: time 3 (col 9): '30%' (step 6) comes before time 2 '50%' (step 10); "
                            "times must increase"),
    ("0, 50%, 10", "hold", "times: time 3 (col 9): '10' falls on step 10 like time 2 '50%' at 20 steps; give each "
                           "conditioning its own step"),
    ("0, 20", "hold", "times: time 2 (col 4): step 20 is beyond the last step 19 of 20"),
    ("0, 101%", "linear", "times: time 2 (col 4): time '101%' is beyond 100%"),
    ("0, -0.1", "linear", "times: time 2 (col 4): time '-0.1' is negative (times run from 0 to 100%)"),
    ("0, 1.5", "linear", "times: time 2 (col 4): time '1.5' is beyond 1.0 (a number with a '.' is a fraction of "
                         "the steps, from 0.0 to 1.0)"),
    ("0, 100%", "hold", "times: time 2 (col 4): '100%' is the end of sampling and is never used with hold (use "
                        "linear or slerp to blend towards it)"),
])
def test_times_syntax(ps, times, interpolation, message):
    got = ps.ConditioningSchedule.validate_inputs(times=times, interpolation=interpolation, steps=20)
    assert got is True if message is None else got == f"Conditioning Schedule: {message}"


# --------------------------------------------------------------------------- real tiny CLIP

@pytest.fixture(scope="module")
def tiny_clip(comfy_nodes):
    (clip,) = comfy_nodes.CLIPLoader().load_clip("tiny-clip-l.safetensors", "stable_diffusion")
    return clip


@pytest.mark.parametrize("interpolation", ["linear", "slerp"])
def test_blend_moves_monotonically_from_a_to_b(ps, sc, tiny_clip, interpolation):
    """Real CLIP: each blended step differs from both keyframes and walks from A to B: d(A) ↑, d(B) ↓."""
    steps = 10
    out = ps.PromptSchedule.execute(tiny_clip, "0: a red apple on a table\n30%: a red apple on a table\n"
                                               "80%: a blue car in the snow", interpolation, steps, "normal")
    cond = out.args[0]
    carrier = sc.find_schedule(cond)
    a, b = carrier.keyframes[1], carrier.keyframes[2]
    assert torch.equal(carrier.keyframes[0]["cross_attn"], a["cross_attn"])
    windows = out.ui["adjoint_guidance_timeline"][0]["entries"]
    # A held for steps 0–3 (the repeated prompt), blended over steps 4–7, B from step 8
    assert [(w["kind"], w["start_step"], w["end_step"]) for w in windows] == [
        ("hold", 0, 4), ("blend", 4, 5), ("blend", 5, 6), ("blend", 6, 7), ("blend", 7, 8), ("hold", 8, 10)]
    assert [w["weight"] for w in windows[1:5]] == pytest.approx([0.2, 0.4, 0.6, 0.8])
    blends = cond[1:5]
    for ref_a, ref_b, get in ((a["cross_attn"], b["cross_attn"], lambda c: c[0]),
                              (a["pooled_output"], b["pooled_output"], lambda c: c[1]["pooled_output"])):
        da = [float((get(c) - ref_a).norm()) for c in blends]
        db = [float((get(c) - ref_b).norm()) for c in blends]
        assert all(d > 0 for d in da + db)
        assert all(x < y for x, y in zip(da, da[1:])), da
        assert all(x > y for x, y in zip(db, db[1:])), db
    # hold entries are the prompts' own tensors, exactly what the encoder gave
    assert cond[0][0] is carrier.keyframes[0]["cross_attn"] and cond[-1][0] is b["cross_attn"]
