"""Import shim for the *test host only*: no CPU torchaudio exists for torch 2.13.

ComfyUI 0.33 imports torchaudio at module level (comfy/sd.py -> the LTX audio VAE,
audio encoders, comfy_extras/nodes_audio.py, ...). This package lets those imports
succeed; every function and class in it raises HostShimError when used, so an audio
code path fails loudly instead of silently. Never shipped in the pack.
"""
from _test_host_stubs import install_finder, package_getattr

__version__ = "0.0.0+adjoint-guidance-test-shim"
install_finder(("torchaudio",))
from . import functional, transforms  # noqa: E402,F401

__getattr__ = package_getattr(__name__)
