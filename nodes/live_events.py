"""The Adjoint Sampler's live loss curve: one websocket event per optimisation iteration.

`LiveLoss` turns the optimiser's iteration callbacks into ``adjoint_guidance.iteration``
events, sent to the client that queued the prompt (as ComfyUI's own progress events), and
keeps the per-sample histories for the node's final ``ui`` (`ui_extra`). Payload:

    node, display_node, prompt_id      which node of which prompt (the frontend's ids)
    iteration, num_iterations          k (0-based) of K gradient iterations; the final,
                                       forward-only iterate is k = K (sent by `finish`)
    sample, num_samples                the sample being optimised (None: all at once), B
    loss                               the total over the samples at iteration k, as the
                                       ui's `losses` (a sample that stopped early keeps its
                                       last value; samples not started yet are left out)
    per_sample_loss                    [B] (None: that sample has not reached k yet; a
                                       sample that stopped keeps its last value)
    per_sample_best_iteration          [B] when the optimiser tells, else None
    parts                              {part name: total} of a Combine loss, else {}
    grad_norm, best_iteration, best_loss   as the optimiser reports them for this iteration
    seconds_per_iteration, eta_seconds
    final, stop_reason, status         true / the stop reason / its text on the event of the
                                       final iterate (false / null before)

It takes IterationInfo with or without per-sample fields: `per_sample_loss` holding every
sample (all optimised together) or one (one sample at a time, `sample` or the sampler's
current sample telling which). Non-finite numbers are sent as null (JSON has no NaN).
"""
from __future__ import annotations

import math
import time
from typing import Any, Callable, Optional

EVENT = "adjoint_guidance.iteration"


def finite(value) -> Optional[float]:
    """A plain float, or None for NaN / inf / missing."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def as_list(values) -> list:
    """A tensor, list or None as a list of plain floats (None for non-finite)."""
    if values is None:
        return []
    if hasattr(values, "detach"):
        values = values.detach().float().reshape(-1).cpu().tolist()
    return [finite(v) for v in values]


def prompt_server():
    try:
        from server import PromptServer
    except ImportError:
        return None
    return getattr(PromptServer, "instance", None)


def send_event(payload: dict) -> None:
    """Send one event to the client that queued the running prompt (no server: nothing)."""
    server = prompt_server()
    if server is not None:
        server.send_sync(EVENT, payload, getattr(server, "client_id", None))


def running_ids(unique_id) -> dict:
    """node / display_node / prompt_id of the node now running, as far as ComfyUI tells."""
    server = prompt_server()
    display = getattr(server, "last_node_id", None) if server is not None else None
    return {"node": None if unique_id is None else str(unique_id),
            "display_node": str(display) if display is not None else (None if unique_id is None else str(unique_id)),
            "prompt_id": getattr(server, "last_prompt_id", None) if server is not None else None}


def _held(history: list, k: int):
    """history[k], or its last entry when the sample stopped before k; None when empty."""
    return history[min(k, len(history) - 1)] if history else None


def _sum(values) -> Optional[float]:
    known = [v for v in values if v is not None]
    return sum(known) if known else None


class LiveLoss:
    """Per-run bookkeeping of the live loss curve (one per Adjoint Sampler execution)."""

    def __init__(self, ids: dict, num_samples: int, num_iterations: int, loss=None,
                 current_sample: Callable[[], int] = lambda: 0, send: Optional[Callable[[dict], Any]] = None,
                 clock: Callable[[], float] = time.monotonic):
        self.ids, self.num_samples, self.num_iterations = ids, num_samples, num_iterations
        self.record = getattr(loss, "parts_record", None)      # Combine losses (guidance_loss.py)
        self.current_sample, self.send, self.clock = current_sample, send or send_event, clock
        self.losses: list[list] = [[] for _ in range(num_samples)]          # per sample, per iteration
        self.parts: list[list] = [[] for _ in range(num_samples)]           # per sample: {name: value}
        self.read: dict[int, int] = {}          # evaluations of each sample's parts already read
        self.part_names: set[str] = set()
        self.started, self.first_at, self.calls = clock(), None, 0
        self.together = False                   # every sample in each callback

    # -- callbacks -------------------------------------------------------------------
    def on_iteration(self, info) -> dict:
        """The optimiser's iteration callback: record, send the event, return its payload."""
        k = int(info.iteration)
        rows = self._rows(info)
        for sample, value in rows:
            self._put(self.losses[sample], k, value)
            self._put(self.parts[sample], k, self._new_parts(sample))
        sample = None if self.together or not rows else rows[0][0]
        payload = self._payload(k, sample, info)
        self.send(payload)
        return payload

    def finish(self, result, stop_reason: str, status: Optional[str] = None) -> None:
        """After the run: the optimiser's own histories replace ours, then one event for each
        iterate no callback reported (the final forward-only one, a non-finite loss), the last
        one flagged final with the stop reason. Every iterate of `result.losses` gets exactly
        one event (an early stop ends on a reported iterate: its stop reason comes with the
        node's ui)."""
        reported = max((len(h) for h in self.losses), default=0)
        self._adopt(result)
        total = len(getattr(result, "losses", None) or [])
        if total > reported:     # the latest evaluation of each sample is its last iterate's
            for sample in range(self.num_samples):
                parts = self._new_parts(sample)
                if parts is not None:
                    self._put(self.parts[sample], max(len(self.losses[sample]) - 1, total - 1), parts)
        for k in range(reported, total):
            payload = self._payload(k, None, None, result=result)
            if k == total - 1:
                payload.update(final=True, stop_reason=stop_reason, status=status or stop_reason, eta_seconds=0.0)
            self.send(payload)

    # -- the node's ui -----------------------------------------------------------------
    def ui_extra(self, length: int) -> dict:
        """per_sample_losses [B][length], parts {name: [length]} (totals over the samples)."""
        return {"num_samples": self.num_samples,
                "per_sample_losses": [[h[k] if k < len(h) else None for k in range(length)]
                                      for h in self.losses],
                "parts": {n: [self._part_total(n, k) for k in range(length)] for n in sorted(self.part_names)}}

    # -- internals ---------------------------------------------------------------------
    def _rows(self, info) -> list[tuple[int, Optional[float]]]:
        """(sample, loss) pairs this callback reports."""
        per = as_list(getattr(info, "per_sample_loss", None))
        if self.num_samples > 1 and len(per) == self.num_samples:
            self.together = True
            active = getattr(info, "active", None)      # samples still optimising (None: all)
            active = [True] * len(per) if active is None else [bool(a) for a in active]
            return [(b, value) for b, value in enumerate(per) if active[b]]
        sample = getattr(info, "sample", None)
        if sample is None:
            sample = self.current_sample() if self.num_samples > 1 else 0
        return [(min(max(int(sample), 0), self.num_samples - 1), finite(info.loss))]

    @staticmethod
    def _put(history: list, k: int, value) -> None:
        """history[k] = value; a k at or below the end restarts the history there (a rerun)."""
        del history[k:]
        history.extend([None] * (k - len(history)))
        history.append(value)

    def _new_parts(self, sample: int) -> Optional[dict]:
        if self.record is None:
            return None
        count, parts = self.record.latest(sample)
        if count == self.read.get(sample, 0):
            return None
        self.read[sample] = count
        self.part_names.update(parts)
        return parts

    def _adopt(self, result) -> None:
        per_sample = getattr(result, "samples", None)
        if per_sample is not None and len(per_sample) == self.num_samples:
            self.losses = [as_list(getattr(r, "losses", [])) for r in per_sample]
        elif self.num_samples == 1 and getattr(result, "losses", None) is not None:
            self.losses = [as_list(result.losses)]
        elif getattr(result, "per_sample_losses", None) is not None:
            self.losses = [as_list(h) for h in result.per_sample_losses]

    def _part_total(self, name: str, k: int) -> Optional[float]:
        return _sum((_held(rows, k) or {}).get(name) for rows in self.parts if rows)

    def _timing(self, k: int, sample: Optional[int]) -> tuple[Optional[float], Optional[float]]:
        self.calls += 1
        now = self.clock()
        if self.first_at is None:
            self.first_at = now
        per = (now - self.first_at) / (self.calls - 1) if self.calls > 1 else now - self.started
        left = self.num_iterations - 1 - k
        if sample is not None:
            left += (self.num_samples - 1 - sample) * self.num_iterations
        return finite(per), finite(per * max(left, 0))

    def _payload(self, k: int, sample: Optional[int], info, result=None) -> dict:
        """The event for iterate k: from a callback's `info`, or after the run from `result`."""
        per_sample = [_held(h, k) for h in self.losses]      # a stopped sample keeps its last value
        seconds, eta = self._timing(k, sample) if info is not None else self._last_timing()
        total = _sum(per_sample) if result is None else finite(result.losses[k])
        source = info if info is not None else result
        return {
            **self.ids,
            "iteration": k, "num_iterations": self.num_iterations,
            "sample": sample, "num_samples": self.num_samples,
            "loss": total, "per_sample_loss": per_sample,
            "parts": {n: self._part_total(n, k) for n in sorted(self.part_names)},
            "grad_norm": finite(getattr(info, "grad_norm", None)),
            "per_sample_best_iteration": self._best_iterations(source),
            "best_iteration": int(getattr(source, "best_iteration", -1)),
            "best_loss": finite(getattr(info, "best_loss", None) if info is not None
                                else getattr(result, "loss", None)),
            "seconds_per_iteration": seconds, "eta_seconds": eta,
            "final": False, "stop_reason": None, "status": None,
        }

    def _best_iterations(self, source) -> Optional[list]:
        """Each sample's best iteration so far, when the optimiser tells (None otherwise)."""
        best = getattr(source, "per_sample_best_iteration", None)
        if best is None and getattr(source, "samples", None) is not None:
            best = [getattr(r, "best_iteration", -1) for r in source.samples]
        return None if best is None else [-1 if b is None else int(b) for b in as_list(best)]

    def _last_timing(self) -> tuple[Optional[float], Optional[float]]:
        if self.calls > 1:
            return finite((self.clock() - self.first_at) / (self.calls - 1)), 0.0
        return None, 0.0
