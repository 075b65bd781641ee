"""The run spec: what every process of a job runs, shared by all launchers.

Launchers differ only in how they start processes (local subprocesses, ``gcloud ... ssh
--worker=all``, ``xpk workload create``, ``srun``). What each process runs is the same
everywhere: a command, its environment, a virtualenv or container image, the directory of
the checkout. So those flags are parsed once here (``add_spec_arguments`` /
``spec_from_args``, or both at once with ``parse_run_argv``) into a frozen ``RunSpec``, and
rendered once (``shell_command``) as the POSIX shell line that ssh, xpk and srun all
execute; each launcher adds only its own flags.

The command comes after ``--`` (``split_command``) so that it never goes through the
launcher's argparse and its own ``--flags`` stay untouched. Usage errors are ``SpecError``;
``exit_on_spec_error`` turns them into one ``error: ...`` line on stderr and exit status 2,
the convention of argparse's own usage errors.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import posixpath
import re
import shlex
import sys
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType

_ENV_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_NO_COMMAND = ("the launcher needs the command after `--`, e.g. "
               "`-- python -m glm5_jax.train --config=experiments/tiny.py --workdir=DIR`")


class SpecError(ValueError):
    """A launcher was asked for something it cannot do; the message names the flag."""


@dataclasses.dataclass(frozen=True)
class RunSpec:
    command: tuple[str, ...]  # what every process runs: ("python", "-m", "glm5_jax.train", ...)
    workdir: str  # run_info.json and launcher logs (may be gs://...)
    env: tuple[tuple[str, str], ...] = ()  # extra environment for every process, in order
    venv: str | None = None  # virtualenv to activate on the hosts before the command
    image: str | None = None  # or the container image to run the command in
    num_processes: int = 1  # processes in the job: hosts x processes per host
    devices_per_process: int | None = None  # simulated CPU devices (local), GPUs (slurm)
    code_dir: str | None = None  # the checkout on the hosts; None: where the process starts


def add_spec_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("run spec (the same for every launcher)")
    group.add_argument("--workdir", required=True,
                       help="Directory for run_info.json and launcher logs (may be gs://...).")
    group.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                       help="Extra environment for every process; repeatable, kept in order.")
    group.add_argument("--venv", help="Virtualenv to activate before the command (a path on "
                       "the hosts; best absolute).")
    group.add_argument("--image", help="Container image to run the command in (not with --venv).")
    group.add_argument("--num_processes", type=int, default=None,
                       help="Processes in the job, hosts x processes per host (default 1; "
                       "cluster launchers derive it from their own flags).")
    group.add_argument("--devices_per_process", type=int, default=None,
                       help="Simulated CPU devices per process (local), GPUs per process (slurm).")
    group.add_argument("--code_dir", help="Directory to cd into before the command: the checkout "
                       "on the hosts (default: the directory the process starts in).")


def split_command(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """(launcher args, command), split at the first ``--``."""
    argv = list(argv)
    if "--" not in argv:
        raise SpecError(_NO_COMMAND)
    split = argv.index("--")
    launcher_args, command = argv[:split], argv[split + 1:]
    if not command:
        raise SpecError(_NO_COMMAND)
    return launcher_args, command


def parse_run_argv(parser: argparse.ArgumentParser,
                   argv: Sequence[str]) -> tuple[argparse.Namespace, RunSpec]:
    """A launcher's argv (``[flags] -- command``) parsed by ``parser`` into its args and spec.

    ``--help`` before any ``--`` shows the launcher's help even without a command.
    """
    argv = list(argv)
    launcher_flags = argv[:argv.index("--")] if "--" in argv else argv
    if {"-h", "--help"} & set(launcher_flags):
        parser.parse_args(["--help"])
    launcher_args, command = split_command(argv)
    args = parser.parse_args(launcher_args)
    return args, spec_from_args(args, command)


def spec_from_args(args: argparse.Namespace, command: Sequence[str]) -> RunSpec:
    if not command:
        raise SpecError(_NO_COMMAND)
    if not args.workdir:
        raise SpecError("--workdir must be a non-empty path (local or gs://...)")
    num_processes = 1 if args.num_processes is None else args.num_processes
    if num_processes < 1:
        raise SpecError(f"--num_processes must be an integer >= 1, got {num_processes}")
    if args.devices_per_process is not None and args.devices_per_process < 1:
        raise SpecError(f"--devices_per_process must be an integer >= 1, "
                        f"got {args.devices_per_process}")
    if args.venv and args.image:
        raise SpecError("--venv and --image exclude each other: activate a virtualenv on the "
                        "hosts, or run inside a container image, not both")
    return RunSpec(command=tuple(command), workdir=args.workdir,
                   env=tuple(_parse_env(entry) for entry in args.env),
                   venv=args.venv, image=args.image, num_processes=num_processes,
                   devices_per_process=args.devices_per_process, code_dir=args.code_dir)


def _parse_env(entry: str) -> tuple[str, str]:
    key, equals, value = entry.partition("=")
    if not equals or not _ENV_KEY.fullmatch(key):
        raise SpecError(f"--env must be KEY=VALUE with KEY a shell variable name "
                        f"([A-Za-z_][A-Za-z0-9_]*), got {entry!r}")
    return key, value


def shell_command(spec: RunSpec, extra_env: Mapping[str, str] = MappingProxyType({})) -> str:
    """One POSIX shell line: cd code_dir && . venv/bin/activate && env K=V ... command.

    The virtualenv is activated with ``.``, not bash's ``source``, so the line also runs
    under /bin/sh (dash). ``extra_env`` is the launcher's per-job or per-process values; on
    a key both set, it wins over ``--env``.
    """
    steps = []
    if spec.code_dir:
        steps.append(f"cd {shlex.quote(spec.code_dir)}")
    if spec.venv:
        steps.append(f". {shlex.quote(posixpath.join(spec.venv, 'bin', 'activate'))}")
    env = dict(spec.env) | dict(extra_env)
    assignments = [f"{key}={value}" for key, value in env.items()]
    steps.append(shlex.join((["env", *assignments] if assignments else []) + list(spec.command)))
    return " && ".join(steps)


def exit_on_spec_error(main: Callable[..., int]) -> Callable[..., int]:
    """A SpecError in ``main`` prints ``error: <message>`` to stderr and exits with status 2."""

    @functools.wraps(main)
    def main_reporting_spec_errors(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except SpecError as error:
            print(f"error: {error}", file=sys.stderr)
            sys.exit(2)

    return main_reporting_spec_errors
