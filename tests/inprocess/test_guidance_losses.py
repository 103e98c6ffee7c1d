"""Guidance losses on the real tiny models, in-process: values, float64 finite differences,
batches, masks, bad input, the inference-tensor aliasing, and the CLIP-vision loss driven by
the Adjoint Sampler node (the stock CLIPVisionLoader only loads full-size models, see
scripts/host/make_tiny_models.py, so that loss cannot be loaded by a server's graph).

Models are loaded under torch.inference_mode(), as ComfyUI's loader nodes leave them: the
TAESD VAE (VAELoader's own state dict, built by comfy.sd.VAE, in float64 for the finite
differences: the VAE decodes in its own dtype) and a small CLIP vision model of ComfyUI's
ClipVisionModel class (weights float16 as on a CPU loader; its manual_cast ops compute in
the input's dtype, so float64 input gives a float64 forward).
"""
import pytest
import torch

from comfy_harness import MODELS, pack_submodule, tiny_unet32_patcher

F64 = torch.float64
TOL = 1e-6


# -- models ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def models(comfy_nodes):
    import comfy.clip_vision
    import comfy.sd
    import comfy.utils
    with torch.inference_mode():
        sd = comfy_nodes.VAELoader.load_taesd("taesd")
        vae64 = comfy.sd.VAE(sd=sd, dtype=F64)
        (vae32,) = comfy_nodes.VAELoader().load_vae("taesd")
        cv = comfy.clip_vision.ClipVisionModel(str(MODELS / "tiny" / "clip_vision.json"))
        cv.load_sd(comfy.utils.load_torch_file(str(MODELS / "tiny" / "clip_vision.safetensors")))
    for m in (vae64.first_stage_model, vae32.first_stage_model, cv.model):
        assert all(p.is_inference() for p in m.parameters())
    return {"vae64": vae64, "vae32": vae32, "cv": cv}


def gl():
    return pack_submodule("nodes.guidance_loss")


def losses():
    return pack_submodule("adjoint.losses")


def build(node, *args, **kwargs):
    """A loss node's execute(), under inference mode as ComfyUI runs it; returns the loss."""
    with torch.inference_mode():
        return node.execute(*args, **kwargs).args[0]


def inference(t):
    with torch.inference_mode():
        return t.clone()


def rand(*shape, seed=0, dtype=torch.float32):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def randn(*shape, seed=0, dtype=F64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# -- finite differences ------------------------------------------------------------------------
class ReluStates:
    """Records the on/off state of every ReLU of a module (TAESD's only non-smooth points)."""

    def __init__(self, module):
        self.states, self.hooks = [], []
        for m in module.modules():
            if isinstance(m, torch.nn.ReLU):
                self.hooks.append(m.register_forward_hook(lambda mod, inp, out: self.states.append(inp[0] > 0)))

    def run(self, fn, *args):
        self.states = []
        out = fn(*args)
        return out, self.states

    def close(self):
        for h in self.hooks:
            h.remove()


def check_gradient(loss, x0, vae, directions=3, seed=1):
    """Autograd's directional derivative of Σ loss(x0) equals the central difference along
    random directions to TOL (relative). The step starts at 1e-6 and is shrunk until no ReLU
    of the VAE changes state between x0 − hv and x0 + hv, so the difference is that of one
    smooth piece."""
    x = x0.clone().requires_grad_(True)
    value = loss(x)
    assert value.shape == (x0.shape[0],) and torch.isfinite(value).all()
    (grad,) = torch.autograd.grad(value.sum(), x)
    assert torch.isfinite(grad).all() and grad.abs().max() > 0
    relus = ReluStates(vae.first_stage_model)
    try:
        g = torch.Generator().manual_seed(seed)
        for _ in range(directions):
            v = torch.randn(x0.shape, generator=g, dtype=F64)
            analytic = float((grad * v).sum())
            with torch.no_grad():
                _, at = relus.run(loss, x0)
                h = 1e-6
                for _ in range(6):
                    plus, s_plus = relus.run(loss, x0 + h * v)
                    minus, s_minus = relus.run(loss, x0 - h * v)
                    if all(torch.equal(a, b) and torch.equal(a, c) for a, b, c in zip(at, s_plus, s_minus)):
                        break
                    h /= 10
                fd = float((plus.sum() - minus.sum()) / (2 * h))
                # the difference's own round-off: a few ulps of each value, over 2h (at h = 1e-7
                # that is ~1e-6 relative here, as large as TOL)
                fd_noise = 4 * torch.finfo(F64).eps * float(plus.abs().sum() + minus.abs().sum()) / (2 * h)
            assert abs(analytic - fd) <= TOL * abs(fd) + fd_noise, \
                f"autograd {analytic!r} vs finite difference {fd!r} (h={h}, round-off {fd_noise:.2g})"
    finally:
        relus.close()
    return value.detach(), grad


def decode64(models, x0):
    """The reference decode: TAESD's decoder on x0 in float64, mapped to [0, 1] unclamped."""
    with torch.no_grad():
        inf = pack_submodule("nodes.inference_tensors")
        with inf.trainable_view(models["vae64"].first_stage_model) as m:
            return (m.decode(x0) + 1) / 2


# -- values and gradients -----------------------------------------------------------------------
def test_latent_target_matches_finite_differences(models):
    target = inference(randn(2, 4, 4, 4, seed=3, dtype=torch.float32))
    mask = inference(rand(2, 16, 16, seed=4))
    loss = build(gl().LatentTargetLoss, {"samples": target}, "mse", 2.0, mask=mask)
    x0 = randn(2, 4, 4, 4)
    m = torch.nn.functional.interpolate(mask.view(2, 1, 16, 16), size=(4, 4), mode="bilinear").double()
    expected = 2.0 * ((x0 - target.double()) ** 2 * m).sum(dim=(1, 2, 3)) / (m.sum(dim=(1, 2, 3)) * 4)
    value, _ = check_gradient(loss, x0, models["vae64"])
    torch.testing.assert_close(value, expected, rtol=1e-12, atol=0)


@pytest.mark.parametrize("metric, blur", [("mse", 0.0), ("l1", 0.0), ("mse", 3.0)])
def test_image_target_matches_finite_differences(models, metric, blur):
    L = losses()
    ref = inference(rand(2, 40, 48, 3, seed=5))          # another size and aspect: fitted
    mask = inference(rand(1, 16, 16, seed=6))
    loss = build(gl().ImageTargetLoss, models["vae64"], ref, metric, blur, 1.5, mask=mask)
    x0 = randn(2, 4, 4, 4)
    value, _ = check_gradient(loss, x0, models["vae64"])
    image = decode64(models, x0)
    target = L.fit_image(ref.movedim(-1, 1).double(), (32, 32))
    m = torch.nn.functional.interpolate(mask.view(1, 1, 16, 16).double(), size=(32, 32), mode="bilinear")
    d = L.gaussian_blur(image, blur) - L.gaussian_blur(target, blur)
    d = d.square() if metric == "mse" else d.abs()
    expected = 1.5 * (d * m).sum(dim=(1, 2, 3)) / (m.sum() * 3)
    torch.testing.assert_close(value, expected, rtol=1e-12, atol=0)


@pytest.mark.parametrize("stat", ["mean_colour", "brightness", "contrast", "saturation", "all"])
def test_colour_matches_finite_differences(models, stat):
    weights = {s: (1.0 if stat in (s, "all") else 0.0) for s in ("mean_colour", "brightness", "contrast", "saturation")}
    mask = inference((rand(2, 8, 8, seed=7) > 0.3).float())
    loss = build(gl().ColourLoss, models["vae64"], "#2050c0", weights["mean_colour"], 0.4, weights["brightness"],
                 0.2, weights["contrast"], 0.6, weights["saturation"], mask=mask)
    x0 = randn(2, 4, 4, 4, seed=2)
    value, _ = check_gradient(loss, x0, models["vae64"])
    # the statistics by hand, over the masked pixels
    image = decode64(models, x0)
    m = torch.nn.functional.interpolate(mask.view(2, 1, 8, 8).double(), size=(32, 32), mode="bilinear")
    n = m.sum(dim=(1, 2, 3))
    mean = (image * m).sum(dim=(2, 3)) / n[:, None]
    y = 0.299 * image[:, 0:1] + 0.587 * image[:, 1:2] + 0.114 * image[:, 2:3]
    bright = (y * m).sum(dim=(1, 2, 3)) / n
    contrast = torch.sqrt((((y - bright.view(2, 1, 1, 1)) ** 2) * m).sum(dim=(1, 2, 3)) / n + 1e-8)
    sat = ((image.amax(1, keepdim=True) - image.amin(1, keepdim=True)) * m).sum(dim=(1, 2, 3)) / n
    blue = torch.tensor([0x20, 0x50, 0xc0], dtype=F64) / 255
    terms = {"mean_colour": ((mean - blue) ** 2).mean(1), "brightness": (bright - 0.4) ** 2,
             "contrast": (contrast - 0.2) ** 2, "saturation": (sat - 0.6) ** 2}
    expected = sum(terms[s] for s in terms if weights[s])
    torch.testing.assert_close(value, expected, rtol=1e-12, atol=0)
    assert sorted(loss.parts(x0)) == sorted(f"colour.{s}" for s in terms if weights[s])


def test_clip_vision_matches_finite_differences(models):
    refs = inference(rand(3, 40, 56, 3, seed=8))
    loss = build(gl().ClipVisionLoss, models["vae64"], models["cv"], "average", "center", 1.0, image=refs)
    x0 = randn(2, 4, 4, 4, seed=4)
    value, _ = check_gradient(loss, x0, models["vae64"])
    assert (value > 0).all() and (value < 2).all()


def test_clip_vision_embedding_is_comfyuis_up_to_the_8_bit_rounding(models):
    pl = pack_submodule("nodes.pixel_losses")
    cv = models["cv"]
    images = inference(rand(2, 40, 56, 3, seed=9))
    with torch.inference_mode():
        stock = cv.encode_image(images, crop=True)["image_embeds"]
    ours = pl.ClipVisionEmbedder(cv, crop=True)(images.movedim(-1, 1).clone())
    cos = torch.nn.functional.cosine_similarity(ours, stock.float(), dim=1)
    assert (cos > 0.999).all(), cos
    # exactly ComfyUI's result when the image is already quantised to 8 bits and CLIP-sized
    q = inference((rand(1, 48, 48, 3, seed=10) * 255).round() / 255)
    with torch.inference_mode():
        stock = cv.encode_image(q, crop=True)["image_embeds"]
    torch.testing.assert_close(pl.ClipVisionEmbedder(cv)(q.movedim(-1, 1).clone()), stock.float(),
                               rtol=1e-5, atol=1e-6)
    # the out-of-place forward was only borrowed: the shared model's layers are as before
    import comfy.clip_model
    layers = [m for m in cv.model.modules() if isinstance(m, comfy.clip_model.CLIPLayer)]
    assert layers and all("forward" not in m.__dict__ for m in layers)


def test_decode_is_vae_decode_without_the_clamp(models):
    pl = pack_submodule("nodes.pixel_losses")
    vae = models["vae32"]
    x0 = inference(randn(2, 4, 4, 4, seed=11, dtype=torch.float32))
    with torch.inference_mode():
        stock = vae.decode(x0).movedim(-1, 1)
    ours = pl.VaeDecoder(vae, "test")(x0.clone())
    assert ours.dtype == torch.float32 and ours.shape == (2, 3, 32, 32)
    torch.testing.assert_close(ours.clamp(0, 1), stock, rtol=1e-5, atol=1e-6)


def test_combine_gradient_is_the_weighted_sum_of_its_parts(models):
    vae = models["vae64"]
    ref = inference(rand(1, 32, 32, 3, seed=12))
    image = build(gl().ImageTargetLoss, vae, ref, "mse", 2.0, 1.0)
    colour = build(gl().ColourLoss, vae, "#2050c0", 1.0, 0.5, 0.5, 0.25, 0.0, 0.3, 0.0)
    clip = build(gl().ClipVisionLoss, vae, models["cv"], "average", "center", 1.0, image=ref)
    inner = build(gl().CombineLoss, image, 0.7, loss_2=colour, weight_2=3.0)
    combined = build(gl().CombineLoss, inner, 2.0, loss_2=clip, weight_2=-0.5)   # chained
    x0 = randn(2, 4, 4, 4, seed=13)

    def grad_of(loss):
        x = x0.clone().requires_grad_(True)
        v = loss(x)
        return v.detach(), torch.autograd.grad(v.sum(), x)[0]

    parts = {k: grad_of(l) for k, l in (("image", image), ("colour", colour), ("clip", clip))}
    weights = {"image": 2.0 * 0.7, "colour": 2.0 * 3.0, "clip": -0.5}
    value, grad = check_gradient(combined, x0, vae)
    torch.testing.assert_close(value, sum(weights[k] * parts[k][0] for k in parts), rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(grad, sum(weights[k] * parts[k][1] for k in parts), rtol=1e-10, atol=1e-15)
    names = sorted(combined.parts(x0))
    assert names == ["1.1.image_target", "1.2.colour.brightness", "1.2.colour.mean_colour", "2.clip_vision"]


def test_combine_decodes_once_per_evaluation(models):
    pl = pack_submodule("nodes.pixel_losses")
    vae = models["vae32"]
    ref = inference(rand(1, 32, 32, 3, seed=14))
    image = build(gl().ImageTargetLoss, vae, ref, "mse", 0.0, 1.0)
    colour = build(gl().ColourLoss, vae, "#2050c0", 1.0, 0.5, 0.0, 0.25, 0.0, 0.3, 0.0)
    combined = build(gl().CombineLoss, image, 1.0, loss_2=colour, weight_2=1.0)
    decoders = [image.decode, colour.decode]
    for _ in range(2):
        before = sum(d.calls for d in decoders)
        x = randn(1, 4, 4, 4, seed=15, dtype=torch.float32).requires_grad_(True)
        # as the sampler does: the loss gets a fresh non-leaf x0 (process_latent_out(x0))
        (g,) = torch.autograd.grad(combined(x * 1.0).sum(), x)
        assert sum(d.calls for d in decoders) - before == 1
        assert pl.LAST_DECODE.entry is None        # the cached decode went with its x0


# -- batches --------------------------------------------------------------------------------------
def test_per_sample_references_and_select(models):
    vae = models["vae64"]
    refs = inference(rand(2, 32, 32, 3, seed=16))
    masks = inference(rand(2, 32, 32, seed=17))
    x0 = randn(2, 4, 4, 4, seed=18)
    for loss in (build(gl().ImageTargetLoss, vae, refs, "mse", 1.0, 1.0, mask=masks),
                 build(gl().ColourLoss, vae, "#2050c0", 1.0, 0.5, 1.0, 0.25, 0.0, 0.3, 0.0, mask=masks),
                 build(gl().ClipVisionLoss, vae, models["cv"], "one per sample", "center", 1.0, image=refs)):
        loss.check_batch(2)
        whole = loss(x0)
        for b in range(2):
            one = loss.select(b, 2)(x0[b:b + 1])
            torch.testing.assert_close(one, whole[b:b + 1], rtol=1e-12, atol=0)
        assert not torch.allclose(whole[0], whole[1])


# -- bad input ----------------------------------------------------------------------------------
def test_image_batch_that_fits_no_latent_batch_names_node_and_input(models):
    loss = build(gl().ImageTargetLoss, models["vae32"], inference(rand(3, 32, 32, 3)), "mse", 0.0, 1.0)
    with pytest.raises(ValueError, match=r"^Guidance Loss \(Image Target\): image: 3 images for a batch of 2 "
                                         r"latents; give 1 or 2$"):
        loss.check_batch(2)
    combined = build(gl().CombineLoss, loss, 1.0)
    with pytest.raises(ValueError, match=r"Guidance Loss \(Image Target\): image: 3 images"):
        combined.check_batch(2)
    loss.check_batch(3)


def test_mask_batch_that_fits_no_latent_batch_names_node_and_input(models):
    loss = build(gl().ColourLoss, models["vae32"], "#2050c0", 1.0, 0.5, 0.0, 0.25, 0.0, 0.3, 0.0,
                 mask=inference(torch.ones(3, 8, 8)))
    with pytest.raises(ValueError, match=r"^Guidance Loss \(Colour\): mask: 3 masks for a batch of 2 latents; "
                                         r"give 1 or 2$"):
        loss.check_batch(2)


def test_image_and_mask_batches_that_disagree_are_refused_by_the_node(models):
    with pytest.raises(ValueError, match=r"^Guidance Loss \(Image Target\): mask: 3 rows but image has 2"):
        build(gl().ImageTargetLoss, models["vae32"], inference(rand(2, 8, 8, 3)), "mse", 0.0, 1.0,
              mask=inference(torch.ones(3, 8, 8)))


def test_clip_vision_without_a_reference_image_is_a_clear_error(models):
    with pytest.raises(ValueError, match=r"^Guidance Loss \(CLIP Vision\): image: no reference image"):
        build(gl().ClipVisionLoss, models["vae32"], models["cv"], "average", "center", 1.0)
    with pytest.raises(ValueError, match=r"^Guidance Loss \(CLIP Vision\): image: 3 references for a batch of 2"):
        build(gl().ClipVisionLoss, models["vae32"], models["cv"], "one per sample", "center", 1.0,
              image=inference(rand(3, 32, 32, 3))).check_batch(2)


@pytest.mark.parametrize("text", ["blue", "#12345", "#gg0000", ""])
def test_a_colour_that_is_not_hex_is_refused(models, text):
    node = gl().ColourLoss
    message = node.validate_inputs(colour=text)
    assert isinstance(message, str) and message.startswith("Guidance Loss (Colour): colour: ")
    assert "#rrggbb" in message
    with pytest.raises(ValueError, match=r"^Guidance Loss \(Colour\): colour: .*#rrggbb"):
        build(node, models["vae32"], text, 1.0, 0.5, 0.0, 0.25, 0.0, 0.3, 0.0)
    assert node.validate_inputs(colour="#2050C0") is True and node.validate_inputs(colour="#abc") is True


def test_colour_with_every_weight_zero_is_refused(models):
    with pytest.raises(ValueError, match=r"^Guidance Loss \(Colour\): colour_weight: every weight is 0"):
        build(gl().ColourLoss, models["vae32"], "#2050c0", 0.0, 0.5, 0.0, 0.25, 0.0, 0.3, 0.0)


def test_a_latent_of_another_vae_is_a_clear_error(models):
    loss = build(gl().ColourLoss, models["vae32"], "#2050c0", 1.0, 0.5, 0.0, 0.25, 0.0, 0.3, 0.0)
    with pytest.raises(ValueError, match=r"^Guidance Loss \(Colour\): vae: this VAE decodes 4-channel image "
                                         r"latents but the sample has shape \(1, 16, 4, 4\)"):
        loss(torch.zeros(1, 16, 4, 4))


def test_all_zero_mask_gives_zero_loss_and_zero_gradient(models):
    vae = models["vae32"]
    zero = inference(torch.zeros(1, 32, 32))
    ref = inference(rand(1, 32, 32, 3, seed=19))
    for loss in (build(gl().LatentTargetLoss, {"samples": inference(torch.ones(1, 4, 4, 4))}, "mse", 1.0, mask=zero),
                 build(gl().ImageTargetLoss, vae, ref, "l1", 2.0, 1.0, mask=zero),
                 build(gl().ColourLoss, vae, "#2050c0", 1.0, 0.5, 1.0, 0.25, 1.0, 0.3, 1.0, mask=zero)):
        x = randn(1, 4, 4, 4, seed=20, dtype=torch.float32).requires_grad_(True)
        value = loss(x)
        (grad,) = torch.autograd.grad(value.sum(), x)
        assert torch.equal(value, torch.zeros(1)) and torch.equal(grad, torch.zeros_like(grad))


# -- inference tensors ------------------------------------------------------------------------------
def test_vae_and_clip_vision_weights_are_aliased_not_copied(models):
    inf = pack_submodule("nodes.inference_tensors")
    for module in (models["vae32"].first_stage_model, models["cv"].model):
        before = {n: (p, p.data_ptr()) for n, p in module.named_parameters()}
        with inf.trainable_view(module):
            inside = dict(module.named_parameters())
            for n, (p, ptr) in before.items():
                assert not inside[n].is_inference() and inside[n].data_ptr() == ptr   # same storage
        after = dict(module.named_parameters())
        assert all(after[n] is p and p.is_inference() for n, (p, _) in before.items())


# -- the CLIP-vision loss through the Adjoint Sampler node -------------------------------------------
def test_adjoint_sampler_halves_the_clip_vision_loss_in_30_iterations(models, comfy_nodes):
    sampler = pack_submodule("nodes.adjoint_sampler").AdjointSampler
    vae = models["vae32"]
    with torch.inference_mode():
        model = tiny_unet32_patcher()
        g = torch.Generator().manual_seed(0)
        cond = [[torch.randn(1, 77, 768, generator=g), {}]]
        latent = {"samples": torch.zeros(1, 4, 4, 4)}
        (target,) = comfy_nodes.common_ksampler(model, 7, 4, 1.0, "dpmpp_2m", "karras", cond, cond, latent)
        reference = vae.decode(target["samples"])
    loss = build(gl().ClipVisionLoss, vae, models["cv"], "average", "center", 1.0, image=reference)
    with torch.inference_mode():
        out = sampler.execute(model=model, positive=cond, negative=cond, latent_image=latent, loss=loss, seed=1,
                              steps=4, cfg=1.0, scheduler="karras", solver="dpmpp_2m", gradient="exact",
                              adjoint_steps=0, optimize="noise", iterations=30, learning_rate=0.1,
                              renormalize_noise=False, max_grad_norm=0.0, early_stop_patience=0, denoise=1.0)
    report = out.ui["adjoint_guidance_loss"][0]
    assert len(report["losses"]) == 31 and report["stop_reason"] == "iterations"
    assert report["best_loss"] <= 0.5 * report["losses"][0], report["losses"]


def test_adjoint_sampler_refuses_a_reference_batch_that_fits_no_latent_batch(models):
    sampler = pack_submodule("nodes.adjoint_sampler").AdjointSampler
    with torch.inference_mode():
        model = tiny_unet32_patcher()
        cond = [[torch.zeros(1, 77, 768), {}]]
        latent = {"samples": torch.zeros(2, 4, 4, 4)}
    loss = build(gl().ImageTargetLoss, models["vae32"], inference(rand(3, 32, 32, 3)), "mse", 0.0, 1.0)
    with pytest.raises(ValueError, match=r"^Adjoint Sampler: Guidance Loss \(Image Target\): image: 3 images for "
                                         r"a batch of 2 latents; give 1 or 2$"):
        with torch.inference_mode():
            sampler.execute(model=model, positive=cond, negative=cond, latent_image=latent, loss=loss, seed=1,
                            steps=2, cfg=1.0, scheduler="karras", solver="dpmpp_2m", gradient="exact",
                            adjoint_steps=0, optimize="noise", iterations=1, learning_rate=0.1,
                            renormalize_noise=False, max_grad_norm=0.0, early_stop_patience=0, denoise=1.0)
