"""The example workflows, written as API-format prompts: the source of example_workflows/.

`python3 scripts/make_example_workflows.py` turns each into the frontend's format (what
ComfyUI's template browser offers) with a real server's /object_info. Model names are
the tiny test-host models; run_examples.py can swap in a user's own.
"""
TINY_UNET = "tiny-sd15-unet.safetensors"
TINY_CLIP = "tiny-clip-l.safetensors"
TINY_VAE = "taesd"


def _loaders():
    return {
        "1": {"class_type": "UNETLoader", "inputs": {"unet_name": TINY_UNET, "weight_dtype": "default"}},
        "2": {"class_type": "CLIPLoader", "inputs": {"clip_name": TINY_CLIP, "type": "stable_diffusion", "device": "default"}},
        "3": {"class_type": "VAELoader", "inputs": {"vae_name": TINY_VAE}},
    }


def _stock_ksampler_from(positive: str, stem: str):
    """Nodes 5-10 of the stock-sampler examples: negative prompt, empty latent, KSampler on
    the positive conditioning of node `positive`, decode, and save image and latent."""
    return {
        "5": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["2", 0], "text": "blurry, low quality"}},
        "6": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "7": {"class_type": "KSampler", "inputs": {
            "model": ["1", 0], "positive": [positive, 0], "negative": ["5", 0], "latent_image": ["6", 0],
            "seed": 42, "steps": 12, "cfg": 6.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["7", 0], "vae": ["3", 0]}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": stem}},
        "10": {"class_type": "SaveLatent", "inputs": {"samples": ["7", 0], "filename_prefix": f"latents/{stem}"}},
    }


def _adjoint_sampler(positive, loss, seed, optimize="noise", iterations=10):
    """The Adjoint Sampler as the examples use it: 8 Karras steps, exact gradients, Adam 0.05."""
    return {"class_type": "AdjointGuidance_AdjointSampler", "inputs": {
        "model": ["1", 0], "positive": positive, "negative": ["5", 0], "latent_image": ["6", 0],
        "loss": loss, "seed": seed, "steps": 8, "cfg": 3.0, "scheduler": "karras", "solver": "dpmpp_2m",
        "gradient": "exact", "adjoint_steps": 0, "optimize": optimize, "iterations": iterations,
        "learning_rate": 0.05, "renormalize_noise": True, "max_grad_norm": 0.0, "early_stop_patience": 0,
        "denoise": 1.0, "batch_mode": "batched", "gradient_memory": "auto"}}


def stock_text_to_image():
    return {
        **_loaders(),
        "4": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["2", 0], "text": "a lighthouse on a cliff at dusk, oil painting"}},
        **_stock_ksampler_from("4", "stock_text_to_image"),
    }


def prompt_schedule():
    """Prompt Schedule with the stock KSampler: dusk held, blended into night step by step."""
    return {
        **_loaders(),
        "4": {"class_type": "AdjointGuidance_PromptSchedule", "inputs": {
            "clip": ["2", 0], "model": ["1", 0],
            "text": ("# Dusk for the first 30 % of the steps, then a per-step blend that reaches night at 80 %.\n"
                     "0: a lighthouse on a cliff at dusk, oil painting\n"
                     "30%: a lighthouse on a cliff at dusk, oil painting\n"
                     "80%: a lighthouse on a cliff at night, stars, oil painting"),
            "interpolation": "linear", "steps": 12, "scheduler": "normal"}},
        **_stock_ksampler_from("4", "prompt_schedule"),
    }


def adjoint_guided():
    """Adjoint Sampler: optimise seed 1's noise and both scheduled prompts toward a reference."""
    return {
        **_loaders(),
        "4": {"class_type": "AdjointGuidance_PromptSchedule", "inputs": {
            "clip": ["2", 0], "model": ["1", 0],
            "text": "0: a castle on a hill, morning light\n50%: a castle on a hill at night, moonlight",
            "interpolation": "hold", "steps": 8, "scheduler": "karras"}},
        "5": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["2", 0], "text": "blurry, low quality"}},
        "6": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "7": {"class_type": "KSampler", "inputs": {
            "model": ["1", 0], "positive": ["4", 0], "negative": ["5", 0], "latent_image": ["6", 0],
            "seed": 7, "steps": 8, "cfg": 3.0, "sampler_name": "dpmpp_2m", "scheduler": "karras", "denoise": 1.0}},
        "8": {"class_type": "AdjointGuidance_LossLatentTarget", "inputs": {
            "target": ["7", 0], "metric": "mse", "weight": 1.0}},
        "9": _adjoint_sampler(["4", 0], ["8", 0], seed=1, optimize="noise + prompt", iterations=12),
        "10": {"class_type": "VAEDecode", "inputs": {"samples": ["9", 0], "vae": ["3", 0]}},
        "11": {"class_type": "SaveImage", "inputs": {"images": ["10", 0], "filename_prefix": "adjoint_guided"}},
        "12": {"class_type": "SaveImage", "inputs": {"images": ["9", 3], "filename_prefix": "adjoint_guided_loss_curve"}},
        "13": {"class_type": "SaveLatent", "inputs": {"samples": ["9", 0], "filename_prefix": "latents/adjoint_guided"}},
        "14": {"class_type": "SaveLatent", "inputs": {"samples": ["9", 1], "filename_prefix": "latents/adjoint_guided_noise"}},
    }


def colour_guided():
    """Guidance Loss (Colour): the Adjoint Sampler pushes the picture's mean colour toward a blue."""
    return {
        **_loaders(),
        "4": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["2", 0], "text": "a lighthouse on a cliff at dusk, oil painting"}},
        "5": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["2", 0], "text": "blurry, low quality"}},
        "6": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "7": {"class_type": "AdjointGuidance_LossColour", "inputs": {
            "vae": ["3", 0], "colour": "#2050c0", "colour_weight": 1.0, "brightness": 0.4, "brightness_weight": 0.0,
            "contrast": 0.25, "contrast_weight": 0.0, "saturation": 0.4, "saturation_weight": 0.5}},
        "8": _adjoint_sampler(["4", 0], ["7", 0], seed=42),
        "9": {"class_type": "VAEDecode", "inputs": {"samples": ["8", 0], "vae": ["3", 0]}},
        "10": {"class_type": "SaveImage", "inputs": {"images": ["9", 0], "filename_prefix": "colour_guided"}},
        "11": {"class_type": "SaveImage", "inputs": {"images": ["8", 3], "filename_prefix": "colour_guided_loss_curve"}},
    }


def reference_guided():
    """Guidance Loss (Image Target), low frequencies: a new prompt that keeps a reference's layout."""
    return {
        **_loaders(),
        "4": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["2", 0], "text": "a castle on a hill, morning light, oil painting"}},
        "5": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["2", 0], "text": "blurry, low quality"}},
        "6": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "7": {"class_type": "KSampler", "inputs": {
            "model": ["1", 0], "positive": ["4", 0], "negative": ["5", 0], "latent_image": ["6", 0],
            "seed": 7, "steps": 8, "cfg": 3.0, "sampler_name": "dpmpp_2m", "scheduler": "karras", "denoise": 1.0}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["7", 0], "vae": ["3", 0]}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": "reference_guided_reference"}},
        "10": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["2", 0], "text": "a castle on a hill in a snowstorm at night, oil painting"}},
        "11": {"class_type": "AdjointGuidance_LossImageTarget", "inputs": {
            "vae": ["3", 0], "image": ["8", 0], "metric": "mse", "blur_sigma": 4.0, "weight": 1.0}},
        "12": _adjoint_sampler(["10", 0], ["11", 0], seed=1),
        "13": {"class_type": "VAEDecode", "inputs": {"samples": ["12", 0], "vae": ["3", 0]}},
        "14": {"class_type": "SaveImage", "inputs": {"images": ["13", 0], "filename_prefix": "reference_guided"}},
        "15": {"class_type": "SaveImage", "inputs": {"images": ["12", 3], "filename_prefix": "reference_guided_loss_curve"}},
    }


# file stem -> (builder, note shown in the workflow). The template browser shows a custom node's
# template by its file name (both frontends 1.32.9 and 1.49.6), hence readable names with spaces.
WORKFLOWS = {
    "Text to Image (stock nodes)": (
        stock_text_to_image,
        "Stock text-to-image on the pack's tiny test models: the pipeline check "
        "that every later workflow builds on. Swap the loaders for your own models."),
    "Adjoint Sampler (match a latent)": (
        adjoint_guided,
        "Adjoint Sampler: start from seed 1 and optimise its initial noise and both keyframes "
        "of the Prompt Schedule so the result lands on the reference (here seed 7's sample; use "
        "VAE Encode of your own image instead). Exact adjoint gradients, one network step's "
        "activations at a time. Saves the image, the optimised noise and the loss curve."),
    "Prompt Schedule (dusk to night)": (
        prompt_schedule,
        "Prompt Schedule: the prompt changes with the sampling step. Keyframe lines 'when: prompt' "
        "(0-based step 12, 40%, or 0.4), A1111 edits [from:to:when] inside a prompt, and hold / "
        "linear / slerp between keyframes. Give the schedule the KSampler's steps and scheduler; "
        "with the MODEL connected each keyframe switches exactly at its step in the stock "
        "KSampler (without it the switch points are approximate for non-SD1/SDXL models)."),
    "Colour Guidance (toward a blue)": (
        colour_guided,
        "Match a reference's colours: Guidance Loss (Colour) decodes each result with the VAE "
        "(differentiably) and the Adjoint Sampler optimises the initial noise until the picture's "
        "mean colour moves toward #2050c0 (pick your reference's mean colour) and its saturation "
        "toward 0.4. Brightness and contrast have weight 0: left free. Saves the image and the "
        "loss curve."),
    "Reference Image (keep the layout)": (
        reference_guided,
        "Stay close to a reference image while following a new prompt: the reference (here a "
        "stock KSampler picture of a morning castle; use Load Image for your own) is compared "
        "with each result after a Gaussian blur (blur_sigma 4 px), so the layout and colours "
        "follow it while the new prompt (a snowstorm at night) decides the detail. Saves the "
        "reference, the image and the loss curve."),
}
