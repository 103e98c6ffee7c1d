"""Test-side access to the real ComfyUI of the test host, built by setup_host.py: .host/
(ComfyUI 0.3.75) or, with `run_tests.py --comfyui PATH`, .host-<version>/; the folder
comes from $ADJOINT_GUIDANCE_HOST (set by run_tests.py) through comfy_server.

`comfy_version()` is the host's ComfyUI version as a tuple, e.g. (0, 33, 0); tests whose
feature exists on one version only skip with a reason (conftest's `comfyui` marker or
the `comfy_version` fixture).

Two ways in, one per test layer:
- `load_comfy_in_process()`: import ComfyUI in this process with --cpu and load the
  custom nodes (our pack included) exactly as main.py does; nodes are then called directly.
- `ComfyServer` (scripts/host/comfy_server.py): a real main.py over HTTP.
"""
from __future__ import annotations

import asyncio
import functools
import json
import os
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts" / "host"))

from comfy_server import COMFY, HOST, PY, ComfyServer, PromptFailed  # noqa: E402,F401  (re-exported)

MODELS = HOST / "models"
_loaded = None


@functools.lru_cache(maxsize=None)
def comfy_version_string() -> str:
    """The host's ComfyUI version as written in its comfyui_version.py (no ComfyUI import)."""
    path = COMFY / "comfyui_version.py"
    if not path.exists():
        raise RuntimeError(f"test host missing ({path}): run `python3 scripts/host/setup_host.py`")
    m = re.search(r"""__version__\s*=\s*["']([^"']+)["']""", path.read_text())
    if not m:
        raise RuntimeError(f"no __version__ in {path}")
    return m.group(1)


def comfy_version() -> tuple[int, ...]:
    """The host's ComfyUI version, e.g. (0, 3, 75) or (0, 33, 0); compare with tuples."""
    return parse_version(comfy_version_string())


def parse_version(version: str) -> tuple[int, ...]:
    """'0.33' -> (0, 33), '0.3.75' -> (0, 3, 75); tuples compare as versions do."""
    return tuple(int(p) for p in re.findall(r"\d+", str(version))[:3])


def host_info() -> dict:
    """What setup_host.py recorded: comfyui_version, source (None: PyPI), lock."""
    record = HOST / "host.json"
    return json.loads(record.read_text()) if record.exists() else {}


def host_ready() -> bool:
    return PY.exists() and (COMFY / "main.py").exists() and (HOST / ".stamp-models").exists()


def load_comfy_in_process():
    """Import ComfyUI (CPU) and every custom node once per process; returns ComfyUI's `nodes`."""
    global _loaded
    if _loaded is not None:
        return _loaded
    if not host_ready():
        raise RuntimeError("test host missing: run `python3 scripts/host/setup_host.py`")
    # ComfyUI's top-level modules (nodes, utils, ...) must win over anything of ours.
    sys.path.insert(0, str(COMFY))
    import comfy.cli_args
    comfy.cli_args.args.cpu = True  # before anything imports comfy.model_management
    comfy.cli_args.args.disable_auto_launch = True
    comfy.cli_args.args.use_pytorch_cross_attention = True  # as the server layer runs it
    from utils.extra_config import load_extra_path_config
    load_extra_path_config(str(HOST / "extra_model_paths.yaml"))
    import nodes
    asyncio.run(nodes.init_extra_nodes(init_custom_nodes=True, init_api_nodes=False))
    _loaded = nodes
    return nodes


_pack = None


def pack_module():
    """Our pack as ComfyUI imported it (so isinstance checks see the same classes). Found once
    per process: the search resolves the path of every imported module (~0.25 s)."""
    global _pack
    if _pack is not None:
        return _pack
    nodes = load_comfy_in_process()
    pack_dir = os.path.realpath(nodes.LOADED_MODULE_DIRS["adjoint_guidance"])
    for mod in list(sys.modules.values()):
        f = getattr(mod, "__file__", None)
        if f and os.path.realpath(f) == os.path.join(pack_dir, "__init__.py"):
            _pack = mod
            return mod
    raise RuntimeError("the adjoint_guidance pack was not imported by ComfyUI")


def pack_submodule(name: str):
    """e.g. pack_submodule('adjoint.timeline') from the ComfyUI-loaded pack."""
    import importlib
    return importlib.import_module(f"{pack_module().__name__}.{name}")


def tiny_unet32_patcher():
    """The ~32-channel SD1.5-style UNet as a ModelPatcher, built directly (no loader)."""
    import json

    import comfy.model_management
    import comfy.model_patcher
    import comfy.supported_models
    import comfy.utils
    import torch
    config = json.loads((MODELS / "tiny" / "unet32.json").read_text())
    model_config = comfy.supported_models.SD15(config)
    model_config.set_inference_dtype(torch.float32, None)
    model = model_config.get_model({})
    sd = comfy.utils.load_torch_file(str(MODELS / "tiny" / "unet32.safetensors"))
    model.diffusion_model.load_state_dict(sd)
    return comfy.model_patcher.ModelPatcher(model, comfy.model_management.get_torch_device(),
                                            comfy.model_management.unet_offload_device())
