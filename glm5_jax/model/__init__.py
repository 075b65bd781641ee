"""GLM-5 model definition (Flax Linen, functional)."""

from glm5_jax.model.transformer import GLM5Model
from glm5_jax.model.variables import abstract_variables, init_variables, logical_partition_specs

__all__ = ["GLM5Model", "abstract_variables", "init_variables", "logical_partition_specs"]
