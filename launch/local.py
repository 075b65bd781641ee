"""A real multi-process JAX job on this host.

    python launch/local.py --num_processes=2 --devices_per_process=4 --workdir=DIR -- \
        python -m glm5_jax.train --config=experiments/tiny.py --workdir=DIR --config.mesh=fsdp=8

Each process gets the job through the environment that ``glm5_jax.distributed`` reads
(coordinator on a free localhost port, process count and id, simulated CPU devices per
process; CPU collectives go through gloo). Output is streamed line by line, each line
prefixed with its process index, and kept in ``DIR/launch/process_<i>.log``.

Why the launcher watches its children: when one process of a JAX job dies, the others
block in their next collective until the coordinator's heartbeat gives up. So the first
process to fail (non-zero exit or a signal) ends the whole job: the rest get SIGTERM, then
SIGKILL after ``--grace_seconds``, and the launcher exits non-zero with one line saying
which process died and how. SIGTERM or Ctrl-C to the launcher is forwarded to every
process (the train loop then checkpoints at the next step boundary and exits 0).
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from launch.spec import RunSpec, SpecError, add_spec_arguments, exit_on_spec_error, parse_run_argv

POLL_SECONDS = 0.2


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        return sock.getsockname()[1]


def process_environment(spec: RunSpec, index: int, port: int) -> dict[str, str]:
    """The environment of process ``index``: this one's, the spec's, and the job's."""
    env = dict(os.environ)
    env.setdefault("JAX_PLATFORMS", "cpu")
    if spec.venv:
        env["VIRTUAL_ENV"] = spec.venv
        env["PATH"] = os.path.join(spec.venv, "bin") + os.pathsep + env.get("PATH", "")
    env.update(dict(spec.env))
    env.update({
        "GLM5_COORDINATOR_ADDRESS": f"localhost:{port}",
        "GLM5_NUM_PROCESSES": str(spec.num_processes),
        "GLM5_PROCESS_ID": str(index),
        "PYTHONUNBUFFERED": "1",
    })
    if spec.devices_per_process:
        env["GLM5_CPU_DEVICES_PER_PROCESS"] = str(spec.devices_per_process)
    return env


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code}"


class Job:
    """The processes of one job, their output pumps, and how to stop them."""

    def __init__(self, spec: RunSpec, port: int, log_dir: Path | None):
        self.spec = spec
        self._print_lock = threading.Lock()
        self.processes: list[subprocess.Popen] = []
        self._pumps: list[threading.Thread] = []
        for index in range(spec.num_processes):
            process = subprocess.Popen(
                list(spec.command), cwd=spec.code_dir, env=process_environment(spec, index, port),
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
            log = open(log_dir / f"process_{index}.log", "wb") if log_dir else None
            pump = threading.Thread(target=self._pump, args=(index, process, log), daemon=True)
            pump.start()
            self.processes.append(process)
            self._pumps.append(pump)

    def _pump(self, index: int, process: subprocess.Popen, log) -> None:
        for line in iter(process.stdout.readline, b""):
            if log:
                log.write(line)
                log.flush()
            with self._print_lock:
                sys.stdout.write(f"[{index}] {line.decode(errors='replace')}")
                sys.stdout.flush()
        if log:
            log.close()

    def signal_all(self, signum: int) -> None:
        for process in self.processes:
            if process.poll() is None:
                try:
                    os.killpg(process.pid, signum)
                except ProcessLookupError:
                    pass

    def stop(self, grace_seconds: float) -> None:
        """SIGTERM every live process, SIGKILL whatever is left after the grace period."""
        self.signal_all(signal.SIGTERM)
        deadline = time.monotonic() + grace_seconds
        while time.monotonic() < deadline and any(p.poll() is None for p in self.processes):
            time.sleep(POLL_SECONDS)
        self.signal_all(signal.SIGKILL)
        for process in self.processes:
            process.wait()

    def wait(self, grace_seconds: float) -> tuple[int, str | None]:
        """(exit status, reason): 0 when every process exits 0; else the first failure's
        status, after the others have been stopped."""
        while True:
            for index, process in enumerate(self.processes):
                code = process.poll()
                if code is not None and code != 0:
                    others = sum(p.poll() is None for p in self.processes)
                    self.stop(grace_seconds)
                    self._drain()
                    return (code if code > 0 else 128 - code,
                            f"process {index} {describe_exit(code)}; stopped the other "
                            f"{others} running process(es)")
            if all(p.poll() == 0 for p in self.processes):
                self._drain()
                return 0, None
            time.sleep(POLL_SECONDS)

    def _drain(self) -> None:
        for pump in self._pumps:
            pump.join(timeout=5)


@exit_on_spec_error
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="launch/local.py", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    add_spec_arguments(parser)
    parser.add_argument("--grace_seconds", type=float, default=20.0,
                        help="After a process fails: how long the others get to exit on SIGTERM.")
    args, spec = parse_run_argv(parser, sys.argv[1:] if argv is None else argv)
    if spec.image:
        raise SpecError("--image: launch/local.py runs on this host; containers are for "
                        "launch/tpu.py (xpk) and launch/slurm.py")
    log_dir = None
    if not spec.workdir.startswith("gs://"):
        log_dir = Path(spec.workdir) / "launch"
        log_dir.mkdir(parents=True, exist_ok=True)
    job = Job(spec, free_port(), log_dir)

    def forward(signum, frame):
        job.signal_all(signal.SIGTERM)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    code, reason = job.wait(args.grace_seconds)
    if reason:
        print(f"launch/local.py: {reason}", file=sys.stderr, flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
