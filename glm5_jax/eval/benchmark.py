"""What a code benchmark must provide to be evaluated from a samples file."""

from __future__ import annotations

from typing import Protocol

from glm5_jax.eval.pool import SandboxJob


class CodeBenchmark(Protocol):
    """A set of problems; a sample is (task id, completion) and becomes one sandbox job."""

    name: str

    def parse_task_id(self, value: object) -> object:
        """The canonical task id for a samples-file value; ValueError if unknown."""

    def job(self, task_id: object, completion: str) -> SandboxJob:
        """Program plus tests for one sample of ``task_id``."""
