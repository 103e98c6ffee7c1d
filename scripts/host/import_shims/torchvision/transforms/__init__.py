"""Shim: the few transforms ComfyUI and spandrel touch, in plain torch; any other
transform (ToTensor, ToPILImage, ...) imports and raises when built."""
from _test_host_stubs import stub_getattr

from . import functional
from .functional import InterpolationMode


class Compose:
    def __init__(self, transforms):
        self.transforms = list(transforms)

    def __call__(self, x):
        for t in self.transforms:
            x = t(x)
        return x


class Normalize:
    def __init__(self, mean, std, inplace=False):
        self.mean, self.std = mean, std

    def __call__(self, x):
        return functional.normalize(x, self.mean, self.std)


__getattr__ = stub_getattr(__name__)
__all__ = ["Compose", "Normalize", "functional", "InterpolationMode"]
