"""Measure what our weight handling costs on each weight format (the README's table).

    python3 scripts/measure_weight_memory.py [--comfyui PATH]

For each format of the tiny SD1.5 UNet (make_tiny_models.build_weight_formats, loaded by the
stock UNETLoader under inference mode, as the server does), in a fresh process per format,
on CPU (RSS from /proc/self/statm, sampled every millisecond):

- weights: the bytes the loaded model stores;
- view entry: RSS growth from entering `trainable_view` (aliases, no copies);
- snapshots per step: the bytes the saved-constant guard copies in one forward-with-grad
  (weights that are not the model's own storage when used: per-call casts);
- gradient peak: the highest RSS during one exact noise gradient (4 steps, CFG, 8×8
  latent) minus the RSS before it.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FORMATS = {"fp32": ("tiny-sd15-fp32.safetensors", "default"),
           "fp16": ("tiny-sd15-fp16.safetensors", "default"),
           "bf16": ("tiny-sd15-bf16.safetensors", "default"),
           "fp8_e4m3fn": ("tiny-sd15-fp32.safetensors", "fp8_e4m3fn"),
           "fp8_e5m2": ("tiny-sd15-fp32.safetensors", "fp8_e5m2"),
           "scaled_fp8": ("tiny-sd15-scaled_fp8.safetensors", "default"),
           "mixed_fp8": ("tiny-sd15-mixed_fp8.safetensors", "default")}
MiB = 2.0 ** 20


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def worker(fmt: str) -> dict:
    import threading
    import time

    sys.path[:0] = [str(REPO / "tests"), str(REPO / "scripts" / "host")]
    from comfy_harness import load_comfy_in_process, pack_submodule
    nodes = load_comfy_in_process()
    import torch
    import comfy.samplers
    adjoint = pack_submodule("adjoint")
    gd = pack_submodule("nodes.guider_denoiser")
    inf = pack_submodule("nodes.inference_tensors")
    name, weight_dtype = FORMATS[fmt]
    with torch.inference_mode():
        (patcher,) = nodes.UNETLoader().load_unet(name, weight_dtype)
    net = patcher.model.diffusion_model
    stored = sum(x.numel() * x.element_size() for t in [*net.parameters(), *net.buffers()]
                 for x in inf.inner_tensors(t))
    g = torch.Generator().manual_seed(3)
    with torch.inference_mode():
        noise, latent = torch.randn(1, 4, 8, 8, generator=g), torch.zeros(1, 4, 8, 8)
        pos, neg = torch.randn(1, 77, 768, generator=g), torch.randn(1, 77, 768, generator=g)
        sigmas = comfy.samplers.calculate_sigmas(patcher.get_model_object("model_sampling"), "karras", 4)
    out = {}
    peak = {"rss": 0, "run": True}

    def sample_rss():
        while peak["run"]:
            peak["rss"] = max(peak["rss"], rss_bytes())
            time.sleep(0.001)

    class Probe(comfy.samplers.Sampler):
        def sample(self, model_wrap, sigmas, extra_args, callback, noise, latent_image=None,
                   denoise_mask=None, disable_pbar=False):
            before = rss_bytes()
            with inf.trainable_view(model_wrap.inner_model):
                out["view_entry"] = rss_bytes() - before
                den = gd.GuiderDenoiser(model_wrap, extra_args, noise, latent_image, None, scheduled=False)
                leaves = {k: inf.to_normal(v) for k, v in gd.entry_leaves(model_wrap.conds["positive"]).items()}
                snap0 = inf.GUARD.snapshot_bytes
                peak["rss"] = start = rss_bytes()
                thread = threading.Thread(target=sample_rss)
                thread.start()
                res = adjoint.gradient(den, inf.to_normal(noise) * float(sigmas[0]), inf.to_normal(sigmas),
                                       adjoint.ScheduledConditioning.constant(leaves),
                                       lambda x0: x0.square().mean(dim=(1, 2, 3)))
                peak["run"] = False
                thread.join()
                out["gradient_peak"] = peak["rss"] - start
                out["snapshots_per_step"] = (inf.GUARD.snapshot_bytes - snap0) / res.counts.forwards_with_grad
            return latent_image

    with torch.inference_mode():
        guider = comfy.samplers.CFGGuider(patcher)
        guider.set_conds([[pos, {}]], [[neg, {}]])
        guider.set_cfg(3.0)
        guider.sample(noise, latent, Probe(), sigmas, seed=0)
    return {"format": fmt, "weights": stored, **out}


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--comfyui", help="a ComfyUI tree or tarball (as run_tests.py --comfyui)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker)))
        return 0
    sys.path.insert(0, str(REPO / "scripts" / "host"))
    import setup_host
    setup_host.configure(comfyui=args.comfyui)
    setup_host.main()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ADJOINT_GUIDANCE_HOST": str(setup_host.HOST)}
    rows = []
    for fmt in FORMATS:
        done = subprocess.run([str(setup_host.PY), __file__, "--worker", fmt], env=env, cwd=REPO,
                              capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"{fmt}: worker failed:\n{done.stderr[-3000:]}")
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    print(f"| format | weights (MiB) | view entry (MiB) | snapshots per step (MiB) | gradient peak (MiB) |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['format']} | {r['weights'] / MiB:.1f} | {r['view_entry'] / MiB:.1f} | "
              f"{r['snapshots_per_step'] / MiB:.2f} | {r['gradient_peak'] / MiB:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
