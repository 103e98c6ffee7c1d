"""Shim: resize / normalize in plain torch; anything else raises when called."""
import enum

import torch
import torch.nn.functional as F
from _test_host_stubs import stub_getattr, unavailable


class InterpolationMode(enum.Enum):
    NEAREST = "nearest"
    NEAREST_EXACT = "nearest-exact"
    BILINEAR = "bilinear"
    BICUBIC = "bicubic"
    BOX = "box"            # the three below: members only, resize() raises for them
    HAMMING = "hamming"
    LANCZOS = "lanczos"


def resize(img, size, interpolation=InterpolationMode.BILINEAR, max_size=None, antialias=True):
    mode = interpolation.value if isinstance(interpolation, InterpolationMode) else str(interpolation)
    if mode in ("box", "hamming", "lanczos"):
        unavailable(f"{__name__}.resize(interpolation={mode})")()
    squeeze = img.dim() == 3
    x = img.unsqueeze(0) if squeeze else img
    kwargs = {} if mode.startswith("nearest") else {"align_corners": False}
    out = F.interpolate(x.float(), size=list(size), mode=mode, **kwargs).to(img.dtype)
    return out.squeeze(0) if squeeze else out


def normalize(tensor, mean, std, inplace=False):
    mean = torch.as_tensor(mean, dtype=tensor.dtype, device=tensor.device)
    std = torch.as_tensor(std, dtype=tensor.dtype, device=tensor.device)
    if mean.dim() == 1:
        mean, std = mean.view(-1, 1, 1), std.view(-1, 1, 1)
    return (tensor - mean) / std


rotate = unavailable(__name__ + ".rotate")
__getattr__ = stub_getattr(__name__)
