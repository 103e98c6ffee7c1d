"""Stand-ins for the test host's import shims (torchvision, torchaudio): they import, and
raise a clear error when used. Test host only (put on sys.path by a .pth in the host
venv, scripts/host/setup_host.py); never part of the pack.

- `unavailable("torchvision.ops.roi_align")` is a class: importing it, subclassing it
  and reading it (or its attributes) at module level work; calling it (or instantiating a subclass) raises
  HostShimError.
- `stub_getattr(module_name)` is a module-level __getattr__ answering every public name
  with such a stand-in.
- `install_finder(("torchvision", "torchaudio"))` makes any submodule without a file
  here (torchvision.models.optical_flow, torchaudio.compliance.kaldi, ...) importable
  as a stub module, so a newer ComfyUI importing one more submodule still starts.
"""
from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys


class HostShimError(NotImplementedError):
    pass


def _fail(qualname: str):
    root = qualname.partition(".")[0]
    raise HostShimError(
        f"{qualname} is not available on the Adjoint Guidance test host: `{root}` there is an "
        f"import shim (scripts/host/import_shims; no CPU {root} build exists for torch 2.13), "
        "enough for ComfyUI to import, not to run this code path")


class _StandIn(type):
    """Metaclass of the stand-ins: `torchaudio.compliance.kaldi.fbank` read at import
    time is one more stand-in."""

    def __getattr__(cls, name):
        if name.startswith("_"):
            raise AttributeError(name)
        return unavailable(f"{cls.__module__}.{cls.__qualname__}.{name}")


def unavailable(qualname: str) -> type:
    name = qualname.rpartition(".")[2]

    def __new__(cls, *args, **kwargs):
        _fail(qualname)

    return _StandIn(name, (), {"__new__": __new__, "__module__": qualname.rpartition(".")[0],
                           "__qualname__": name, "__doc__": f"Test-host stand-in for {qualname}."})


def stub_getattr(module_name: str):
    def __getattr__(name: str):
        if name.startswith("_"):
            raise AttributeError(f"module {module_name!r} has no attribute {name!r}")
        return unavailable(f"{module_name}.{name}")
    return __getattr__


def package_getattr(module_name: str):
    """For a package: a missing attribute is first tried as a submodule (`import torchvision;
    torchvision.ops.nms`), which the finder always provides."""
    def __getattr__(name: str):
        if name.startswith("_"):
            raise AttributeError(f"module {module_name!r} has no attribute {name!r}")
        import importlib
        return importlib.import_module(f"{module_name}.{name}")
    return __getattr__


class _StubFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Last on sys.meta_path: only submodules that no real file provides reach it."""

    def __init__(self, roots):
        self.roots = set(roots)

    def find_spec(self, fullname, path=None, target=None):
        if fullname.partition(".")[0] in self.roots and "." in fullname:
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        module.__path__ = []
        module.__doc__ = f"Test-host stub module {module.__name__}: every name raises when used."
        # a name is a stand-in, not a submodule, so `from m import f` works
        module.__getattr__ = stub_getattr(module.__name__)


def install_finder(roots):
    for f in sys.meta_path:
        if isinstance(f, _StubFinder):
            f.roots.update(roots)
            return
    sys.meta_path.append(_StubFinder(roots))
