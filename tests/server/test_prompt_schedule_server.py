"""Prompt Schedule / Conditioning Schedule through a real ComfyUI server on the tiny models.

Every comparison is bit for bit on the saved .latent files (safetensors) of stock
KSampler runs. The text encoders of the prompts below are part of every prompt sent
(unconnected nodes are not executed), so ComfyUI keeps their outputs cached across
tests: the tiny CLIP-L takes seconds per prompt on CPU.
"""
import itertools
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import example_sources
from workflows import ui_to_api

REPO = Path(__file__).resolve().parents[2]
PS, CS = "AdjointGuidance_PromptSchedule", "AdjointGuidance_ConditioningSchedule"
A = "a lighthouse on a cliff at dusk, oil painting"
B = "a lighthouse on a cliff at night, stars, oil painting"
C = "a lighthouse in a storm, oil painting"
NEG = "blurry, low quality"
ENC = {"A": "20", "B": "21", "C": "22", "NEG": "23"}
STEPS = 10
_ids = itertools.count(100)
_seeds = itertools.count(1000)


def base():
    """Loaders, a 4×4 latent (fast on CPU) and the four cached prompt encoders."""
    p = example_sources.tiny_loaders()
    p["5"] = {"class_type": "EmptyLatentImage", "inputs": {"width": 32, "height": 32, "batch_size": 1}}
    for text, key in ((A, "A"), (B, "B"), (C, "C"), (NEG, "NEG")):
        p[ENC[key]] = {"class_type": "CLIPTextEncode", "inputs": {"clip": ["2", 0], "text": text}}
    return p


def add(p, class_type, **inputs) -> str:
    node = str(next(_ids))
    p[node] = {"class_type": class_type, "inputs": inputs}
    return node


def prompt_schedule(p, text, interpolation="hold", scheduler="normal", model=True, steps=STEPS):
    inputs = {"clip": ["2", 0], "text": text, "interpolation": interpolation, "steps": steps,
              "scheduler": scheduler}
    if model:
        inputs["model"] = ["1", 0]
    return add(p, PS, **inputs)


def sample(p, positive, scheduler="normal", seed=7, steps=STEPS) -> str:
    """KSampler on `positive` (a node id) + SaveLatent; returns the SaveLatent node id."""
    ks = add(p, "KSampler", model=["1", 0], positive=[positive, 0], negative=[ENC["NEG"], 0],
             latent_image=["5", 0], seed=seed, steps=steps, cfg=5.0, sampler_name="euler",
             scheduler=scheduler, denoise=1.0)
    return add(p, "SaveLatent", samples=[ks, 0], filename_prefix=f"latents/schedule_test_{ks}")


def latent(server, entry, save_node) -> torch.Tensor:
    (info,) = entry["outputs"][save_node]["latents"]
    return load_file(str(server.output_dir / info["subfolder"] / info["filename"]))["latent_tensor"]


def timeline(entry, node):
    (tl,) = entry["outputs"][node]["adjoint_guidance_timeline"]
    return tl


def hand_built(p, windows) -> str:
    """CLIPTextEncode + ConditioningSetTimestepRange + ConditioningCombine: the stock way."""
    ranged = [add(p, "ConditioningSetTimestepRange", conditioning=[ENC[key], 0],
                  start=w["start_percent"], end=w["end_percent"]) for key, w in windows]
    out = ranged[0]
    for r in ranged[1:]:
        out = add(p, "ConditioningCombine", conditioning_1=[out, 0], conditioning_2=[r, 0])
    return out


# --------------------------------------------------------------------------- the nodes exist

def test_nodes_are_registered_with_tooltips(server):
    for node_id, name in ((PS, "Prompt Schedule"), (CS, "Conditioning Schedule")):
        info = server.object_info(node_id)
        assert info["display_name"] == name and info["category"] == "Adjoint Guidance"
        assert info["output"] == ["CONDITIONING"]
        inputs = {**info["input"]["required"], **info["input"].get("optional", {})}
        missing = [k for k, spec in inputs.items() if not (len(spec) > 1 and spec[1].get("tooltip"))]
        assert not missing, f"{node_id}: inputs without a tooltip: {missing}"
        assert "model" in info["input"]["optional"]
        assert "APPROXIMATE" in inputs["model"][1]["tooltip"]
        assert inputs["scheduler"][1]["options"] == server.object_info("KSampler")["input"]["required"]["scheduler"][0]
        assert inputs["interpolation"][1]["options"] == ["hold", "linear", "slerp"]
    cs = server.object_info(CS)["input"]
    assert list(cs["required"]) [:1] == ["conditioning_1"]
    assert [k for k in cs["optional"] if k.startswith("conditioning_")] == [f"conditioning_{i}" for i in range(2, 9)]


# --------------------------------------------------------------------------- bit-identical runs

@pytest.mark.parametrize("scheduler", ["normal", "karras"])
def test_schedule_equals_hand_built_timestep_ranges(server, scheduler):
    """3 keyframes (a % one and a step one) + stock KSampler == the hand-built chain, bit for bit."""
    p = base()
    sched = prompt_schedule(p, f"0: {A}\n30%: {B}\n7: {C}", scheduler=scheduler)
    save_sched = sample(p, sched, scheduler)
    save_a = sample(p, ENC["A"], scheduler) if scheduler == "normal" else None
    entry = server.run(p)
    tl = timeline(entry, sched)
    assert tl["percents"] == "model"
    windows = tl["entries"]
    assert [(w["start_step"], w["end_step"], w["keyframes"]) for w in windows] == [
        (0, 3, [0]), (3, 7, [1]), (7, 10, [2])]
    percents = [w["start_percent"] for w in windows] + [windows[-1]["end_percent"]]
    assert percents[0] == 0.0 and percents[-1] == 1.0 and percents == sorted(set(percents))

    q = base()
    chain = hand_built(q, zip("ABC", windows))
    save_chain = sample(q, chain, scheduler)
    entry_chain = server.run(q)
    x_sched, x_chain = latent(server, entry, save_sched), latent(server, entry_chain, save_chain)
    assert torch.equal(x_sched, x_chain)
    if save_a:
        assert not torch.equal(x_sched, latent(server, entry, save_a))  # the schedule did change the prompt


def test_single_keyframe_hold_equals_clip_text_encode(server):
    p = base()
    saves = [sample(p, prompt_schedule(p, A, model=False)),
             sample(p, prompt_schedule(p, f"# one keyframe\n0: {A}", scheduler="karras")),
             sample(p, ENC["A"])]          # the same KSampler run as the reference in the test above
    entry = server.run(p)
    plain, keyed, ref = (latent(server, entry, s) for s in saves)
    assert torch.equal(plain, ref) and torch.equal(keyed, ref)


def test_conditioning_schedule_equals_prompt_schedule(server):
    """Conditioning Schedule over CLIP Text Encode outputs == Prompt Schedule with the same prompts."""
    p = base()
    pairs = []
    for interpolation in ("hold", "linear"):
        ps = prompt_schedule(p, f"0: {A}\n40%: {B}\n8: {C}", interpolation)
        cs = add(p, CS, conditioning_1=[ENC["A"], 0], conditioning_2=[ENC["B"], 0], conditioning_3=[ENC["C"], 0],
                 model=["1", 0], times="0, 40%, 8", interpolation=interpolation, steps=STEPS, scheduler="normal")
        pairs.append((ps, cs, sample(p, ps), sample(p, cs)))
    entry = server.run(p)
    for ps, cs, save_ps, save_cs in pairs:
        assert torch.equal(latent(server, entry, save_ps), latent(server, entry, save_cs))
        assert timeline(entry, ps)["entries"] == timeline(entry, cs)["entries"]
    assert not torch.equal(latent(server, entry, pairs[0][2]), latent(server, entry, pairs[1][2]))


def test_linear_blend_differs_from_both_neighbours(server):
    p = base()
    blend = prompt_schedule(p, f"0: {A}\n25%: {A}\n75%: {B}", "linear")
    hard = prompt_schedule(p, f"0: {A}\n75%: {B}")
    saves = {"blend": sample(p, blend), "hard": sample(p, hard), "A": sample(p, ENC["A"]), "B": sample(p, ENC["B"])}
    entry = server.run(p)
    tl = timeline(entry, blend)
    blends = [w for w in tl["entries"] if w["kind"] == "blend"]
    assert [w["start_step"] for w in blends] == [3, 4, 5, 6]                     # steps 2 → 7: A → B
    weights = [w["weight"] for w in blends]
    assert all(0 < x < y < 1 for x, y in zip(weights, weights[1:]))
    x = {k: latent(server, entry, v) for k, v in saves.items()}
    for other in ("hard", "A", "B"):
        assert not torch.equal(x["blend"], x[other]), other
    assert (x["blend"] - x["A"]).abs().max() > 0 and (x["blend"] - x["B"]).abs().max() > 0


# --------------------------------------------------------------------------- errors

def _details(body) -> list[str]:
    return [e.get("details", "") for n in body.get("node_errors", {}).values() for e in n.get("errors", [])]


def _good_prompt_still_runs(server):
    p = base()
    save = sample(p, ENC["A"], seed=next(_seeds), steps=3)
    entry = server.run(p)
    assert latent(server, entry, save).shape == (1, 4, 4, 4)


@pytest.mark.parametrize("node, inputs, message", [
    (PS, {"text": f"0: {A}\n  0.5 a storm"},
     "Prompt Schedule: text: line 2, col 7: expected ':' after the time, found 'a' "
     "(a line that continues a prompt cannot start with a number)"),
    (PS, {"text": f"0: {A}\n50%: {B}\n30%: {C}"},
     "Prompt Schedule: text: line 3, col 1: keyframe '30%' (step 3) comes before keyframe '50%' on line 2 "
     "(step 5); keyframes must be in increasing order"),
    (PS, {"text": "  \n# nothing\n"},
     "Prompt Schedule: text: line 3, col 1: expected a prompt or a keyframe line such as '0: a cat', found end "
     "of text"),
    (PS, {"text": f"0: {A}\n10: {B}"}, "Prompt Schedule: text: line 2, col 1: step 10 is beyond the last step 9 of 10"),
    (CS, {"times": "0, 140%"}, "Conditioning Schedule: times: time 2 (col 4): time '140%' is beyond 100%"),
    (CS, {"times": "0, 30%, 60%"}, "Conditioning Schedule: times: gives 3 times but 2 conditionings are connected "
                                   "(conditioning_1, conditioning_2); give one time per connected conditioning, in order"),
])
def test_bad_widget_input_is_rejected_before_running(server, node, inputs, message):
    p = base()
    if node == PS:
        n = prompt_schedule(p, inputs["text"])
    else:
        n = add(p, CS, conditioning_1=[ENC["A"], 0], conditioning_2=[ENC["B"], 0], times=inputs["times"],
                interpolation="hold", steps=STEPS, scheduler="normal")
    sample(p, n)
    status, body = server.post("/prompt", {"prompt": p, "client_id": server.client_id})
    assert status == 400, body
    assert body["node_errors"][n]["class_type"] == node
    input_name = "text" if node == PS else "times"
    assert _details(body) == [f"{input_name} - {message}"], json.dumps(body, indent=1)   # once, on that input
    _good_prompt_still_runs(server)


def _execution_error(server, p) -> dict:
    entry = server.run(p, check=False)
    assert entry["status"]["status_str"] == "error"
    (err,) = [d for kind, d in entry["status"]["messages"] if kind == "execution_error"]
    return err


@pytest.mark.parametrize("case", ["linked-text", "combined-input", "scheduler-steps"])
def test_bad_input_at_run_time_is_a_clear_error(server, case):
    p = base()
    if case == "linked-text":
        text = add(p, "PrimitiveStringMultiline", value=f"0: {A}\n50%: {B}\n50%: {C}")
        n = add(p, PS, clip=["2", 0], text=[text, 0], interpolation="hold", steps=STEPS, scheduler="normal")
        node, message = PS, ("Prompt Schedule: text: line 3, col 1: keyframe '50%' falls on step 5 like keyframe "
                             "'50%' on line 2 at 10 steps; give each keyframe its own step")
    elif case == "combined-input":
        both = add(p, "ConditioningCombine", conditioning_1=[ENC["A"], 0], conditioning_2=[ENC["B"], 0])
        n = add(p, CS, conditioning_1=[both, 0], conditioning_2=[ENC["C"], 0], times="0, 50%",
                interpolation="hold", steps=STEPS, scheduler="normal")
        node, message = CS, ("Conditioning Schedule: conditioning_1: has 2 entries (combined, area or scheduled "
                             "conditioning); each input must be one encoded prompt, e.g. straight from CLIP Text "
                             "Encode")
    else:   # ddim_uniform gives 8 sampling steps for 7
        n = prompt_schedule(p, f"0: {A}\n50%: {B}", scheduler="ddim_uniform", steps=7)
        node, message = PS, ("Prompt Schedule: scheduler: 'ddim_uniform' makes 8 sampling steps, not 7, for this "
                             "model; pick another scheduler or step count")
    sample(p, n)
    err = _execution_error(server, p)
    assert err["node_type"] == node and err["node_id"] == n
    assert err["exception_message"].strip() == message
    assert err["exception_type"] in ("ValueError", "builtins.ValueError")
    _good_prompt_still_runs(server)


def test_a_keyframe_typo_runs_with_a_warning_in_the_timeline(server):
    p = base()
    n = prompt_schedule(p, f"0: {A}\n5O%: {B}")
    sample(p, n)
    tl = timeline(server.run(p), n)
    assert tl["warnings"] == ["Prompt Schedule: text: line 2, col 1: '5O%:' looks like a keyframe time but is "
                              "not one, so this line is read as prompt text; did you mean '50%:'?"]
    assert len(tl["keyframes"]) == 1


# --------------------------------------------------------------------------- the example workflow

def test_prompt_schedule_example_workflow_runs(server):
    ui = json.loads((REPO / "example_workflows" / "Prompt Schedule (blend scenes).json").read_text())
    api = ui_to_api(ui, server.object_info())
    assert {n["class_type"] for n in api.values()} >= {PS, "KSampler"}
    entry = server.run(api)
    nodes = [k for k, v in api.items() if v["class_type"] == PS]   # the linear and the slerp blend
    assert len(nodes) == 2
    for node in nodes:
        tl = timeline(entry, node)
        assert tl["percents"] == "model" and any(w["kind"] == "blend" for w in tl["entries"])
    images = [img for out in entry["outputs"].values() for img in out.get("images", [])]
    assert images and server.view(images[0])[:8] == b"\x89PNG\r\n\x1a\n"
