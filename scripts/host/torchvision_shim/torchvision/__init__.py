"""Import shim for the *test host only*: no CPU torchvision exists for torch 2.13.

ComfyUI 0.3.75 imports torchvision at module level for Cosmos / Stable Cascade /
ACE code paths that the tests never run. This shim lets those imports succeed and
raises if any of the unimplemented parts are actually used. Never shipped in the pack.
"""
__version__ = "0.0.0+adjoint-guidance-test-shim"
from . import models, transforms  # noqa: F401
