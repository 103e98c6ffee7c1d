"""Network-call accounting, so that cost claims can be checked by tests and shown to users.

Every call the core makes to the denoiser goes through one of two places (the forward
solver loop and `adjoints.DenoiserVJP`), and each bumps one of these counters:

- forwards: plain network forwards without a graph (sampling);
- forwards_with_grad: forwards that record an autograd graph (one per VJP);
- vjps: backward passes through one step's graph.

The exact discrete adjoint of an N-step sampler costs N + N forwards and N VJPs.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class CallCounts:
    forwards: int = 0
    forwards_with_grad: int = 0
    vjps: int = 0

    @property
    def total_forwards(self) -> int:
        return self.forwards + self.forwards_with_grad

    def __add__(self, other: "CallCounts") -> "CallCounts":
        return CallCounts(self.forwards + other.forwards,
                          self.forwards_with_grad + other.forwards_with_grad,
                          self.vjps + other.vjps)

    def copy(self) -> "CallCounts":
        return CallCounts(self.forwards, self.forwards_with_grad, self.vjps)
