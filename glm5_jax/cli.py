"""What every entry point does around its ``main``: start the distributed runtime, parse
``--config.*`` overrides with errors a person can act on, and turn user errors into one line
on stderr and exit status 2 (no traceback).

``ml_collections`` reports ``--config.model_overrides.nmu_layers=4`` as a bare
``AttributeError: "'nmu_layers'"`` from deep inside flag parsing. ``run(main)`` parses the
flags itself; on failure it finds the first ``--config`` override whose key does not exist
and says which key, at which level, and the keys that do.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

from absl import app, flags

from glm5_jax.errors import UserError

EXIT_USAGE = 2


def fail(message: str) -> None:
    """One line on stderr, exit status 2."""
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(EXIT_USAGE)


def _config_path(argv: Sequence[str], flag: str) -> str | None:
    for i, arg in enumerate(argv):
        if arg.startswith(f"--{flag}="):
            return arg.split("=", 1)[1]
        if arg == f"--{flag}" and i + 1 < len(argv):
            return argv[i + 1]
    return None


def unknown_override(argv: Sequence[str], flag: str = "config") -> str | None:
    """A sentence naming the first ``--config.a.b=v`` whose key the config file lacks."""
    path = _config_path(argv, flag)
    if path is None:
        return None
    from glm5_jax.train.experiment import load_experiment

    try:
        config = load_experiment(path)
    except Exception:  # noqa: BLE001 - the file itself is the problem; absl reports that
        return None
    for arg in argv:
        if not arg.startswith(f"--{flag}."):
            continue
        keys = arg[len(flag) + 3:].split("=", 1)[0].split(".")
        node, seen = config, []
        for key in keys:
            if not hasattr(node, "keys") or key not in node.keys():
                where = ".".join(seen) or "the top level"
                valid = sorted(node.keys()) if hasattr(node, "keys") else []
                return (f"unknown config field {'.'.join(seen + [key])!r} in {arg}: {where} of "
                        f"{path} has no {key!r}; valid keys there: {valid}")
            node, seen = node[key], seen + [key]
    return None


def _parse_flags(argv: list[str]) -> list[str]:
    try:
        return flags.FLAGS(argv)
    except flags.Error as error:
        fail(f"{error} (see --help)")
    except (AttributeError, KeyError, TypeError, ValueError) as error:
        fail(unknown_override(argv) or f"bad --config override: {error}")
    return []


def run(main: Callable[[list[str]], None], *, distributed: bool = True) -> None:
    """``absl.app.run(main)`` with readable flag errors, the distributed runtime started
    before ``main`` looks at devices, and ``UserError`` -> one line, exit 2."""

    def guarded(argv: list[str]) -> None:
        try:
            if distributed:
                from glm5_jax import distributed as dist

                dist.initialize()
            main(argv)
        except UserError as error:
            fail(str(error))

    app.run(guarded, flags_parser=_parse_flags)


def run_argparse(main: Callable[[list[str]], int]) -> None:
    """Entry point of an argparse command: exit with ``main(argv)``'s status; a ``UserError``
    prints one line and exits 2, as ``run`` does for absl commands."""
    try:
        sys.exit(main(sys.argv[1:]))
    except UserError as error:
        fail(str(error))
