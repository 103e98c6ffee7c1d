"""The demo model's text encoder: CLIP-L's exact shape, random weights, bit-identical on
every machine.

The weights are not committed (246 MB): set-up generates them from numpy's legacy
RandomState stream, which numpy promises never to change, in float64, scales them and
rounds them to float16 (IEEE round-to-nearest-even, done by numpy's own software routine),
then checks a SHA-256 of the result. torch's generators make no such promise.

The scales keep each token's own embedding dominant over what the 12 random layers mix
in, so a caption's words stay readable in the output the UNet attends to.

    python3 demo_model/text_encoder.py OUT.safetensors   # writes it, or checks an existing one
"""
from __future__ import annotations

import hashlib
import math
import sys

import numpy as np

SEED = 20261202
WIDTH, LAYERS, VOCAB, CONTEXT, MLP = 768, 12, 49408, 77, 3072
# SHA-256 over every (name, float16 bytes) pair in TENSORS order; set-up refuses anything else.
SHA256 = "4e219b0aee141c61483887258f71f5e195fb04d4b3851c533a364a2d3888c2a2"


def tensors():
    """(name, shape, std) for every weight of a CLIP-L text encoder, in generation order.
    std 0 means the fixed value (1 for norm weights, 0 for biases)."""
    out = [("text_model.embeddings.token_embedding.weight", (VOCAB, WIDTH), 1.0),
           ("text_model.embeddings.position_embedding.weight", (CONTEXT, WIDTH), 0.5)]
    branch = 0.2   # each layer's branch output is ~0.2 of a unit-variance residual
    for i in range(LAYERS):
        p = f"text_model.encoder.layers.{i}."
        for n in ("q", "k", "v"):
            out += [(p + f"self_attn.{n}_proj.weight", (WIDTH, WIDTH), 1 / math.sqrt(WIDTH)),
                    (p + f"self_attn.{n}_proj.bias", (WIDTH,), 0.0)]
        out += [(p + "self_attn.out_proj.weight", (WIDTH, WIDTH), branch / math.sqrt(WIDTH)),
                (p + "self_attn.out_proj.bias", (WIDTH,), 0.0),
                (p + "layer_norm1.weight", (WIDTH,), 0.0), (p + "layer_norm1.bias", (WIDTH,), 0.0),
                (p + "layer_norm2.weight", (WIDTH,), 0.0), (p + "layer_norm2.bias", (WIDTH,), 0.0),
                (p + "mlp.fc1.weight", (MLP, WIDTH), 1 / math.sqrt(WIDTH)),
                (p + "mlp.fc1.bias", (MLP,), 0.0),
                (p + "mlp.fc2.weight", (WIDTH, MLP), branch / math.sqrt(MLP)),
                (p + "mlp.fc2.bias", (WIDTH,), 0.0)]
    out += [("text_model.final_layer_norm.weight", (WIDTH,), 0.0),
            ("text_model.final_layer_norm.bias", (WIDTH,), 0.0),
            ("text_projection.weight", (WIDTH, WIDTH), 1 / math.sqrt(WIDTH))]
    return out


def generate() -> dict[str, np.ndarray]:
    """{name: float16 array}, the same bits on every platform and numpy version."""
    rs = np.random.RandomState(SEED)
    weights = {}
    for name, shape, std in tensors():
        if std > 0:
            w = rs.standard_normal(size=shape) * std
        else:
            w = np.full(shape, 1.0 if name.endswith("norm1.weight") or name.endswith("norm2.weight")
                        or name.endswith("final_layer_norm.weight") else 0.0)
        weights[name] = np.ascontiguousarray(w.astype(np.float16))
    return weights


def digest(weights: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for name, _, _ in tensors():
        w = np.ascontiguousarray(weights[name], dtype=np.float16)
        h.update(name.encode())
        h.update(w.astype("<f2").tobytes())
    return h.hexdigest()


def read(path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file
    return load_file(str(path))


def ensure(path) -> str:
    """Write the encoder to path (or keep the file there if it is already right); its digest.
    Raises if the generated or stored weights do not match SHA256."""
    import os
    if os.path.exists(path):
        try:
            got = digest(read(path))
        except Exception:
            got = None
        if got == SHA256:
            return got
    weights = generate()
    got = digest(weights)
    if got != SHA256:
        raise RuntimeError(f"the demo text encoder generated here has SHA-256 {got}, expected {SHA256}: "
                           "this numpy's legacy RandomState stream or float16 rounding differs")
    from safetensors.numpy import save_file
    tmp = f"{path}.tmp"
    save_file(weights, tmp)
    os.replace(tmp, path)
    return got


if __name__ == "__main__":
    print(ensure(sys.argv[1]))
