"""Exact gradients on every weight format ComfyUI loads, and on every loading path.

One UNet in each format users load (make_tiny_models.build_weight_formats), loaded by the
stock UNETLoader under inference mode as the server does. For each format:
- our exact noise gradient through the real guider equals the gradient of a float32
  model holding the format's *effective* weights (what ComfyUI's forward multiplies by:
  dequantised, scaled, cast) to float32 round-off: nothing in our weight handling
  changes what is differentiated;
- it agrees with the float32 master's gradient to a tolerance derived from the format:
  3 κ e_w, with e_w the measured relative error of the loaded weights against the master
  (≤ the format's unit round-off for normal numbers) and κ the gradient's sensitivity to
  a relative weight perturbation, measured on the master with a random one.
The loading paths CPU never takes by itself (dynamic VRAM, reused cast buffers) are
driven directly: the same selection code, the same hook.
"""
import math

import pytest
import torch

from comfy_harness import comfy_version, pack_submodule

MASTER = "tiny-sd15-fp32.safetensors"
# (file, UNETLoader weight_dtype, unit round-off of the stored weights)
FORMATS = {
    "fp32": ("tiny-sd15-fp32.safetensors", "default", 2.0 ** -24),
    "fp16": ("tiny-sd15-fp16.safetensors", "default", 2.0 ** -11),
    "bf16": ("tiny-sd15-bf16.safetensors", "default", 2.0 ** -8),
    "fp8_e4m3fn": (MASTER, "fp8_e4m3fn", 2.0 ** -4),
    "fp8_e4m3fn_fast": (MASTER, "fp8_e4m3fn_fast", 2.0 ** -4),
    "fp8_e5m2": (MASTER, "fp8_e5m2", 2.0 ** -3),
    "scaled_fp8": ("tiny-sd15-scaled_fp8.safetensors", "default", 2.0 ** -4),
    "mixed_fp8": ("tiny-sd15-mixed_fp8.safetensors", "default", 2.0 ** -4),
}
# Unscaled fp8 casts put the small weights (|w| < 2^-6 for e4m3) into the format's
# subnormal range, where the relative error exceeds u: only the scaled formats and the
# 16-bit ones are held to e_w <= u.
SCALED_OR_WIDE = {"fp32", "fp16", "bf16", "scaled_fp8", "mixed_fp8"}


def load_unet(nodes, name, weight_dtype="default"):
    with torch.inference_mode():
        (model,) = nodes.UNETLoader().load_unet(name, weight_dtype)
    return model


def load_state_dict_model(sd):
    import comfy.sd
    with torch.inference_mode():
        return comfy.sd.load_diffusion_model_state_dict(sd)


def effective_weights(patcher, keys) -> dict:
    """The float32 weights the model's forward really uses, for the master's keys."""
    net = patcher.model.diffusion_model
    out = {}
    with torch.inference_mode():
        for key in keys:
            prefix, leaf = key.rsplit(".", 1)
            module = net.get_submodule(prefix)
            t = getattr(module, leaf)
            if hasattr(t, "dequantize") and type(t) is not torch.Tensor and type(t) is not torch.nn.Parameter:
                t = t.dequantize()
            elif leaf == "weight" and hasattr(module, "convert_weight"):
                t = module.convert_weight(t.to(torch.float32), inplace=False)
            out[key] = t.to(torch.float32).clone()
    return out


def noise_gradient(patcher, steps=4, cfg=3.0):
    """Our exact gradient of an MSE loss w.r.t. the noise, through the real CFGGuider."""
    import comfy.samplers
    adjoint = pack_submodule("adjoint")
    gd = pack_submodule("nodes.guider_denoiser")
    inf = pack_submodule("nodes.inference_tensors")
    g = torch.Generator().manual_seed(3)
    with torch.inference_mode():
        noise = torch.randn(1, 4, 8, 8, generator=g)
        latent = torch.zeros(1, 4, 8, 8)
        pos, neg = torch.randn(1, 77, 768, generator=g), torch.randn(1, 77, 768, generator=g)
        target = torch.randn(1, 4, 8, 8, generator=g)
        sigmas = comfy.samplers.calculate_sigmas(patcher.get_model_object("model_sampling"), "karras", steps)
    out = {}

    class Probe(comfy.samplers.Sampler):
        def sample(self, model_wrap, sigmas, extra_args, callback, noise, latent_image=None,
                   denoise_mask=None, disable_pbar=False):
            with inf.trainable_view(model_wrap.inner_model):
                den = gd.GuiderDenoiser(model_wrap, extra_args, noise, latent_image, None, scheduled=False)
                leaves = {k: inf.to_normal(v) for k, v in gd.entry_leaves(model_wrap.conds["positive"]).items()}
                res = adjoint.gradient(den, inf.to_normal(noise) * float(sigmas[0]), inf.to_normal(sigmas),
                                       adjoint.ScheduledConditioning.constant(leaves),
                                       lambda x0: (x0 - inf.to_normal(target)).square().mean(dim=(1, 2, 3)))
                out["grad"] = res.grad_x_init.detach().clone()
            return latent_image

    with torch.inference_mode():
        guider = comfy.samplers.CFGGuider(patcher)
        guider.set_conds([[pos, {}]], [[neg, {}]])
        guider.set_cfg(cfg)
        guider.sample(noise, latent, Probe(), sigmas, seed=0)
    return out["grad"]


def rel(a, b):
    return float((a - b).norm() / b.norm())


@pytest.fixture(scope="module")
def master(comfy_nodes):
    from safetensors.torch import load_file
    from comfy_harness import MODELS
    sd = load_file(str(MODELS / "unet" / MASTER))
    grad = noise_gradient(load_unet(comfy_nodes, MASTER))
    # κ: the relative gradient change per unit relative weight change, from a random
    # relative perturbation of every weight at the fp16 round-off level
    eps = 2.0 ** -11
    g = torch.Generator().manual_seed(17)
    perturbed = {k: v * (1 + eps * torch.randn(v.shape, generator=g)) if v.is_floating_point() else v
                 for k, v in sd.items()}
    e_w = weight_error(perturbed, sd)
    kappa = rel(noise_gradient(load_state_dict_model(perturbed)), grad) / e_w
    return {"sd": sd, "grad": grad, "kappa": kappa}


def weight_error(sd, ref):
    num = sum(float((sd[k].float() - v).square().sum()) for k, v in ref.items() if v.is_floating_point())
    den = sum(float(v.square().sum()) for v in ref.values() if v.is_floating_point())
    return math.sqrt(num / den)


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_gradient_is_exact_for_the_weights_the_format_holds(comfy_nodes, master, fmt):
    name, weight_dtype, u = FORMATS[fmt]
    model = load_unet(comfy_nodes, name, weight_dtype)
    grad = noise_gradient(model)
    assert torch.isfinite(grad).all() and grad.norm() > 0

    effective = effective_weights(model, master["sd"].keys())
    e_w = weight_error(effective, master["sd"])
    if fmt in SCALED_OR_WIDE:
        assert e_w <= u, f"{fmt}: loaded weights are {e_w:.3g} off the master, more than u = {u:.3g}"
    if fmt != "fp32":
        assert e_w > 0, f"{fmt}: the loaded weights equal the master: the format was not applied"

    # the same function in float32: equal to round-off (what we differentiate is what ran)
    same = noise_gradient(load_state_dict_model(effective))
    assert rel(grad, same) <= 1e-5, f"{fmt}: {rel(grad, same):.3g} from the float32 model of its own weights"

    # against the float32 master: within the derived tolerance
    tol = max(3 * master["kappa"] * e_w, 1e-6)
    print(f"\n{fmt:16s} e_w {e_w:.3e}  vs own weights {rel(grad, same):.2e}  vs master "
          f"{rel(grad, master['grad']):.3e}  tolerance {tol:.3e} (kappa {master['kappa']:.3g})")
    assert rel(grad, master["grad"]) <= tol, (
        f"{fmt}: gradient {rel(grad, master['grad']):.3g} off the fp32 master's; tolerance 3 κ e_w = "
        f"3 × {master['kappa']:.3g} × {e_w:.3g} = {tol:.3g}")


def test_quantised_layers_load_as_quantised_tensors_on_current_comfyui(comfy_nodes):
    if comfy_version() < (0, 4, 0):
        pytest.skip("ComfyUI 0.3.75 loads scaled-fp8 files as fp8 tensors with a scale; "
                    "QuantizedTensor parameters arrived with comfy-kitchen (>= 0.4)")
    for name in ("tiny-sd15-scaled_fp8.safetensors", "tiny-sd15-mixed_fp8.safetensors"):
        model = load_unet(comfy_nodes, name)
        kinds = {type(m.weight).__name__ for m in model.model.diffusion_model.modules()
                 if type(m).__name__ == "Linear"}
        assert "QuantizedTensor" in kinds, (name, kinds)


def test_quantised_weights_are_aliased_not_emptied(comfy_nodes):
    inf = pack_submodule("nodes.inference_tensors")
    model = load_unet(comfy_nodes, "tiny-sd15-mixed_fp8.safetensors")
    net = model.model.diffusion_model
    before = dict(net.named_parameters())
    with inf.trainable_view(net):
        inside = dict(net.named_parameters())
        for n, t in inside.items():
            assert not any(x.is_inference() for x in inf.inner_tensors(t)), n
            for a, b in zip(inf.inner_tensors(t), inf.inner_tensors(before[n])):
                assert a.data_ptr() == b.data_ptr() and a.numel() == b.numel() > 0, n
    assert all(dict(net.named_parameters())[n] is t for n, t in before.items())
