"""Shim: torchvision.ops (roi_align, deform_conv2d, nms, box ops, ...) raises when called.
ComfyUI 0.33 imports roi_align (comfy/ldm/sam3/detector.py) and deform_conv2d
(comfy/background_removal/birefnet.py) at module level."""
from _test_host_stubs import stub_getattr, unavailable

roi_align = unavailable(__name__ + ".roi_align")
deform_conv2d = unavailable(__name__ + ".deform_conv2d")
nms = unavailable(__name__ + ".nms")
batched_nms = unavailable(__name__ + ".batched_nms")
__getattr__ = stub_getattr(__name__)
