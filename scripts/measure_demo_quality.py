"""How good the toy-world demo model is, in numbers the README quotes.

    python3 scripts/measure_demo_quality.py [--n 200] [--json demo_model/quality.json] [--comfyui PATH]

Sets up the test host if it is missing (scripts/host/setup_host.py; it links the demo
model into .host/models) and re-runs itself under the host venv. Everything goes through
ComfyUI's own code, in this process: the stock UNETLoader / CLIPLoader (stable_diffusion)
/ VAELoader, CLIPTextEncode, the stock KSampler path (nodes.common_ksampler) and VAE
Decode / Encode. Then:

1. generation: n scenes drawn from the (colour, shape, background) triples the diffusion
   model never saw in training (toy_world.random_scene(held_out=True): plain backgrounds),
   one caption each, sampled in one batch with the settings in SETTINGS (20 steps; the
   negative prompt is the empty caption, which the model learnt for CFG), decoded, and read
   by the judge (demo_model/judge.py): the share whose shape colour, background colour and
   shape are the caption's;
2. the judge itself, on freshly rendered real scenes of a seed no training used;
3. the VAE: PSNR of encode + decode over freshly rendered held-out-triple scenes.

Prints a table, writes the numbers, the settings and the thresholds as JSON, and exits
1 when a number misses its threshold (2 when a model file is missing).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DEMO = REPO / "demo_model"
for _p in (HERE / "host", DEMO):
    if str(_p) not in sys.path:
        sys.path.append(str(_p))

UNET = "toyworld-unet.safetensors"          # UNETLoader (models/unet)
CLIP = "toyworld-clip-l.safetensors"        # CLIPLoader, type stable_diffusion (models/text_encoders)
VAE = "toyworld-taesd.safetensors"          # VAELoader (models/vae)
JUDGE = DEMO / "toyworld-judge.safetensors"

# The sampling every generated picture gets: ComfyUI's KSampler widgets.
SETTINGS = {"steps": 20, "sampler_name": "dpmpp_2m", "scheduler": "karras", "cfg": 5.0, "denoise": 1.0,
            "negative": "", "width": 64, "height": 64, "noise_seed": 1, "scene_seed": 9001}
# Seeds no training run uses (train.py: SEED, SEED + 1 judge training, SEED + 2 its own check).
JUDGE_SEED, JUDGE_N = 9002, 1000
VAE_SEED, VAE_N = 9003, 100
DEFAULT_N = 200

THRESHOLDS = {"judge_accuracy_min": 0.98, "colour": 0.90, "background": 0.90, "shape": 0.75,
              "vae_psnr_db": 28.0}
HEADS = ("colour", "background", "shape")


# ----------------------------------------------------------------------------- host

def comfy_nodes():
    """ComfyUI's own `nodes` module, imported in this process with --cpu (the stock loaders
    and KSampler live there). A process that already imported ComfyUI (the test suite's
    in-process layer) keeps its set-up."""
    if "comfy.cli_args" not in sys.modules:
        from comfy_server import COMFY, HOST
        sys.path.insert(0, str(COMFY))
        import comfy.cli_args
        comfy.cli_args.args.cpu = True
        comfy.cli_args.args.disable_auto_launch = True
        comfy.cli_args.args.use_pytorch_cross_attention = True   # as the test server runs it
        from utils.extra_config import load_extra_path_config
        load_extra_path_config(str(HOST / "extra_model_paths.yaml"))
    import nodes
    return nodes


def comfy_version() -> str:
    from comfy_server import COMFY
    import re
    m = re.search(r"""__version__\s*=\s*["']([^"']+)["']""", (COMFY / "comfyui_version.py").read_text())
    return m.group(1) if m else "unknown"


# ----------------------------------------------------------------------------- models

def load_models():
    """(MODEL, CLIP, VAE) through the stock loader nodes, as a workflow loads them."""
    nodes = comfy_nodes()
    (model,) = nodes.UNETLoader().load_unet(UNET, "default")
    (clip,) = nodes.CLIPLoader().load_clip(CLIP, "stable_diffusion")
    (vae,) = nodes.VAELoader().load_vae(VAE)
    return model, clip, vae


def load_judge():
    import judge
    return judge.load(JUDGE)


def encode(clip, texts):
    """CLIPTextEncode of each text, stacked into one CONDITIONING with a batch of len(texts)."""
    import torch
    nodes = comfy_nodes()
    cache, conds, pooled = {}, [], []
    for text in texts:
        if text not in cache:
            (c,) = nodes.CLIPTextEncode().encode(clip, text)
            cache[text] = (c[0][0], c[0][1].get("pooled_output"))
        conds.append(cache[text][0])
        pooled.append(cache[text][1])
    options = {}
    if all(p is not None for p in pooled):
        options["pooled_output"] = torch.cat(pooled)
    return [[torch.cat(conds), options]]


def sample(model, clip, vae, captions, seed=None, settings=None):
    """Pictures [B, H, W, 3] in 0..1 of the captions, one each: CLIPTextEncode, one batched
    stock KSampler run (nodes.common_ksampler), VAE Decode."""
    import torch
    nodes = comfy_nodes()
    s = {**SETTINGS, **(settings or {})}
    positive = encode(clip, captions)
    negative = encode(clip, [s["negative"]])
    latent = {"samples": torch.zeros(len(captions), 4, s["height"] // 8, s["width"] // 8)}
    (out,) = nodes.common_ksampler(model, s["noise_seed"] if seed is None else seed, s["steps"], s["cfg"],
                                   s["sampler_name"], s["scheduler"], positive, negative, latent,
                                   denoise=s["denoise"])
    (images,) = nodes.VAEDecode().decode(vae, out)
    return images.float().clamp(0, 1)


def judge_images(judge_model, images):
    """{head: class index per picture} for pictures [B, H, W, 3] in 0..1."""
    import judge
    return judge.predict(judge_model, images.permute(0, 3, 1, 2).contiguous())


# ----------------------------------------------------------------------------- measures

def held_out_scenes(n: int, seed: int = SETTINGS["scene_seed"]):
    import numpy as np
    import toy_world
    rng = np.random.RandomState(seed)
    return [toy_world.random_scene(rng, held_out=True) for _ in range(n)]


def generation_accuracy(model, clip, vae, judge_model, n: int, batch: int = 100, settings=None):
    """Judge accuracy per head on n generated pictures of held-out captions, and the misses."""
    import torch
    import toy_world
    scenes = held_out_scenes(n)
    preds = {h: [] for h in HEADS}
    s = {**SETTINGS, **(settings or {})}
    for i in range(0, n, batch):
        chunk = scenes[i:i + batch]
        # each chunk its own noise seed: a batch's noise comes from one generator
        images = sample(model, clip, vae, [sc.caption() for sc in chunk], seed=s["noise_seed"] + i, settings=settings)
        p = judge_images(judge_model, images)
        for h in HEADS:
            preds[h].append(p[h])
    preds = {h: torch.cat(v) for h, v in preds.items()}
    truth = torch.tensor([toy_world.labels(sc) for sc in scenes])
    acc = {h: (preds[h] == truth[:, k]).float().mean().item() for k, h in enumerate(HEADS)}
    names = {"colour": toy_world.COLOUR_NAMES, "background": toy_world.COLOUR_NAMES, "shape": toy_world.SHAPES}
    misses = []
    for i, sc in enumerate(scenes):
        wrong = {h: names[h][int(preds[h][i])] for k, h in enumerate(HEADS) if int(preds[h][i]) != int(truth[i, k])}
        if wrong:
            misses.append({"caption": sc.caption(), "judged": wrong})
    return acc, misses


def judge_accuracy(judge_model, seed: int = JUDGE_SEED, n: int = JUDGE_N):
    import judge
    return judge.accuracy_on_real(judge_model, seed=seed, n=n)


def vae_psnr(vae, seed: int = VAE_SEED, n: int = VAE_N) -> float:
    """PSNR (dB) of VAE Encode + VAE Decode over n rendered held-out-triple scenes (the mean
    squared error over every pixel of the set, as train.py reports it)."""
    import torch
    import toy_world
    nodes = comfy_nodes()
    _, images = toy_world.batch(seed, n, held_out=True)
    pixels = torch.from_numpy(images)
    (latent,) = nodes.VAEEncode().encode(vae, pixels)
    (decoded,) = nodes.VAEDecode().decode(vae, latent)
    mse = (decoded.float().clamp(0, 1) - pixels).pow(2).mean().item()
    return -10 * math.log10(max(mse, 1e-12))


def model_digests() -> dict:
    """SHA-256 (first 16 hex digits) of the files measured, so the numbers name their model."""
    import hashlib
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()[:16]
            for p in (DEMO / UNET, DEMO / VAE, JUDGE)}


def failures(results: dict) -> list[str]:
    t = THRESHOLDS
    out = []
    if min(results["judge_accuracy"].values()) < t["judge_accuracy_min"]:
        out.append(f"judge accuracy on real scenes {min(results['judge_accuracy'].values()):.1%} "
                   f"< {t['judge_accuracy_min']:.0%}")
    for h in HEADS:
        if results["generation"][h] < t[h]:
            out.append(f"generated {h} {results['generation'][h]:.1%} < {t[h]:.0%}")
    if results["vae_psnr_db"] < t["vae_psnr_db"]:
        out.append(f"VAE PSNR {results['vae_psnr_db']:.2f} dB < {t['vae_psnr_db']} dB")
    return out


def measure(n: int = DEFAULT_N, batch: int = 100, settings=None, log=print) -> dict:
    import torch
    t0 = time.time()
    model, clip, vae = load_models()
    judge_model = load_judge()
    log(f"models loaded ({time.time() - t0:.1f} s)")
    t1 = time.time()
    judge_acc = judge_accuracy(judge_model)
    psnr = vae_psnr(vae)
    log(f"judge and VAE measured ({time.time() - t1:.1f} s)")
    t2 = time.time()
    gen, misses = generation_accuracy(model, clip, vae, judge_model, n, batch=batch, settings=settings)
    log(f"{n} pictures generated and judged ({time.time() - t2:.1f} s)")
    results = {
        "generation": gen, "judge_accuracy": judge_acc, "vae_psnr_db": psnr,
        "settings": {**SETTINGS, **(settings or {}), "n": n, "batch": batch,
                     "scenes": "toy_world.random_scene(RandomState(scene_seed), held_out=True)",
                     "unet": UNET, "clip": CLIP, "vae": VAE, "judge": os.path.relpath(JUDGE, REPO)},
        "judge_real": {"seed": JUDGE_SEED, "n": JUDGE_N, "scenes": "plain backgrounds, every triple"},
        "vae_real": {"seed": VAE_SEED, "n": VAE_N, "scenes": "held-out triples"},
        "thresholds": THRESHOLDS,
        "misses": misses,
        "model_files": model_digests(),
        "comfyui": comfy_version(), "torch": torch.__version__, "threads": torch.get_num_threads(),
        "seconds": round(time.time() - t0, 1),
    }
    results["failures"] = failures(results)
    results["passed"] = not results["failures"]
    return results


def table(r: dict) -> str:
    t, s = r["thresholds"], r["settings"]
    rows = [("judge accuracy on real scenes (worst head)", f"{min(r['judge_accuracy'].values()):.1%}",
             f">= {t['judge_accuracy_min']:.0%}",
             ", ".join(f"{k} {v:.1%}" for k, v in r["judge_accuracy"].items()) + f" (n={r['judge_real']['n']})")]
    for h in HEADS:
        rows.append((f"generated: {h}", f"{r['generation'][h]:.1%}", f">= {t[h]:.0%}",
                     f"n={s['n']} held-out captions"))
    rows.append(("VAE reconstruction PSNR", f"{r['vae_psnr_db']:.2f} dB", f">= {t['vae_psnr_db']:g} dB",
                 f"n={r['vae_real']['n']} held-out scenes"))
    lines = ["| measure | value | threshold | on |", "|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    return "\n".join(lines)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=DEFAULT_N, help="generated pictures (default %(default)s)")
    ap.add_argument("--batch", type=int, default=100, help="pictures per KSampler run (default %(default)s)")
    ap.add_argument("--json", default=str(DEMO / "quality.json"), help="where to write the numbers ('' for nowhere)")
    ap.add_argument("--comfyui", help="a ComfyUI tree or .tar.gz to measure on (its own test host)")
    ap.add_argument("--cfg", type=float, help=f"override the CFG scale ({SETTINGS['cfg']})")
    ap.add_argument("--sampler", help=f"override the sampler ({SETTINGS['sampler_name']})")
    ap.add_argument("--scheduler", help=f"override the scheduler ({SETTINGS['scheduler']})")
    args = ap.parse_args(argv)
    import setup_host
    setup_host.run_under_host(__file__, argv, comfyui=args.comfyui)
    missing = [p for p in (DEMO / UNET, DEMO / VAE, JUDGE) if not p.exists()]
    if missing:
        print("measure_demo_quality: missing " + ", ".join(str(p) for p in missing)
              + " (train them: .host/venv/bin/python demo_model/train.py)", file=sys.stderr)
        return 2
    settings = {k: v for k, v in (("cfg", args.cfg), ("sampler_name", args.sampler),
                                  ("scheduler", args.scheduler)) if v is not None}
    comfy_nodes()
    import comfy.utils
    comfy.utils.PROGRESS_BAR_ENABLED = False     # no progress bars in the table's output
    r = measure(args.n, args.batch, settings, log=lambda m: print(f"[quality] {m}", flush=True))
    s = r["settings"]
    print(f"\nToy-world demo model on ComfyUI {r['comfyui']}: {s['steps']} steps, {s['sampler_name']} / "
          f"{s['scheduler']}, cfg {s['cfg']}, negative = empty caption ({r['seconds']} s, "
          f"{r['threads']} threads)\n")
    print(table(r))
    if args.json:
        Path(args.json).write_text(json.dumps(r, indent=1) + "\n")
        print(f"\nwrote {args.json}")
    if r["failures"]:
        print("\nFAIL: " + "; ".join(r["failures"]), file=sys.stderr)
        return 1
    print("\nall thresholds met")
    return 0


if __name__ == "__main__":
    sys.exit(main())
