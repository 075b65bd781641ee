"""Code that runs in the sandbox's helper processes (zygote, supervisor, init, runner).

Stdlib-only, and importable without ``glm5_jax/__init__.py``: the zygote is started with
stub parent packages (see ``zygote.BOOTSTRAP``) so no heavy host dependency is ever
loaded into a process that forks untrusted code. See ../SANDBOX.md for the design.

One module per process role (zygote, supervisor, init_process, runner, and step_watch,
the supervisor's event loop), per isolation concern (namespaces, filesystem,
process_hygiene, privileges, cgroups, reaping) and per wire format (framing, protocol).
"""
