"""The demo model's sources that need no training: the toy world it draws and its
generated text encoder (demo_model/). The trained model itself is judged in
tests/inprocess/test_demo_quality.py and tests/server/test_demo_model_server.py."""
import sys
from pathlib import Path

import numpy as np
import pytest

DEMO = Path(__file__).resolve().parents[2] / "demo_model"
sys.path.insert(0, str(DEMO))

import text_encoder  # noqa: E402
import toy_world  # noqa: E402


def _pixel(img, x, y):
    return np.round(img[y, x] * 255).astype(int)


def test_render_puts_the_colours_where_the_caption_says():
    scene = toy_world.Scene("red", "circle", "blue", size="large", position="top left")
    img = toy_world.render(scene)
    assert img.shape == (64, 64, 3) and img.dtype == np.float32
    assert (_pixel(img, 19, 19) == toy_world.COLOURS["red"]).all()          # the shape's centre
    assert (_pixel(img, 60, 60) == toy_world.COLOURS["blue"]).all()         # far corner
    assert scene.caption() == "a large red circle at the top left on a blue background"


def test_two_tone_background_and_articles():
    scene = toy_world.Scene("orange", "star", "white", "black", size="small", position="centre",
                            say_size=False, say_position=False)
    img = toy_world.render(scene)
    assert (_pixel(img, 2, 2) == toy_world.COLOURS["white"]).all()
    assert (_pixel(img, 2, 61) == toy_world.COLOURS["black"]).all()
    assert scene.caption() == "an orange star on a white and black background"


@pytest.mark.parametrize("shape", toy_world.SHAPES)
def test_shapes_differ_in_area(shape):
    """Each shape covers its own share of its bounding circle (a wrong polygon would not)."""
    x, y = np.meshgrid(np.arange(400) + 0.5, np.arange(400) + 0.5)
    area = toy_world.shape_mask(shape, 200, 200, 150, x, y).mean() * 400 * 400 / (np.pi * 150 ** 2)
    expected = {"circle": 1.0, "square": (2 * 0.85) ** 2 / np.pi,
                "triangle": 3 * np.sqrt(3) / (4 * np.pi),
                "star": 5 * 0.45 * np.sin(np.pi / 5) / np.pi}[shape]   # 10 triangles of sides 1, 0.45
    assert area == pytest.approx(expected, rel=0.01)


def test_held_out_triples_never_train_and_only_judge():
    held = toy_world.held_out_triples()
    assert 20 <= len(held) <= 40
    rng = np.random.RandomState(0)
    train = [toy_world.random_scene(rng) for _ in range(3000)]
    assert not {(s.colour, s.shape, s.background) for s in train if s.background2 is None} & held
    assert any(s.background2 for s in train)
    rng = np.random.RandomState(1)
    judged = [toy_world.random_scene(rng, held_out=True) for _ in range(200)]
    assert all((s.colour, s.shape, s.background) in held and s.background2 is None for s in judged)


def test_text_encoder_has_clip_l_shape():
    shapes = {name: shape for name, shape, _ in text_encoder.tensors()}
    assert len(shapes) == 197
    # CLIP ViT-L/14's text model with its projection has 123,650,304 parameters
    assert sum(int(np.prod(s)) for s in shapes.values()) == 123_650_304
    assert shapes["text_model.embeddings.token_embedding.weight"] == (49408, 768)


def test_text_encoder_is_bit_identical_and_repaired(tmp_path):
    """Set-up's check: this machine's numpy regenerates exactly the recorded weights, and a
    damaged file is replaced, not trusted."""
    path = tmp_path / "te.safetensors"
    assert text_encoder.ensure(path) == text_encoder.SHA256
    weights = text_encoder.read(path)
    weights["text_model.final_layer_norm.weight"][0] = 2.0
    from safetensors.numpy import save_file
    save_file(weights, str(path))
    assert text_encoder.digest(text_encoder.read(path)) != text_encoder.SHA256
    assert text_encoder.ensure(path) == text_encoder.SHA256
    assert text_encoder.digest(text_encoder.read(path)) == text_encoder.SHA256
