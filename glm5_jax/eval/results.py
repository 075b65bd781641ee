"""The structured outcome of one sandboxed sample.

Stdlib-only: the sandbox supervisor builds these fields inside the helper process and
the host rebuilds the dataclass from the JSON verdict.
"""

from __future__ import annotations

import dataclasses
import enum


class Status(str, enum.Enum):
    """What happened, coarse enough for rewards and pass@k.

    passed:  the program and every test ran to completion without raising.
    failed:  the program or a test raised, the process ended or was killed (CPU, memory,
             output limit) before all tests ran, or it tampered with the harness.
    timeout: the wall-clock limit expired first.
    error:   the sandbox itself could not run the sample (an infrastructure problem, not
             a verdict on the program).
    """

    PASSED = "passed"
    FAILED = "failed"
    TIMEOUT = "timeout"
    ERROR = "error"


@dataclasses.dataclass(frozen=True)
class ExecutionResult:
    """One sample's verdict; ``passed`` is true only on the supervisor's positive signal."""

    status: Status
    reason: str  # "" when passed; else exception type and message, or which limit hit
    runtime_s: float  # wall time from the program starting to the verdict
    tests_passed: int = 0
    tests_total: int = 0
    stdout_tail: str = ""
    stderr_tail: str = ""
    stdout_bytes: int = 0  # total produced, including what the tail dropped
    stderr_bytes: int = 0
    test_errors: tuple[str | None, ...] = ()  # per test: None if it passed, else why not
    isolation: tuple[str, ...] = ()  # mechanisms actually in force, e.g. "net-ns", "uid=60601"

    @property
    def passed(self) -> bool:
        return self.status is Status.PASSED

    @property
    def fraction_passed(self) -> float:
        """Share of tests that passed; a program with no tests counts as 1 test (itself)."""
        if self.tests_total == 0:
            return 1.0 if self.passed else 0.0
        return self.tests_passed / self.tests_total

    def to_dict(self) -> dict:
        fields = dataclasses.asdict(self)
        fields["status"] = self.status.value
        fields["test_errors"] = list(self.test_errors)
        fields["isolation"] = list(self.isolation)
        return fields

    @classmethod
    def from_dict(cls, fields: dict) -> "ExecutionResult":
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in fields.items() if k in known}
        values["status"] = Status(values["status"])
        values["test_errors"] = tuple(values.get("test_errors", ()))
        values["isolation"] = tuple(values.get("isolation", ()))
        return cls(**values)

    @classmethod
    def infrastructure_error(cls, reason: str, runtime_s: float = 0.0) -> "ExecutionResult":
        return cls(status=Status.ERROR, reason=reason, runtime_s=runtime_s)
