"""The pure-torch parts of the guidance losses (adjoint.losses): image statistics, blur,
fitting, colour parsing, batches and masks, with stand-in decoders (no ComfyUI)."""
import pytest
import torch

from adjoint import losses as L

F64 = torch.float64


def solid(rgb, h=8, w=8, b=1):
    return torch.tensor(rgb, dtype=F64).view(1, 3, 1, 1).expand(b, 3, h, w).clone()


def identity_decode(x0):
    """A stand-in VAE: the first three latent channels are the image."""
    return x0[:, :3]


def test_colour_statistics_of_known_images():
    half = torch.cat([solid([0.0, 0.0, 0.0], w=4), solid([1.0, 1.0, 1.0], w=4)], dim=3)
    s = L.colour_statistics(half)
    torch.testing.assert_close(s["mean_colour"], torch.full((1, 3), 0.5, dtype=F64))
    torch.testing.assert_close(s["brightness"], torch.tensor([0.5], dtype=F64))
    torch.testing.assert_close(s["contrast"], torch.sqrt(torch.tensor([0.25 + 1e-8], dtype=F64)))
    torch.testing.assert_close(s["saturation"], torch.tensor([0.0], dtype=F64))
    red = L.colour_statistics(solid([1.0, 0.0, 0.0]))
    torch.testing.assert_close(red["brightness"], torch.tensor([0.299], dtype=F64))
    torch.testing.assert_close(red["saturation"], torch.tensor([1.0], dtype=F64))
    # a mask selects the pixels the statistics describe
    mask = torch.zeros(1, 1, 8, 8, dtype=F64)
    mask[..., 4:] = 1
    torch.testing.assert_close(L.colour_statistics(half, mask)["mean_colour"], torch.ones(1, 3, dtype=F64))


def test_gaussian_blur_keeps_constants_and_mass_and_is_linear():
    g = torch.Generator().manual_seed(0)
    img = torch.rand(2, 3, 16, 20, generator=g, dtype=F64)
    torch.testing.assert_close(L.gaussian_blur(solid([0.2, 0.4, 0.6], 16, 20), 3.0), solid([0.2, 0.4, 0.6], 16, 20))
    other = torch.rand(2, 3, 16, 20, generator=g, dtype=F64)
    torch.testing.assert_close(L.gaussian_blur(2 * img + other, 2.5),
                               2 * L.gaussian_blur(img, 2.5) + L.gaussian_blur(other, 2.5))
    assert L.gaussian_blur(img, 0.0) is img
    k = L.gaussian_kernel(1.5, F64)
    assert k.numel() == 2 * 5 + 1 and abs(float(k.sum()) - 1) < 1e-15
    blurred = L.gaussian_blur(img, 4.0)
    assert blurred.std() < img.std()         # detail removed
    # sigma larger than the image: replicate padding copes
    assert torch.isfinite(L.gaussian_blur(img, 40.0)).all()


def test_fit_image_centre_crops_another_aspect_ratio():
    wide = torch.zeros(1, 3, 10, 30, dtype=F64)
    wide[..., 10:20] = 1.0                    # the middle third
    out = L.fit_image(wide, (8, 8))
    assert out.shape == (1, 3, 8, 8)
    torch.testing.assert_close(out, torch.ones_like(out))
    same = torch.rand(1, 3, 8, 8, dtype=F64)
    assert L.fit_image(same, (8, 8)) is same
    assert L.fit_image(torch.rand(1, 3, 30, 10, dtype=F64), (16, 32)).shape == (1, 3, 16, 32)


@pytest.mark.parametrize("text, rgb", [("#2050c0", (0x20, 0x50, 0xc0)), ("2050C0", (0x20, 0x50, 0xc0)),
                                       ("#fff", (255, 255, 255)), (" #000000 ", (0, 0, 0))])
def test_parse_hex_colour(text, rgb):
    assert L.parse_hex_colour(text) == tuple(v / 255 for v in rgb)


@pytest.mark.parametrize("text", ["blue", "#12345", "#1234567", "#gg0000", ""])
def test_parse_hex_colour_refuses_other_text(text):
    with pytest.raises(ValueError, match=r"is not a colour; write it as #rrggbb, e.g. #2050c0"):
        L.parse_hex_colour(text)


def test_cosine_distance():
    a = torch.tensor([[1.0, 0.0], [1.0, 1.0]], dtype=F64)
    b = torch.tensor([[2.0, 0.0]], dtype=F64)
    torch.testing.assert_close(L.cosine_distance(a, b), torch.tensor([0.0, 1 - 2 ** -0.5], dtype=F64))
    torch.testing.assert_close(L.cosine_distance(a[:1], -b), torch.tensor([2.0], dtype=F64))


def test_check_count_messages():
    with pytest.raises(ValueError, match=r"^N: image: 3 images for a batch of 2 latents; give 1 or 2$"):
        L.check_count("N: image", 3, 2, "image")
    with pytest.raises(ValueError, match=r"^N: mask: 2 masks for a batch of 1 latent; give 1$"):
        L.check_count("N: mask", 2, 1, "mask")
    L.check_count("N: image", 1, 5, "image")
    L.check_count("N: image", 5, 5, "image")


def all_losses(batch_refs=1):
    g = torch.Generator().manual_seed(1)
    target = torch.rand(batch_refs, 3, 8, 8, generator=g, dtype=F64)
    ref = torch.randn(batch_refs, 4, generator=g, dtype=F64)
    embed = lambda img: img.mean(dim=(2, 3)).repeat(1, 2)[:, :4] * torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=F64)
    return {
        "latent": L.LatentTarget(torch.rand(batch_refs, 4, 8, 8, generator=g, dtype=F64)),
        "image": L.ImageTarget(identity_decode, target, blur_sigma=1.0),
        "colour": L.ColourTarget(identity_decode, {"mean_colour": (1.0, (0.1, 0.3, 0.8)), "contrast": (2.0, 0.2),
                                                   "brightness": (1.0, 0.5), "saturation": (0.5, 0.5)}),
        "clip": L.EmbeddingSimilarity(identity_decode, embed, ref),
    }


@pytest.mark.parametrize("name", ["latent", "image", "colour", "clip"])
def test_gradients_match_finite_differences(name):
    loss = all_losses()[name]
    g = torch.Generator().manual_seed(2)
    x0 = torch.rand(2, 4, 8, 8, generator=g, dtype=F64)
    x = x0.clone().requires_grad_(True)
    value = loss(x)
    assert value.shape == (2,)
    (grad,) = torch.autograd.grad(value.sum(), x)
    v = torch.randn(x0.shape, generator=g, dtype=F64)
    h = 1e-6
    fd = float((loss(x0 + h * v).sum() - loss(x0 - h * v).sum()) / (2 * h))
    assert abs(float((grad * v).sum()) - fd) <= 1e-6 * abs(fd)


def test_all_zero_mask_is_zero_loss_zero_gradient_no_nan():
    zero = torch.zeros(1, 1, 8, 8, dtype=F64)
    target = torch.rand(1, 3, 8, 8, dtype=F64)
    for loss in (L.LatentTarget(torch.rand(1, 4, 8, 8, dtype=F64), mask=zero),
                 L.ImageTarget(identity_decode, target, metric="l1", blur_sigma=2.0, mask=zero),
                 L.ColourTarget(identity_decode, {k: (1.0, (0.2, 0.2, 0.2) if k == "mean_colour" else 0.3)
                                                  for k in L.COLOUR_STATS}, mask=zero)):
        x = torch.rand(1, 4, 8, 8, dtype=F64, requires_grad=True)
        value = loss(x)
        (grad,) = torch.autograd.grad(value.sum(), x)
        assert torch.equal(value, torch.zeros(1, dtype=F64)) and torch.equal(grad, torch.zeros_like(grad))


def test_a_mask_of_another_size_is_stretched_bilinearly():
    mask = torch.zeros(1, 1, 4, 4, dtype=F64)
    mask[..., :, :2] = 1                       # the left half
    target = solid([0.0, 0.0, 0.0])
    x = torch.cat([solid([1.0, 1.0, 1.0]), torch.zeros(1, 1, 8, 8, dtype=F64)], dim=1)
    x[..., 4:] = 0                             # left half white, right half black
    m = torch.nn.functional.interpolate(mask, size=(8, 8), mode="bilinear", align_corners=False)
    assert m[0, 0, 0].tolist() == [1, 1, 1, 0.75, 0.25, 0, 0, 0]     # as ComfyUI resizes noise masks
    expected = float((x[:, :3] ** 2 * m).sum() / (m.sum() * 3))
    assert float(L.ImageTarget(identity_decode, target, mask=mask)(x)) == pytest.approx(expected, rel=1e-14)
    assert expected == pytest.approx(0.9375)


def test_select_slices_per_sample_references_and_batches_agree():
    losses = all_losses(batch_refs=2)
    x0 = torch.rand(2, 4, 8, 8, generator=torch.Generator().manual_seed(3), dtype=F64)
    for name, loss in losses.items():
        loss.check_batch(2)
        whole = loss(x0)
        for b in range(2):
            torch.testing.assert_close(loss.select(b, 2)(x0[b:b + 1]), whole[b:b + 1], rtol=1e-14, atol=0)


def test_weighted_sum_forwards_check_batch_and_select():
    losses = all_losses(batch_refs=3)
    total = L.WeightedSum([(1.0, losses["colour"]), (2.0, L.WeightedSum([(1.0, losses["image"])]))])
    with pytest.raises(ValueError, match=r"^Guidance Loss \(Image Target\): image: 3 images for a batch of 2"):
        total.check_batch(2)
    with pytest.raises(ValueError, match=r"image: 3 images for a batch of 2"):
        total.select(0, 2)
    total.check_batch(3)
    x0 = torch.rand(3, 4, 8, 8, dtype=F64)
    parts = total.parts(x0)
    assert sorted(parts) == ["1.colour.brightness", "1.colour.contrast", "1.colour.mean_colour",
                             "1.colour.saturation", "2.1.image_target"]
    torch.testing.assert_close(total(x0), losses["colour"](x0) + 2.0 * losses["image"](x0))


def test_base_loss_check_batch_is_a_no_op():
    class Plain(L.GuidanceLoss):
        def parts(self, x0):
            return {"p": x0.sum(dim=(1, 2, 3))}
    Plain().check_batch(7)
