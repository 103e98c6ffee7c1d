"""The quality judge: a small CNN that reads a toy-world picture's shape colour,
background colour and shape. Trained on the generator's own pictures (train.py), it
judges what the demo model draws. Pure torch.

    model = load(path); colour, background, shape = predict(model, images)  # images [B, 3, H, W] in 0..1
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

import toy_world

HEADS = {"colour": len(toy_world.COLOUR_NAMES), "background": len(toy_world.COLOUR_NAMES),
         "shape": len(toy_world.SHAPES)}


class Judge(nn.Module):
    """Five 3x3 convolutions (three of them stride 2: 64 -> 8 px), mean- and max-pooled,
    one linear head per label. ~15 M multiply-adds per picture, so it trains in minutes."""

    def __init__(self, width: int = 16):
        super().__init__()
        w = width
        self.features = nn.Sequential(
            nn.Conv2d(3, w, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(w, 2 * w, 3, padding=1), nn.ReLU(),
            nn.Conv2d(2 * w, 2 * w, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(2 * w, 4 * w, 3, padding=1), nn.ReLU(),
            nn.Conv2d(4 * w, 4 * w, 3, stride=2, padding=1), nn.ReLU(),
        )
        self.heads = nn.ModuleList(nn.Linear(8 * w, n) for n in HEADS.values())

    def forward(self, x):
        """x [B, 3, H, W] in 0..1 (resized to 64 px): logits per head."""
        if x.shape[-1] != toy_world.SIZE or x.shape[-2] != toy_world.SIZE:
            x = F.interpolate(x, size=(toy_world.SIZE, toy_world.SIZE), mode="area")
        f = self.features(x * 2 - 1)
        pooled = torch.cat([f.mean(dim=(2, 3)), f.amax(dim=(2, 3))], dim=1)
        return [head(pooled) for head in self.heads]


def augment(x, generator):
    """What a generated picture may differ by: noise, a little blur, brightness."""
    b = x.shape[0]
    noise = torch.randn(x.shape, generator=generator) * 0.03
    gain = 1 + (torch.rand(b, 1, 1, 1, generator=generator) - 0.5) * 0.1
    blur = torch.rand(b, generator=generator) < 0.3
    y = x.clone()
    if blur.any():
        k = torch.tensor([1.0, 2.0, 1.0])
        k = (k[:, None] * k[None, :] / 16).expand(3, 1, 3, 3)
        y[blur] = F.conv2d(F.pad(x[blur], (1, 1, 1, 1), mode="replicate"), k, groups=3)
    return (y * gain + noise).clamp(0, 1)


def load(path) -> Judge:
    from safetensors.torch import load_file
    model = Judge()
    model.load_state_dict({k: v.float() for k, v in load_file(str(path)).items()})
    return model.eval()


@torch.no_grad()
def predict(model: Judge, images) -> dict[str, torch.Tensor]:
    """{head: class index per image} for images [B, 3, H, W] in 0..1."""
    return {name: logits.argmax(dim=1) for name, logits in zip(HEADS, model(images.float()))}


def names(prediction: dict[str, torch.Tensor], i: int) -> dict[str, str]:
    return {"colour": toy_world.COLOUR_NAMES[int(prediction["colour"][i])],
            "background": toy_world.COLOUR_NAMES[int(prediction["background"][i])],
            "shape": toy_world.SHAPES[int(prediction["shape"][i])]}


def accuracy_on_real(model: Judge, seed: int, n: int) -> dict[str, float]:
    """Accuracy per head on n freshly rendered plain-background scenes."""
    scenes, images = toy_world.batch(seed, n, held_out=None)
    x = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
    pred = predict(model, x)
    truth = torch.tensor([toy_world.labels(s) for s in scenes])
    return {name: (pred[name] == truth[:, i]).float().mean().item() for i, name in enumerate(HEADS)}
