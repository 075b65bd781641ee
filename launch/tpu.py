"""Launch a run on Cloud TPU VMs: ``gcloud compute tpus tpu-vm ssh --worker=all`` or xpk.

    python launch/tpu.py --tpu_name=NAME --zone=ZONE [--project=P] [--dry_run] \\
        [--code_dir=glm5_jax --venv=.venv] [--env KEY=VALUE] --workdir=gs://b/runs/x \\
        -- python -m glm5_jax.train --config=experiments/tiny.py --workdir=gs://b/runs/x
    python launch/tpu.py --mode=xpk --xpk_cluster=C --tpu_type=v5p-256 [--num_slices=2] \\
        --zone=ZONE [--image=IMAGE] --workdir=gs://b/runs/x -- python -m glm5_jax.train ...

A TPU job is one process per TPU VM host, and JAX finds the pod's coordinator, process
count and rank from the TPU metadata, so this launcher only has to run the same shell line
(``spec.shell_command``) on every host; it sets no coordinator environment, and the slice,
not ``--num_processes``, decides how many processes there are.

``ssh`` mode runs on TPU VMs you created, with the checkout and its virtualenv already on
every host (a relative ``--code_dir`` starts from the login directory; paths are quoted, so
``~`` is not expanded). ``xpk`` mode submits a workload to a GKE cluster, in ``--image`` or
in the image xpk builds from the current directory.

Prints the command (copy-pasteable); without ``--dry_run`` also runs it and exits with its
status.
"""

from __future__ import annotations

import argparse
import os
import posixpath
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Sequence

if not __package__:  # run as `python launch/tpu.py`: make `launch` importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from launch.spec import (RunSpec, SpecError, add_spec_arguments, exit_on_spec_error,
                         parse_run_argv, shell_command)

# xpk's --workload validator (and GKE's JobSet names): [a-z]([-a-z0-9]*[a-z0-9])?, <= 40 chars.
_WORKLOAD_NAME_MAX = 40
_XPK_ONLY_FLAGS = ("xpk_cluster", "tpu_type", "num_slices")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="launch/tpu.py", usage="%(prog)s [flags] -- COMMAND...",
        description="Run one command on every host of a Cloud TPU slice (ssh) or via xpk.")
    parser.add_argument("--mode", choices=("ssh", "xpk"), default="ssh",
                        help="ssh: existing TPU VMs; xpk: a workload on a GKE cluster.")
    parser.add_argument("--tpu_name", help="TPU VM (slice) name; ssh mode.")
    parser.add_argument("--zone", required=True, help="GCE zone, e.g. us-east5-a.")
    parser.add_argument("--project", help="GCP project (default: gcloud's configured one).")
    parser.add_argument("--xpk_cluster", help="GKE cluster name; xpk mode.")
    parser.add_argument("--tpu_type", help="Slice type, e.g. v5p-256; xpk mode.")
    parser.add_argument("--num_slices", type=int, help="Slices (multislice over DCN); xpk "
                        "mode, default 1.")
    parser.add_argument("--dry_run", action="store_true", help="Only print the command.")
    add_spec_arguments(parser)
    return parser


def ssh_command(spec: RunSpec, tpu_name: str, zone: str, project: str | None) -> list[str]:
    return ["gcloud", "compute", "tpus", "tpu-vm", "ssh", tpu_name, f"--zone={zone}",
            *_project_flag(project), "--worker=all", f"--command={shell_command(spec)}"]


def xpk_command(spec: RunSpec, cluster: str, tpu_type: str, num_slices: int, zone: str,
                project: str | None) -> list[str]:
    image = [f"--docker-image={spec.image}"] if spec.image else []
    return ["xpk", "workload", "create", f"--cluster={cluster}",
            f"--workload={workload_name(spec.workdir)}", f"--tpu-type={tpu_type}",
            f"--num-slices={num_slices}", f"--zone={zone}", *_project_flag(project), *image,
            f"--command={shell_command(spec)}"]


def workload_name(workdir: str) -> str:
    """The workdir's basename as xpk accepts it: lowercase, digits, dashes; <= 40 chars."""
    name = re.sub(r"[^a-z0-9]+", "-", posixpath.basename(workdir.rstrip("/")).lower())
    name = name.strip("-")
    if not name[:1].isalpha():
        name = f"glm5-{name}".rstrip("-")
    return name[:_WORKLOAD_NAME_MAX].rstrip("-")


def printable(argv: Sequence[str]) -> str:
    """The argv as a shell line, quoting ``--flag=value`` as ``--flag='value'`` to read well."""
    words = []
    for arg in argv:
        flag, equals, value = arg.partition("=")
        plain_flag = flag.startswith("--") and shlex.quote(flag) == flag
        words.append(f"{flag}={shlex.quote(value)}" if equals and plain_flag
                     else shlex.quote(arg))
    return " ".join(words)


def _project_flag(project: str | None) -> list[str]:
    return [f"--project={project}"] if project else []


def _command_for(args: argparse.Namespace, spec: RunSpec) -> list[str]:
    if args.num_processes is not None or args.devices_per_process is not None:
        raise SpecError("--num_processes and --devices_per_process do not apply to Cloud TPU: "
                        "the slice runs one process per TPU VM host, each on all its chips")
    if args.mode == "ssh":
        given = [f"--{flag}" for flag in _XPK_ONLY_FLAGS if getattr(args, flag) is not None]
        if given:
            raise SpecError(f"{', '.join(given)} only apply to --mode=xpk")
        if not args.tpu_name:
            raise SpecError("--mode=ssh needs --tpu_name (the TPU VM to ssh into)")
        if spec.image:
            raise SpecError("--image needs --mode=xpk; --mode=ssh runs on the TPU VMs' own "
                            "Python (use --venv and --code_dir)")
        return ssh_command(spec, args.tpu_name, args.zone, args.project)
    if args.tpu_name:
        raise SpecError("--tpu_name only applies to --mode=ssh; xpk picks the slice from "
                        "--xpk_cluster and --tpu_type")
    if not args.xpk_cluster or not args.tpu_type:
        raise SpecError("--mode=xpk needs --xpk_cluster and --tpu_type (e.g. v5p-256)")
    num_slices = 1 if args.num_slices is None else args.num_slices
    if num_slices < 1:
        raise SpecError(f"--num_slices must be an integer >= 1, got {num_slices}")
    return xpk_command(spec, args.xpk_cluster, args.tpu_type, num_slices, args.zone,
                       args.project)


@exit_on_spec_error
def main(argv: Sequence[str] | None = None) -> int:
    args, spec = parse_run_argv(_parser(), sys.argv[1:] if argv is None else argv)
    cluster_command = _command_for(args, spec)
    print(printable(cluster_command), flush=True)
    if args.dry_run:
        return 0
    if shutil.which(cluster_command[0]) is None:
        raise SpecError(f"`{cluster_command[0]}` is not on PATH: install it, or pass --dry_run "
                        "to only print the command")
    returncode = subprocess.run(cluster_command, check=False).returncode
    return returncode if returncode >= 0 else 128 - returncode  # killed by signal N: 128 + N


if __name__ == "__main__":
    sys.exit(main())
