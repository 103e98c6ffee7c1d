"""Shim: every torchaudio.functional name (resample, biquads, ...) raises when called."""
from _test_host_stubs import stub_getattr

__getattr__ = stub_getattr(__name__)
