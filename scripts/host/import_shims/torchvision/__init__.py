"""Import shim for the *test host only*: no CPU torchvision exists for torch 2.13.

ComfyUI 0.3.75 imports torchvision at module level for Cosmos / Stable Cascade / ACE
code paths; 0.33 also imports torchvision.ops (SAM3, BiRefNet), torchvision.models
(RAFT) and more transforms. The tests never run those paths. resize / normalize are
real (plain torch); anything else imports fine and raises HostShimError when used.
Never shipped in the pack.
"""
from _test_host_stubs import install_finder, package_getattr

__version__ = "0.0.0+adjoint-guidance-test-shim"
install_finder(("torchvision",))
from . import models, ops, transforms  # noqa: E402,F401

__getattr__ = package_getattr(__name__)
