"""trainable_view: inference weights made usable by autograd without copying them."""
import torch

from comfy_harness import pack_submodule


def test_trainable_view_aliases_without_copy_and_restores(comfy_nodes):
    inf = pack_submodule("nodes.inference_tensors")
    with torch.inference_mode():
        (model,) = comfy_nodes.UNETLoader().load_unet("tiny-sd15-unet.safetensors", "default")
    module = model.model
    before = {n: t for n, t in [*module.named_parameters(), *module.named_buffers()]}
    assert all(t.is_inference() for t in before.values())
    with inf.trainable_view(module):
        inside = dict([*module.named_parameters(), *module.named_buffers()])
        assert not any(t.is_inference() for t in inside.values())
        # zero copy: every alias points at the original storage
        assert all(inside[n].data_ptr() == before[n].data_ptr() for n in before)
        x = torch.randn(1, 4, 4, 4, requires_grad=True)
        out = module.diffusion_model(x, torch.tensor([500.0]), context=torch.randn(1, 77, 768))
        (g,) = torch.autograd.grad(out.square().sum(), x)
        assert torch.isfinite(g).all() and g.abs().sum() > 0
    after = {n: t for n, t in [*module.named_parameters(), *module.named_buffers()]}
    assert all(after[n] is before[n] for n in before)   # the shared model is as it was


def test_without_the_view_autograd_refuses_inference_weights(comfy_nodes):
    with torch.inference_mode():
        (model,) = comfy_nodes.UNETLoader().load_unet("tiny-sd15-unet.safetensors", "default")
    x = torch.randn(1, 4, 4, 4, requires_grad=True)
    try:
        model.model.diffusion_model(x, torch.tensor([500.0]), context=torch.randn(1, 77, 768)).sum().backward()
    except RuntimeError as e:
        assert "Inference tensors cannot be saved for backward" in str(e)
    else:
        raise AssertionError("the workaround is not needed any more: inference weights trained fine")
