"""Import timm and segment-anything layer classes on a machine without torchvision.

Both packages import torchvision at package import time (datasets, transforms, FrozenBatchNorm2d)
but their LayerNorm2d / ConvNeXt classes never touch it, and torchvision has no CPU build to
install here. This finder answers ``import torchvision.*`` with placeholder modules whose
attributes are inert classes that raise if ever called: the layer classes under test are real.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
import types


class _Placeholder(type):
    def __getattr__(cls, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        return _Placeholder(name, (), {})

    def __call__(cls, *args, **kwargs):
        raise RuntimeError(f"torchvision is not installed: {cls.__name__} is a placeholder")


class _PlaceholderModule(types.ModuleType):
    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        return _Placeholder(name, (), {})


class _TorchvisionFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path, target=None):
        if fullname.split(".")[0] == "torchvision":
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec):
        module = _PlaceholderModule(spec.name)
        module.__path__ = []
        module.__version__ = "0.0.0+placeholder"
        return module

    def exec_module(self, module):
        pass


def install_torchvision_placeholder() -> None:
    if importlib.util.find_spec("torchvision") is None and not any(
        isinstance(f, _TorchvisionFinder) for f in sys.meta_path
    ):
        sys.meta_path.append(_TorchvisionFinder())
