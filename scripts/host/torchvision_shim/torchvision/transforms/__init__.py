"""Shim: the few transforms ComfyUI and spandrel touch, in plain torch."""
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


__all__ = ["Compose", "Normalize", "functional", "InterpolationMode"]
