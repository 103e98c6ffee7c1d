"""The demo-guidance job's model and objective: the toy-world demo model, loaded through
ComfyUI's own loaders, and a guidance loss on the decoded picture whose sampling steps
interact (run by bench/worker.py `run_demo_guidance`, summarised by bench/report.py).

Model (demo_model/train.py; scripts/host/setup_host.py links the files into .host/models):
    UNet  unet/toyworld-unet.safetensors          comfy.sd.load_diffusion_model (SD1.5 detection)
    CLIP  text_encoders/toyworld-clip-l.safetensors  comfy.sd.load_clip (stable_diffusion)
    VAE   vae/toyworld-taesd.safetensors          comfy.sd.VAE (TAESD format)
The denoiser is ComfyUI's own `BaseModel.apply_model` (its SD1.5 ModelSamplingDiscrete:
calculate_input, nearest-timestep lookup, calculate_denoised), cond and uncond in one
batch-2 call, CFG on the x0 predictions as ComfyUI's cfg_function does:
    D(x, σ, c) = D_u + cfg·(D_c − D_u),  [D_c, D_u] = apply_model([x, x], [σ, σ], [c, c_empty])
σ grid: `comfy.samplers.calculate_sigmas(model_sampling, "karras", N)` (the Adjoint
Sampler's default scheduler), DPM-Solver++(2M), x_T = σ_max·ε.

Objectives (both the pack's own losses, adjoint/losses.py, on x0 mapped to the VAE's latent
space by the model's `process_latent_out`, as nodes/adjoint_sampling.py does):
    image_target  Guidance Loss (Image Target): MSE between the decoded picture and a
                  reference picture of another scene (toy_world.render), optional blur
    colour        Guidance Loss (Colour): (mean RGB − target)² averaged over R, G, B
The decode is TAESD's own `decode` followed by the VAE's output map without its clamp
((x + 1)/2, what nodes/pixel_losses.VaeDecoder does), with a graph.

Why this objective: the loss is a function of the decoded picture of the *final* sample
of a trained model, so how the first steps place the shape decides what the last steps
can do (the sampler's Jacobian dx_0/dx_T is far from the identity), the setting where a
greedy one-step gradient (each step's own x0 prediction, ∂x_i/∂x_T ≈ I) can go wrong.
"""
from __future__ import annotations

import sys
from pathlib import Path

import workload

REPO = Path(__file__).resolve().parents[1]
MODELS = workload.HOST / "models"
DEMO = REPO / "demo_model"

FILES = {"unet": ("unet", "toyworld-unet.safetensors"),
         "clip": ("text_encoders", "toyworld-clip-l.safetensors"),
         "vae": ("vae", "toyworld-taesd.safetensors")}

# The job's default objective (the spec may override every field). The caption leaves the
# circle's size and place open; each seed's reference picture fixes them (seed i gets
# references[i % 5]), so the optimisation has to move and resize what the first steps laid
# out. blur_sigma 4 px as in the example workflow "Reference Image (keep the composition)".
DEFAULT_OBJECTIVE = {
    "kind": "image_target",
    "caption": "a red circle on a blue background",
    # the reference pictures: other scenes of the toy world (toy_world.Scene fields)
    "references": [
        {"colour": "red", "shape": "circle", "background": "blue", "size": "large", "position": "bottom right"},
        {"colour": "red", "shape": "circle", "background": "blue", "size": "small", "position": "top left"},
        {"colour": "red", "shape": "circle", "background": "blue", "size": "large", "position": "top right"},
        {"colour": "red", "shape": "circle", "background": "blue", "size": "small", "position": "bottom left"},
        {"colour": "red", "shape": "circle", "background": "blue", "size": "small", "position": "centre"},
    ],
    "blur_sigma": 4.0,
    "colour": "#2050c0",          # for kind "colour"
    "negative": "",               # the uncond caption (the model trained 10 % empty captions)
}


def model_paths(spec: dict) -> dict:
    """The three files: spec["models"][key] if given, else .host/models/<sub>/<name>, else
    demo_model/<name> (demo_model/.work for the text encoder). Raises FileNotFoundError."""
    given = spec.get("models") or {}
    out = {}
    for key, (sub, name) in FILES.items():
        candidates = [Path(given[key])] if key in given else [
            MODELS / sub / name, DEMO / name, DEMO / ".work" / name]
        found = next((p for p in candidates if p.is_file()), None)
        if found is None:
            raise FileNotFoundError(f"demo model {key}: none of {', '.join(map(str, candidates))} exists "
                                    "(train it with demo_model/train.py, then python3 scripts/host/setup_host.py)")
        out[key] = found.resolve()
    return out


def models_present(spec: dict | None = None) -> bool:
    try:
        model_paths(spec or {})
        return True
    except FileNotFoundError:
        return False


def _no_grad_params(module):
    for p in module.parameters():
        p.requires_grad_(False)


def load(spec: dict):
    """Load the three models through ComfyUI (already imported with --cpu by workload)."""
    import torch
    import comfy.model_management
    import comfy.sd
    import comfy.utils

    paths = model_paths(spec)
    patcher = comfy.sd.load_diffusion_model(str(paths["unet"]))
    comfy.model_management.load_models_gpu([patcher])
    base = patcher.model
    _no_grad_params(base)
    base.eval()
    clip = comfy.sd.load_clip(ckpt_paths=[str(paths["clip"])], clip_type=comfy.sd.CLIPType.STABLE_DIFFUSION)
    vae = comfy.sd.VAE(sd=comfy.utils.load_torch_file(str(paths["vae"])))
    _no_grad_params(vae.first_stage_model)
    vae.first_stage_model.eval()
    return {"patcher": patcher, "base": base, "clip": clip, "vae": vae, "paths": paths, "torch": torch}


def encode(clip, text: str):
    """CLIPTextEncode's cond tensor [1, 77, 768], detached."""
    import torch
    with torch.no_grad():
        cond = clip.encode_from_tokens(clip.tokenize(text))
    return cond.detach().clone().float()


def build_workload(spec: dict) -> tuple:
    """(workload.Workload over the demo model, extras): the CFG denoiser counts its calls like
    the random-UNet workload's, so methods.greedy_gradient and the bench's counters apply."""
    import torch
    import comfy.samplers

    m = load(spec)
    base, vae = m["base"], m["vae"]
    obj = {**DEFAULT_OBJECTIVE, **(spec.get("objective") or {})}
    cfg = float(spec.get("cfg", 7.0))
    device = spec.get("device", "cpu")
    cond = encode(m["clip"], obj["caption"]).to(device)
    uncond = encode(m["clip"], obj["negative"]).to(device)
    counter = workload.NetCounter()

    def denoiser(x, sigma, c):
        counter.count_forward(x, c)
        b = x.shape[0]
        s = sigma.to(device=x.device, dtype=x.dtype).reshape(1).expand(2 * b)
        ctx = torch.cat([c.expand(b, -1, -1), uncond.expand(b, -1, -1)])
        out = base.apply_model(torch.cat([x, x]), s, c_crossattn=ctx)
        d_c, d_u = out[:b], out[b:]
        out = d_u + cfg * (d_c - d_u)
        if out.requires_grad:
            out.register_hook(counter._vjp_hook)
        return out

    ms = base.model_sampling
    unet = base.diffusion_model
    n_params = sum(p.numel() for p in unet.parameters())
    n_bytes = sum(p.numel() * p.element_size() for p in unet.parameters())
    latent = int(spec.get("latent", 8))
    wl = workload.Workload(name="toyworld", config={"model": "toy-world demo UNet", "file": str(m["paths"]["unet"])},
                           latent=latent, device=device, unet=unet, model_sampling=ms, denoiser=denoiser,
                           counter=counter, keyframes=[cond], uncond=uncond, sigma_min=float(ms.sigma_min),
                           sigma_max=float(ms.sigma_max), model_bytes=n_bytes, num_params=n_params,
                           meta={"cfg": cfg, "objective": obj, "paths": {k: str(v) for k, v in m["paths"].items()},
                                 "unet_dtype": str(unet.dtype), "vae_dtype": str(vae.vae_dtype)})
    extras = {"base": base, "vae": vae, "objective": obj, "cfg": cfg,
              "sigmas": lambda n: comfy.samplers.calculate_sigmas(ms, "karras", n).to(torch.float64)}
    return wl, extras


def decoder(base, vae):
    """x0 in the model's latent space → picture (B, 3, H, W) on [0, 1] (unclamped), with a graph."""
    taesd = vae.first_stage_model

    def decode(x0):
        z = base.process_latent_out(x0).to(dtype=vae.vae_dtype)
        return (taesd.decode(z).float() + 1.0) / 2.0
    return decode


def reference_picture(obj: dict, index: int = 0):
    """Reference `index` (cycled) rendered by the toy world, (1, 3, 64, 64) on [0, 1], and its caption."""
    import torch
    if str(DEMO) not in sys.path:
        sys.path.insert(0, str(DEMO))
    import toy_world
    refs = obj.get("references") or [obj["reference"]]
    scene = toy_world.Scene(**refs[index % len(refs)])
    img = torch.from_numpy(toy_world.render(scene)).permute(2, 0, 1).unsqueeze(0).contiguous()
    return img, scene.caption()


def make_loss(wl, extras, index: int = 0):
    """The guidance loss of the objective (with reference `index` for image_target), as a
    loss_fn on the model-space x0 → (B,), and its description."""
    from adjoint.losses import ColourTarget, ImageTarget, parse_hex_colour
    obj = extras["objective"]
    decode = decoder(extras["base"], extras["vae"])
    if obj["kind"] == "image_target":
        ref, ref_caption = reference_picture(obj, index)
        loss = ImageTarget(decode, ref.to(wl.device), metric="mse", blur_sigma=float(obj.get("blur_sigma", 0.0)))
        desc = (f"Guidance Loss (Image Target): MSE of the decoded picture to a reference picture of "
                f"'{ref_caption}' (toy_world.render), blur σ {float(obj.get('blur_sigma', 0.0)):g} px")
        extras.setdefault("reference_captions", {})[index] = ref_caption
    elif obj["kind"] == "colour":
        rgb = parse_hex_colour(obj["colour"])
        loss = ColourTarget(decode, {"mean_colour": (1.0, rgb)})
        desc = f"Guidance Loss (Colour): (mean RGB of the decoded picture − {obj['colour']})², weight 1"
    else:
        raise ValueError(f"objective kind {obj['kind']!r}: use image_target or colour")
    return (lambda x0: loss(x0)), desc


def make_problem(wl, extras, loss_fn, n: int, seed: int) -> "workload.Problem":
    """The problem of one seed: ε ~ N(0, I) from a CPU generator seeded `seed` (as KSampler's
    noise), x_T = σ_max·ε, the caption's conditioning held constant."""
    import torch
    import adjoint
    shape = (1, 4, wl.latent, wl.latent)
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(int(seed))).to(wl.device)
    sigmas = extras["sigmas"](n)
    sched = adjoint.ScheduledConditioning.constant(wl.keyframes[0])
    return workload.Problem(x_init=float(sigmas[0]) * noise, noise=noise, sigmas=sigmas, schedule=sched,
                            loss_fn=loss_fn, target=None, num_steps=n)


def describe(wl, extras, loss_desc: str) -> dict:
    return {"name": wl.name, "model": "toy-world demo model (demo_model/train.py): SD1.5-class UNet, "
                                      "CLIP-L-shaped random text encoder, TAESD-format VAE",
            "files": wl.meta["paths"], "latent": wl.latent, "latent_shape": [1, 4, wl.latent, wl.latent],
            "picture": [64, 64], "num_params": wl.num_params, "model_mb": wl.model_bytes / 2 ** 20,
            "unet_dtype": wl.meta["unet_dtype"], "vae_dtype": wl.meta["vae_dtype"],
            "sigma_min": wl.sigma_min, "sigma_max": wl.sigma_max, "cfg": extras["cfg"],
            "scheduler": "karras (comfy.samplers.calculate_sigmas)", "solver": "dpmpp_2m",
            "caption": extras["objective"]["caption"], "negative": extras["objective"]["negative"],
            "objective": extras["objective"], "loss": loss_desc,
            "reference_captions": {str(k): v for k, v in sorted(extras.get("reference_captions", {}).items())},
            "batch_per_forward": 2, "device": wl.device}
