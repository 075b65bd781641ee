"""Messages between the host, the zygote, the supervisor and the runner.

host -> zygote:       16 raw nonce bytes, then a frame holding a JSON ``Request``
zygote -> supervisor: the same bytes, spliced pipe-to-pipe (never in the zygote's memory)
supervisor -> runner: a frame with the JSON limits, then step 0 (the program) as
                      "<index>\\n<token>\\n<source>"
runner -> supervisor: one frame once the program ran: "<index>\\n<token>\\n<0|1>\\n<error>"
supervisor -> judge:  a frame with the JSON ``JudgeRequest``, then steps 1..n (the tests),
                      each as above
judge -> supervisor:  one report frame per test, as above
judge <-> runner:     calls into the program and their plain-data replies
                      (``remote_objects``, ``candidate_calls``); first, the runner sends
                      the program's exported names
supervisor -> host:   one frame holding the JSON verdict, which must echo the nonce

The supervisor sends a step only after the previous one was reported, with a fresh
random token, so nobody can report a step it was never given. The tests only ever reach
the judge: their source is never in the sandbox. The runner and the judge are forked
before the request exists, so the nonce is never in their memory.
"""

from __future__ import annotations

import dataclasses
import json

from glm5_jax.eval.limits import SandboxLimits

NONCE_BYTES = 16
SETUP_FAILED_INDEX = -1  # runner report index meaning "could not isolate; ran nothing"
MAX_ERROR_CHARS = 2000
MAX_REPORT_BYTES = 4 * MAX_ERROR_CHARS + 256


@dataclasses.dataclass(frozen=True)
class ZygoteConfig:
    """Per-worker settings, fixed for the zygote's life (its sandboxes are prepared ahead)."""

    uid: int | None  # drop to this uid/gid before any untrusted code; None: no drop
    gid: int | None
    use_namespaces: bool

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "ZygoteConfig":
        return cls(**json.loads(text))


@dataclasses.dataclass(frozen=True)
class Request:
    """One sample: ``steps[0]`` is the program, the rest are its tests.

    ``names_from_program``: builtin or stdlib-module names the tests take from the program
    (a task whose function is called ``sum``); any other such name the program binds stays
    the real one for the tests (see ``judge.bind_program_names``).
    """

    steps: tuple[str, ...]
    limits: SandboxLimits
    names_from_program: tuple[str, ...] = ()

    def to_json(self) -> bytes:
        return json.dumps({"steps": list(self.steps), "limits": self.limits.to_dict(),
                           "names_from_program": list(self.names_from_program)}).encode()

    @classmethod
    def from_json(cls, payload: bytes) -> "Request":
        fields = json.loads(payload)
        return cls(steps=tuple(fields["steps"]), limits=SandboxLimits.from_dict(fields["limits"]),
                   names_from_program=tuple(fields.get("names_from_program", ())))


def encode_limits(limits: SandboxLimits) -> bytes:
    return json.dumps(limits.to_dict()).encode()


def decode_limits(payload: bytes) -> SandboxLimits:
    return SandboxLimits.from_dict(json.loads(payload))


def encode_step(index: int, token: str, source: str) -> bytes:
    return f"{index}\n{token}\n".encode() + source.encode("utf-8", "surrogatepass")


def decode_step(payload: bytes) -> tuple[int, str, str]:
    index, token, source = payload.split(b"\n", 2)
    return int(index), token.decode(), source.decode("utf-8", "surrogatepass")


def encode_report(index: int, token: str, ok: bool, error: str) -> bytes:
    return f"{index}\n{token}\n{1 if ok else 0}\n{error[:MAX_ERROR_CHARS]}".encode(
        "utf-8", "backslashreplace")


@dataclasses.dataclass(frozen=True)
class StepReport:
    index: int
    token: str
    ok: bool
    error: str


def decode_report(payload: bytes) -> StepReport:
    """Parse a runner report; ValueError on anything malformed (treated as tampering)."""
    index, token, ok, error = payload.decode("utf-8").split("\n", 3)
    if ok not in ("0", "1"):
        raise ValueError(f"bad ok flag {ok!r}")
    return StepReport(int(index), token, ok == "1", error)
