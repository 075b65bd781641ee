"""The supervisor's event loop: feed steps, read reports and output, enforce the clock.

Step 0 (the program) goes to the runner; every test goes to the judge, the trusted
interpreter that calls into the program across a process boundary. A pass is decided
here from the judge's reports only: the runner's single report says whether the
program's top level ran, and a runner report for any other step is tampering. Each report
must carry the random token that came with its step, in order, and only a report for the
last test completes the sample. Exit codes, stdout and timing are never taken as success.
"""

from __future__ import annotations

import dataclasses
import os
import secrets
import selectors
import signal
import time

from glm5_jax.eval.limits import SandboxLimits
from glm5_jax.eval.sandbox_child.framing import FrameBuffer, encode_frame
from glm5_jax.eval.sandbox_child.output_tail import OutputTail
from glm5_jax.eval.sandbox_child.protocol import (
    MAX_REPORT_BYTES, SETUP_FAILED_INDEX, StepReport, decode_report, encode_step)

STATUS_GRACE_S = 0.5  # after the report pipe closes, how long to wait for the exit status
NOT_RUN = "not run"


@dataclasses.dataclass
class Outcome:
    status: str  # a results.Status value
    reason: str
    tests_passed: int
    test_errors: list[str | None]


@dataclasses.dataclass(frozen=True)
class WatchedPipes:
    """The supervisor's ends of the pipes to the runner, the judge and init."""

    step_write: int
    report_read: int
    stdout_read: int
    stderr_read: int
    status_read: int
    judge_step_write: int
    judge_report_read: int


def describe_exit(wait_status: int, limits: SandboxLimits) -> str:
    """Human-readable cause of the runner's death, naming the limit where one applies."""
    if os.WIFSIGNALED(wait_status):
        number = os.WTERMSIG(wait_status)
        try:
            name = signal.Signals(number).name
        except ValueError:
            name = f"signal {number}"
        hint = {
            signal.SIGXCPU: f"CPU time limit of {limits.effective_cpu_s}s",
            signal.SIGKILL: "CPU hard limit, out of memory, or a kill from inside",
            signal.SIGSEGV: "crash, e.g. C stack overflow from unbounded recursion",
            signal.SIGXFSZ: f"file size limit of {limits.file_size_bytes} bytes",
        }.get(number)
        return f"killed by {name}" + (f" ({hint})" if hint else "")
    if os.WIFEXITED(wait_status):
        return f"exited with status {os.WEXITSTATUS(wait_status)}"
    return f"ended with wait status {wait_status}"


class StepWatch:
    """Runs one sample's steps to an ``Outcome``; all descriptors must be non-blocking."""

    def __init__(self, steps: tuple[str, ...], limits: SandboxLimits, pipes: WatchedPipes,
                 runner_preamble: bytes = b"", judge_preamble: bytes = b"") -> None:
        self.steps = steps
        self.limits = limits
        self.pipes = pipes
        self.tokens = [secrets.token_hex(8) for _ in steps]
        self.reports: list[StepReport] = []
        self.sent = 0
        self.stdout = OutputTail(limits.output_tail_bytes)
        self.stderr = OutputTail(limits.output_tail_bytes)
        self.extra_isolation: list[str] = []
        self.outcome: Outcome | None = None
        self.started = 0.0
        self._frames = {pipes.report_read: FrameBuffer(MAX_REPORT_BYTES),
                        pipes.judge_report_read: FrameBuffer(MAX_REPORT_BYTES)}
        # Sent ahead of the first step to each: the runner's limits, the judge's request.
        self._outgoing = {pipes.step_write: runner_preamble,
                          pipes.judge_step_write: judge_preamble}
        self._status_text = b""
        self._runner_status: int | None = None
        self._status_grace_until: float | None = None
        self._selector = selectors.DefaultSelector()

    @property
    def tests_total(self) -> int:
        return len(self.steps) - 1

    def run(self) -> Outcome:
        pipes = self.pipes
        for fd, handler in ((pipes.report_read, self._on_report_data),
                            (pipes.judge_report_read, self._on_report_data),
                            (pipes.stdout_read, self._on_stdout),
                            (pipes.stderr_read, self._on_stderr),
                            (pipes.status_read, self._on_status_data)):
            os.set_blocking(fd, False)
            self._selector.register(fd, selectors.EVENT_READ, handler)
        os.set_blocking(pipes.step_write, False)
        os.set_blocking(pipes.judge_step_write, False)
        self.started = time.monotonic()
        deadline = self.started + self.limits.timeout_s
        if self.tests_total:
            self._flush_outgoing(pipes.judge_step_write)  # its request, while the program runs
        self._send_step(0)
        while self.outcome is None:
            now = time.monotonic()
            if now >= deadline:
                self._finish_timeout()
                break
            if self._status_grace_until is not None and now >= self._status_grace_until:
                self._finish_runner_gone()
                break
            wake_at = min(deadline, self._status_grace_until or deadline)
            for key, _ in self._selector.select(max(0.0, wake_at - now)):
                if self.outcome is None:
                    key.data(key.fd)
        self._selector.close()
        return self.outcome

    # -- steps out -----------------------------------------------------------------------
    def _send_step(self, index: int) -> None:
        self.sent = index + 1
        fd = self.pipes.step_write if index == 0 else self.pipes.judge_step_write
        self._outgoing[fd] += encode_frame(encode_step(index, self.tokens[index],
                                                       self.steps[index]))
        self._flush_outgoing(fd)

    def _flush_outgoing(self, fd: int) -> None:
        try:
            while self._outgoing[fd]:
                self._outgoing[fd] = self._outgoing[fd][os.write(fd, self._outgoing[fd]):]
        except BlockingIOError:
            pass
        except BrokenPipeError:
            self._outgoing[fd] = b""  # the reader is gone; its end explains why
        wants_write = bool(self._outgoing[fd])
        registered = fd in self._selector.get_map()
        if wants_write and not registered:
            self._selector.register(fd, selectors.EVENT_WRITE, self._flush_outgoing)
        elif registered and not wants_write:
            self._selector.unregister(fd)

    # -- reports in ----------------------------------------------------------------------
    def _on_report_data(self, fd: int) -> bool:
        """Consume one chunk of reports; False when nothing more can be read right now."""
        from_judge = fd == self.pipes.judge_report_read
        data = self._read(fd)
        if data is None:
            return False
        if not data:
            self._selector.unregister(fd)
            if from_judge:
                # The judge lives outside the sample's pid namespace and keeps its report
                # pipe until the sample's steps end: EOF now means it died.
                self._finish("error", "the judge ended before every test was judged")
            else:
                self._await_exit_status()
            return False
        self._frames[fd].feed(data)
        try:
            while self.outcome is None and (frame := self._frames[fd].pop()) is not None:
                self._on_report(decode_report(frame), from_judge)
        except (ValueError, UnicodeDecodeError):
            if from_judge:
                self._finish("error", "malformed report from the judge")
            else:
                self._finish("failed", "malformed report from the sandbox (harness tampering)")
        return True

    def _on_report(self, report: StepReport, from_judge: bool) -> None:
        if report.index == SETUP_FAILED_INDEX:
            self._finish("error", report.error)
            return
        expected = len(self.reports)
        asked_for = expected < self.sent and report.token == self.tokens[expected]
        right_source = from_judge == (expected > 0)  # the runner reports the program only
        if report.index != expected or not asked_for or not right_source:
            self._finish("failed", "report for a step that was not asked for (harness tampering)")
            return
        self.reports.append(report)
        if expected == 0 and not report.ok:
            self._finish("failed", f"program raised {report.error}")
        elif len(self.reports) == len(self.steps):
            self._finish_all_reported()
        else:
            self._send_step(expected + 1)

    def _finish_all_reported(self) -> None:
        failures = [(i, r.error) for i, r in enumerate(self.reports[1:], 1) if not r.ok]
        if not failures:
            self._finish("passed", "")
        else:
            index, error = failures[0]
            self._finish("failed", f"test {index} of {self.tests_total} failed: {error}")

    # -- output and init's status -----------------------------------------------------------
    def _on_stdout(self, fd: int) -> None:
        self._capture(fd, self.stdout)

    def _on_stderr(self, fd: int) -> None:
        self._capture(fd, self.stderr)

    def _capture(self, fd: int, tail: OutputTail) -> None:
        data = self._read(fd)
        if data is None:
            return
        if not data:
            self._selector.unregister(fd)
            return
        tail.add(data)
        if self.stdout.total_bytes + self.stderr.total_bytes > self.limits.output_limit_bytes:
            self._finish("failed",
                         f"output limit of {self.limits.output_limit_bytes} bytes exceeded")

    def drain_output(self) -> None:
        """Take what is still buffered in the output pipes once the writers are dead."""
        for fd, tail in ((self.pipes.stdout_read, self.stdout),
                         (self.pipes.stderr_read, self.stderr)):
            budget = 1 << 20  # a pipe holds 64 KiB; more means a writer escaped the teardown
            while budget > 0 and (data := self._read(fd)):
                tail.add(data)
                budget -= len(data)

    def _on_status_data(self, fd: int) -> None:
        data = self._read(fd)
        if data is None:
            return
        if not data:
            self._selector.unregister(fd)
            return
        self._status_text += data
        *lines, self._status_text = self._status_text.split(b"\n")
        for line in lines:
            kind, _, value = line.decode().partition(" ")
            if kind == "isolation":
                self.extra_isolation.append(value)
            elif kind == "exit":
                self._runner_status = int(value)
                self._on_runner_exit()

    def _on_runner_exit(self) -> None:
        """Reports written before the exit are already in the pipes: take them first."""
        for fd in (self.pipes.report_read, self.pipes.judge_report_read):
            while self.outcome is None and fd in self._selector.get_map() \
                    and self._on_report_data(fd):
                pass
        if self.outcome is None:
            self._finish_runner_gone()

    def _await_exit_status(self) -> None:
        if self._runner_status is not None:
            self._finish_runner_gone()
        elif self._status_grace_until is None:
            self._status_grace_until = time.monotonic() + STATUS_GRACE_S

    # -- endings ---------------------------------------------------------------------------
    def _finish_runner_gone(self) -> None:
        how = ("closed its report channel" if self._runner_status is None
               else describe_exit(self._runner_status, self.limits))
        done = max(0, len(self.reports) - 1)
        self._finish("failed", f"sandboxed process {how} before all steps finished "
                               f"({done} of {self.tests_total} tests done)")

    def _finish_timeout(self) -> None:
        done = max(0, len(self.reports) - 1)
        self._finish("timeout", f"wall-clock timeout of {self.limits.timeout_s}s "
                                f"({done} of {self.tests_total} tests done)")

    def _finish(self, status: str, reason: str) -> None:
        test_errors: list[str | None] = [NOT_RUN] * self.tests_total
        for index, report in enumerate(self.reports[1:]):
            test_errors[index] = None if report.ok else report.error
        tests_passed = sum(error is None for error in test_errors)
        self.outcome = Outcome(status, reason, tests_passed, test_errors)

    @staticmethod
    def _read(fd: int) -> bytes | None:
        """Up to 64 KiB; b"" at end of stream; None when nothing is ready."""
        try:
            return os.read(fd, 65536)
        except BlockingIOError:
            return None
