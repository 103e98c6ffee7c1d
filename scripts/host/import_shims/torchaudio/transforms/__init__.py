"""Shim: every torchaudio.transforms class (MelSpectrogram, MelScale, ...) raises when built."""
from _test_host_stubs import stub_getattr

__getattr__ = stub_getattr(__name__)
