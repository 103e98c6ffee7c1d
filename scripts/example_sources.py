"""The example workflows, written as API-format prompts: the source of example_workflows/.

`python3 scripts/make_example_workflows.py` turns each into the frontend's format (what
ComfyUI's template browser offers) with a real server's /object_info. They run on the
toy-world demo model (demo_model/: one coloured shape on a plain background, 64x64 px,
captions like "a small yellow star at the top left on a green background"), which the
test host links into its models; run_examples.py can swap in a user's own. The tiny
random models (tiny_loaders) stay for the fast tests.

Every node a contact sheet shows has a title (`_meta.title`): the workflow shows it on
the canvas and scripts/run_examples.py labels the sheet's pictures with it.
"""
UNET = "toyworld-unet.safetensors"
CLIP = "toyworld-clip-l.safetensors"
VAE = "toyworld-taesd.safetensors"
TINY_UNET = "tiny-sd15-unet.safetensors"
TINY_CLIP = "tiny-clip-l.safetensors"
TINY_VAE = "taesd"

SIZE = 64               # the toy world's pictures: 64x64 px, 8x8 latents
STEPS = 20
CFG = 4.0
SAMPLER, SCHEDULER = "dpmpp_2m", "karras"   # the Adjoint Sampler's solver, so seed s unguided = its iteration 0
MODEL, CLIP_OUT, VAE_OUT, NEGATIVE, LATENT = ["1", 0], ["2", 0], ["3", 0], ["4", 0], ["5", 0]


def tiny_loaders():
    """Loaders of the tiny random test models (nodes 1-3: MODEL, CLIP, VAE), for the fast tests."""
    return {
        "1": {"class_type": "UNETLoader", "inputs": {"unet_name": TINY_UNET, "weight_dtype": "default"}},
        "2": {"class_type": "CLIPLoader", "inputs": {"clip_name": TINY_CLIP, "type": "stable_diffusion", "device": "default"}},
        "3": {"class_type": "VAELoader", "inputs": {"vae_name": TINY_VAE}},
    }


class Graph(dict):
    """An API-format prompt built node by node. Nodes 1-5 are the same in every example:
    the toy-world loaders, the empty negative prompt (the caption the model learned as
    "no caption", what CFG pushes away from) and a 64x64 empty latent."""

    def __init__(self):
        super().__init__()
        self.add("UNETLoader", unet_name=UNET, weight_dtype="default")
        self.add("CLIPLoader", clip_name=CLIP, type="stable_diffusion", device="default")
        self.add("VAELoader", vae_name=VAE)
        self.add("CLIPTextEncode", "Negative (empty caption)", clip=CLIP_OUT, text="")
        self.add("EmptyLatentImage", width=SIZE, height=SIZE, batch_size=1)

    def add(self, class_type: str, title: str | None = None, **inputs) -> str:
        node = str(len(self) + 1)
        self[node] = {"class_type": class_type, "inputs": inputs}
        if title:
            self[node]["_meta"] = {"title": title}
        return node

    def encode(self, text: str, title: str) -> list:
        return [self.add("CLIPTextEncode", title, clip=CLIP_OUT, text=text), 0]

    def schedule(self, text: str, interpolation: str, title: str) -> list:
        return [self.add("AdjointGuidance_PromptSchedule", title, clip=CLIP_OUT, model=MODEL, text=text,
                         interpolation=interpolation, steps=STEPS, scheduler=SCHEDULER), 0]

    def ksampler(self, positive: list, seed: int, title: str | None = None) -> list:
        return [self.add("KSampler", title, model=MODEL, positive=positive, negative=NEGATIVE,
                         latent_image=LATENT, seed=seed, steps=STEPS, cfg=CFG, sampler_name=SAMPLER,
                         scheduler=SCHEDULER, denoise=1.0), 0]

    def decode(self, latent: list) -> list:
        return [self.add("VAEDecode", samples=latent, vae=VAE_OUT), 0]

    def save(self, image: list, prefix: str, title: str) -> str:
        return self.add("SaveImage", title, images=image, filename_prefix=prefix)

    def picture(self, latent: list, prefix: str, title: str) -> list:
        """Decode a latent and save it; returns the IMAGE."""
        image = self.decode(latent)
        self.save(image, prefix, title)
        return image

    def adjoint_sampler(self, positive: list, loss: list, seed: int, optimize: str, iterations: int,
                        learning_rate: float) -> str:
        """The Adjoint Sampler as the examples use it: the KSampler's steps, cfg, solver and
        scheduler, exact gradients, Adam."""
        return self.add("AdjointGuidance_AdjointSampler", "Adjoint Sampler", model=MODEL, positive=positive,
                        negative=NEGATIVE, latent_image=LATENT, loss=loss, seed=seed, steps=STEPS, cfg=CFG,
                        scheduler=SCHEDULER, solver=SAMPLER, gradient="exact", adjoint_steps=0,
                        optimize=optimize, iterations=iterations, learning_rate=learning_rate,
                        renormalize_noise=True, max_grad_norm=0.0, early_stop_patience=0, denoise=1.0,
                        batch_mode="batched", gradient_memory="auto")

    def guided(self, positive: list, loss: str, seed: int, prefix: str, title: str = "Save: guided",
               suffix: str = "", **settings) -> str:
        """The Adjoint Sampler on `loss` (settings: optimize, iterations, learning_rate), its
        picture saved as prefix + suffix and its loss curve as prefix_loss_curve; returns the sampler."""
        sampler = self.adjoint_sampler(positive, [loss, 0], seed, **settings)
        self.picture([sampler, 0], prefix + suffix, title)
        self.save([sampler, 3], f"{prefix}_loss_curve", "Save: loss curve")
        return sampler


# ---- the examples ----------------------------------------------------------------------------

SCENE_A = "a red circle on a blue background"
SCENE_B = "a yellow star on a green background"


def stock_text_to_image():
    g = Graph()
    positive = g.encode("a large red circle in the centre on a blue background", "Prompt")
    g.picture(g.ksampler(positive, seed=1), "text_to_image", "Save: result")
    return dict(g)


def _scene_alone(g: Graph, text: str, which: str, seed: int, prefix: str):
    g.picture(g.ksampler(g.encode(text, f"{which} scene"), seed), f"{prefix}_{which.lower()}_alone",
              f"Save: {which.lower()} scene alone")


SWITCH_AT = "80%"


def prompt_schedule_switch():
    """Prompt Schedule (hold) with the stock KSampler: one scene, then the other, switched
    at one step; beside it each scene alone from the same seed."""
    g, seed, prefix = Graph(), 7, "schedule_switch"
    _scene_alone(g, SCENE_A, "First", seed, prefix)
    text = f"0: {SCENE_A}\n{SWITCH_AT}: {SCENE_B}"
    switched = g.ksampler(g.schedule(text, "hold", "Prompt Schedule (hold)"), seed)
    g.picture(switched, prefix, f"Save: switched at {SWITCH_AT}")
    _scene_alone(g, SCENE_B, "Second", seed, prefix)
    return dict(g)


def prompt_schedule_blend():
    """Prompt Schedule blends with the stock KSampler: the same two keyframes, blended step by
    step linearly and by slerp; beside them each scene alone from the same seed."""
    g, seed, prefix = Graph(), 5, "schedule_blend"
    _scene_alone(g, SCENE_A, "First", seed, prefix)
    text = f"0: {SCENE_A}\n100%: {SCENE_B}"
    for interpolation in ("linear", "slerp"):
        blended = g.ksampler(g.schedule(text, interpolation, f"Prompt Schedule ({interpolation})"), seed)
        g.picture(blended, f"{prefix}_{interpolation}", f"Save: {interpolation} blend")
    _scene_alone(g, SCENE_B, "Second", seed, prefix)
    return dict(g)


COLOUR_PROMPT = "a large red square in the centre on an orange background"
COLOUR_TARGET = "#2050c0"


def colour_guided():
    """Guidance Loss (Colour): the Adjoint Sampler turns a red scene toward an asked colour."""
    g, seed, prefix = Graph(), 5, "colour_guided"
    positive = g.encode(COLOUR_PROMPT, "Prompt")
    g.picture(g.ksampler(positive, seed), f"{prefix}_unguided", "Save: unguided (same seed)")
    loss = g.add("AdjointGuidance_LossColour", "Guidance Loss (Colour)", vae=VAE_OUT, colour=COLOUR_TARGET,
                 colour_weight=1.0, brightness=0.4, brightness_weight=0.0, contrast=0.25, contrast_weight=0.0,
                 saturation=0.4, saturation_weight=0.0)
    g.guided(positive, loss, seed, prefix, optimize="noise + prompt", iterations=10, learning_rate=0.05)
    return dict(g)


REFERENCE_PROMPT = "a large white circle on a blue background"
NEW_PROMPT = "a purple triangle on a blue background"


def reference_guided():
    """Guidance Loss (Image Target), blurred: a new prompt pulled toward a reference's composition."""
    g, seed, prefix = Graph(), 11, "reference_guided"
    reference = g.picture(g.ksampler(g.encode(REFERENCE_PROMPT, "Reference prompt"), seed=7),
                          f"{prefix}_reference", "Save: reference")
    positive = g.encode(NEW_PROMPT, "New prompt")
    g.picture(g.ksampler(positive, seed), f"{prefix}_unguided", "Save: new prompt, unguided")
    loss = g.add("AdjointGuidance_LossImageTarget", "Guidance Loss (Image Target)", vae=VAE_OUT,
                 image=reference, metric="mse", blur_sigma=4.0, weight=1.0)
    g.guided(positive, loss, seed, prefix, optimize="noise", iterations=20, learning_rate=0.1)
    return dict(g)


REPLAY_PROMPT = "a green triangle on a white background"
REPLAY_TARGET_PROMPT = "a large green triangle on a white background"


def noise_replay():
    """Adjoint Sampler optimises the noise toward a latent target; Noise From Latent and the
    stock SamplerCustomAdvanced replay that noise and draw the same picture."""
    g, seed, prefix = Graph(), 1, "noise_replay"
    positive = g.encode(REPLAY_PROMPT, "Prompt")
    g.picture(g.ksampler(positive, seed), f"{prefix}_unguided", f"Save: seed {seed}, unguided")
    target = g.ksampler(g.encode(REPLAY_TARGET_PROMPT, "Target prompt"), seed=7, title="KSampler (target)")
    g.picture(target, f"{prefix}_target", "Save: target")
    loss = g.add("AdjointGuidance_LossLatentTarget", "Guidance Loss (Latent Target)", target=target,
                 metric="mse", weight=1.0)
    sampler = g.guided(positive, loss, seed, prefix, "Save: Adjoint Sampler", "_adjoint", optimize="noise",
                       iterations=20, learning_rate=0.05)
    noise = g.add("AdjointGuidance_NoiseFromLatent", "Noise From Latent", noise=[sampler, 1], seed=seed)
    guider = g.add("CFGGuider", model=MODEL, positive=positive, negative=NEGATIVE, cfg=CFG)
    stock = g.add("KSamplerSelect", sampler_name=SAMPLER)
    sigmas = g.add("BasicScheduler", model=MODEL, scheduler=SCHEDULER, steps=STEPS, denoise=1.0)
    replay = g.add("SamplerCustomAdvanced", "SamplerCustomAdvanced (replay)", noise=[noise, 0],
                   guider=[guider, 0], sampler=[stock, 0], sigmas=[sigmas, 0], latent_image=LATENT)
    g.picture([replay, 0], f"{prefix}_stock", "Save: stock replay")
    return dict(g)


# file stem -> (builder, note shown in the workflow). The template browser shows a custom node's
# template by its file name (both frontends 1.32.9 and 1.49.6), hence readable names with spaces.
WORKFLOWS = {
    "Text to Image (stock nodes)": (
        stock_text_to_image,
        "Stock text-to-image on the toy-world demo model (one coloured shape on a plain "
        "background, 64x64 px): the pipeline check that every later workflow builds on. "
        "Swap the loaders for your own models and the size for theirs."),
    "Prompt Schedule (switch scenes)": (
        prompt_schedule_switch,
        "Prompt Schedule, hold: the first scene (a red circle on blue) for the first 80 % of "
        "the steps, then a hard switch to the second (a yellow star on green). The early steps "
        "have laid out the picture (the blue background, where the shape sits and how large it "
        "is); the last four steps recolour the shape toward yellow. Each scene alone (same "
        "seed) is drawn beside it. Keyframe lines 'when: prompt' (0-based step 16, 80%, or 0.8); give "
        "the schedule the KSampler's steps and scheduler, and with the MODEL connected each "
        "keyframe switches exactly at its step in the stock KSampler."),
    "Prompt Schedule (blend scenes)": (
        prompt_schedule_blend,
        "Prompt Schedule, blends: two keyframes, the first scene at step 0 and the second at "
        "100 %, blended step by step, linearly and by slerp (spherical interpolation, which "
        "keeps the embedding's norm), each with the stock KSampler, beside each scene alone "
        "from the same seed. The early, mostly-first-scene steps place the shape; the late, "
        "mostly-second-scene steps colour it and the background."),
    "Colour Guidance (red to blue)": (
        colour_guided,
        "Guidance Loss (Colour) decodes each result with the VAE (differentiably) and the "
        "Adjoint Sampler optimises the initial noise and the prompt embedding (10 iterations) "
        "until the mean colour of a red square on orange moves toward #2050c0: the picture "
        "turns blue. Only the mean colour is asked (brightness, contrast and saturation have "
        "weight 0), so more iterations end in a plain blue field. Saves the unguided picture "
        "(stock KSampler, same seed), the guided one and the loss curve."),
    "Reference Image (keep the composition)": (
        reference_guided,
        "Follow a new prompt but keep a reference's composition: the reference (a stock "
        "KSampler picture; use Load Image for your own) is compared with each result after a "
        "Gaussian blur (blur_sigma 4 px). Only the noise is optimised, so the picture stays "
        "what the new prompt asks (a purple shape on blue) while where the shape sits and how "
        "large it is move toward the reference's white circle. Saves the reference, the new "
        "prompt unguided (same seed), the guided picture and the loss curve."),
    "Noise Replay (stock sampler)": (
        noise_replay,
        "The Adjoint Sampler optimises seed 1's noise toward a target latent (here a stock "
        "picture of a large green triangle, seed 7; use VAE Encode of your own picture); its "
        "optimized_noise then goes through Noise From "
        "Latent into the stock SamplerCustomAdvanced (same sampler, scheduler, steps and cfg), "
        "which draws the same picture: the optimised noise is an ordinary starting noise, "
        "usable with the stock samplers."),
}
