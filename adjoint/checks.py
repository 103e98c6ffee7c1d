"""Argument checks for the public API: every refusal names the function and the argument.

Messages read ``"<function>: <argument>: <problem>"`` (e.g. ``optimize: x_offset: shape
(1, 4, 8, 8) does not match the noise's (2, 4, 8, 8)``). The helpers below raise
``"<argument>: <problem>"``; the public function wraps its validation (and nothing
else: never the denoiser, loss_fn or a callback, whose exceptions pass through untouched)
in `named(where)`, which puts the function's name in front.

TypeError for a wrong kind of value, ValueError for a wrong value of the right kind.
"""
from __future__ import annotations

import contextlib
import math
import numbers
import operator
from typing import Optional

import torch


@contextlib.contextmanager
def named(where: str):
    """Prefix ValueError/TypeError messages raised inside the block with ``where: `` (once)."""
    try:
        yield
    except (ValueError, TypeError) as e:
        if e.args and isinstance(e.args[0], str) and not e.args[0].startswith(f"{where}: "):
            e.args = (f"{where}: {e.args[0]}",) + e.args[1:]
        raise


def shape_str(shape) -> str:
    return str(tuple(int(s) for s in shape))


def as_int(name: str, value, *, minimum: Optional[int] = None, maximum: Optional[int] = None) -> int:
    """An integer (Python or numpy, not bool, not float) within [minimum, maximum]."""
    if isinstance(value, bool) or isinstance(value, torch.Tensor):
        raise TypeError(f"{name}: must be an integer, got {type(value).__name__} {value!r}")
    try:
        v = operator.index(value)
    except TypeError:
        raise TypeError(f"{name}: must be an integer, got {type(value).__name__} {value!r}") from None
    if minimum is not None and v < minimum:
        raise ValueError(f"{name}: must be ≥ {minimum}, got {v}")
    if maximum is not None and v > maximum:
        raise ValueError(f"{name}: must be ≤ {maximum}, got {v}")
    return v


def as_float(name: str, value, *, minimum: Optional[float] = None, above: Optional[float] = None,
             below: Optional[float] = None) -> float:
    """A finite real number (Python, numpy, or a one-element tensor) in the given range.

    minimum: ≥ minimum; above: > above; below: < below.
    """
    if isinstance(value, bool):
        raise TypeError(f"{name}: must be a real number, got bool {value!r}")
    if isinstance(value, torch.Tensor):
        if value.numel() != 1 or value.is_complex():
            raise TypeError(f"{name}: must be a real number, got a tensor of shape {shape_str(value.shape)}")
        v = float(value.detach().cpu().reshape(()))
    elif isinstance(value, numbers.Real):
        v = float(value)
    else:
        raise TypeError(f"{name}: must be a real number, got {type(value).__name__} {value!r}")
    if not math.isfinite(v):
        raise ValueError(f"{name}: must be finite, got {v!r}")
    if minimum is not None and v < minimum:
        raise ValueError(f"{name}: must be ≥ {minimum:g}, got {v!r}")
    if above is not None and not v > above:
        raise ValueError(f"{name}: must be > {above:g}, got {v!r}")
    if below is not None and not v < below:
        raise ValueError(f"{name}: must be < {below:g}, got {v!r}")
    return v


def as_bool(name: str, value) -> bool:
    """True/False (numpy booleans and the integers 0 and 1 too)."""
    if isinstance(value, bool):
        return value
    if type(value).__name__ == "bool_":          # numpy.bool_
        return bool(value)
    if isinstance(value, numbers.Integral) and not isinstance(value, torch.Tensor) and value in (0, 1):
        return bool(value)
    raise TypeError(f"{name}: must be True or False, got {type(value).__name__} {value!r}")


def check_callable(name: str, value, *, optional: bool = False, signature: str = ""):
    if value is None and optional:
        return None
    if not callable(value):
        what = f" {signature}" if signature else ""
        raise TypeError(f"{name}: must be a callable{what}" + (" or None" if optional else "")
                        + f", got {type(value).__name__}")
    return value


def check_tensor(name: str, value, *, min_ndim: int = 0, shape=None, shape_of: str = "",
                 finite: bool = True) -> torch.Tensor:
    """A floating-point (real) tensor, optionally of an exact shape, with finite entries."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name}: must be a torch.Tensor, got {type(value).__name__}")
    if not value.is_floating_point():
        raise TypeError(f"{name}: must be a floating-point tensor, got dtype {value.dtype}")
    if value.ndim < min_ndim:
        raise ValueError(f"{name}: must have at least {min_ndim} dimension{'s' if min_ndim > 1 else ''} "
                         f"(batch first), got shape {shape_str(value.shape)}")
    if shape is not None and tuple(value.shape) != tuple(shape):
        raise ValueError(f"{name}: shape {shape_str(value.shape)} does not match "
                         f"{shape_of or 'the expected'} {shape_str(shape)}")
    if finite:
        check_finite(name, value)
    return value


def check_finite(name: str, value: torch.Tensor) -> None:
    if value.numel() and not bool(torch.isfinite(value.detach()).all()):
        bad = int((~torch.isfinite(value.detach())).sum())
        raise ValueError(f"{name}: has {bad} non-finite (NaN or inf) entr{'y' if bad == 1 else 'ies'}")


def check_dtype_arg(name: str, value) -> torch.dtype:
    """A floating-point torch.dtype (for the grid helpers' `dtype=`)."""
    if not isinstance(value, torch.dtype):
        raise TypeError(f"{name}: must be a torch.dtype, got {type(value).__name__} {value!r}")
    if not value.is_floating_point:
        raise ValueError(f"{name}: must be a floating-point dtype, got {value}")
    return value
