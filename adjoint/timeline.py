"""When each keyframe of a scheduled conditioning is active, resolved per sampling step.

A `Timeline` is pure bookkeeping: it knows nothing about tensors. It says, for step
i of an N-step sampler, which keyframe (or which blend of two neighbouring keyframes)
conditions the network. The prompt parser produces it, the core sampler evaluates it,
and the ComfyUI nodes convert it to start/end percent for stock samplers.

Positions are either fractions of the sampling steps (``Position(0.3, "fraction")``,
also written 30 %) or absolute 0-based step indices (``Position(12, "step")``), the
A1111 convention: a keyframe at fraction f becomes active at step floor(f·N), one at
step k at step k (never, if k ≥ N). N = len(sigmas) − 1 is the number of sampling steps,
the final denoise to σ = 0 included; steps are numbered 0 … N − 1. The floor carries a tiny guard so that 0.29·100
resolves to 29 whatever the float rounding.
"""
from __future__ import annotations

import bisect
import functools
import math
import numbers
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

Unit = Literal["fraction", "step"]
Interpolation = Literal["hold", "linear", "slerp"]
INTERPOLATIONS = ("hold", "linear", "slerp")

# 0.29 * 100 == 28.999999999999996 in binary floating point; the guard makes it 29.
_FLOOR_GUARD = 1e-9


@dataclass(frozen=True)
class Position:
    value: float
    unit: Unit = "fraction"

    def __post_init__(self):
        if self.unit not in ("fraction", "step"):
            raise ValueError(f"Position: unit: unknown position unit {self.unit!r}; use 'fraction' or 'step'")
        if isinstance(self.value, bool) or not isinstance(self.value, numbers.Real) \
                or not math.isfinite(self.value):
            raise TypeError(f"Position: value: must be a finite real number, got {self.value!r}")
        if self.unit == "fraction" and not 0.0 <= self.value <= 1.0:
            raise ValueError(f"Position: value: fraction {self.value} is outside [0, 1]")
        if self.unit == "step" and (self.value < 0 or self.value != int(self.value)):
            raise ValueError(f"Position: value: step {self.value} is not a non-negative integer")

    def to_step(self, num_steps: int) -> int:
        """The first 0-based step index at which this position is reached (≤ num_steps)."""
        if self.unit == "step":
            return min(int(self.value), num_steps)
        return min(math.floor(self.value * num_steps + _FLOOR_GUARD), num_steps)

    def describe(self) -> str:
        return f"step {int(self.value)}" if self.unit == "step" else f"{self.value * 100:g}%"


@dataclass(frozen=True)
class Blend:
    """Conditioning at one step: (1 − weight)·keyframe[first] + weight·keyframe[second]."""
    first: int
    second: int
    weight: float

    @property
    def is_pure(self) -> bool:
        return self.first == self.second or self.weight == 0.0


@dataclass(frozen=True)
class Timeline:
    """Keyframe k is fully active from `starts[k]`; `starts[0]` must be the very start.

    hold: keyframe k is used on [start_k, start_{k+1}) and switches there.
    linear / slerp: the conditioning moves from keyframe k to k+1 across
    [start_k, start_{k+1}], reaching k+1 exactly at its start step. Repeat a prompt
    on two consecutive keyframes to hold it before a blend. `hard_after` lists the
    keyframes k whose transition to k + 1 is a hard switch whatever the interpolation
    (A1111 `[from:to:when]` edits are hard switches inside a blended schedule).
    """
    starts: tuple[Position, ...]
    interpolation: Interpolation = "hold"
    labels: tuple[str, ...] = field(default=())
    hard_after: frozenset[int] = field(default=frozenset())

    def __post_init__(self):
        # sequences become tuples (the dataclass is frozen and hashed: start steps are cached)
        if isinstance(self.starts, (Position, str, bytes)) or not isinstance(self.starts, Iterable):
            raise TypeError(f"Timeline: starts: must be a sequence of Position, got {type(self.starts).__name__}")
        object.__setattr__(self, "starts", tuple(self.starts))
        for k, p in enumerate(self.starts):
            if not isinstance(p, Position):
                raise TypeError(f"Timeline: starts: starts[{k}] must be a Position, got {type(p).__name__} {p!r}")
        if not self.starts:
            raise ValueError("Timeline: starts: a timeline needs at least one keyframe")
        if self.starts[0].to_step(1_000_000) != 0:
            raise ValueError("Timeline: starts: the first keyframe must start at 0")
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"Timeline: interpolation: must be one of {INTERPOLATIONS}, got {self.interpolation!r}")
        if isinstance(self.labels, (str, bytes)):
            raise TypeError("Timeline: labels: must be a sequence of strings, got a single string")
        object.__setattr__(self, "labels", tuple(self.labels))
        if self.labels and len(self.labels) != len(self.starts):
            raise ValueError(f"Timeline: labels: {len(self.labels)} labels for {len(self.starts)} starts")
        hard = frozenset(self.hard_after)
        for k in hard:
            if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k < len(self.starts):
                raise ValueError(f"Timeline: hard_after: {k!r} is not a keyframe index 0 … {len(self.starts) - 1} "
                                 "(keyframe k's transition to k + 1)")
        object.__setattr__(self, "hard_after", hard)

    @staticmethod
    def constant() -> "Timeline":
        return Timeline((Position(0.0),))

    @property
    def num_keyframes(self) -> int:
        return len(self.starts)

    def start_steps(self, num_steps: int) -> tuple[int, ...]:
        return _resolve_starts(self.starts, num_steps)

    def blend_at(self, step: int, num_steps: int) -> Blend:
        if not 0 <= step < num_steps:
            raise ValueError(f"step {step} outside 0..{num_steps - 1}")
        starts = self.start_steps(num_steps)
        # The last keyframe whose start has been reached is the active one.
        k = bisect.bisect_right(starts, step) - 1
        if self._is_hard(k) or k + 1 >= len(starts):
            return Blend(k, k, 0.0)
        span = starts[k + 1] - starts[k]
        return Blend(k, k + 1, (step - starts[k]) / span)

    def hard_switches(self, num_steps: int) -> frozenset[int]:
        """Steps whose conditioning jumps from the previous step's (multistep resets there)."""
        starts = self.start_steps(num_steps)
        return frozenset(s for k, s in enumerate(starts) if k > 0 and 0 < s < num_steps
                         and s != starts[k - 1] and self._is_hard(k - 1))

    def _is_hard(self, k: int) -> bool:
        return self.interpolation == "hold" or k in self.hard_after

    def segments(self, num_steps: int) -> list[dict]:
        """Maximal runs of steps with one pure keyframe or one blend, for UIs and stock samplers."""
        runs: list[dict] = []
        for i in range(num_steps):
            b = self.blend_at(i, num_steps)
            key = (b.first, b.first if b.is_pure else b.second)
            if runs and runs[-1]["keys"] == key and (b.is_pure or runs[-1]["kind"] == "blend"):
                runs[-1]["end_step"] = i + 1
                runs[-1]["weights"].append(b.weight)
            else:
                runs.append({"keys": key, "kind": "hold" if b.is_pure else "blend",
                             "start_step": i, "end_step": i + 1, "weights": [b.weight]})
        return runs


@functools.lru_cache(maxsize=256)
def _resolve_starts(starts: tuple[Position, ...], num_steps: int) -> tuple[int, ...]:
    """Start step of every keyframe at num_steps (cached: blend_at runs once per step)."""
    steps = tuple(p.to_step(num_steps) for p in starts)
    for k in range(1, len(steps)):
        if steps[k] < steps[k - 1]:
            raise ValueError(
                f"keyframe {k + 1} ({starts[k].describe()}) comes before keyframe {k} "
                f"({starts[k - 1].describe()}) at {num_steps} steps")
    return steps
