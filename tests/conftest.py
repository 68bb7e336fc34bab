"""Test session: offline Hugging Face, a temporary HF_HOME, 8 fake CPU devices, quick compiles."""

import os
import shutil
import tempfile
from collections.abc import Iterator

import pytest

# These must be set before jax, transformers or datasets are imported anywhere.
# XLA's quick CPU compile (LLVM's cheap passes: about half the compile time, slower code) for
# every program of the session and of the train.py processes it starts, which inherit the
# environment: the tiny models' runs are mostly compiling, and every comparison of two runs
# (resumed and uninterrupted, parallel and sequential, a child's and the test's own) is then
# between programs compiled the same way.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8 "
                      "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true")
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
