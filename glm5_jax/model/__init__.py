"""GLM-5 model definition (Flax Linen, functional)."""

from glm5_jax.model.transformer import GLM5Model

__all__ = ["GLM5Model"]
