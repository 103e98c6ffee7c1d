"""Bad input through a real ComfyUI server: every node of the pack, on the tiny models.

One valid graph holds every node of the pack but the CLIP Vision loss (the stock
CLIPVisionLoader only loads full-size models: its cases are queued, never run), with a
4×4 latent, 4 steps and 1 iteration. Each case changes one thing:

- a widget value (QUEUE_CASES): refused when the prompt is queued, HTTP 400, one error on
  our node, attached to that input, its message naming node, input, value and what is
  allowed; no traceback in the server log;
- a linked value or tensor (RUN_CASES): the /history execution error of the node that
  refused it, naming node and input, raised by the pack's own checks before any network
  call (ComfyUI logs a traceback for every execution error, execution.py: it must end in
  the pack's nodes/, not deep in a model).

After each case the valid graph runs and succeeds (served from ComfyUI's cache when it
is unchanged). A soak test runs 30 varied prompts and bounds the server's RSS growth.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import pytest
import torch
from safetensors.torch import save_file

STEPS = 4
NAN, INF = float("nan"), float("inf")
PACK = "AdjointGuidance_"
DISPLAY = {
    "AdjointGuidance_PromptSchedule": "Prompt Schedule",
    "AdjointGuidance_ConditioningSchedule": "Conditioning Schedule",
    "AdjointGuidance_AdjointSampler": "Adjoint Sampler",
    "AdjointGuidance_SolverSampler": "Adjoint Solver (Sampler)",
    "AdjointGuidance_NoiseFromLatent": "Noise From Latent",
    "AdjointGuidance_LossLatentTarget": "Guidance Loss (Latent Target)",
    "AdjointGuidance_LossImageTarget": "Guidance Loss (Image Target)",
    "AdjointGuidance_LossColour": "Guidance Loss (Colour)",
    "AdjointGuidance_LossClipVision": "Guidance Loss (CLIP Vision)",
    "AdjointGuidance_LossCombine": "Guidance Loss (Combine)",
}


def n(class_type, **inputs):
    return {"class_type": class_type, "inputs": inputs}


def graph(batch=1) -> dict:
    """The valid graph: every node of the pack but CLIP Vision."""
    return {
        "unet": n("UNETLoader", unet_name="tiny-sd15-unet.safetensors", weight_dtype="default"),
        "clip": n("CLIPLoader", clip_name="tiny-clip-l.safetensors", type="stable_diffusion", device="default"),
        "vae": n("VAELoader", vae_name="taesd"),
        "pos": n("CLIPTextEncode", clip=["clip", 0], text="a red fox in the snow"),
        "neg": n("CLIPTextEncode", clip=["clip", 0], text="blurry"),
        "empty": n("EmptyLatentImage", width=32, height=32, batch_size=batch),
        "ps": n(PACK + "PromptSchedule", clip=["clip", 0], text="0: a red fox in the snow\n50%: a red fox at night",
                interpolation="hold", steps=STEPS, scheduler="karras"),
        "cs": n(PACK + "ConditioningSchedule", conditioning_1=["pos", 0], conditioning_2=["neg", 0],
                times="0, 50%", interpolation="hold", steps=STEPS, scheduler="karras"),
        "decoded": n("VAEDecode", samples=["empty", 0], vae=["vae", 0]),
        "lt": n(PACK + "LossLatentTarget", target=["empty", 0], metric="mse", weight=1.0),
        "it": n(PACK + "LossImageTarget", vae=["vae", 0], image=["decoded", 0], metric="mse", blur_sigma=0.0,
                weight=1.0),
        "col": n(PACK + "LossColour", vae=["vae", 0], colour="#2050c0", colour_weight=1.0, brightness=0.5,
                 brightness_weight=0.0, contrast=0.25, contrast_weight=0.0, saturation=0.3, saturation_weight=0.0),
        "cb": n(PACK + "LossCombine", loss_1=["lt", 0], weight_1=1.0, loss_2=["it", 0], weight_2=0.5,
                loss_3=["col", 0], weight_3=0.5, weight_4=1.0),
        "adjoint": n(PACK + "AdjointSampler", model=["unet", 0], positive=["ps", 0], negative=["neg", 0],
                     latent_image=["empty", 0], loss=["cb", 0], seed=1, steps=STEPS, cfg=1.0, scheduler="karras",
                     solver="dpmpp_2m", gradient="exact", adjoint_steps=0, optimize="noise", iterations=1,
                     learning_rate=0.1, renormalize_noise=False, max_grad_norm=0.0, early_stop_patience=0,
                     denoise=1.0),
        "save": n("SaveLatent", samples=["adjoint", 0], filename_prefix="bad_input/adjoint"),
        "nfl": n(PACK + "NoiseFromLatent", noise=["adjoint", 1], seed=0),
        "ss": n(PACK + "SolverSampler", solver="dpmpp_2m"),
        "guider": n("CFGGuider", model=["unet", 0], positive=["cs", 0], negative=["neg", 0], cfg=1.0),
        "sigmas": n("BasicScheduler", model=["unet", 0], scheduler="karras", steps=STEPS, denoise=1.0),
        "sca": n("SamplerCustomAdvanced", noise=["nfl", 0], guider=["guider", 0], sampler=["ss", 0],
                 sigmas=["sigmas", 0], latent_image=["empty", 0]),
        "save2": n("SaveLatent", samples=["sca", 0], filename_prefix="bad_input/replay"),
    }


def with_clip_vision(g: dict) -> dict:
    """+ a CLIP Vision loss in the Combine (its loader has no model on the test host)."""
    g["cvl"] = n("CLIPVisionLoader", clip_name="clip_vision_g.safetensors")
    g["cv"] = n(PACK + "LossClipVision", vae=["vae", 0], clip_vision=["cvl", 0], image=["decoded", 0],
                references="average", crop="center", weight=1.0)
    g["cb"]["inputs"]["loss_4"] = ["cv", 0]
    return g


def through(g: dict, node: str) -> dict:
    """Only the outputs that depend on `node`: ComfyUI runs the valid outputs of a prompt and
    answers 200 when any is valid, so a bad value must spoil every output to get a 400."""
    def ancestors(k, seen):
        for v in g[k]["inputs"].values():
            if isinstance(v, list) and v[0] not in seen:
                seen.add(v[0])
                ancestors(v[0], seen)
        return seen
    for out in ("save", "save2"):
        if node not in ancestors(out, set()):
            del g[out]
    return g


def message_of(details: str, input_name: str) -> str:
    prefix = f"{input_name} - "
    assert details.startswith(prefix), details
    return details[len(prefix):]


def valid_prompt_succeeds(server):
    entry = server.run(graph(), timeout=600)
    assert entry["status"]["status_str"] == "success"


# --------------------------------------------------------------------------- queued widget values

@dataclass
class Q:
    node: str                 # node id in graph()
    input: str
    value: object
    expect: tuple             # substrings of the message: the value and what is allowed
    also: dict = field(default_factory=dict)     # other inputs of the same node changed with it
    clip_vision: bool = False

    def id(self):
        v = self.value if not isinstance(self.value, str) else repr(self.value[:12])
        return f"{self.node}-{self.input}-{v}" + ("-" + "-".join(f"{k}={w}" for k, w in self.also.items())
                                                   if self.also else "")

    def graph(self):
        g = with_clip_vision(graph()) if self.clip_vision else graph()
        g[self.node]["inputs"].update({self.input: self.value, **self.also})
        return through(g, self.node)


SCHEDULERS = "simple, sgm_uniform, karras"
FINITE = "expected a finite number from"
QUEUE_CASES = [
    # Prompt Schedule
    Q("ps", "interpolation", "cubic", ("expected one of hold, linear, slerp", "found 'cubic'")),
    Q("ps", "interpolation", "", ("expected one of hold, linear, slerp", "found ''")),
    Q("ps", "steps", 0, ("expected a whole number from 1 to 10000", "found 0")),
    Q("ps", "steps", 10001, ("expected a whole number from 1 to 10000", "found 10001")),
    Q("ps", "steps", -3, ("expected a whole number from 1 to 10000", "found -3")),
    Q("ps", "scheduler", "foo", (SCHEDULERS, "found 'foo'")),
    Q("ps", "scheduler", "Karras", (SCHEDULERS, "found 'Karras'")),
    Q("ps", "text", "0: a\n50%: b\n30%: c", ("keyframe '30%'", "keyframes must be in increasing order")),
    Q("ps", "text", "0: a\n4: b", ("step 4 is beyond the last step 3 of 4",)),
    Q("ps", "text", "", ("expected a prompt or a keyframe line such as '0: a cat', found end of text",)),
    Q("ps", "text", "0: a\n100%: b", ("'100%' is the end of sampling and is never used with hold",)),
    Q("ps", "text", "10%: a\n50%: b", ("must start at 0", "'10%'")),
    Q("ps", "text", '"0": "a fox",', ("write keyframes as 12: prompt, without quotes",)),
    Q("ps", "text", "0: a\n  0.5 b", ("expected ':' after the time, found 'b'",)),
    Q("ps", "text", "0:\n50%: b", ("expected a prompt after '0:', found end of line",)),
    Q("ps", "text", "0: a\n25%: b\n30%: c", ("falls on step 1 like keyframe '25%'",)),
    Q("ps", "text", "0: a [cat:dog:x]", ("a time after the last ':'", "found 'x'")),
    Q("ps", "text", "0: a\n101%: b", ("time '101%' is beyond 100%",), {"interpolation": "linear"}),
    # Conditioning Schedule
    Q("cs", "times", "0, 140%", ("time '140%' is beyond 100%",)),
    Q("cs", "times", "", ("expected a time for each connected conditioning", "found nothing")),
    Q("cs", "times", "5, 50%", ("'5'",)),
    Q("cs", "times", "0, 30%, 60%", ("gives 3 times but 2 conditionings are connected",
                                     "give one time per connected conditioning")),
    Q("cs", "times", "0, 50%, 25%", ("comes before time 2 '50%'",)),
    Q("cs", "interpolation", "smooth", ("expected one of hold, linear, slerp", "found 'smooth'")),
    Q("cs", "steps", 0, ("expected a whole number from 1 to 10000", "found 0")),
    Q("cs", "scheduler", "bogus", (SCHEDULERS, "found 'bogus'")),
    # Adjoint Sampler
    Q("adjoint", "seed", -1, ("expected a whole number from 0 to 18446744073709551615", "found -1")),
    Q("adjoint", "steps", 0, ("expected a whole number from 1 to 1000", "found 0")),
    Q("adjoint", "steps", 1001, ("expected a whole number from 1 to 1000", "found 1001")),
    Q("adjoint", "cfg", NAN, (f"{FINITE} 0 to 100", "found nan")),
    Q("adjoint", "cfg", INF, (f"{FINITE} 0 to 100", "found inf")),
    Q("adjoint", "cfg", -1.0, (f"{FINITE} 0 to 100", "found -1.0")),
    Q("adjoint", "cfg", 101.0, (f"{FINITE} 0 to 100", "found 101.0")),
    Q("adjoint", "scheduler", "foo", (SCHEDULERS, "found 'foo'")),
    Q("adjoint", "solver", "euler", ("expected one of dpmpp_2m, dpmpp_1, dpmpp_2m_lambda, sde_dpmpp_1",
                                     "found 'euler'")),
    Q("adjoint", "gradient", "adjoint", ("expected one of exact, adjointdeis-1, adjointdeis-2m, adjointdeis-sde",
                                         "found 'adjoint'")),
    Q("adjoint", "gradient", "adjointdeis-sde", ("'adjointdeis-sde' does not go with solver 'dpmpp_2m'",
                                                 "use 'exact', 'adjointdeis-1' or 'adjointdeis-2m'")),
    Q("adjoint", "gradient", "adjointdeis-1", ("'adjointdeis-1' does not go with solver 'sde_dpmpp_1'",
                                               "use 'exact' or 'adjointdeis-sde'"), {"solver": "sde_dpmpp_1"}),
    Q("adjoint", "adjoint_steps", 3, ("the exact gradient always takes the sampler's 4 steps back, found 3",
                                      "use 0 (= steps)")),
    Q("adjoint", "adjoint_steps", 1, ("expected 0 (= steps) or a number from 2 to the 4 steps", "found 1"),
      {"gradient": "adjointdeis-1"}),
    Q("adjoint", "adjoint_steps", 9, ("expected 0 (= steps) or a number from 2 to the 4 steps", "found 9"),
      {"gradient": "adjointdeis-2m"}),
    Q("adjoint", "adjoint_steps", -1, ("expected a whole number from 0 to 1000", "found -1")),
    Q("adjoint", "optimize", "everything", ("expected one of noise, prompt, noise + prompt", "found 'everything'")),
    Q("adjoint", "iterations", 0, ("expected a whole number from 1 to 1000", "found 0")),
    Q("adjoint", "iterations", 1001, ("expected a whole number from 1 to 1000", "found 1001")),
    Q("adjoint", "learning_rate", NAN, (f"{FINITE} 1e-06 to 10", "found nan")),
    Q("adjoint", "learning_rate", 0.0, (f"{FINITE} 1e-06 to 10", "found 0.0")),
    Q("adjoint", "learning_rate", -INF, (f"{FINITE} 1e-06 to 10", "found -inf")),
    Q("adjoint", "learning_rate", 11.0, (f"{FINITE} 1e-06 to 10", "found 11.0")),
    Q("adjoint", "max_grad_norm", NAN, (f"{FINITE} 0 to 1e+06", "found nan")),
    Q("adjoint", "max_grad_norm", -1.0, (f"{FINITE} 0 to 1e+06", "found -1.0")),
    Q("adjoint", "early_stop_patience", -1, ("expected a whole number from 0 to 1000", "found -1")),
    Q("adjoint", "denoise", NAN, (f"{FINITE} 0.01 to 1", "found nan")),
    Q("adjoint", "denoise", 0.0, (f"{FINITE} 0.01 to 1", "found 0.0")),
    Q("adjoint", "denoise", 1.5, (f"{FINITE} 0.01 to 1", "found 1.5")),
    Q("adjoint", "batch_mode", "parallel", ("expected one of batched, one_by_one", "found 'parallel'")),
    Q("adjoint", "gradient_memory", "lots", ('expected "auto", 0 (recompute every step) or a number of megabytes',
                                             "found 'lots'")),
    Q("adjoint", "gradient_memory", "-5", ("a number of megabytes > 0", "found '-5'")),
    # Adjoint Solver (Sampler), Noise From Latent
    Q("ss", "solver", "euler", ("expected one of dpmpp_2m, dpmpp_1, dpmpp_2m_lambda, sde_dpmpp_1", "found 'euler'")),
    Q("ss", "solver", "", ("expected one of dpmpp_2m", "found ''")),
    Q("nfl", "seed", -5, ("expected a whole number from 0 to 18446744073709551615", "found -5")),
    # Guidance Loss (Latent Target), (Image Target)
    Q("lt", "metric", "l2", ("expected one of mse, l1", "found 'l2'")),
    Q("lt", "weight", NAN, (f"{FINITE} 0 to 10000", "found nan")),
    Q("lt", "weight", -1.0, (f"{FINITE} 0 to 10000", "found -1.0")),
    Q("lt", "weight", 1e5, (f"{FINITE} 0 to 10000", "found 100000.0")),
    Q("it", "metric", "huber", ("expected one of mse, l1", "found 'huber'")),
    Q("it", "blur_sigma", NAN, (f"{FINITE} 0 to 256", "found nan")),
    Q("it", "blur_sigma", -1.0, (f"{FINITE} 0 to 256", "found -1.0")),
    Q("it", "blur_sigma", 300.0, (f"{FINITE} 0 to 256", "found 300.0")),
    Q("it", "weight", INF, (f"{FINITE} 0 to 10000", "found inf")),
    # Guidance Loss (Colour)
    Q("col", "colour", "blueish", ("'blueish' is not a colour", "#rrggbb")),
    Q("col", "colour", "#12345", ("'#12345' is not a colour", "#rrggbb")),
    Q("col", "colour_weight", NAN, (f"{FINITE} 0 to 10000", "found nan")),
    Q("col", "brightness", 1.5, (f"{FINITE} 0 to 1", "found 1.5")),
    Q("col", "brightness", NAN, (f"{FINITE} 0 to 1", "found nan")),
    Q("col", "contrast", -0.1, (f"{FINITE} 0 to 1", "found -0.1")),
    Q("col", "saturation", INF, (f"{FINITE} 0 to 1", "found inf")),
    Q("col", "saturation_weight", -1.0, (f"{FINITE} 0 to 10000", "found -1.0")),
    Q("col", "colour_weight", 0.0, ("every weight is 0", "set the weight of at least one statistic")),
    # Guidance Loss (CLIP Vision)
    Q("cv", "references", "median", ("expected one of average, one per sample", "found 'median'"), clip_vision=True),
    Q("cv", "crop", "top", ("expected one of center, none", "found 'top'"), clip_vision=True),
    Q("cv", "weight", NAN, (f"{FINITE} -10000 to 10000", "found nan"), clip_vision=True),
    Q("cv", "weight", 1e5, (f"{FINITE} -10000 to 10000", "found 100000.0"), clip_vision=True),
    # Guidance Loss (Combine)
    Q("cb", "weight_1", NAN, (f"{FINITE} -10000 to 10000", "found nan")),
    Q("cb", "weight_4", INF, (f"{FINITE} -10000 to 10000", "found inf")),
    Q("cb", "weight_1", 0.0, ("every connected loss has weight 0 (weight_1 = 0, weight_2 = 0, weight_3 = 0)",
                              "give at least one connected loss a non-zero weight"),
      {"weight_2": 0.0, "weight_3": 0.0}),
    Q("cb", "weight_1", -0.0, ("every connected loss has weight 0 (weight_1 = 0)",),
      {"loss_2": None, "loss_3": None}),
]


@pytest.mark.parametrize("case", QUEUE_CASES, ids=[c.id() for c in QUEUE_CASES])
def test_bad_widget_value_is_refused_when_queued(server, case):
    g = case.graph()
    g[case.node]["inputs"] = {k: v for k, v in g[case.node]["inputs"].items() if v is not None}
    start = len(server.log_text())
    status, body = server.post("/prompt", {"prompt": g, "client_id": server.client_id})
    assert status == 400, body
    ours = {k: v for k, v in body["node_errors"].items() if g[k]["class_type"].startswith(PACK)}
    assert list(ours) == [case.node], body["node_errors"]
    (error,) = ours[case.node]["errors"]          # once, attached to that input only
    assert error["extra_info"]["input_name"] == case.input, error
    message = message_of(error["details"], case.input)
    assert message.startswith(f"{DISPLAY[g[case.node]['class_type']]}: {case.input}: "), message
    for part in case.expect:
        assert part in message, (part, message)
    assert "Traceback" not in server.log_text()[start:]
    valid_prompt_succeeds(server)


def test_a_whole_number_comfyui_cannot_convert_is_its_error_alone(server):
    """steps NaN: ComfyUI's own conversion to int fails first (its message, once); ours adds none."""
    g = through(graph(), "adjoint")
    g["adjoint"]["inputs"]["steps"] = NAN
    status, body = server.post("/prompt", {"prompt": g, "client_id": server.client_id})
    assert status == 400
    (error,) = body["node_errors"]["adjoint"]["errors"]
    assert error["type"] == "invalid_input_type" and error["extra_info"]["input_name"] == "steps", error
    assert "nan" in error["details"]


def test_the_corpus_covers_every_node_of_the_pack(server):
    registered = {k for k in server.object_info() if k.startswith(PACK)}
    assert registered == set(DISPLAY)
    everything = with_clip_vision(graph())
    covered = {everything[c.node]["class_type"] for c in QUEUE_CASES} | {c.node_type for c in RUN_CASES}
    assert covered == set(DISPLAY), set(DISPLAY) - covered
    assert len(QUEUE_CASES) + len(RUN_CASES) >= 80


# --------------------------------------------------------------------------- linked values and tensors

def write_latent(server, name: str, tensor: torch.Tensor) -> str:
    """A .latent file in the server's input folder, for LoadLatent (values as they are)."""
    save_file({"latent_tensor": tensor.contiguous(), "latent_format_version_0": torch.tensor([])},
              str(server.workdir / "input" / name))
    return name


def load_latent(name):
    return n("LoadLatent", latent=name)


def _nan_latent(g):
    g["bad"] = n("LatentMultiply", samples=["empty", 0], multiplier=NAN)


def _nan_conditioning(g, frm="neg"):
    g["badc"] = n("ConditioningAverage", conditioning_to=["pos", 0], conditioning_from=[frm, 0],
                  conditioning_to_strength=NAN)


def _primitive(g, value, kind="PrimitiveFloat"):
    g["prim"] = n(kind, value=value)
    return ["prim", 0]


@dataclass
class R:
    name: str
    node: str                  # the node that must report it
    message: str               # its message starts with this
    build: object              # build(g, server) changes the valid graph
    node_type: str = ""        # the pack node it is about (default: the reporting node's type)

    def __post_init__(self):
        self.node_type = self.node_type or graph().get(self.node, {}).get("class_type", "")


def _set(node, **inputs):
    def build(g, server):
        g[node]["inputs"].update(inputs)
    return build


def _inf_latent(g, server):
    g["bad"] = load_latent(write_latent(server, "inf.latent", torch.full((1, 4, 4, 4), INF)))
    g["adjoint"]["inputs"]["latent_image"] = ["bad", 0]


def _nan_latent_image(g, server):
    _nan_latent(g)
    g["adjoint"]["inputs"]["latent_image"] = ["bad", 0]


def _nan_positive(g, server):
    _nan_conditioning(g)
    g["adjoint"]["inputs"]["positive"] = ["badc", 0]


def _nan_negative(g, server):
    _nan_conditioning(g)
    g["adjoint"]["inputs"]["negative"] = ["badc", 0]


def _nan_strength(g, server):
    g["badc"] = n("ConditioningSetAreaStrength", conditioning=["ps", 0], strength=NAN)
    g["adjoint"]["inputs"]["positive"] = ["badc", 0]


def _linked(node, name, value, kind="PrimitiveFloat"):
    def build(g, server):
        g[node]["inputs"][name] = _primitive(g, value, kind)
    return build


def _big_target(g, server):
    g["bad"] = load_latent(write_latent(server, "big.latent", torch.zeros(1, 4, 8, 8)))
    g["lt"]["inputs"]["target"] = ["bad", 0]


def _target_batch(g, server):
    g["empty"]["inputs"]["batch_size"] = 2
    g["three"] = n("EmptyLatentImage", width=32, height=32, batch_size=3)
    g["lt"]["inputs"]["target"] = ["three", 0]


def _rank3(node, name):
    def build(g, server):
        g["bad"] = load_latent(write_latent(server, "rank3.latent", torch.zeros(4, 4, 4)))
        g[node]["inputs"][name] = ["bad", 0]
    return build


def _nan_target(g, server):
    g["bad"] = load_latent(write_latent(server, "nan.latent", torch.full((1, 4, 4, 4), NAN)))
    g["lt"]["inputs"]["target"] = ["bad", 0]


def _nan_mask(node):
    def build(g, server):
        g["mask"] = n("SolidMask", value=NAN, width=32, height=32)
        g[node]["inputs"]["mask"] = ["mask", 0]
    return build


def _nan_image(g, server):
    _nan_latent(g)
    g["nanimg"] = n("VAEDecode", samples=["bad", 0], vae=["vae", 0])
    g["it"]["inputs"]["image"] = ["nanimg", 0]


def _image_mask_batches(g, server):
    g["three"] = n("EmptyImage", width=32, height=32, batch_size=3, color=0)
    g["two"] = n("EmptyImage", width=32, height=32, batch_size=2, color=0)
    g["mask"] = n("ImageToMask", image=["two", 0], channel="red")
    g["it"]["inputs"].update(image=["three", 0], mask=["mask", 0])


def _combine_zero_linked(g, server):
    g["cb"]["inputs"].update(weight_1=_primitive(g, 0.0), weight_2=0.0, weight_3=0.0)


def _nan_conditioning_input(g, server):
    _nan_conditioning(g)
    g["cs"]["inputs"]["conditioning_1"] = ["badc", 0]


def _nan_noise(g, server):
    g["bad"] = load_latent(write_latent(server, "nan.latent", torch.full((1, 4, 4, 4), NAN)))
    g["nfl"]["inputs"]["noise"] = ["bad", 0]


def _noise_shape(g, server):
    g["bad"] = load_latent(write_latent(server, "big.latent", torch.zeros(1, 4, 8, 8)))
    g["nfl"]["inputs"]["noise"] = ["bad", 0]


def _solver_steps(g, server):
    g["guider"]["inputs"]["positive"] = ["ps", 0]
    g["sigmas"]["inputs"]["steps"] = 6


def _linked_text(g, server):
    g["ps"]["inputs"]["text"] = _primitive(g, "0: a red fox\n5: a red fox at night", "PrimitiveStringMultiline")


FIN = "NaN or infinite value"
RUN_CASES = [
    R("latent-inf", "adjoint", f"Adjoint Sampler: latent_image: the latent holds 64 {FIN}s (of 64)", _inf_latent),
    R("latent-nan", "adjoint", f"Adjoint Sampler: latent_image: the latent holds 64 {FIN}s", _nan_latent_image),
    R("latent-rank", "adjoint", "Adjoint Sampler: latent_image: a 3-D latent (shape (4, 4, 4))",
      _rank3("adjoint", "latent_image")),
    R("positive-nan", "adjoint", f"Adjoint Sampler: positive: the embedding of entry 1 holds", _nan_positive),
    R("negative-nan", "adjoint", f"Adjoint Sampler: negative: the embedding of entry 1 holds", _nan_negative),
    R("positive-strength-nan", "adjoint", "Adjoint Sampler: positive: entry 1: strength is nan; it must be a "
                                          "finite number", _nan_strength),
    R("cfg-linked-nan", "adjoint", "Adjoint Sampler: cfg: expected a finite number from 0 to 100, found nan",
      _linked("adjoint", "cfg", NAN)),
    R("denoise-linked-nan", "adjoint", "Adjoint Sampler: denoise: expected a finite number from 0.01 to 1, found nan",
      _linked("adjoint", "denoise", NAN)),
    R("lr-linked-big", "adjoint", "Adjoint Sampler: learning_rate: expected a finite number from 1e-06 to 10, "
                                  "found 1000000000.0", _linked("adjoint", "learning_rate", 1e9)),
    R("target-shape", "adjoint", "Adjoint Sampler: Guidance Loss (Latent Target): target: the target latent has "
                                 "shape (4, 8, 8) per sample but latent_image has (4, 4, 4)", _big_target),
    R("target-batch", "adjoint", "Adjoint Sampler: Guidance Loss (Latent Target): target: 3 latents for a batch "
                                 "of 2 latents; give 1 or 2", _target_batch),
    R("target-nan", "lt", f"Guidance Loss (Latent Target): target: the latent holds 64 {FIN}s", _nan_target),
    R("target-rank", "lt", "Guidance Loss (Latent Target): target: expected a float latent of shape",
      _rank3("lt", "target")),
    R("latent-mask-nan", "lt", f"Guidance Loss (Latent Target): mask: the mask holds 1024 {FIN}s",
      _nan_mask("lt")),
    R("weight-linked-nan", "lt", "Guidance Loss (Latent Target): weight: expected a finite number from 0 to 10000",
      _linked("lt", "weight", NAN)),
    R("image-nan", "it", f"Guidance Loss (Image Target): image: the image holds", _nan_image),
    R("image-mask-batch", "it", "Guidance Loss (Image Target): mask: 2 rows but image has 3", _image_mask_batches),
    R("image-mask-nan", "it", f"Guidance Loss (Image Target): mask: the mask holds 1024 {FIN}s", _nan_mask("it")),
    R("colour-mask-nan", "col", f"Guidance Loss (Colour): mask: the mask holds 1024 {FIN}s", _nan_mask("col")),
    R("combine-zero-linked", "cb", "Guidance Loss (Combine): weight_1: every connected loss has weight 0",
      _combine_zero_linked),
    R("conditioning-nan", "cs", f"Conditioning Schedule: conditioning_1: the embedding of entry 1 holds",
      _nan_conditioning_input),
    R("linked-text", "ps", "Prompt Schedule: text: line 2, col 1: step 5 is beyond the last step 3 of 4",
      _linked_text),
    R("noise-nan", "nfl", f"Noise From Latent: noise: the latent holds 64 {FIN}s", _nan_noise),
    R("noise-rank", "nfl", "Noise From Latent: noise: expected a float latent of shape", _rank3("nfl", "noise")),
    R("noise-shape", "sca", "Noise From Latent: noise: the stored noise has shape (1, 4, 8, 8) but the latent to "
                            "sample has (1, 4, 4, 4)", _noise_shape, node_type=PACK + "NoiseFromLatent"),
    R("solver-steps", "sca", "Adjoint Solver (Sampler): the sampler runs 6 steps, but the Prompt Schedule was "
                             "resolved for 4 steps", _solver_steps, node_type=PACK + "SolverSampler"),
]

_TRACEBACK = re.compile(r"Traceback \(most recent call last\):\n(.*?)\n(?=\S)", re.S)


@pytest.mark.parametrize("case", RUN_CASES, ids=[c.name for c in RUN_CASES])
def test_bad_linked_input_is_refused_when_the_node_starts(server, case):
    g = graph()
    case.build(g, server)
    start = len(server.log_text())
    entry = server.run(g, check=False, timeout=600)
    assert entry["status"]["status_str"] == "error"
    (err,) = [d for kind, d in entry["status"]["messages"] if kind == "execution_error"]
    assert err["node_id"] == case.node, err
    assert err["exception_message"].strip().startswith(case.message), err["exception_message"]
    assert err["exception_type"] in ("ValueError", "builtins.ValueError")
    # ComfyUI logs the traceback of every execution error; each must end in the pack's own checks
    log = server.log_text()[start:]
    tracebacks = _TRACEBACK.findall(log)
    assert tracebacks, log[-3000:]
    for tb in tracebacks:
        files = re.findall(r'File "([^"]+)"', tb)
        assert re.search(r"[/\\]nodes[/\\]\w+\.py$", files[-1]) and "ComfyUI/nodes" not in files[-1], tb
    valid_prompt_succeeds(server)


# --------------------------------------------------------------------------- soak

def rss_bytes(server) -> int:
    import os
    with open(f"/proc/{server.proc.pid}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def soak_prompt(i: int) -> tuple[dict, str]:
    """Prompt i of the soak: valid runs of every kind, widget mistakes and linked ones."""
    g = graph()
    a = g["adjoint"]["inputs"]
    a["seed"] = 100 + i
    a.update([dict(solver="dpmpp_2m", gradient="exact", optimize="noise"),
              dict(solver="dpmpp_1", gradient="adjointdeis-1", optimize="prompt"),
              dict(solver="sde_dpmpp_1", gradient="adjointdeis-sde", optimize="noise + prompt"),
              dict(solver="dpmpp_2m_lambda", gradient="adjointdeis-2m", optimize="noise")][i % 4])
    g["ps"]["inputs"]["interpolation"] = ("hold", "linear", "slerp")[i % 3]
    g["ss"]["inputs"]["solver"] = ("dpmpp_2m", "dpmpp_1", "dpmpp_2m_lambda")[i % 3]
    g["cb"]["inputs"]["weight_2"] = 0.25 * (i % 4)
    kind = "ok"
    if i % 5 == 3:
        a["cfg"], kind = NAN, "queue"
    elif i % 5 == 4:
        _nan_latent_image(g, None)
        kind = "run"
    return g, kind


def run_soak_prompt(server, i):
    g, kind = soak_prompt(i)
    if kind == "queue":
        status, _ = server.post("/prompt", {"prompt": g, "client_id": server.client_id})
        assert status == 400
        return
    entry = server.run(g, check=False, timeout=600)
    assert entry["status"]["status_str"] == ("success" if kind == "ok" else "error"), i


def test_soak_30_varied_prompts_keep_the_server_rss_flat(server):
    for i in range(10):                      # warm-up: every kind of prompt once and again
        run_soak_prompt(server, i)
    before = rss_bytes(server)
    for i in range(10, 40):
        run_soak_prompt(server, i)
    after = rss_bytes(server)
    growth = (after - before) / before
    print(f"server RSS {before / 2**20:.1f} MiB -> {after / 2**20:.1f} MiB ({100 * growth:+.2f} %)")
    assert growth < 0.05, (before, after)
    valid_prompt_succeeds(server)
