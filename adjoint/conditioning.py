"""Time-scheduled conditioning evaluated inside the autograd graph from keyframe leaves.

A keyframe is a Tensor or a dict[str, Tensor] (e.g. {"cross_attn": (B, T, C),
"pooled_output": (B, P)}); non-tensor dict values and non-floating tensors are passed
through unchanged and get no gradient. `ScheduledConditioning` pairs keyframes with a
`Timeline` and produces the conditioning of step i of an N-step sampler:

- "hold": keyframe k itself (a hard switch at the next keyframe's start step);
- "linear": (1 − w)·c_a + w·c_b;
- "slerp": spherical interpolation of every vector along the last dim (each token of
  cross_attn, each pooled vector), falling back to lerp for (anti-)parallel or zero
  vectors without NaN gradients.

The blend is recomputed every time it is needed from the leaf tensors handed in, so
autograd routes each step's vector–Jacobian product to the keyframes that were active
at that step (the blog post's theorem: each keyframe collects the increments of
exactly the steps at which it conditions the network).

`switch_steps` are the steps where the conditioning jumps: the multistep solver and the
multistep adjoint both restart their history there.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence, Union

import torch

from .checks import named
from .timeline import Blend, Timeline

Keyframe = Union[torch.Tensor, Mapping[str, Any]]

SLERP_PARALLEL_THRESHOLD = 0.9995


def lerp(a: torch.Tensor, b: torch.Tensor, weight: float) -> torch.Tensor:
    """(1 − w)·a + w·b."""
    return (1.0 - weight) * a + weight * b


def slerp(a: torch.Tensor, b: torch.Tensor, weight: float,
          parallel_threshold: float = SLERP_PARALLEL_THRESHOLD) -> torch.Tensor:
    """Spherical interpolation of the vectors along the last dim of a and b.

    With θ the angle between a and b: sin((1 − w)θ)/sin θ · a + sin(wθ)/sin θ · b.
    Where |cos θ| > parallel_threshold or a vector is zero, lerp is used instead. The
    slerp branch is evaluated on a safe cos θ there, so neither branch produces
    inf/NaN and `torch.where` passes finite gradients (the usual double-where trick).
    """
    norm_a = torch.linalg.vector_norm(a, dim=-1, keepdim=True)
    norm_b = torch.linalg.vector_norm(b, dim=-1, keepdim=True)
    denom = norm_a * norm_b
    nonzero = denom > 0
    cos = (a * b).sum(dim=-1, keepdim=True) / torch.where(nonzero, denom, torch.ones_like(denom))
    cos = cos.clamp(-1.0, 1.0)
    use_lerp = (cos.abs() > parallel_threshold) | ~nonzero
    safe_cos = torch.where(use_lerp, torch.zeros_like(cos), cos)   # θ = π/2 there: sin θ = 1
    theta = torch.arccos(safe_cos)
    sin_theta = torch.sin(theta)
    slerped = (torch.sin((1.0 - weight) * theta) / sin_theta) * a \
        + (torch.sin(weight * theta) / sin_theta) * b
    return torch.where(use_lerp, lerp(a, b, weight), slerped)


BLENDS = {"linear": lerp, "slerp": slerp}


def _is_leaf_tensor(v: Any) -> bool:
    return isinstance(v, torch.Tensor) and v.is_floating_point()


def _keys_of(kf: Keyframe, name: str = "keyframes") -> list[Optional[str]]:
    """Positions of the differentiable tensors of one keyframe (None for a bare tensor)."""
    if isinstance(kf, torch.Tensor):
        if not kf.is_floating_point():
            raise TypeError(f"{name}: a keyframe tensor must be floating point, got dtype {kf.dtype}")
        return [None]
    if isinstance(kf, Mapping):
        return [k for k, v in kf.items() if _is_leaf_tensor(v)]
    raise TypeError(f"{name}: a keyframe must be a Tensor or a dict of Tensors, got {type(kf).__name__}")


class ScheduledConditioning:
    """Keyframes plus a Timeline; evaluates the conditioning of any step from leaf tensors.

    `leaves()` lists the differentiable tensors (keyframe-major, dict order). `at(step,
    num_steps, leaves)` builds the conditioning of that step from the given leaves (the
    keyframes' own tensors when leaves is None), inside whatever autograd graph is being
    recorded.
    """

    def __init__(self, keyframes: Sequence[Keyframe], timeline: Optional[Timeline] = None):
        with named("ScheduledConditioning"):
            self._init(keyframes, timeline)

    def _init(self, keyframes, timeline):
        if isinstance(keyframes, (torch.Tensor, Mapping, str, bytes)):
            raise TypeError(f"keyframes: must be a list of keyframes (Tensors or dicts of Tensors), got a "
                            f"single {type(keyframes).__name__}; write [cond] for one keyframe")
        try:
            keyframes = list(keyframes)
        except TypeError:
            raise TypeError(f"keyframes: must be a list of keyframes, got {type(keyframes).__name__}") from None
        if not keyframes:
            raise ValueError("keyframes: at least one keyframe is needed")
        timeline = Timeline.constant() if timeline is None else timeline
        if not isinstance(timeline, Timeline):
            raise TypeError(f"timeline: must be a Timeline or None, got {type(timeline).__name__}")
        if timeline.num_keyframes != len(keyframes):
            raise ValueError(f"keyframes: {len(keyframes)} keyframes but the timeline has "
                             f"{timeline.num_keyframes}")
        self.keyframes = keyframes
        self.timeline = timeline
        self._keys = [_keys_of(kf, f"keyframes[{k}]") for k, kf in enumerate(keyframes)]
        if timeline.interpolation != "hold":
            self._check_blendable()

    @staticmethod
    def constant(cond: Keyframe) -> "ScheduledConditioning":
        return ScheduledConditioning([cond], Timeline.constant())

    @property
    def num_keyframes(self) -> int:
        return len(self.keyframes)

    def _check_blendable(self):
        ref_keys = self._keys[0]
        for k, kf in enumerate(self.keyframes):
            if self._keys[k] != ref_keys:
                raise ValueError(f"keyframes: keyframe {k} has tensors {self._keys[k]}, keyframe 0 has "
                                 f"{ref_keys}; blended keyframes need the same structure")
            for key in ref_keys:
                a = self._get(0, key)
                b = self._get(k, key)
                same = a.ndim == b.ndim and a.shape[1:] == b.shape[1:] and (
                    a.shape[:1] == b.shape[:1] or 1 in (a.shape[0], b.shape[0]))
                if not same:
                    name = "tensor" if key is None else repr(key)
                    raise ValueError(f"keyframes: {name} of keyframe {k} has shape {tuple(b.shape)}, "
                                     f"keyframe 0 has {tuple(a.shape)}; blended keyframes need equal "
                                     "shapes up to a batch of 1 (pad the token dimension first)")

    def _get(self, k: int, key: Optional[str]) -> torch.Tensor:
        kf = self.keyframes[k]
        return kf if key is None else kf[key]

    # ----- leaves -------------------------------------------------------------------
    def leaves(self) -> list[torch.Tensor]:
        return [self._get(k, key) for k in range(self.num_keyframes) for key in self._keys[k]]

    def leaf_names(self) -> list[str]:
        """A name for every leaf, for messages: "keyframe 1", "keyframe 0 'cross_attn'"."""
        return [self._leaf_name(k, key) for k in range(self.num_keyframes) for key in self._keys[k]]

    @staticmethod
    def _leaf_name(k: int, key: Optional[str]) -> str:
        return f"keyframe {k}" + ("" if key is None else f" {key!r}")

    def _leaf_index(self) -> list[list[int]]:
        out, n = [], 0
        for keys in self._keys:
            out.append(list(range(n, n + len(keys))))
            n += len(keys)
        return out

    def unflatten(self, flat: Sequence[Optional[torch.Tensor]]) -> list:
        """Per-keyframe structure (Tensor, or dict over the differentiable keys) of a flat list."""
        out = []
        for k, idx in enumerate(self._leaf_index()):
            if self._keys[k] == [None]:
                out.append(flat[idx[0]])
            else:
                out.append({key: flat[j] for key, j in zip(self._keys[k], idx)})
        return out

    def with_leaves(self, flat: Sequence[torch.Tensor]) -> "ScheduledConditioning":
        """The same schedule with its differentiable tensors replaced (e.g. optimised)."""
        new = []
        for k, idx in enumerate(self._leaf_index()):
            kf = self.keyframes[k]
            if isinstance(kf, torch.Tensor):
                new.append(flat[idx[0]])
            else:
                d = dict(kf)
                for key, j in zip(self._keys[k], idx):
                    d[key] = flat[j]
                new.append(d)
        return ScheduledConditioning(new, self.timeline)

    # ----- per-step evaluation ----------------------------------------------------------
    def blend(self, step: int, num_steps: int) -> Blend:
        return self.timeline.blend_at(step, num_steps)

    def switch_steps(self, num_steps: int) -> frozenset[int]:
        """Steps whose conditioning jumps from the previous step's.

        The timeline's hard switches, plus (for blending timelines) jumps over a keyframe
        that two keyframes with the same start step would cause.
        """
        switches = set(self.timeline.hard_switches(num_steps))
        if self.timeline.interpolation != "hold" and self.num_keyframes > 1:
            def position(b: Blend) -> float:
                return b.first + (b.second - b.first) * b.weight
            prev = position(self.blend(0, num_steps))
            for i in range(1, num_steps):
                cur = position(self.blend(i, num_steps))
                if cur - prev > 1.0 + 1e-12:
                    switches.add(i)
                prev = cur
        return frozenset(switches)

    def at(self, step: int, num_steps: int, leaves: Optional[Sequence[torch.Tensor]] = None):
        """Conditioning of step `step`, computed from `leaves` (default: the keyframes)."""
        b = self.blend(step, num_steps)
        if b.first == b.second or b.weight == 0.0:
            return self._keyframe(b.first, leaves)
        if b.weight == 1.0:
            return self._keyframe(b.second, leaves)
        mix = BLENDS[self.timeline.interpolation]
        ka, kb = self._keyframe(b.first, leaves), self._keyframe(b.second, leaves)
        if isinstance(ka, torch.Tensor):
            return mix(ka, kb, b.weight)
        out = dict(ka)   # non-differentiable entries come from the first keyframe
        for key in self._keys[b.first]:
            out[key] = mix(ka[key], kb[key], b.weight)
        return out

    def _keyframe(self, k: int, leaves: Optional[Sequence[torch.Tensor]]):
        if leaves is None:
            return self.keyframes[k]
        idx = self._leaf_index()[k]
        kf = self.keyframes[k]
        if isinstance(kf, torch.Tensor):
            return leaves[idx[0]]
        d = dict(kf)
        for key, j in zip(self._keys[k], idx):
            d[key] = leaves[j]
        return d

    # ----- validation -------------------------------------------------------------------
    def check_batch(self, batch: int, against: str = "x_init") -> None:
        """Every keyframe tensor with ≥ 2 dims must have batch 1 or the noise's batch.

        `against` names the noise argument in the message ("x_init", or optimize's "noise").
        """
        for k in range(self.num_keyframes):
            for key in self._keys[k]:
                t = self._get(k, key)
                if t.ndim >= 2 and t.shape[0] not in (1, batch):
                    raise ValueError(f"cond: {self._leaf_name(k, key)} has batch {t.shape[0]} (shape "
                                     f"{tuple(t.shape)}) but {against} has batch {batch}; "
                                     f"it must be 1 or {batch}")


def as_scheduled(cond) -> ScheduledConditioning:
    """A ScheduledConditioning as is; a plain Tensor/dict means constant conditioning."""
    if isinstance(cond, ScheduledConditioning):
        return cond
    if isinstance(cond, (torch.Tensor, Mapping)):
        _keys_of(cond, "cond")
        return ScheduledConditioning.constant(cond)
    raise TypeError(f"cond must be a Tensor, a dict of Tensors or a ScheduledConditioning, "
                    f"got {type(cond).__name__}")
