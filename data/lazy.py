"""Lazy public names for a layer package (PEP 562), so that importing the package imports none of its modules."""
from __future__ import annotations

import importlib
import sys
from typing import Callable, Mapping, Sequence


def lazy_exports(package: str, exports: Mapping[str, Sequence[str]]) -> tuple[Callable[[str], object],
                                                                                Callable[[], list[str]]]:
    """The `__getattr__` and `__dir__` of `package`, given its public names by submodule: a name is imported from
    its submodule on first use and kept in the package, so torch or Ray load only for the names that need them."""
    namespace = vars(sys.modules[package])
    module_of = {name: module for module, names in exports.items() for name in names}

    def __getattr__(name: str) -> object:
        if name not in module_of:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{module_of[name]}"), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted({*namespace, *module_of})
    return __getattr__, __dir__
