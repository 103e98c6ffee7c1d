"""Shim: model constructors are not available on the test host (they raise when called);
submodules such as torchvision.models.optical_flow are stub modules."""
from _test_host_stubs import stub_getattr

__getattr__ = stub_getattr(__name__)
