"""Core-test setup: the repository root (for `import adjoint`) and this folder (for the
`oracles` helpers) on sys.path; one torch thread while a core test runs.

The core tests work on tiny tensors, where torch's intra-op thread pool only adds
synchronisation (and stalls badly when another process holds a core); the previous
thread count is restored after each test so other layers are unaffected.
"""
import pathlib
import sys

import pytest
import torch

_HERE = pathlib.Path(__file__).resolve().parent
# Appended, not prepended (as tests/conftest.py does): the repository root holds the pack's
# `nodes/` package, which must not shadow ComfyUI's top-level `nodes` in the in-process layer.
for _p in (str(_HERE.parents[1]), str(_HERE)):
    if _p not in sys.path:
        sys.path.append(_p)


@pytest.fixture(autouse=True)
def _single_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
