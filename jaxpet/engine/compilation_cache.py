"""JAX's persistent compilation cache: where compiled programs are kept between runs."""

from __future__ import annotations

from pathlib import Path

import jax
from jax.experimental.compilation_cache import compilation_cache

# JAX caches only programs that took at least a second to compile by default; a few-shot run is
# mostly programs below that (small eval and MLM steps, every eager op), so a rerun would still
# spend its first minute compiling them. Caching all of them makes the second run of a config
# compile nothing; an entry costs a file write of the serialized executable.
MIN_COMPILE_SECONDS = 0.0


def enable_compilation_cache(path: str) -> None:
    """Points JAX's persistent compilation cache at `path` ("" leaves JAX's settings alone)."""
    if not path:
        return

    path = str(Path(path).expanduser())
    jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECONDS)
    if jax.config.jax_compilation_cache_dir != path:
        # the cache is set up at the first compile; start over so that the new folder is used
        compilation_cache.reset_cache()
        jax.config.update("jax_compilation_cache_dir", path)
