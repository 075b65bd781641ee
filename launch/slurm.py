"""Launch a run on a SLURM GPU cluster: write an sbatch script, then submit it.

    python launch/slurm.py --nodes=2 --gpus_per_node=8 [--partition=P] [--account=A] \\
        [--time=HH:MM:SS] [--job_name=NAME] [--cpus_per_task=8] [--dry_run] \\
        [--code_dir=/shared/glm5_jax --venv=.venv | --image=IMAGE] [--env KEY=VALUE] \\
        --workdir=/shared/runs/x -- python -m glm5_jax.train --config=... --workdir=/shared/runs/x

The job is one process per GPU (``--ntasks-per-node`` = ``--gpus_per_node``): that is what
``jax.distributed.initialize()`` assumes on SLURM, where it reads the coordinator, process
count and rank from ``SLURM_*`` and gives each process the GPU of its ``SLURM_LOCALID``. So
the script sets no coordinator environment; its body is one ``srun`` of the spec's shell line
(``spec.shell_command``), inside the image through pyxis' ``--container-image`` when
``--image`` is given (pyxis takes enroot's form, ``nvcr.io#nvidia/jax:25.04``; it mounts
only what the cluster's enroot config says, so the checkout should be in the image or on a
mounted path).

The script is written to ``<workdir>/launch/slurm_job.sh`` and the job's output to
``<workdir>/launch/%x-%j.out``; a gs:// workdir, which SLURM cannot write, puts both under
``./slurm_scripts/<job_name>/`` instead. Prints the script and the ``sbatch`` command;
without ``--dry_run`` also submits it and exits with sbatch's status (sbatch prints the
job id line).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import posixpath
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Sequence

if not __package__:  # run as `python launch/slurm.py`: make `launch` importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from launch.spec import (RunSpec, SpecError, add_spec_arguments, exit_on_spec_error,
                         parse_run_argv, shell_command)

SCRIPT_NAME = "slurm_job.sh"


@dataclasses.dataclass(frozen=True)
class SlurmJob:
    """What the #SBATCH lines ask for; None means the cluster's default."""

    nodes: int
    gpus_per_node: int
    cpus_per_task: int
    job_name: str
    output: str
    time: str | None = None
    partition: str | None = None
    account: str | None = None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="launch/slurm.py", usage="%(prog)s [flags] -- COMMAND...",
        description="Write and submit an sbatch script: one process per GPU on every node.")
    parser.add_argument("--nodes", type=int, required=True, help="Nodes in the job.")
    parser.add_argument("--gpus_per_node", type=int, required=True,
                        help="GPUs per node; also the processes per node.")
    parser.add_argument("--cpus_per_task", type=int, default=8,
                        help="CPU cores per process, for input pipelines (default 8).")
    parser.add_argument("--partition", help="SLURM partition (default: the cluster's).")
    parser.add_argument("--account", help="SLURM account to charge (default: yours).")
    parser.add_argument("--time", help="Time limit, e.g. 24:00:00 (default: the partition's).")
    parser.add_argument("--job_name", help="Job name (default: the workdir's basename).")
    parser.add_argument("--dry_run", action="store_true",
                        help="Write and print the script, but do not submit it.")
    add_spec_arguments(parser)
    return parser


def default_job_name(workdir: str) -> str:
    """The workdir's basename with anything but letters, digits, '.', '_', '-' made '-'."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", posixpath.basename(workdir.rstrip("/"))).strip("-")
    return name or "glm5"


def launch_dir(workdir: str, job_name: str) -> str:
    """Where the script and the job's output go: <workdir>/launch, or local for gs://."""
    if workdir.startswith("gs://"):
        return os.path.abspath(os.path.join("slurm_scripts", job_name))
    return os.path.abspath(os.path.join(workdir, "launch"))


def srun_line(spec: RunSpec) -> str:
    container = [f"--container-image={spec.image}"] if spec.image else []
    return shlex.join(["srun", *container, "bash", "-c", shell_command(spec)])


def sbatch_script(spec: RunSpec, job: SlurmJob) -> str:
    directives = {
        "job-name": job.job_name, "nodes": job.nodes, "ntasks-per-node": job.gpus_per_node,
        "gpus-per-node": job.gpus_per_node, "cpus-per-task": job.cpus_per_task,
        "output": job.output, "time": job.time, "partition": job.partition,
        "account": job.account,
    }
    lines = ["#!/bin/bash"]
    lines += [f"#SBATCH --{key}={value}" for key, value in directives.items() if value is not None]
    lines += ["",
              "# One process per GPU; jax.distributed.initialize() reads SLURM_* for the",
              "# coordinator, the process count and this process's rank and GPU.",
              srun_line(spec)]
    return "\n".join(lines) + "\n"


def _job_from_args(args: argparse.Namespace, spec: RunSpec) -> SlurmJob:
    for flag in ("nodes", "gpus_per_node", "cpus_per_task"):
        if getattr(args, flag) < 1:
            raise SpecError(f"--{flag} must be an integer >= 1, got {getattr(args, flag)}")
    num_processes = args.nodes * args.gpus_per_node
    if args.num_processes is not None and args.num_processes != num_processes:
        raise SpecError(f"--num_processes={args.num_processes} disagrees with --nodes x "
                        f"--gpus_per_node = {num_processes} (one process per GPU); leave it out")
    if args.devices_per_process not in (None, 1):
        raise SpecError(f"--devices_per_process must be 1 on SLURM (one process per GPU, as "
                        f"jax.distributed expects there), got {args.devices_per_process}")
    job_name = args.job_name or default_job_name(spec.workdir)
    output = os.path.join(launch_dir(spec.workdir, job_name), "%x-%j.out")
    job = SlurmJob(nodes=args.nodes, gpus_per_node=args.gpus_per_node,
                   cpus_per_task=args.cpus_per_task, job_name=job_name, output=output,
                   time=args.time, partition=args.partition, account=args.account)
    for flag, value in (("job_name", job.job_name), ("workdir", output), ("time", job.time),
                        ("partition", job.partition), ("account", job.account)):
        if value is not None and (not value or re.search(r"\s", value)):
            raise SpecError(f"--{flag} must be non-empty and without whitespace (it goes on an "
                            f"#SBATCH line), got {value!r}")
    return job


@exit_on_spec_error
def main(argv: Sequence[str] | None = None) -> int:
    args, spec = parse_run_argv(_parser(), sys.argv[1:] if argv is None else argv)
    job = _job_from_args(args, spec)
    script_dir = os.path.dirname(job.output)
    if spec.workdir.startswith("gs://"):
        print(f"note: SLURM cannot write to {spec.workdir}; the script and the job's output "
              f"go to {script_dir}", file=sys.stderr)
    os.makedirs(script_dir, exist_ok=True)
    script_path = os.path.join(script_dir, SCRIPT_NAME)
    script = sbatch_script(spec, job)
    with open(script_path, "w") as f:
        f.write(script)
    submit = ["sbatch", script_path]
    print(f"# {script_path}\n{script}\n{shlex.join(submit)}", flush=True)
    if args.dry_run:
        return 0
    if shutil.which("sbatch") is None:
        raise SpecError("`sbatch` is not on PATH: run this on a SLURM login node, or submit the "
                        f"script above from one (`sbatch {script_path}`)")
    return subprocess.run(submit, check=False).returncode


if __name__ == "__main__":
    sys.exit(main())
