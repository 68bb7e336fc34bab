"""jaxpet: PET, iPET, multi-token verbalizers and T5 text-to-text few-shot learning in JAX."""

import importlib
from types import ModuleType

__version__ = "0.1.0"

# Submodules reachable as attributes (`import jaxpet; jaxpet.losses.cloze_loss`), imported on
# first use so that `import jaxpet` (the CLI's first line) does not load JAX and transformers.
__all__ = ["data", "decoding", "losses", "models", "predict", "prompts"]


def __getattr__(name: str) -> ModuleType:
    if name not in __all__:
        raise AttributeError(f"module 'jaxpet' has no attribute {name!r}")
    return importlib.import_module(f"jaxpet.{name}")


def __dir__() -> list[str]:
    return sorted([*__all__, "__version__"])
