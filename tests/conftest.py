"""Test-session setup: offline Hugging Face, a temporary HF_HOME, and 8 fake CPU devices."""

import os
import shutil
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

XLA_CACHE = pytest.StashKey[str]()


def pytest_configure(config: pytest.Config) -> None:
    """Programs compiled in this test process go to a persistent XLA cache of its own, a
    temporary folder (never ~/.cache): the many runs of the same tiny models (every PET member,
    every module's run of a shared workspace) compile each program once. Only this process uses
    it (JAX's setting, not the environment: no child process writes to it at the same time), and
    JAXPET_TEST_XLA_CACHE=0 turns it off. Runs whose config names a cache folder switch to that
    one (jaxpet's enable_compilation_cache); tests that count compilations opt out with the
    no_compilation_cache fixture."""
    if os.environ.get("JAXPET_TEST_XLA_CACHE", "1") == "0":
        return
    import jax

    config.stash[XLA_CACHE] = tempfile.mkdtemp(prefix="jaxpet-test-xla-")
    jax.config.update("jax_compilation_cache_dir", config.stash[XLA_CACHE])
    # JAX's default caches only programs that took a second to compile; the tiny models' take less
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def pytest_unconfigure(config: pytest.Config) -> None:
    if XLA_CACHE in config.stash:
        shutil.rmtree(config.stash[XLA_CACHE], ignore_errors=True)


@pytest.fixture
def no_compilation_cache() -> Iterator[None]:
    """No persistent XLA cache during the test: a program compiled again is compiled, not read
    back, so that a test counting compilations can see one. JAX's settings are put back after."""
    import jax
    from jax.experimental.compilation_cache import compilation_cache

    previous = jax.config.jax_compilation_cache_dir
    compilation_cache.reset_cache()
    jax.config.update("jax_compilation_cache_dir", None)
    yield
    compilation_cache.reset_cache()
    jax.config.update("jax_compilation_cache_dir", previous)


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
