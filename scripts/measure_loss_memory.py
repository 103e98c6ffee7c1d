"""Measure the extra memory of the inference-tensor workaround for the pixel losses' models.

    python3 scripts/measure_loss_memory.py [--latent 16] [--runs alias,clone]

ComfyUI's loaders create the VAE and CLIP-vision weights under torch.inference_mode(), and
autograd refuses to save inference tensors for backward. The pixel losses run the models
under `trainable_view` (nodes/inference_tensors.py), which swaps each weight for a normal
tensor aliasing the same storage; the alternative is to swap in clones. This script builds
full-size models with random weights, as the loaders leave them (an SD1.x VAE through
comfy.sd.VAE, a ViT-L/14 CLIP vision through comfy.clip_vision.ClipVisionModel), and in a
fresh process per case measures, on CPU, the resident memory (RSS, /proc/self/statm):

- entry: RSS growth from entering the view (alias vs clone) before any computation;
- peak: the highest RSS (sampled every millisecond) during one differentiable forward pass
  and the backward pass to the input, minus the RSS before the view.

Runs under the test host's venv (sets itself up like run_tests.py); takes a few minutes
on two CPU cores, most of it the CLIP ViT-L backward pass.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def worker(model: str, mode: str, latent: int) -> dict:
    import ctypes
    import gc
    import threading

    sys.path[:0] = [str(REPO / "tests"), str(REPO / "scripts" / "host")]
    from comfy_harness import load_comfy_in_process, pack_submodule
    load_comfy_in_process()
    import torch
    from torch.nn.utils.stateless import _reparametrize_module
    import comfy.clip_vision
    import comfy.sd
    from comfy.ldm.models.autoencoder import AutoencoderKL
    inf = pack_submodule("nodes.inference_tensors")
    pl = pack_submodule("nodes.pixel_losses")
    torch.manual_seed(0)

    if model == "vae":
        ddconfig = {"double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3, "out_ch": 3,
                    "ch": 128, "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": [], "dropout": 0.0}
        with torch.no_grad():
            build = AutoencoderKL(ddconfig=ddconfig, embed_dim=4)
            for p in build.parameters():
                p.normal_(0.0, 0.02)
            sd = {k: v.clone() for k, v in build.state_dict().items()}
        del build
        with torch.inference_mode():
            vae = comfy.sd.VAE(sd=sd)           # the VAELoader path: weights are inference tensors
        del sd
        module = vae.first_stage_model
        x = torch.randn(1, 4, latent, latent)

        def run(m, inp):
            return m.decode(inp)
    else:
        json_config = Path(comfy.clip_vision.__file__).with_name("clip_vision_config_vitl.json")
        with torch.inference_mode():
            cv = comfy.clip_vision.ClipVisionModel(str(json_config))
            for p in cv.model.parameters():
                p.normal_(0.0, 0.02)
        module = cv.model
        x = torch.rand(1, 3, 224, 224)

        def run(m, inp):
            with pl.out_of_place_residuals(m):
                return m(pixel_values=inp)[2]

    assert all(p.is_inference() for p in module.parameters())
    weights = sum(p.numel() * p.element_size() for p in module.parameters())
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    base = rss_bytes()
    peak = [base]
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], rss_bytes())
            stop.wait(0.001)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    with torch.inference_mode(False):
        if mode == "alias":
            view = inf.trainable_view(module)
        else:
            clones = {n: t.clone() for n, t in [*module.named_parameters(), *module.named_buffers()]
                      if t.is_inference()}
            view = _reparametrize_module(module, clones, tie_weights=True, strict=False)
        with view:
            entry = rss_bytes()
            xi = x.clone().requires_grad_(True)
            with torch.enable_grad():
                out = run(module, xi)
                (grad,) = torch.autograd.grad(out.float().square().mean(), xi)
            assert torch.isfinite(grad).all()
            del out, grad
        if mode == "clone":
            del clones
    stop.set()
    thread.join()
    return {"model": model, "mode": mode, "weights_mb": weights / 2**20,
            "entry_mb": (entry - base) / 2**20, "peak_mb": (peak[0] - base) / 2**20}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--latent", type=int, default=16, help="VAE latent size (16 → 128 px)")
    ap.add_argument("--runs", default="alias,clone")
    ap.add_argument("--models", default="vae,clip_vision")
    ap.add_argument("--worker", nargs=2, metavar=("MODEL", "MODE"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        print("RESULT " + json.dumps(worker(*args.worker, args.latent)))
        return 0
    sys.path.insert(0, str(REPO / "scripts" / "host"))
    import setup_host
    setup_host.main()
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    rows = []
    for model in args.models.split(","):
        for mode in args.runs.split(","):
            out = subprocess.run([str(setup_host.PY), __file__, "--worker", model, mode, "--latent", str(args.latent)],
                                 env=env, capture_output=True, text=True)
            line = next((l for l in out.stdout.splitlines() if l.startswith("RESULT ")), None)
            if line is None:
                print(out.stdout[-2000:], out.stderr[-4000:], file=sys.stderr)
                return 1
            rows.append(json.loads(line[7:]))
            r = rows[-1]
            print(f"{r['model']:12s} {r['mode']:6s} weights {r['weights_mb']:8.1f} MB   entering the view "
                  f"{r['entry_mb']:+8.1f} MB   peak during forward+backward {r['peak_mb']:+8.1f} MB", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
