"""Test-session setup: offline Hugging Face, a temporary HF_HOME, and 8 fake CPU devices."""

import os
import tempfile

# These must be set before jax, transformers or datasets are imported anywhere.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["HF_UPDATE_DOWNLOAD_COUNTS"] = "0"
os.environ["TRANSFORMERS_VERBOSITY"] = "error"
os.environ.setdefault("HF_HOME", tempfile.mkdtemp(prefix="jaxpet-hf-home-"))
os.environ.setdefault("JAX_PLATFORMS", "cpu")
