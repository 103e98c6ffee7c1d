"""Shim: model constructors are not available on the test host."""


def __getattr__(name):
    def _unavailable(*args, **kwargs):
        raise NotImplementedError(f"torchvision.models.{name} is not available on the test host")
    return _unavailable
