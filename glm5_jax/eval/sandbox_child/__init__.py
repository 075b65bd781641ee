"""Code that runs in the sandbox's helper processes (zygote, supervisor, init, runner).

Stdlib-only, and importable without ``glm5_jax/__init__.py``: the zygote is started with
stub parent packages (see ``zygote.BOOTSTRAP``) so no heavy host dependency is ever
loaded into a process that forks untrusted code. See ../SANDBOX.md for the design.
"""
