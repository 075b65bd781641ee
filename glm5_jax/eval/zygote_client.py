"""Host-side handle on one zygote process: start it, send a sample, read the verdict.

Each handle owns one zygote and, as root, one exclusive uid; it is used by one thread
at a time (the pool guarantees that). If the zygote stops answering, the handle kills
it -- its supervisors and their sample trees die with it through PR_SET_PDEATHSIG --
sweeps the uid, and starts a fresh one on the next sample.
"""

from __future__ import annotations

import hmac
import json
import os
import secrets
import select
import signal
import subprocess
import time

from glm5_jax.eval.limits import SandboxLimits
from glm5_jax.eval.policy import IsolationPolicy
from glm5_jax.eval.results import ExecutionResult
from glm5_jax.eval.sandbox_child.cgroups import remove_cgroups
from glm5_jax.eval.sandbox_child.framing import FrameBuffer, encode_frame, write_all
from glm5_jax.eval.sandbox_child.reaping import kill_processes_of_uid
from glm5_jax.eval.sandbox_child.protocol import Request, ZygoteConfig
from glm5_jax.eval.sandbox_child.zygote import BOOTSTRAP
from glm5_jax.eval.uid_slots import UidSlot, acquire_uid_slot

EVAL_DIR = os.path.dirname(os.path.abspath(__file__))
HOST_GRACE_S = 10.0  # beyond the sample's own timeout, before the host gives up on it


class ZygoteClient:
    def __init__(self, policy: IsolationPolicy) -> None:
        self.policy = policy
        self._uid_slot: UidSlot | None = None
        if policy.drop_privileges and os.geteuid() == 0:
            self._uid_slot = acquire_uid_slot(policy.uid_base, policy.uid_count)
        self._process: subprocess.Popen | None = None
        self._sequence = 0  # requests sent to the current zygote

    @property
    def uid(self) -> int | None:
        return None if self._uid_slot is None else self._uid_slot.uid

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    def run(self, steps: tuple[str, ...], limits: SandboxLimits,
            names_from_program: tuple[str, ...] = ()) -> ExecutionResult:
        """Run one sample to a verdict; sandbox failures become ``Status.ERROR`` results."""
        started = time.monotonic()
        nonce = secrets.token_bytes(16)
        request = Request(steps=steps, limits=limits, names_from_program=names_from_program)
        try:
            process = self._ensure_started()
            write_all(process.stdin.fileno(), nonce + encode_frame(request.to_json()))
            self._sequence += 1
            verdict = self._read_verdict(process, self._sequence,
                                         started + limits.timeout_s + HOST_GRACE_S)
        except (OSError, ValueError) as exc:
            self.kill()
            return ExecutionResult.infrastructure_error(
                f"sandbox helper failed: {exc}", time.monotonic() - started)
        if verdict is None:
            self.kill()
            return ExecutionResult.infrastructure_error(
                "sandbox helper gave no verdict in time", time.monotonic() - started)
        if hmac.compare_digest(str(verdict.pop("nonce", "")), nonce.hex()):
            return ExecutionResult.from_dict(verdict)
        if verdict.get("status") == "error":  # the zygote's notice of a dead supervisor
            return ExecutionResult.from_dict(verdict)
        self.kill()
        return ExecutionResult.infrastructure_error(
            "verdict without the request's nonce (forged)", time.monotonic() - started)

    def kill(self) -> None:
        """Hard stop of the zygote and everything below it; the next run starts afresh."""
        process, self._process = self._process, None
        if process is not None:
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            process.wait()
            for stream in (process.stdin, process.stdout):
                stream.close()
        if self.uid is not None:
            kill_processes_of_uid(self.uid)

    def close(self) -> None:
        """Orderly stop: the zygote exits when its request pipe closes."""
        process = self._process
        if process is not None:
            process.stdin.close()
            try:
                process.wait(timeout=2.0)
                process.stdout.close()
                self._process = None
            except subprocess.TimeoutExpired:
                pass
        self.kill()
        if self._uid_slot is not None:
            remove_cgroups(self._uid_slot.uid)
            self._uid_slot.release()
            self._uid_slot = None

    def _ensure_started(self) -> subprocess.Popen:
        if self._process is not None and self._process.poll() is None:
            return self._process
        if self._process is not None:
            self.kill()
        environment = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}
        if self.policy.hash_seed is not None:
            environment["PYTHONHASHSEED"] = str(self.policy.hash_seed)
        config = ZygoteConfig(uid=self.uid, gid=self.uid,
                              use_namespaces=self.policy.use_namespaces)
        self._sequence = 0
        self._process = subprocess.Popen(
            [self.policy.python, "-s", "-S", "-B", "-c", BOOTSTRAP, EVAL_DIR, config.to_json(),
             *self.policy.preload_modules],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=None, bufsize=0,
            env=environment, cwd="/", start_new_session=True, close_fds=True)
        return self._process

    @staticmethod
    def _read_verdict(process: subprocess.Popen, sequence: int, deadline: float) -> dict | None:
        """The verdict for request number ``sequence``; stale ones are skipped."""
        fd = process.stdout.fileno()
        frames = FrameBuffer()
        while True:
            while (frame := frames.pop()) is None:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
                    return None
                data = os.read(fd, 1 << 16)
                if not data:
                    return None
                frames.feed(data)
            verdict = json.loads(frame)
            if verdict.pop("sequence", None) == sequence:
                return verdict
