"""Gradients through ComfyUI's real guider, checked against float64 finite differences.

Any ModelPatcher (any family, any patches) runs inside a real `CFGGuider.sample`; a probe
Sampler hands us the guider, and the core's `gradient` runs with the same GuiderDenoiser
the Adjoint Sampler uses. For float64, ComfyUI's own `.float()` casts (the timestep and
the model output in `BaseModel._apply_model`, the noise in 0.33's `outer_sample`) would
round to float32; `float64_everywhere()` makes `Tensor.float()` keep float64 tensors
float64 for the duration, so the finite differences see the real network in float64.

    checks, counts, remedies = gradient_checks(patcher, positive, negative, latent_shape, cfg=1.0)
    for name, fd, analytic in checks: ...
"""
from __future__ import annotations

import contextlib

import torch

from comfy_harness import pack_submodule, tiny_unet32_patcher


@contextlib.contextmanager
def float64_everywhere():
    """Within the block, float64 tensors are never rounded to float32 by `.float()`, `.to()`
    or `.type_as()` (ComfyUI casts timesteps, outputs and RoPE inputs to float32; Flux's
    apply_rope rounds q and k to its float32 frequencies). Test-only: finite differences
    need the whole function in float64."""
    originals = {name: getattr(torch.Tensor, name) for name in ("float", "to", "type_as")}

    def guarded(name):
        def call(self, *args, **kwargs):
            out = originals[name](self, *args, **kwargs)
            if self.dtype == torch.float64 and isinstance(out, torch.Tensor) and out.dtype == torch.float32:
                # a conversion returns a new tensor: so must we (ComfyUI's LoRA patching copies a
                # weight this way and adds to the copy in place)
                return originals["to"](self, device=out.device, copy=True)
            return out
        return call
    for name in originals:
        setattr(torch.Tensor, name, guarded(name))
    try:
        yield
    finally:
        for name, fn in originals.items():
            setattr(torch.Tensor, name, fn)


def run_in_guider(patcher, positive, negative, body, latent_shape, steps=4, cfg=3.0, scheduler="karras",
                  dtype=torch.float64, seed=3, batch=1):
    """Run body(model_wrap, sigmas, extra_args, noise, latent) inside a real guider.sample."""
    import comfy.samplers

    class Probe(comfy.samplers.Sampler):
        def sample(self, model_wrap, sigmas, extra_args, callback, noise, latent_image=None,
                   denoise_mask=None, disable_pbar=False):
            self.out = body(model_wrap, sigmas.to(dtype), extra_args, noise.to(dtype), latent_image.to(dtype))
            return latent_image

    g = torch.Generator().manual_seed(seed)
    with torch.inference_mode():
        # float32-exact draws: 0.33's outer_sample casts the noise to float32 on the way in
        noise = torch.randn(batch, *latent_shape, generator=g).to(dtype)
        latent = torch.zeros(batch, *latent_shape, dtype=dtype)
        ms = patcher.get_model_object("model_sampling")
        sigmas = comfy.samplers.calculate_sigmas(ms, scheduler, steps).to(dtype)
        guider = comfy.samplers.CFGGuider(patcher)
        guider.set_conds(positive, negative)
        guider.set_cfg(cfg)
        probe = Probe()
        guider.sample(noise, latent, probe, sigmas, seed=0)
    return probe.out


def two_keyframes(positive, seed=11):
    """The first entry's tensors, and a second keyframe of the same shapes (seeded)."""
    g = torch.Generator().manual_seed(seed)
    first = {"cross_attn": positive[0][0]}
    if isinstance(positive[0][1].get("pooled_output"), torch.Tensor):
        first["pooled_output"] = positive[0][1]["pooled_output"]
    second = {k: v + 0.5 * torch.randn(v.shape, generator=g, dtype=v.dtype) for k, v in first.items()}
    return first, second


def gradient_checks(patcher, positive, negative, latent_shape, steps=4, cfg=3.0, scheduler="karras",
                    h=1e-5, method="exact", alpha=None, solver="dpmpp_2m", seed=5, with_noise=False):
    """[(name, finite difference, adjoint)] for the noise and both keyframes of a two-keyframe
    hold schedule (switch at 50 %), directional derivatives along seeded random directions,
    through the real guider in float64. `patcher` must hold a float64 model. With
    with_noise, each check also carries the difference's own round-off bound,
    4 ε (|L(+)| + |L(−)|) / 2h, which a comparison should allow for where L is large
    against what the direction changes."""
    adjoint = pack_submodule("adjoint")
    gd = pack_submodule("nodes.guider_denoiser")
    inf = pack_submodule("nodes.inference_tensors")
    timeline = adjoint.Timeline((adjoint.Position(0.0), adjoint.Position(0.5)), "hold")
    g = torch.Generator().manual_seed(9)
    target = torch.randn(1, *latent_shape, generator=g, dtype=torch.float64)

    def loss_fn(x0):
        return (x0 - target).square().mean(dim=tuple(range(1, x0.ndim)))

    def body(model_wrap, sigmas, extra_args, noise, latent):
        ms = model_wrap.inner_model.model_sampling
        scale = float(ms.noise_scaling(sigmas[0], torch.ones(1), torch.zeros(1), True))
        safety = inf.GraphSafety()     # what the Adjoint Sampler does: escalate on a reported hazard

        def checked():
            den = gd.GuiderDenoiser(model_wrap, extra_args, noise, latent, None, scheduled=True)
            kfs = [{k: inf.to_normal(v).double() for k, v in kf.items()} for kf in two_keyframes(positive)]
            x_init = inf.to_normal(noise) * scale
            sig = inf.to_normal(sigmas)

            def value(x, keyframes):
                traj = adjoint.sample(den, x, sig, adjoint.ScheduledConditioning(keyframes, timeline),
                                      alpha=alpha, solver=solver)
                return float(loss_fn(traj.x0).sum())

            def central(f_plus, f_minus):
                bound = 4 * torch.finfo(torch.float64).eps * (abs(f_plus) + abs(f_minus)) / (2 * h)
                return (f_plus - f_minus) / (2 * h), bound

            res = adjoint.gradient(den, x_init, sig, adjoint.ScheduledConditioning(kfs, timeline), loss_fn,
                                   method=method, alpha=alpha, solver=solver)
            gen = torch.Generator().manual_seed(seed)
            checks = []
            v = torch.randn(x_init.shape, generator=gen, dtype=torch.float64)
            fd, fd_noise = central(value(x_init + h * v, kfs), value(x_init - h * v, kfs))
            checks.append(("noise", fd, float((res.grad_x_init * v).sum()), fd_noise))
            for k in range(2):
                for key in kfs[k]:
                    v = torch.randn(kfs[k][key].shape, generator=gen, dtype=torch.float64)
                    plus = [dict(kf) for kf in kfs]
                    minus = [dict(kf) for kf in kfs]
                    plus[k][key] = kfs[k][key] + h * v
                    minus[k][key] = kfs[k][key] - h * v
                    fd, fd_noise = central(value(x_init, plus), value(x_init, minus))
                    checks.append((f"keyframe {k} {key}", fd, float((res.grad_keyframes[k][key] * v).sum()),
                                   fd_noise))
            if not with_noise:
                checks = [c[:3] for c in checks]
            return checks, res.counts, list(safety.active)
        return inf.run_protected(model_wrap.inner_model, safety, checked)

    with float64_everywhere():
        return run_in_guider(patcher, positive, negative, body, latent_shape, steps=steps, cfg=cfg,
                             scheduler=scheduler)


def float64_apply_model(apply_model, args):
    """BaseModel.apply_model minus its final `.float()` (ComfyUI returns float32 outputs),
    so a float64 UNet stays float64: same UNet, same σ handling."""
    model = apply_model.__self__
    x, sigma, c = args["input"], args["timestep"], args["c"]
    xc = model.model_sampling.calculate_input(sigma, x)
    t = model.model_sampling.timestep(sigma).to(torch.float64)
    out = model.diffusion_model(xc, t, context=c["c_crossattn"], transformer_options=c.get("transformer_options", {}))
    return model.model_sampling.calculate_denoised(sigma, out, x)


def float64_unet32_patcher():
    """The tiny SD1.5 UNet in float64 (its weights made in inference mode, as a loader makes
    them), with `float64_apply_model` as its UNet wrapper."""
    with torch.inference_mode():
        patcher = tiny_unet32_patcher()
        patcher.model.diffusion_model.to(torch.float64)
        patcher.model.diffusion_model.dtype = torch.float64
        patcher.model.to(torch.float64)
    patcher = patcher.clone()
    patcher.set_model_unet_function_wrapper(float64_apply_model)
    return patcher


class SharedBufferLinear(torch.nn.Module):
    """What ComfyUI's legacy offloading does with cuda-malloc off, and dynamic VRAM's cast
    buffers: every layer's weight is copied into one reused buffer before its matmul.
    The copy goes through .data, so autograd's version counter cannot see it (as with
    comfy-aimdo's buffers)."""

    def __init__(self, weight, buffer):
        super().__init__()
        self.register_buffer("weight", weight)
        self.cast_buffer = buffer

    def forward(self, x):
        w = self.cast_buffer[: self.weight.numel()].view_as(self.weight)
        w.data.copy_(self.weight)
        return torch.tanh(torch.nn.functional.linear(x, w))
