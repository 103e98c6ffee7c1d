"""What the pack's nodes check of their inputs, and when.

Widget values (combos, numbers, text, booleans) are checked when the prompt is queued,
before anything runs: every combo against its options, every number against its range
(floats must also be finite: ComfyUI's own range check lets NaN through, and it skips
the inputs a node validates itself), plus each node's cross-checks of widgets
(`input_problems`). The same checks run again when the node starts, on the values that
came through links. Tensors that come through links (latents, images, masks,
conditioning) are checked when the node starts, before any network call
(`latent_samples`, `image_tensor`, `mask_tensor`, `conditioning`).

Every message names the node and the input (`Adjoint Sampler: cfg: expected a finite
number from 0 to 100, found nan`).

Queue-time messages reach the one input they are about. ComfyUI calls a node's
`validate_inputs` with the arguments its signature names and attaches a failure to
*every* argument of that signature (execution.py, validate_inputs, on 0.3.75 and 0.33).
So `validate_inputs = WidgetChecks()` is a descriptor: while ComfyUI validates one of
our nodes (found on the stack: execution.validate_inputs with that node's class and raw
`inputs`), it hands ComfyUI a function whose signature names only the input in error
(or none), and which returns that input's message. Called any other way (a test, a
ComfyUI whose validate_inputs looks different) it is an ordinary validate_inputs over
every widget, returning the first problem. With several problems in one node the first
is reported (ours before a finite number out of range, which ComfyUI's own range check
then reports for every input not named).

A node's cross-checks: `input_problems(cls, values, connected)` yields (input, message);
`values` holds the widget values that are known (not linked) and valid on their own,
`connected` the names of the connected non-widget inputs (None when not known).
"""
from __future__ import annotations

import inspect
import math
import sys
import types
from typing import Any, Iterable, Optional

import torch

from comfy_api.latest import io

_P = inspect.Parameter


# --------------------------------------------------------------------------- widgets

class Widget:
    """One widget input of a node schema: its name, kind and what it allows."""

    def __init__(self, inp):
        self.name = inp.id
        self.kind = ("COMBO" if isinstance(inp, io.Combo.Input) else
                     "INT" if isinstance(inp, io.Int.Input) else
                     "FLOAT" if isinstance(inp, io.Float.Input) else
                     "STRING" if isinstance(inp, io.String.Input) else
                     "BOOLEAN" if isinstance(inp, io.Boolean.Input) else None)
        self.min = getattr(inp, "min", None)
        self.max = getattr(inp, "max", None)
        self.options = list(getattr(inp, "options", None) or ())

    def convert(self, raw):
        """A raw prompt value as ComfyUI converts it before validation; None when it cannot
        (ComfyUI then reports the failed conversion itself)."""
        if isinstance(raw, dict) and "__value__" in raw:
            raw = raw["__value__"]
        try:
            if self.kind == "INT":
                return int(raw)
            if self.kind == "FLOAT":
                return float(raw)
            if self.kind == "STRING":
                return str(raw)
            if self.kind == "BOOLEAN":
                return bool(raw)
        except (TypeError, ValueError, OverflowError):
            return None
        return raw

    def problem(self, node: str, value) -> Optional[str]:
        """The message for a value this widget does not allow, or None."""
        where = f"{node}: {self.name}"
        if self.kind == "COMBO":
            if value not in self.options:
                return f"{where}: expected one of {', '.join(map(str, self.options))}, found {value!r}"
        elif self.kind == "INT":
            if isinstance(value, bool) or not isinstance(value, int) or not self._in_range(value):
                return f"{where}: expected a whole number from {_num(self.min)} to {_num(self.max)}, found {value!r}"
        elif self.kind == "FLOAT":
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not math.isfinite(value) or not self._in_range(value):
                return f"{where}: expected a finite number from {_num(self.min)} to {_num(self.max)}, found {value!r}"
        elif self.kind == "STRING":
            if not isinstance(value, str):
                return f"{where}: expected text, found {type(value).__name__}"
        elif self.kind == "BOOLEAN":
            if not isinstance(value, bool):
                return f"{where}: expected true or false, found {value!r}"
        return None

    def comfy_catches(self, value) -> bool:
        """Would ComfyUI's own range check refuse this value (a finite number out of range)?"""
        return self.kind in ("INT", "FLOAT") and isinstance(value, (int, float)) \
            and math.isfinite(value) and not self._in_range(value)

    def _in_range(self, value) -> bool:
        return (self.min is None or value >= self.min) and (self.max is None or value <= self.max)


def _num(v) -> str:
    return "-inf" if v is None else (f"{v:g}" if isinstance(v, float) else str(v))


def node_name(cls) -> str:
    return cls.define_schema().display_name


def widgets(cls) -> dict[str, Widget]:
    out = {}
    for inp in cls.define_schema().inputs:
        w = Widget(inp)
        if w.kind is not None:
            out[w.name] = w
    return out


def problems(cls, values: dict, connected: Optional[frozenset]) -> list[tuple[str, str]]:
    """(input, message) for every problem of these widget values (unknown values skipped),
    those ComfyUI's own range check would not catch first. `connected`: the non-widget
    inputs that are connected, or None when not known (cross-checks that need it skip)."""
    node, specs = node_name(cls), widgets(cls)
    found, valid = [], {}
    for name, w in specs.items():
        if name not in values or values[name] is None:
            continue
        message = w.problem(node, values[name])
        if message is None:
            valid[name] = values[name]
        else:
            found.append((w.comfy_catches(values[name]), name, message))
    cross = getattr(cls, "input_problems", None)
    if cross is not None:
        found += [(False, name, message) for name, message in cross(valid, connected)]
    found.sort(key=lambda p: p[0])       # stable: ours first, then those ComfyUI would catch
    return [(name, message) for _, name, message in found]


def check_inputs(cls, values: dict) -> None:
    """When the node starts: every widget value (linked ones included) and the cross-checks;
    raises ValueError with the first problem."""
    specs = widgets(cls)
    connected = frozenset(k for k, v in values.items() if k not in specs and v is not None)
    found = problems(cls, {k: v for k, v in values.items() if k in specs}, connected)
    if found:
        raise ValueError(found[0][1])


# --------------------------------------------------------------------------- validate_inputs

def _inputs_being_validated(owner) -> Optional[dict]:
    """The raw prompt inputs of the node ComfyUI's execution.validate_inputs is validating,
    when that is who is asking (through first_real_override / make_locked_method_func) and
    the node is of class `owner`; else None."""
    frame = sys._getframe(2)
    for _ in range(8):
        if frame is None:
            return None
        if frame.f_code.co_name == "validate_inputs" and frame.f_globals.get("__name__") == "execution":
            local = frame.f_locals
            inputs, obj_class = local.get("inputs"), local.get("obj_class")
            if isinstance(inputs, dict) and isinstance(obj_class, type) and issubclass(owner, obj_class):
                return inputs
            return None
        frame = frame.f_back
    return None


def _is_link(value) -> bool:
    return isinstance(value, list)          # as ComfyUI reads a prompt: a list is a link


def _signature(names: Iterable[str]) -> inspect.Signature:
    return inspect.Signature([_P("cls", _P.POSITIONAL_OR_KEYWORD)]
                             + [_P(n, _P.POSITIONAL_OR_KEYWORD, default=None) for n in names])


class WidgetChecks:
    """`validate_inputs = WidgetChecks()`: the queue-time checks of a node (module docstring)."""

    def __get__(self, obj, owner=None):
        owner = owner if owner is not None else type(obj)
        raw = _inputs_being_validated(owner)
        if raw is None:
            return types.MethodType(self._plain(owner), owner)
        specs = widgets(owner)
        values, connected = {}, set()
        for name, value in raw.items():
            if _is_link(value):
                connected.add(name)
            elif name in specs:
                converted = specs[name].convert(value)
                if converted is not None:
                    values[name] = converted
        # only an input present in the prompt gets an error attached (and can be named)
        found = [(n, m) for n, m in problems(owner, values, frozenset(connected)) if n in raw]
        name, message = found[0] if found else (None, None)

        def validate_inputs(cls, **_):
            return True if message is None else message
        validate_inputs.__signature__ = _signature([name] if name else [])
        return types.MethodType(validate_inputs, owner)

    @staticmethod
    def _plain(owner):
        names = list(widgets(owner))

        def validate_inputs(cls, **values):
            found = problems(owner, {k: v for k, v in values.items() if k in names}, None)
            return found[0][1] if found else True
        validate_inputs.__signature__ = _signature(names)
        return validate_inputs


# --------------------------------------------------------------------------- linked tensors

def check_finite(node: str, name: str, t: torch.Tensor, what: str) -> None:
    if t.is_floating_point() or t.is_complex():
        bad = ~torch.isfinite(t)
        count = int(bad.sum())
        if count:
            raise ValueError(f"{node}: {name}: {what} holds {count} NaN or infinite value"
                             f"{'s' if count != 1 else ''} (of {t.numel()}); it must hold finite numbers "
                             "(check the node that made it)")


def _shape(t) -> str:
    return str(tuple(t.shape)) if isinstance(t, torch.Tensor) else type(t).__name__


def latent_samples(node: str, name: str, latent: Any, ranks=(4, 5)) -> torch.Tensor:
    """LATENT → its samples tensor: a dict with a float "samples" tensor of rank `ranks` (None:
    any, the caller checks it against the model), not empty, finite."""
    if not isinstance(latent, dict) or not isinstance(latent.get("samples"), torch.Tensor):
        raise ValueError(f"{node}: {name}: expected a LATENT (a dict with a 'samples' tensor), got "
                         f"{type(latent).__name__}")
    samples = latent["samples"]
    if not samples.is_floating_point() or (ranks is not None and samples.ndim not in ranks):
        raise ValueError(f"{node}: {name}: expected a float latent of shape (batch, channels, height, width) "
                         f"or (batch, channels, frames, height, width), got a {samples.dtype} tensor of shape "
                         f"{_shape(samples)}")
    if samples.ndim == 0 or samples.shape[0] == 0:
        raise ValueError(f"{node}: {name}: the latent batch is empty (shape {_shape(samples)})")
    check_finite(node, name, samples, "the latent")
    return samples


def image_tensor(node: str, name: str, image: Any) -> torch.Tensor:
    """IMAGE (batch, height, width, channels) with 1, 3 or 4 channels (or one image without
    the batch axis), finite."""
    if not isinstance(image, torch.Tensor) or not image.is_floating_point() or image.ndim not in (3, 4) \
            or image.shape[-1] not in (1, 3, 4):
        raise ValueError(f"{node}: {name}: expected an IMAGE (batch, height, width, channels) with 1, 3 or 4 "
                         f"channels, got {_shape(image)}")
    if image.ndim == 4 and image.shape[0] == 0:
        raise ValueError(f"{node}: {name}: the image batch is empty (shape {_shape(image)})")
    check_finite(node, name, image, "the image")
    return image


def mask_tensor(node: str, name: str, mask: Any) -> Optional[torch.Tensor]:
    """MASK (height, width) or (batch, height, width), finite; None passes."""
    if mask is None:
        return None
    if not isinstance(mask, torch.Tensor) or not mask.is_floating_point() or mask.ndim not in (2, 3) \
            or mask.numel() == 0:
        raise ValueError(f"{node}: {name}: expected a MASK (height, width) or (batch, height, width), got "
                         f"{_shape(mask)}")
    check_finite(node, name, mask, "the mask")
    return mask


def conditioning(node: str, name: str, cond: Any) -> None:
    """CONDITIONING: a non-empty list of [embedding (batch, tokens, channels), options] with
    finite embeddings, pooled outputs and number options (other tensors in the options, such
    as attention masks, may hold -inf by design and are left to the model)."""
    if not isinstance(cond, (list, tuple)) or len(cond) == 0:
        raise ValueError(f"{node}: {name}: expected CONDITIONING (a list of [embedding, options] entries), got "
                         + ("an empty list" if isinstance(cond, (list, tuple)) else type(cond).__name__))
    for i, entry in enumerate(cond):
        if not (isinstance(entry, (list, tuple)) and len(entry) == 2 and isinstance(entry[1], dict)
                and isinstance(entry[0], torch.Tensor)):
            raise ValueError(f"{node}: {name}: entry {i + 1} is not an [embedding, options] pair")
        embedding, options = entry
        if not embedding.is_floating_point() or embedding.ndim != 3:
            raise ValueError(f"{node}: {name}: entry {i + 1}: the embedding must be a float tensor (batch, "
                             f"tokens, channels), got {embedding.dtype} {_shape(embedding)}")
        check_finite(node, name, embedding, f"the embedding of entry {i + 1}")
        pooled = options.get("pooled_output")
        if isinstance(pooled, torch.Tensor):
            check_finite(node, name, pooled, f"the pooled output of entry {i + 1}")
        for key, value in options.items():     # guidance, strength, percents, ...
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"{node}: {name}: entry {i + 1}: {key} is {value!r}; it must be a finite "
                                 "number (check the node that set it)")
