"""The pixel-space Guidance Loss nodes through a real ComfyUI server, on the tiny models.

Graphs: the tiny SD1.5 UNet and CLIP-L, the TAESD VAE from the stock VAELoader (weights
loaded as inference tensors, as for every user), 32x32 images (4x4 latents), 4 steps,
cfg 1. The reference image is VAE Decode of a stock KSampler sample of the same model
(seed 7). The Adjoint Sampler must halve each loss in 30 iterations (measured best/first:
0.43 MSE, 0.41 low-frequency MSE, 0.44 colour, 0.41 combine). On the tiny UNet's latents
(values up to +-250) the random TAESD's input tanh saturates and about three quarters of
the decoded pixels lie outside [0, 1] (unclamped, see nodes/pixel_losses.py), so much of
each loss is pulling them back; L1 falls only to 0.66 of its start in 30 iterations here,
so its gradient is checked in-process against finite differences only. The CLIP-vision
loss runs the reduction check in-process (tests/inprocess/test_guidance_losses.py): the
stock CLIPVisionLoader only loads full-size models.
"""
import math

import pytest

UNET = "tiny-sd15-unet.safetensors"
CLIP = "tiny-clip-l.safetensors"
STEPS = 4

IMAGE_TARGET = {"class_type": "AdjointGuidance_LossImageTarget", "inputs": {
    "vae": ["vae", 0], "image": ["reference", 0], "metric": "mse", "blur_sigma": 0.0, "weight": 1.0}}
COLOUR = {"class_type": "AdjointGuidance_LossColour", "inputs": {
    "vae": ["vae", 0], "colour": "#2050c0", "colour_weight": 1.0, "brightness": 0.35, "brightness_weight": 1.0,
    "contrast": 0.2, "contrast_weight": 1.0, "saturation": 0.5, "saturation_weight": 1.0}}


def node(template, **inputs):
    return {"class_type": template["class_type"], "inputs": {**template["inputs"], **inputs}}


def graph(losses, loss="loss", batch=1, sampler_inputs=None):
    """`losses`: the loss nodes by id; `loss`: the id whose output the sampler minimises."""
    g = {
        "unet": {"class_type": "UNETLoader", "inputs": {"unet_name": UNET, "weight_dtype": "default"}},
        "clip": {"class_type": "CLIPLoader", "inputs": {"clip_name": CLIP, "type": "stable_diffusion", "device": "default"}},
        "vae": {"class_type": "VAELoader", "inputs": {"vae_name": "taesd"}},
        "pos": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["clip", 0], "text": "a red fox in the snow"}},
        "neg": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["clip", 0], "text": "blurry"}},
        "empty": {"class_type": "EmptyLatentImage", "inputs": {"width": 32, "height": 32, "batch_size": batch}},
        "target": {"class_type": "KSampler", "inputs": {
            "model": ["unet", 0], "positive": ["pos", 0], "negative": ["neg", 0], "latent_image": ["empty", 0],
            "seed": 7, "steps": STEPS, "cfg": 1.0, "sampler_name": "dpmpp_2m", "scheduler": "karras", "denoise": 1.0}},
        "reference": {"class_type": "VAEDecode", "inputs": {"samples": ["target", 0], "vae": ["vae", 0]}},
    }
    g.update(losses)
    inputs = {"model": ["unet", 0], "positive": ["pos", 0], "negative": ["neg", 0], "latent_image": ["empty", 0],
              "loss": [loss, 0], "seed": 1, "steps": STEPS, "cfg": 1.0, "scheduler": "karras",
              "solver": "dpmpp_2m", "gradient": "exact", "adjoint_steps": 0, "optimize": "noise",
              "iterations": 30, "learning_rate": 0.1, "renormalize_noise": False, "max_grad_norm": 0.0,
              "early_stop_patience": 0, "denoise": 1.0}
    inputs.update(sampler_inputs or {})
    g["adjoint"] = {"class_type": "AdjointGuidance_AdjointSampler", "inputs": inputs}
    g["save"] = {"class_type": "SaveLatent", "inputs": {"samples": ["adjoint", 0], "filename_prefix": "loss/out"}}
    return g


def loss_report(entry):
    return entry["outputs"]["adjoint"]["adjoint_guidance_loss"][0]


def error_message(entry):
    for kind, data in entry["status"]["messages"]:
        if kind == "execution_error":
            return data["exception_message"]
    return None


CASES = {
    "image_target_mse": {"loss": IMAGE_TARGET},
    "image_target_low_frequency": {"loss": node(IMAGE_TARGET, blur_sigma=2.0)},
    "colour": {"loss": COLOUR},
    "combine": {"image": IMAGE_TARGET, "colour": COLOUR,
                "loss": {"class_type": "AdjointGuidance_LossCombine", "inputs": {
                    "loss_1": ["image", 0], "weight_1": 1.0, "loss_2": ["colour", 0], "weight_2": 0.5,
                    "weight_3": 1.0, "weight_4": 1.0}}},
}


@pytest.mark.parametrize("case", list(CASES))
def test_adjoint_sampler_halves_the_loss_in_30_iterations(server, case):
    entry = server.run(graph(CASES[case]), timeout=600)
    report = loss_report(entry)
    losses = report["losses"]
    assert len(losses) == 31 and report["stop_reason"] == "iterations"
    assert report["best_loss"] <= 0.5 * losses[0], (case, losses)


def test_a_reference_batch_that_fits_no_latent_batch_is_a_clear_error(server):
    losses = {"three": {"class_type": "EmptyImage", "inputs": {"width": 32, "height": 32, "batch_size": 3, "color": 0}},
              "loss": node(IMAGE_TARGET, image=["three", 0])}
    entry = server.run(graph(losses, batch=2, sampler_inputs={"iterations": 1}), check=False)
    assert entry["status"]["status_str"] == "error"
    assert error_message(entry).startswith("Adjoint Sampler: Guidance Loss (Image Target): image: 3 images for a "
                                           "batch of 2 latents; give 1 or 2"), error_message(entry)


def test_a_colour_that_is_not_hex_is_refused_before_running(server):
    status, body = server.post("/prompt", {"prompt": graph({"loss": node(COLOUR, colour="blueish")})})
    assert status == 400
    errors = body["node_errors"]["loss"]["errors"]
    assert any("Guidance Loss (Colour): colour: 'blueish' is not a colour; write it as #rrggbb" in e["details"]
               for e in errors), errors


def test_an_all_zero_mask_gives_a_zero_loss_without_nan(server):
    losses = {"nothing": {"class_type": "SolidMask", "inputs": {"value": 0.0, "width": 32, "height": 32}},
              "loss": node(COLOUR, mask=["nothing", 0])}
    report = loss_report(server.run(graph(losses, sampler_inputs={"iterations": 2})))
    assert report["losses"] == [0.0, 0.0, 0.0] and report["stop_reason"] == "iterations"
    assert all(g is not None and math.isfinite(g) and g == 0.0 for g in report["grad_norms"][:2])


@pytest.mark.parametrize("stem, prefix", [("Colour Guidance (red to blue)", "colour_guided"),
                                          ("Reference Image (keep the composition)", "reference_guided")])
def test_example_workflow_runs_and_lowers_its_loss(server, stem, prefix):
    """The example workflow file, as the main command (scripts/run_examples.py) runs it."""
    import json

    from comfy_harness import REPO
    from workflows import ui_to_api
    ui = json.loads((REPO / "example_workflows" / f"{stem}.json").read_text())
    prompt = ui_to_api(ui, server.object_info())
    entry = server.run(prompt, timeout=600)
    sampler = next(k for k, v in prompt.items() if v["class_type"] == "AdjointGuidance_AdjointSampler")
    report = loss_report({"outputs": {"adjoint": entry["outputs"][sampler]}})
    assert report["best_loss"] < report["losses"][0], report["losses"]
    saved = [img["filename"] for out in entry["outputs"].values() for img in out.get("images", [])]
    assert any(f.startswith(f"{prefix}_loss_curve") for f in saved) and any(f.startswith(f"{prefix}_0") for f in saved), saved
