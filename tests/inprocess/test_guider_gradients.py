"""Gradients through ComfyUI's real guider and UNet equal float64 finite differences.

The tiny 32-channel UNet is loaded under torch.inference_mode() (its weights are
inference tensors, as a loader node leaves them), cast to float64, and driven by
ComfyUI's CFGGuider; a probe Sampler hands us the guider so we can call the core's
`gradient` with the same GuiderDenoiser the Adjoint Sampler uses.
"""
import pytest
import torch

from comfy_harness import pack_submodule
from guider_harness import float64_unet32_patcher


@pytest.fixture(scope="module")
def float64_unet(comfy_nodes):
    patcher = float64_unet32_patcher()
    assert next(patcher.model.diffusion_model.parameters()).is_inference()
    return patcher


def run_in_guider(patcher, positive, negative, body, steps=6, cfg=3.0, batch=1):
    """Run body(model_wrap, sigmas, extra_args, noise, latent) inside a real guider.sample."""
    import comfy.samplers

    class Probe(comfy.samplers.Sampler):
        def sample(self, model_wrap, sigmas, extra_args, callback, noise, latent_image=None,
                   denoise_mask=None, disable_pbar=False):
            # ComfyUI >= 0.33 casts noise and latent to float32 in CFGGuider.outer_sample; the
            # values are float32-exact draws either way, so the float64 test takes them back
            self.out = body(model_wrap, sigmas.double(), extra_args, noise.double(), latent_image.double())
            return latent_image

    g = torch.Generator().manual_seed(3)
    with torch.inference_mode():
        noise = torch.randn(batch, 4, 8, 8, generator=g, dtype=torch.float64).float().double()
        latent = torch.zeros(batch, 4, 8, 8, dtype=torch.float64)
        sigmas = comfy.samplers.calculate_sigmas(patcher.get_model_object("model_sampling"), "karras", steps)
        guider = comfy.samplers.CFGGuider(patcher)
        guider.set_conds(positive, negative)
        guider.set_cfg(cfg)
        probe = Probe()
        guider.sample(noise, latent, probe, sigmas.double(), seed=0)
    return probe.out


def embeddings(seed, n):
    g = torch.Generator().manual_seed(seed)
    with torch.inference_mode():
        return [torch.randn(1, 77, 768, generator=g, dtype=torch.float64) for _ in range(n)]


@pytest.mark.parametrize("method", ["exact"])
def test_noise_and_keyframe_gradients_match_finite_differences(float64_unet, method):
    adjoint = pack_submodule("adjoint")
    gd = pack_submodule("nodes.guider_denoiser")
    inf = pack_submodule("nodes.inference_tensors")
    k0, k1, neg = embeddings(1, 3)
    timeline = adjoint.Timeline((adjoint.Position(0.0), adjoint.Position(0.5)), "hold")
    target = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(9), dtype=torch.float64)

    def loss_fn(x0):
        return (x0 - target).square().mean(dim=(1, 2, 3))

    def body(model_wrap, sigmas, extra_args, noise, latent):
        with inf.trainable_view(model_wrap.inner_model):
            den = gd.GuiderDenoiser(model_wrap, extra_args, noise, latent, None, scheduled=True)
            kfs = [{"cross_attn": inf.to_normal(k)} for k in (k0, k1)]
            x_init = inf.to_normal(noise) * float(sigmas[0])
            sig = inf.to_normal(sigmas)

            def value(x, keyframes):
                traj = adjoint.sample(den, x, sig, adjoint.ScheduledConditioning(keyframes, timeline))
                return float(loss_fn(traj.x0).sum())

            res = adjoint.gradient(den, x_init, sig, adjoint.ScheduledConditioning(kfs, timeline),
                                   loss_fn, method=method)
            g = torch.Generator().manual_seed(5)
            checks = []
            h = 1e-5
            v = torch.randn(x_init.shape, generator=g, dtype=torch.float64)
            fd = (value(x_init + h * v, kfs) - value(x_init - h * v, kfs)) / (2 * h)
            checks.append(("noise", fd, float((res.grad_x_init * v).sum())))
            for k in range(2):
                v = torch.randn(kfs[k]["cross_attn"].shape, generator=g, dtype=torch.float64)
                plus = [dict(kf) for kf in kfs]
                minus = [dict(kf) for kf in kfs]
                plus[k]["cross_attn"] = kfs[k]["cross_attn"] + h * v
                minus[k]["cross_attn"] = kfs[k]["cross_attn"] - h * v
                fd = (value(x_init, plus) - value(x_init, minus)) / (2 * h)
                checks.append((f"keyframe {k}", fd, float((res.grad_keyframes[k]["cross_attn"] * v).sum())))
            return checks, res.counts

    checks, counts = run_in_guider(float64_unet, [[k0, {}]], [[neg, {}]], body)
    for name, fd, analytic in checks:
        assert abs(analytic) > 1e-8, name
        assert abs(fd - analytic) <= 1e-6 * abs(fd), f"{name}: finite difference {fd!r} vs adjoint {analytic!r}"
    assert (counts.forwards, counts.forwards_with_grad, counts.vjps) == (6, 6, 6)
