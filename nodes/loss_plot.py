"""Render an optimisation's loss history as an IMAGE (ComfyUI's B×H×W×3 float tensor).

Pillow only (ComfyUI installs it; matplotlib it does not). Log-scale y when the losses
span more than a factor of 20, the best iterate marked, the stop reason in the title.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

WIDTH, HEIGHT = 512, 320
MARGIN_L, MARGIN_R, MARGIN_T, MARGIN_B = 64, 16, 28, 36


def _ticks(lo, hi, log):
    if log:
        return [10.0 ** e for e in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1)
                if lo <= 10.0 ** e <= hi] or [lo, hi]
    return list(np.linspace(lo, hi, 5))


def render_loss_plot(losses: list[float], best_iteration: int = -1, title: str = "") -> torch.Tensor:
    img = Image.new("RGB", (WIDTH, HEIGHT), (24, 26, 32))
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    finite = [v for v in losses if v is not None and math.isfinite(v)]
    draw.text((MARGIN_L, 6), title or "loss per iteration", fill=(230, 230, 230), font=font)
    x0, x1, y0, y1 = MARGIN_L, WIDTH - MARGIN_R, MARGIN_T, HEIGHT - MARGIN_B
    draw.rectangle([x0, y0, x1, y1], outline=(90, 90, 100))
    if finite:
        lo, hi = min(finite), max(finite)
        log = lo > 0 and hi / lo > 20
        if hi == lo:
            lo, hi = lo - 0.5 * abs(lo or 1), hi + 0.5 * abs(hi or 1)
        f = (lambda v: math.log10(v)) if log else (lambda v: v)
        flo, fhi = f(lo), f(hi)
        n = max(len(losses) - 1, 1)

        def xy(i, v):
            return (x0 + (x1 - x0) * i / n, y1 - (y1 - y0) * (f(v) - flo) / (fhi - flo))

        for t in _ticks(lo, hi, log):
            _, ty = xy(0, t)
            draw.line([x0, ty, x0 + 4, ty], fill=(140, 140, 150))
            draw.text((4, ty - 6), f"{t:.3g}", fill=(170, 170, 180), font=font)
        points = [xy(i, v) for i, v in enumerate(losses) if v is not None and math.isfinite(v)]
        if len(points) > 1:
            draw.line(points, fill=(127, 209, 255), width=2)
        for p in points:
            draw.ellipse([p[0] - 2, p[1] - 2, p[0] + 2, p[1] + 2], fill=(127, 209, 255))
        if 0 <= best_iteration < len(losses) and math.isfinite(losses[best_iteration]):
            bx, by = xy(best_iteration, losses[best_iteration])
            draw.ellipse([bx - 5, by - 5, bx + 5, by + 5], outline=(255, 179, 107), width=2)
    draw.text((x0, y1 + 8), f"iteration (0 … {max(len(losses) - 1, 0)})", fill=(170, 170, 180), font=font)
    arr = np.asarray(img, dtype=np.float32) / 255.0
    return torch.from_numpy(arr)[None]
