"""Cluster launchers (launch/tpu.py, launch/slurm.py) and the run spec they share.

Nothing here reaches a cloud or a scheduler: commands are checked with --dry_run and direct
calls, and the submitting path runs against stand-in `gcloud` / `sbatch` programs put first
on PATH that record the argv they were given.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:  # `launch/` is a top-level directory, not an installed package
    sys.path.insert(0, REPO_ROOT)

from launch import slurm, tpu
from launch.spec import (RunSpec, SpecError, add_spec_arguments, parse_run_argv,
                         shell_command, split_command)

TRAIN = ["python", "-m", "glm5_jax.train", "--config=experiments/tiny.py", "--workdir=/runs/tiny"]
# Spaces, both quote kinds, a `$` the shell must not expand, a glob, a `;` and a `--`.
AWKWARD = ["python", "-c", "print('a b')", "it's \"quoted\"", "$HOME", "*.py", "a;b", "--"]


def run_launcher(*args: str, cwd: str = REPO_ROOT, path: str | None = None):
    env = dict(os.environ)
    if path is not None:
        env["PATH"] = path
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=60, check=False)


def parse_spec(argv: list[str]) -> RunSpec:
    parser = argparse.ArgumentParser()
    add_spec_arguments(parser)
    return parse_run_argv(parser, argv)[1]


def make_recording_tool(bin_dir, name: str, stdout: str, exit_status: int) -> str:
    """A stand-in for `name` that writes its argv as JSON next to itself."""
    bin_dir.mkdir(exist_ok=True)
    tool = bin_dir / name
    tool.write_text(f"#!{sys.executable}\nimport json, sys\n"
                    f"open(sys.argv[0] + '.argv.json', 'w').write(json.dumps(sys.argv[1:]))\n"
                    f"print({stdout!r})\nsys.exit({exit_status})\n")
    tool.chmod(0o755)
    return str(tool) + ".argv.json"


# --- the spec ----------------------------------------------------------------------------

def test_shell_command_quotes_every_piece():
    spec = RunSpec(command=tuple(AWKWARD), workdir="/w", env=(("NOTE", "a b $X"), ("E", "")),
                   venv="/opt/my venv", code_dir="/src/it's here")
    assert shlex.split(shell_command(spec)) == [
        "cd", "/src/it's here", "&&", ".", "/opt/my venv/bin/activate", "&&",
        "env", "NOTE=a b $X", "E=", *AWKWARD]


def test_shell_command_without_options_is_the_command_alone():
    assert shlex.split(shell_command(RunSpec(command=tuple(TRAIN), workdir="/w"))) == TRAIN


def test_shell_command_runs_under_sh_with_venv_env_and_code_dir(tmp_path):
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "activate").write_text("VENV_MARK=active; export VENV_MARK\n")
    code_dir = tmp_path / "code dir"
    code_dir.mkdir()
    report = ("import json, os, sys; print(json.dumps([sys.argv[1:], os.getcwd(), "
              "os.environ['VENV_MARK'], os.environ['NOTE'], os.environ['RANK']]))")
    spec = RunSpec(command=(sys.executable, "-c", report, *AWKWARD[2:]), workdir="/w",
                   env=(("NOTE", "it's $HOME"), ("RANK", "from --env")), venv=str(venv),
                   code_dir=str(code_dir))
    line = shell_command(spec, {"RANK": "3"})
    result = subprocess.run(["/bin/sh", "-c", line], capture_output=True, text=True, timeout=30,
                            check=False)
    assert result.returncode == 0, result.stderr
    # The launcher's extra_env wins over --env on the same key.
    assert json.loads(result.stdout) == [AWKWARD[2:], str(code_dir), "active", "it's $HOME", "3"]


def test_spec_from_args_keeps_env_order_and_values_with_equals():
    spec = parse_spec(["--workdir=/w", "--env", "B=1", "--env", "A=x=y", "--venv=/v",
                       "--code_dir=c", "--num_processes=4", "--devices_per_process=2", "--",
                       *TRAIN])
    assert spec == RunSpec(command=tuple(TRAIN), workdir="/w", env=(("B", "1"), ("A", "x=y")),
                           venv="/v", num_processes=4, devices_per_process=2, code_dir="c")


def test_split_command_keeps_later_double_dashes_in_the_command():
    assert split_command(["--workdir=/w", "--", "prog", "--", "x"]) == (["--workdir=/w"],
                                                                        ["prog", "--", "x"])


@pytest.mark.parametrize("argv", [["--workdir=/w"], ["--workdir=/w", "--"]])
def test_split_command_needs_a_command(argv):
    with pytest.raises(SpecError, match="needs the command after `--`"):
        split_command(argv)


@pytest.mark.parametrize("flags, message", [
    (["--env", "NOEQUALS"], "--env must be KEY=VALUE"),
    (["--env", "1X=2"], "--env must be KEY=VALUE"),
    (["--env", "A-B=1"], "--env must be KEY=VALUE"),
    (["--env", "=v"], "--env must be KEY=VALUE"),
    (["--num_processes=0"], "--num_processes must be an integer >= 1, got 0"),
    (["--devices_per_process=0"], "--devices_per_process must be an integer >= 1, got 0"),
    (["--venv=/v", "--image=img"], "--venv and --image exclude each other"),
    (["--workdir="], "--workdir must be a non-empty path"),
])
def test_spec_errors_name_the_flag(flags, message):
    with pytest.raises(SpecError, match=re.escape(message)):
        parse_spec(["--workdir=/w", *flags, "--", *TRAIN])


# --- Cloud TPU ---------------------------------------------------------------------------

def test_tpu_ssh_dry_run_runs_the_spec_on_every_worker():
    result = run_launcher("launch/tpu.py", "--tpu_name=pod", "--zone=us-east5-a",
                          "--project=proj", "--dry_run", "--workdir=/runs/x", "--venv=.venv",
                          "--code_dir=glm5_jax", "--env", "NOTE=a b", "--", *AWKWARD)
    assert result.returncode == 0, result.stderr
    argv = shlex.split(result.stdout)
    assert argv[:9] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "pod", "--zone=us-east5-a",
                        "--project=proj", "--worker=all"]
    flag, _, line = argv[9].partition("=")
    assert flag == "--command" and len(argv) == 10
    assert shlex.split(line) == ["cd", "glm5_jax", "&&", ".", ".venv/bin/activate", "&&",
                                 "env", "NOTE=a b", *AWKWARD]


def test_tpu_runs_as_a_module_too():
    result = run_launcher("-m", "launch.tpu", "--tpu_name=pod", "--zone=z", "--dry_run",
                          "--workdir=/runs/x", "--", *TRAIN)
    assert result.returncode == 0, result.stderr
    assert shlex.split(result.stdout)[-1] == "--command=" + shlex.join(TRAIN)


def test_tpu_xpk_dry_run_uses_xpk_flags_and_the_image():
    result = run_launcher("launch/tpu.py", "--mode=xpk", "--xpk_cluster=c1", "--tpu_type=v5p-256",
                          "--num_slices=2", "--zone=us-east5-a", "--dry_run",
                          "--image=gcr.io/p/glm5:latest", "--workdir=gs://b/runs/My_Run.7",
                          "--", *AWKWARD)
    assert result.returncode == 0, result.stderr
    assert shlex.split(result.stdout) == [
        "xpk", "workload", "create", "--cluster=c1", "--workload=my-run-7", "--tpu-type=v5p-256",
        "--num-slices=2", "--zone=us-east5-a", "--docker-image=gcr.io/p/glm5:latest",
        "--command=" + shlex.join(AWKWARD)]


def test_tpu_xpk_without_image_lets_xpk_build_one():
    argv = tpu.xpk_command(RunSpec(command=tuple(TRAIN), workdir="/runs/tiny"), "c1", "v5p-8", 1,
                           "z", None)
    assert not [arg for arg in argv if arg.startswith(("--docker-image", "--project"))]
    assert "--num-slices=1" in argv and "--workload=tiny" in argv


@pytest.mark.parametrize("workdir, name", [
    ("/runs/tiny", "tiny"),
    ("gs://bucket/runs/Tiny_Run.v2/", "tiny-run-v2"),
    ("runs/2024-05-01", "glm5-2024-05-01"),
    ("/runs/__", "glm5"),
    ("/runs/" + "a" * 39 + "-b" * 5, "a" * 39),
])
def test_workload_name_is_what_xpk_accepts(workdir, name):
    assert tpu.workload_name(workdir) == name
    assert re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", name) and len(name) <= 40


def test_tpu_submits_and_returns_the_tool_exit_status(tmp_path):
    argv_file = make_recording_tool(tmp_path / "bin", "gcloud", "ran", exit_status=3)
    result = run_launcher("launch/tpu.py", "--tpu_name=pod", "--zone=z", "--workdir=/runs/x",
                          "--", *AWKWARD, path=str(tmp_path / "bin"))
    assert result.returncode == 3, result.stderr
    with open(argv_file) as f:
        assert json.load(f) == ["compute", "tpus", "tpu-vm", "ssh", "pod", "--zone=z",
                                "--worker=all", "--command=" + shlex.join(AWKWARD)]
    assert result.stdout.splitlines()[-1] == "ran"


def test_tpu_without_gcloud_on_path_says_so(tmp_path):
    result = run_launcher("launch/tpu.py", "--tpu_name=pod", "--zone=z", "--workdir=/runs/x",
                          "--", *TRAIN, path=str(tmp_path))
    assert result.returncode == 2
    assert result.stderr.strip() == ("error: `gcloud` is not on PATH: install it, or pass "
                                     "--dry_run to only print the command")


# --- SLURM -------------------------------------------------------------------------------

def sbatch_directives(script: str) -> dict[str, str]:
    return dict(re.findall(r"^#SBATCH --([\w-]+)=(\S+)$", script, flags=re.MULTILINE))


def test_slurm_dry_run_writes_one_process_per_gpu_script(tmp_path):
    workdir = tmp_path / "runs" / "tiny"
    result = run_launcher("launch/slurm.py", "--nodes=4", "--gpus_per_node=8", "--partition=gpu",
                          "--account=acct", "--time=12:00:00", "--dry_run",
                          f"--workdir={workdir}", "--venv=/opt/venv", "--", *AWKWARD)
    assert result.returncode == 0, result.stderr
    script_path = workdir / "launch" / "slurm_job.sh"
    script = script_path.read_text()
    assert sbatch_directives(script) == {
        "job-name": "tiny", "nodes": "4", "ntasks-per-node": "8", "gpus-per-node": "8",
        "cpus-per-task": "8", "output": f"{workdir}/launch/%x-%j.out", "time": "12:00:00",
        "partition": "gpu", "account": "acct"}
    assert script.startswith("#!/bin/bash\n")
    srun = shlex.split(script.splitlines()[-1])
    assert srun[:3] == ["srun", "bash", "-c"] and len(srun) == 4
    assert shlex.split(srun[3]) == [".", "/opt/venv/bin/activate", "&&", *AWKWARD]
    printed = result.stdout.splitlines()
    assert printed[0] == f"# {script_path}"
    assert "\n".join(printed[1:-2]) + "\n" == script
    assert printed[-1] == f"sbatch {script_path}"


def test_slurm_image_runs_srun_in_a_pyxis_container():
    spec = RunSpec(command=tuple(TRAIN), workdir="/runs/tiny", image="nvcr.io#nvidia/jax:25.04",
                   code_dir="/code")
    job = slurm.SlurmJob(nodes=1, gpus_per_node=2, cpus_per_task=4, job_name="tiny",
                         output="/runs/tiny/launch/%x-%j.out")
    script = slurm.sbatch_script(spec, job)
    assert shlex.split(script.splitlines()[-1]) == [
        "srun", "--container-image=nvcr.io#nvidia/jax:25.04", "bash", "-c",
        "cd /code && " + shlex.join(TRAIN)]
    assert not {"time", "partition", "account"} & sbatch_directives(script).keys()


def test_slurm_gcs_workdir_puts_script_and_logs_in_the_local_directory(tmp_path):
    result = run_launcher(os.path.join(REPO_ROOT, "launch", "slurm.py"), "--nodes=1",
                          "--gpus_per_node=1", "--job_name=exp1", "--dry_run",
                          "--workdir=gs://bucket/runs/x", "--", *TRAIN, cwd=str(tmp_path))
    assert result.returncode == 0, result.stderr
    local = tmp_path / "slurm_scripts" / "exp1"
    assert sbatch_directives((local / "slurm_job.sh").read_text())["output"] == \
        f"{local}/%x-%j.out"
    assert f"go to {local}" in result.stderr


def test_slurm_submits_with_sbatch(tmp_path):
    argv_file = make_recording_tool(tmp_path / "bin", "sbatch", "Submitted batch job 42", 0)
    workdir = tmp_path / "run"
    result = run_launcher("launch/slurm.py", "--nodes=1", "--gpus_per_node=1",
                          f"--workdir={workdir}", "--", *TRAIN, path=str(tmp_path / "bin"))
    assert result.returncode == 0, result.stderr
    with open(argv_file) as f:
        assert json.load(f) == [str(workdir / "launch" / "slurm_job.sh")]
    assert result.stdout.splitlines()[-1] == "Submitted batch job 42"


# --- usage errors: one line on stderr, exit status 2, no traceback --------------------------

@pytest.mark.parametrize("launcher, flags, message", [
    ("tpu", ["--tpu_name=p", "--zone=z", "--workdir=/w", "--dry_run"],
     "needs the command after `--`"),
    ("tpu", ["--tpu_name=p", "--zone=z", "--workdir=/w", "--env", "1BAD", "--"],
     "--env must be KEY=VALUE"),
    ("tpu", ["--mode=xpk", "--xpk_cluster=c", "--tpu_type=v5p-8", "--zone=z", "--workdir=/w",
             "--venv=/v", "--image=i", "--"], "--venv and --image exclude each other"),
    ("tpu", ["--tpu_name=p", "--zone=z", "--workdir=/w", "--image=i", "--"],
     "--image needs --mode=xpk"),
    ("tpu", ["--mode=xpk", "--zone=z", "--workdir=/w", "--"], "--mode=xpk needs --xpk_cluster"),
    ("tpu", ["--tpu_name=p", "--zone=z", "--tpu_type=v5p-8", "--workdir=/w", "--"],
     "--tpu_type only apply to --mode=xpk"),
    ("tpu", ["--tpu_name=p", "--zone=z", "--num_processes=4", "--workdir=/w", "--"],
     "do not apply to Cloud TPU"),
    ("slurm", ["--nodes=0", "--gpus_per_node=8", "--workdir=/w", "--"],
     "--nodes must be an integer >= 1, got 0"),
    ("slurm", ["--nodes=1", "--gpus_per_node=8", "--workdir=/w", "--"],
     "needs the command after `--`"),
    ("slurm", ["--nodes=1", "--gpus_per_node=8", "--workdir=/w", "--env", "A B=1", "--"],
     "--env must be KEY=VALUE"),
    ("slurm", ["--nodes=2", "--gpus_per_node=8", "--num_processes=8", "--workdir=/w", "--"],
     "--num_processes=8 disagrees with --nodes x --gpus_per_node = 16"),
    ("slurm", ["--nodes=1", "--gpus_per_node=8", "--devices_per_process=8", "--workdir=/w", "--"],
     "--devices_per_process must be 1 on SLURM"),
    ("slurm", ["--nodes=1", "--gpus_per_node=8", "--partition=a b", "--workdir=/w", "--"],
     "--partition must be non-empty and without whitespace"),
])
def test_usage_errors_exit_2_with_one_line(launcher, flags, message):
    command = [] if message.startswith("needs the command") else TRAIN
    result = run_launcher(f"launch/{launcher}.py", *flags, *command)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]
    assert result.stdout == ""
