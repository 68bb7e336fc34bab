"""Test-session setup: offline Hugging Face, a temporary HF_HOME, and 8 fake CPU devices."""

import os
import tempfile
from collections.abc import Iterator

import pytest

# These must be set before jax, transformers or datasets are imported anywhere.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["HF_UPDATE_DOWNLOAD_COUNTS"] = "0"
os.environ["TRANSFORMERS_VERBOSITY"] = "error"
os.environ.setdefault("HF_HOME", tempfile.mkdtemp(prefix="jaxpet-hf-home-"))
os.environ.setdefault("JAX_PLATFORMS", "cpu")


@pytest.fixture(scope="module")
def fast_compile() -> Iterator[None]:
    """Train steps compile with FAST_CPU_COMPILE (half the CPU compile time, slower code) where
    the caller leaves compiler_options unset, as in train.py runs inside a test's process."""
    import jaxpet.engine.training

    original = jaxpet.engine.training.Trainer.__init__

    def init(self, *args, **kwargs):
        if kwargs.get("compiler_options") is None:
            kwargs["compiler_options"] = jaxpet.engine.training.FAST_CPU_COMPILE
        original(self, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(jaxpet.engine.training.Trainer, "__init__", init)
        yield
