"""Lazy re-export of public names so that importing a package does not import every submodule."""

import importlib
from collections.abc import Callable
from typing import Any


def lazy_exports(package: str, names_to_modules: dict[str, str]) -> tuple[Callable, Callable]:
    """Returns (__getattr__, __dir__) for a package that exposes `names_to_modules` lazily."""

    def __getattr__(name: str) -> Any:
        if name not in names_to_modules:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module = importlib.import_module(f"{package}.{names_to_modules[name]}")
        return getattr(module, name)

    def __dir__() -> list[str]:
        return sorted(names_to_modules)

    return __getattr__, __dir__
