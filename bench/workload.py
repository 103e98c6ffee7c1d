"""The benchmark workload: ComfyUI's SD1.5 UNet class with random seeded weights, wrapped as
one CFG denoiser D(x, σ, c) that every gradient method (ours and the peers') calls.

Runs under the test host's venv (.host/venv) with ComfyUI 0.3.75 on sys.path; imports
ComfyUI with --cpu exactly as tests/comfy_harness.py does.

- Network: `comfy.ldm.modules.diffusionmodules.openaimodel.UNetModel`, built through
  `comfy.supported_models.SD15(config).get_model({})` (so it is the class and the
  ModelSamplingDiscrete ComfyUI uses for SD1.5), weights drawn from a fixed seed by
  scripts/host/make_tiny_models.py's `randomize_` (ComfyUI's ops skip weight init).
- D(x, σ, c) in EPS coordinates with CFG, cond and uncond in one batch-2 forward:
      ε_c, ε_u = UNet(cat[x, x] / sqrt(σ² + 1), t(σ), cat[c, c_uncond])
      ε̂ = ε_u + cfg·(ε_c − ε_u),   D = x − σ·ε̂
  t(σ) is ComfyUI's ModelSamplingDiscrete table read continuously (log σ interpolated
  linearly between the 1000 discrete timesteps, as k-diffusion's DiscreteSchedule does)
  instead of ComfyUI's nearest-timestep lookup, so that D is continuous in σ and "the
  continuous problem" that N = 200 approximates is well defined.
- Every call goes through a `NetCounter` that counts network forwards without a graph,
  forwards that record one, and VJPs through them (a hook on the output), independently
  of the core's own `CallCounts`.
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HOST = REPO / ".host"
COMFY = HOST / "ComfyUI"

SEED = 20261122
CFG_SCALE = 7.0
TOKENS, CONTEXT_DIM = 77, 768          # CLIP-L conditioning, as SD1.5

# The CPU rows: the two-level SD1.5-class UNet the in-process tests use (scripts/host/
# make_tiny_models.py UNET32: attention in every block, CLIP-L cross-attention), at three
# widths. Head width 32 channels (SD1.5: 40).
SMALL_UNET = {
    "use_checkpoint": False, "image_size": 32, "in_channels": 4, "out_channels": 4,
    "model_channels": 32, "num_res_blocks": [1, 1], "channel_mult": [1, 2],
    "transformer_depth": [1, 1], "transformer_depth_output": [1, 1, 1, 1],
    "transformer_depth_middle": 1, "use_spatial_transformer": True, "legacy": False,
    "context_dim": CONTEXT_DIM, "num_heads": -1, "num_head_channels": 32,
    "use_linear_in_transformer": False, "adm_in_channels": None,
    "use_temporal_attention": False, "use_temporal_resblock": False,
}

# The GPU row: the full SD1.5 UNet shape (860 M parameters), random weights.
SD15_FULL = {
    "use_checkpoint": False, "image_size": 32, "in_channels": 4, "out_channels": 4,
    "model_channels": 320, "num_res_blocks": [2, 2, 2, 2], "channel_mult": [1, 2, 4, 4],
    "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0],
    "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
    "transformer_depth_middle": 1, "use_spatial_transformer": True, "legacy": False,
    "context_dim": CONTEXT_DIM, "num_heads": 8, "num_head_channels": -1,
    "use_linear_in_transformer": False, "adm_in_channels": None,
    "use_temporal_attention": False, "use_temporal_resblock": False,
}


def unet_config(name: str) -> dict:
    """'w32', 'w64', 'w128' (the small topology at that width) or 'sd15' (full SD1.5)."""
    if name == "sd15":
        return dict(SD15_FULL)
    cfg = dict(SMALL_UNET)
    cfg["model_channels"] = int(name.lstrip("w"))
    return cfg


def import_comfy():
    """Import ComfyUI in this process with --cpu (before anything reaches model_management)."""
    if str(COMFY) not in sys.path:
        sys.path.insert(0, str(COMFY))
    if str(REPO) not in sys.path:
        sys.path.append(str(REPO))
    sys.path.insert(0, str(REPO / "scripts" / "host"))
    import comfy.cli_args
    comfy.cli_args.args.cpu = True
    comfy.cli_args.args.disable_auto_launch = True
    comfy.cli_args.args.use_pytorch_cross_attention = True
    import comfy.supported_models  # noqa: F401


@dataclass
class NetCounter:
    """Network calls seen at the denoiser: forwards without / with a graph, and VJPs."""
    forwards: int = 0
    forwards_with_grad: int = 0
    vjps: int = 0

    def reset(self):
        self.forwards = self.forwards_with_grad = self.vjps = 0

    def snapshot(self) -> dict:
        return {"forwards": self.forwards, "forwards_with_grad": self.forwards_with_grad,
                "vjps": self.vjps}

    def count_forward(self, x, cond):
        """One denoiser call: with a graph when its inputs need one. Counted on entry:
        torch.utils.checkpoint's recomputation stops early (right after the last tensor it
        needs), so code after the network call may never run there."""
        import torch
        if torch.is_grad_enabled() and (x.requires_grad or cond.requires_grad):
            self.forwards_with_grad += 1
        else:
            self.forwards += 1

    def _vjp_hook(self, grad):
        self.vjps += 1
        return grad


@dataclass
class Workload:
    name: str
    config: dict
    latent: int
    device: str
    unet: object
    model_sampling: object
    denoiser: object
    counter: NetCounter
    keyframes: list
    uncond: object
    sigma_min: float
    sigma_max: float
    model_bytes: int
    num_params: int
    meta: dict = field(default_factory=dict)


def build_workload(width: str, latent: int, device: str = "cpu", seed: int = SEED) -> Workload:
    import torch
    import comfy.supported_models
    from make_tiny_models import randomize_

    cfg = unet_config(width)
    model_config = comfy.supported_models.SD15(dict(cfg))
    model_config.set_inference_dtype(torch.float32, None)
    model = model_config.get_model({})
    unet = model.diffusion_model
    gen = torch.Generator().manual_seed(seed)
    randomize_(unet, gen, gain=0.5)
    unet.to(device).eval()
    for p in unet.parameters():
        p.requires_grad_(False)
    ms = model.model_sampling
    log_sigmas = ms.log_sigmas.to(device=device, dtype=torch.float32)
    num_t = log_sigmas.shape[0]
    counter = NetCounter()

    g = torch.Generator().manual_seed(seed + 1)
    keyframes = [torch.randn(1, TOKENS, CONTEXT_DIM, generator=g).to(device) for _ in range(2)]
    uncond = torch.randn(1, TOKENS, CONTEXT_DIM, generator=g).to(device)

    def t_of_sigma(sigma):
        """ComfyUI's discrete SD1.5 schedule read continuously: linear in log σ between steps."""
        ls = sigma.reshape(1).log()
        hi = torch.searchsorted(log_sigmas, ls.detach()).clamp(1, num_t - 1)
        lo = hi - 1
        w = ((ls - log_sigmas[lo]) / (log_sigmas[hi] - log_sigmas[lo])).clamp(0.0, 1.0)
        return lo.to(ls.dtype) + w

    def denoiser(x, sigma, cond):
        counter.count_forward(x, cond)
        b = x.shape[0]
        sigma = sigma.to(device=x.device, dtype=x.dtype).reshape(())
        c_in = 1.0 / torch.sqrt(sigma * sigma + 1.0)
        x_in = torch.cat([x, x]) * c_in
        t = t_of_sigma(sigma).expand(2 * b)
        ctx = torch.cat([cond.expand(b, -1, -1), uncond.expand(b, -1, -1)])
        eps = unet(x_in, t, context=ctx)
        eps_c, eps_u = eps[:b], eps[b:]
        out = x - sigma * (eps_u + CFG_SCALE * (eps_c - eps_u))
        if out.requires_grad:
            out.register_hook(counter._vjp_hook)
        return out

    n_params = sum(p.numel() for p in unet.parameters())
    n_bytes = sum(p.numel() * p.element_size() for p in unet.parameters()) + \
        sum(b.numel() * b.element_size() for b in unet.buffers())
    return Workload(name=f"{width}-{latent}", config=cfg, latent=latent, device=device, unet=unet,
                    model_sampling=ms, denoiser=denoiser, counter=counter, keyframes=keyframes,
                    uncond=uncond, sigma_min=float(ms.sigma_min), sigma_max=float(ms.sigma_max),
                    model_bytes=n_bytes, num_params=n_params)


@dataclass
class Problem:
    """One gradient problem: start noise, σ grid, the two-keyframe schedule, the loss."""
    x_init: object
    noise: object
    sigmas: object
    schedule: object
    loss_fn: object
    target: object
    num_steps: int


def schedule_for(wl: Workload, keyframes=None):
    """Two keyframes, blended linearly from c0 at step 0 to c1 at 50 % of the steps, then c1."""
    from adjoint import Position, ScheduledConditioning, Timeline
    kfs = wl.keyframes if keyframes is None else keyframes
    return ScheduledConditioning(list(kfs), Timeline((Position(0.0), Position(0.5)), "linear"))


def sigmas_for(wl: Workload, n: int):
    """ComfyUI's karras scheduler over SD1.5's σ range (N values, then 0), as the sampler's default."""
    import torch
    import adjoint
    return adjoint.karras_sigmas(n, wl.sigma_min, wl.sigma_max, dtype=torch.float64)


_target_cache: dict = {}


def make_problem(wl: Workload, n: int, seed: int = SEED) -> Problem:
    """x_T = σ_max·ε (ε from `seed`); the target is a sample of the same model from another
    noise (reachable), drawn once per workload with 20 steps; loss = per-sample MSE."""
    import torch
    import adjoint
    shape = (1, 4, wl.latent, wl.latent)
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(seed + 2)).to(wl.device)
    sched = schedule_for(wl)
    if wl.name not in _target_cache:
        other = torch.randn(shape, generator=torch.Generator().manual_seed(seed + 3)).to(wl.device)
        sig20 = sigmas_for(wl, 20)
        before = wl.counter.snapshot()
        traj = adjoint.sample(wl.denoiser, float(sig20[0]) * other, sig20, sched)
        wl.counter.forwards = before["forwards"]   # set-up calls are not part of any row
        _target_cache[wl.name] = traj.x0.detach()
    target = _target_cache[wl.name]

    def loss_fn(x0):
        return ((x0 - target) ** 2).flatten(1).mean(1)

    sigmas = sigmas_for(wl, n)
    return Problem(x_init=float(sigmas[0]) * noise, noise=noise, sigmas=sigmas, schedule=sched,
                   loss_fn=loss_fn, target=target, num_steps=n)


def describe(wl: Workload) -> dict:
    return {"name": wl.name, "unet_config": json.loads(json.dumps(wl.config)), "latent": wl.latent,
            "latent_shape": [1, 4, wl.latent, wl.latent], "batch_per_forward": 2,
            "num_params": wl.num_params, "model_mb": wl.model_bytes / 2 ** 20,
            "sigma_min": wl.sigma_min, "sigma_max": wl.sigma_max, "cfg": CFG_SCALE,
            "context": [TOKENS, CONTEXT_DIM], "device": wl.device}
