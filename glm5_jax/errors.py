"""``UserError``: a mistake in what the user asked for (a config value, a mesh, an override,
a workdir), as opposed to a bug. Entry points print its message as one line and exit 2,
without a traceback (``glm5_jax.cli``); anything else keeps its traceback."""


class UserError(ValueError):
    """Raised for bad input; the message names the field and the allowed values."""
