"""Test-wide setup: 8 simulated CPU devices (must precede the first jax import) and fixtures."""

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
from child_env import TEST_COMPILE_FLAGS  # noqa: E402  (compile fast: see child_env.py)

os.environ["XLA_FLAGS"] = " ".join(
    [os.environ.get("XLA_FLAGS", ""), TEST_COMPILE_FLAGS, "--xla_force_host_platform_device_count=8"]).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

# Compiled programs are shared across test processes and modules through the persistent cache:
# every test that builds the same tiny model reuses one XLA compilation.
import jax  # noqa: E402

jax.config.update("jax_compilation_cache_dir", os.path.join(os.path.dirname(__file__), "..", ".jax_cache"))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
