"""The loading paths a CPU never takes by itself, driven directly through the same code.

- dynamic VRAM (ComfyUI >= 0.33 on NVIDIA): the Adjoint Sampler must run on ComfyUI's
  non-dynamic delegate, never on the dynamic patcher's weights;
- weights fed through a reused cast buffer (the legacy patcher with offloaded layers):
  the gradient must be exact, not the gradient of whatever the buffer last held;
- layers that quantise their input (fp8 matmuls): run at full precision inside our
  view, or refused by name.
"""
import pytest
import torch

from comfy_harness import comfy_version, pack_submodule
from guider_harness import SharedBufferLinear

UNET = "tiny-sd15-unet.safetensors"
SETTINGS = dict(seed=1, steps=3, cfg=2.0, scheduler="karras", solver="dpmpp_2m", gradient="exact",
                adjoint_steps=0, optimize="noise + prompt", iterations=2, learning_rate=0.1,
                renormalize_noise=True, max_grad_norm=0.0, early_stop_patience=0, denoise=1.0)


def load_unet(nodes, name=UNET, weight_dtype="default"):
    with torch.inference_mode():
        (model,) = nodes.UNETLoader().load_unet(name, weight_dtype)
    return model


def run_sampler(model):
    node = pack_submodule("nodes.adjoint_sampler").AdjointSampler
    losses = pack_submodule("adjoint.losses")
    g = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        cond = [[torch.randn(1, 77, 768, generator=g), {}]]
        latent = {"samples": torch.zeros(1, 4, 4, 4)}
        target = torch.randn(1, 4, 4, 4, generator=g)
        out = node.execute(model=model, positive=cond, negative=cond, latent_image=latent,
                           loss=losses.LatentTarget(target), **SETTINGS)
    return out.result[0]["samples"], out.ui["adjoint_guidance_loss"][0]["losses"]


def count_grad_forwards(module):
    calls = {"grad": 0}
    original = module.forward

    def counting(*args, **kwargs):
        calls["grad"] += torch.is_grad_enabled() and not torch.is_inference_mode_enabled()
        return original(*args, **kwargs)
    module.forward = counting
    return calls


def mark_dynamic(patcher):
    """Make a CPU patcher report itself dynamic, with ModelPatcherDynamic's own delegate
    method: the selection and the delegate are ComfyUI's real code, only the flag is set."""
    import comfy.model_patcher
    patcher.is_dynamic = lambda: True
    patcher.non_dynamic_delegate_model = None
    patcher.get_non_dynamic_delegate = comfy.model_patcher.ModelPatcherDynamic.get_non_dynamic_delegate.__get__(patcher)
    return patcher


def needs_dynamic_vram():
    import comfy.model_patcher
    if not hasattr(comfy.model_patcher, "ModelPatcherDynamic"):
        pytest.skip(f"ComfyUI {'.'.join(map(str, comfy_version()))} has no dynamic VRAM (ModelPatcherDynamic)")


def test_dynamic_vram_models_are_differentiated_on_the_non_dynamic_delegate(comfy_nodes):
    needs_dynamic_vram()
    plain_latent, plain_losses = run_sampler(load_unet(comfy_nodes))
    dynamic = mark_dynamic(load_unet(comfy_nodes))
    assert dynamic.cached_patcher_init is not None, "UNETLoader no longer registers a reload factory"
    calls = count_grad_forwards(dynamic.model.diffusion_model)
    latent, losses = run_sampler(dynamic)
    assert calls["grad"] == 0, "the dynamic patcher's own weights were differentiated through"
    assert dynamic.non_dynamic_delegate_model is not None, "no delegate was made"
    assert dynamic.non_dynamic_delegate_model[0] is not dynamic.model
    assert torch.equal(latent, plain_latent) and losses == plain_losses


def test_dynamic_vram_without_a_reload_factory_is_refused_by_name(comfy_nodes):
    needs_dynamic_vram()
    dynamic = mark_dynamic(load_unet(comfy_nodes))
    dynamic.cached_patcher_init = None
    with pytest.raises(ValueError, match=r"^Adjoint Sampler: model: this model is loaded with dynamic VRAM "
                                         r".*--disable-dynamic-vram"):
        run_sampler(dynamic)


def shared_buffer_net():
    g = torch.Generator().manual_seed(4)
    buffer = torch.empty(64)
    layers = [SharedBufferLinear(torch.randn(8, 8, generator=g) / 3, buffer) for _ in range(3)]
    reference = torch.nn.Sequential(*[torch.nn.Linear(8, 8, bias=False) for _ in range(3)])
    with torch.no_grad():
        for ref, layer in zip(reference, layers):
            ref.weight.copy_(layer.weight)
    plain = torch.nn.Sequential(*[torch.nn.Sequential(r, torch.nn.Tanh()) for r in reference])
    return torch.nn.Sequential(*layers), plain


def test_weights_from_a_reused_cast_buffer_give_the_exact_gradient(comfy_nodes):
    inf = pack_submodule("nodes.inference_tensors")
    net, reference = shared_buffer_net()
    x = torch.randn(2, 8, generator=torch.Generator().manual_seed(5), requires_grad=True)
    (exact,) = torch.autograd.grad(reference(x).square().sum(), x)
    (unguarded,) = torch.autograd.grad(net(x).square().sum(), x)
    assert not torch.allclose(unguarded, exact, rtol=1e-3), "the hazard is not reproduced; the test proves nothing"
    before = inf.GUARD.snapshots
    with inf.trainable_view(net):
        (guarded,) = torch.autograd.grad(net(x).square().sum(), x)
    assert torch.equal(guarded, exact) or torch.allclose(guarded, exact, rtol=1e-6, atol=0)
    assert inf.GUARD.snapshots - before == 3       # one snapshot per layer's weight


def test_resident_weights_are_not_copied(comfy_nodes):
    inf = pack_submodule("nodes.inference_tensors")
    net = load_unet(comfy_nodes, "tiny-sd15-fp32.safetensors").model.diffusion_model
    params = {p.untyped_storage().data_ptr() for p in net.parameters()}
    copied = []
    original = inf.GUARD.pack

    def spy(t):
        out = original(t)
        if isinstance(out, torch.Tensor):          # a snapshot; kept tensors come back wrapped
            copied.append(t.untyped_storage().data_ptr())
        return out
    inf.GUARD.pack = spy
    try:
        with inf.trainable_view(net):
            x = torch.randn(1, 4, 4, 4, requires_grad=True)
            net(x, torch.tensor([500.0]), context=torch.randn(1, 77, 768)).sum().backward()
    finally:
        inf.GUARD.pack = original
    assert not params & set(copied)


def test_layers_that_quantise_their_input_run_at_full_precision_inside_the_view(comfy_nodes):
    if comfy_version() < (0, 4, 0):
        pytest.skip("ComfyUI 0.3.75 has no input-quantising mixed-precision layers (comfy-kitchen)")
    inf = pack_submodule("nodes.inference_tensors")
    net = load_unet(comfy_nodes, "tiny-sd15-mixed_fp8.safetensors").model.diffusion_model
    layers = [m for m in net.modules() if getattr(m, "layout_type", None) is not None]
    assert layers
    x = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(2))
    t, ctx = torch.tensor([500.0]), torch.randn(1, 77, 768, generator=torch.Generator().manual_seed(3))

    def input_grad():
        with inf.trainable_view(net):
            xg = x.clone().requires_grad_(True)
            net(xg, t, context=ctx).square().sum().backward()
            return xg.grad
    exact = input_grad()                           # on CPU ComfyUI already runs them unquantised
    for m in layers:
        m._full_precision_mm = False               # as on a GPU with fp8 matmuls
    try:
        assert torch.equal(input_grad(), exact)
        assert all(m._full_precision_mm is False for m in layers), "the layers were not restored"
    finally:
        for m in layers:
            m._full_precision_mm = True


def test_fp8_matmul_layers_are_refused_by_name(comfy_nodes):
    import comfy.ops
    inf = pack_submodule("nodes.inference_tensors")
    layer = comfy.ops.fp8_ops.Linear(8, 8)
    layer.weight = torch.nn.Parameter(torch.zeros(8, 8, dtype=torch.float8_e4m3fn), requires_grad=False)
    with pytest.raises(ValueError, match=r"^model: ComfyUI runs this model's linear layers as fp8 matrix "
                                         r"multiplications \(--fast fp8_matrix_mult\)"):
        with inf.trainable_view(torch.nn.Sequential(layer)):
            pass


class InPlaceResidual(torch.nn.Module):
    """Flux's pattern: a LayerNorm saves its input, then the residual is added in place."""

    def __init__(self, in_place=True):
        super().__init__()
        g = torch.Generator().manual_seed(8)
        self.norm = torch.nn.LayerNorm(8)
        self.proj = torch.nn.Linear(8, 8)
        with torch.no_grad():
            self.proj.weight.copy_(torch.randn(8, 8, generator=g) / 3)
            self.proj.bias.copy_(torch.randn(8, generator=g) / 3)
        self.in_place = in_place

    def forward(self, x):
        h = x * 1.0
        for _ in range(2):
            update = self.proj(self.norm(h))
            if self.in_place:
                h += update
            else:
                h = h + update
        return h


def test_an_in_place_write_into_a_saved_tensor_is_caught_and_then_survived(comfy_nodes):
    """With our saved-tensor hook installed autograd stops checking versions itself; the hook
    must check them (a silent wrong gradient otherwise), and GraphSafety must then recover
    the exact gradient by snapshotting activations."""
    inf = pack_submodule("nodes.inference_tensors")
    x = torch.randn(3, 8, generator=torch.Generator().manual_seed(1), requires_grad=True)
    (exact,) = torch.autograd.grad(InPlaceResidual(in_place=False)(x).square().sum(), x)
    net = InPlaceResidual()
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        with inf.trainable_view(net):
            torch.autograd.grad(net(x).square().sum(), x)
    safety = inf.GraphSafety()
    (survived,) = inf.run_protected(net, safety, lambda: torch.autograd.grad(net(x).square().sum(), x))
    assert safety.active == ["snapshot_activations"]
    torch.testing.assert_close(survived, exact, rtol=1e-6, atol=0)


def test_inference_tensors_outside_modules_are_survived(comfy_nodes):
    """A latent format's mean/std (Qwen-Image, Wan, Playground) are inference tensors that no
    module owns; multiplying by them under grad fails until GraphSafety aliases them."""
    inf = pack_submodule("nodes.inference_tensors")
    with torch.inference_mode():
        std = torch.full((1, 4, 1, 1), 0.5)
    x = torch.randn(1, 4, 2, 2, generator=torch.Generator().manual_seed(2), requires_grad=True)
    net = torch.nn.Identity()
    safety = inf.GraphSafety()
    (grad,) = inf.run_protected(net, safety, lambda: torch.autograd.grad((x * std).square().sum(), x))
    assert safety.active == ["alias_inference_arguments"]
    torch.testing.assert_close(grad, 2 * x.detach() * 0.25, rtol=1e-6, atol=0)
    with torch.inference_mode():
        shared = torch.zeros(2)
    with pytest.raises(RuntimeError, match="Inplace update to inference tensor"):
        with inf.trainable_view(net), safety.applied():
            shared.add_(1.0)                       # a shared inference tensor stays write-protected


def test_in_place_writes_into_unbound_views_are_survived(comfy_nodes):
    """ComfyUI's ControlNet merge scales a Fun ControlNet's unbound outputs in place
    (`x *= strength`), which autograd refuses for multi-view outputs; GraphSafety copies
    them and the gradient is that of the same function written out of place."""
    inf = pack_submodule("nodes.inference_tensors")
    x = torch.randn(3, 4, generator=torch.Generator().manual_seed(3), requires_grad=True)

    def scaled_parts(in_place):
        parts = torch.tanh(x).unbind(0)
        if in_place:
            for p in parts:
                p *= 0.5
            return sum(p.square().sum() for p in parts)
        return sum((0.5 * p).square().sum() for p in parts)

    (exact,) = torch.autograd.grad(scaled_parts(False), x)
    safety = inf.GraphSafety()
    (survived,) = inf.run_protected(torch.nn.Identity(), safety,
                                    lambda: torch.autograd.grad(scaled_parts(True), x))
    assert safety.active == ["copy_multi_view_outputs"]
    torch.testing.assert_close(survived, exact, rtol=1e-6, atol=0)
