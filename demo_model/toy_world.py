"""The toy world the demo model draws: one coloured shape on a plain or two-tone
background, 64x64 px, with a caption that says what is in the picture.

Pure numpy, no ComfyUI. Every scene comes from a seed, so the training set, the
classifier's set and the tests' held-out scenes are reproducible anywhere.

    scene = Scene("red", "circle", "blue")            # a red circle on a blue background
    image = render(scene)                              # float32 [64, 64, 3] in 0..1
    scene.caption()                                    # "a red circle on a blue background"
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np

SIZE = 64           # pixels per side of every picture
SUPERSAMPLE = 4     # render at 4x and box-average: smooth, anti-aliased edges

COLOURS = {
    "red": (220, 40, 40), "orange": (245, 140, 20), "yellow": (240, 220, 40),
    "green": (50, 170, 60), "blue": (40, 80, 220), "purple": (140, 60, 190),
    "white": (240, 240, 240), "black": (25, 25, 25),
}
COLOUR_NAMES = tuple(COLOURS)
SHAPES = ("circle", "square", "triangle", "star")
SIZES = {"small": 10.0, "large": 17.0}                    # shape radius in pixels
POSITIONS = {"centre": (32, 32), "top left": (19, 19), "top right": (45, 19),
             "bottom left": (19, 45), "bottom right": (45, 45)}
POSITION_WORDS = {"centre": "in the centre", "top left": "at the top left",
                  "top right": "at the top right", "bottom left": "at the bottom left",
                  "bottom right": "at the bottom right"}


@dataclasses.dataclass(frozen=True)
class Scene:
    colour: str                 # the shape's colour
    shape: str
    background: str             # plain background colour, or the top half of a two-tone one
    background2: str | None = None   # the bottom half of a two-tone background
    size: str = "large"
    position: str = "centre"
    say_size: bool = True       # whether the caption names the size ...
    say_position: bool = True   # ... and the position
    jitter: tuple = (0.0, 0.0, 0.0)   # dx, dy, dr in pixels
    tint: tuple = (0, 0, 0)           # small colour jitter, in 0..255 units

    def caption(self) -> str:
        size = f"{self.size} " if self.say_size else ""
        where = f" {POSITION_WORDS[self.position]}" if self.say_position else ""
        bg = self.background if self.background2 is None else f"{self.background} and {self.background2}"
        return f"{_article(size or self.colour)} {size}{self.colour} {self.shape}{where} on {_article(bg)} {bg} background"


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _polygon_mask(x, y, vertices):
    """Even-odd rule: True where (x, y) lies inside the closed polygon."""
    inside = np.zeros(x.shape, dtype=bool)
    n = len(vertices)
    for i in range(n):
        (x0, y0), (x1, y1) = vertices[i], vertices[(i + 1) % n]
        crosses = (y0 > y) != (y1 > y)
        with np.errstate(divide="ignore", invalid="ignore"):
            x_at = x0 + (y - y0) * (x1 - x0) / (y1 - y0)
        inside ^= crosses & (x < x_at)
    return inside


def shape_mask(shape: str, cx: float, cy: float, r: float, x, y):
    """Boolean mask of a shape of 'radius' r centred at (cx, cy), on pixel-centre grids x, y."""
    if shape == "circle":
        return (x - cx) ** 2 + (y - cy) ** 2 <= r * r
    if shape == "square":
        h = r * 0.85
        return (np.abs(x - cx) <= h) & (np.abs(y - cy) <= h)
    if shape == "triangle":
        # upright equilateral triangle whose centroid is the centre
        pts = [(cx + r * math.cos(a), cy - r * math.sin(a))
               for a in (math.pi / 2, math.pi / 2 + 2 * math.pi / 3, math.pi / 2 + 4 * math.pi / 3)]
        return _polygon_mask(x, y, pts)
    if shape == "star":
        pts = []
        for k in range(10):
            radius = r if k % 2 == 0 else r * 0.45
            a = math.pi / 2 + k * math.pi / 5
            pts.append((cx + radius * math.cos(a), cy - radius * math.sin(a)))
        return _polygon_mask(x, y, pts)
    raise ValueError(f"unknown shape {shape!r}; known: {', '.join(SHAPES)}")


def _grid():
    s = SIZE * SUPERSAMPLE
    c = (np.arange(s, dtype=np.float64) + 0.5) / SUPERSAMPLE
    return np.meshgrid(c, c)          # x varies along columns, y along rows


_X, _Y = _grid()


def _rgb(name: str, tint) -> np.ndarray:
    return np.clip(np.asarray(COLOURS[name], np.float64) + np.asarray(tint, np.float64), 0, 255) / 255.0


def render(scene: Scene) -> np.ndarray:
    """The scene as float32 [SIZE, SIZE, 3] in 0..1."""
    s = SIZE * SUPERSAMPLE
    img = np.empty((s, s, 3), np.float64)
    img[:] = _rgb(scene.background, scene.tint)
    if scene.background2 is not None:
        img[s // 2:] = _rgb(scene.background2, scene.tint)
    cx, cy = POSITIONS[scene.position]
    dx, dy, dr = scene.jitter
    mask = shape_mask(scene.shape, cx + dx, cy + dy, SIZES[scene.size] + dr, _X, _Y)
    img[mask] = _rgb(scene.colour, scene.tint)
    img = img.reshape(SIZE, SUPERSAMPLE, SIZE, SUPERSAMPLE, 3).mean(axis=(1, 3))
    return img.astype(np.float32)


# ---- which scenes train the model and which are held out for judging it -----------------

def held_out_triples() -> set[tuple[str, str, str]]:
    """(colour, shape, background) combinations the diffusion model never sees in training:
    every eighth of the plain-background triples, in a fixed order. Its quality is judged on them."""
    triples = [(c, s, b) for c in COLOUR_NAMES for s in SHAPES for b in COLOUR_NAMES if b != c]
    return {t for i, t in enumerate(triples) if i % 8 == 3}


def random_scene(rng: np.random.RandomState, *, held_out: bool | None = False,
                 two_tone: float = 0.15) -> Scene:
    """One random scene. held_out=False: never a held-out triple (training); True: only
    held-out triples, plain background (judging); None: anything, plain background."""
    hold = held_out_triples()
    while True:
        colour = COLOUR_NAMES[rng.randint(len(COLOUR_NAMES))]
        shape = SHAPES[rng.randint(len(SHAPES))]
        others = [c for c in COLOUR_NAMES if c != colour]
        background = others[rng.randint(len(others))]
        background2 = None
        if held_out is False and rng.rand() < two_tone:
            rest = [c for c in others if c != background]
            background2 = rest[rng.randint(len(rest))]
        triple_held = (colour, shape, background) in hold
        if background2 is None and ((held_out is True) != triple_held) and held_out is not None:
            continue
        break
    size = ("small", "large")[rng.randint(2)]
    position = tuple(POSITIONS)[rng.randint(len(POSITIONS))]
    say_size, say_position = bool(rng.rand() < 0.7), bool(rng.rand() < 0.6)
    if background2 is not None:     # two-tone captions name only colours and shape
        say_size = say_position = False
    jitter = (float(rng.uniform(-3, 3)), float(rng.uniform(-3, 3)), float(rng.uniform(-1.5, 1.5)))
    tint = tuple(int(v) for v in rng.randint(-8, 9, size=3))
    return Scene(colour, shape, background, background2, size, position, say_size, say_position, jitter, tint)


def labels(scene: Scene) -> tuple[int, int, int]:
    """Class indices the quality classifier predicts: (colour, background, shape)."""
    return COLOUR_NAMES.index(scene.colour), COLOUR_NAMES.index(scene.background), SHAPES.index(scene.shape)


def batch(seed: int, n: int, **kw) -> tuple[list[Scene], np.ndarray]:
    """n random scenes from one seed and their pictures, float32 [n, SIZE, SIZE, 3]."""
    rng = np.random.RandomState(seed)
    scenes = [random_scene(rng, **kw) for _ in range(n)]
    return scenes, np.stack([render(s) for s in scenes])
