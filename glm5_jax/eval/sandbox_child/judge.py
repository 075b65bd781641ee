"""The judge: runs a sample's tests in its own, trusted interpreter.

Forked once per sandbox by the supervisor, before the sample's pid namespace exists (so
in its mount and network namespaces, but never in its pid namespace, uid or process
group: no sandboxed process can see or signal it), the judge serves the sandbox's samples
in turn. It holds the tests and nothing of the sample but handles. It binds the
program's exported names (functions as ``RemoteObject`` handles, data as data), executes
each test the supervisor sends with its token, and reports the outcome on a pipe no
sandboxed process holds. A test that
calls the candidate crosses into the runner and gets plain data back; so no object and
no code of the sample's making is ever on the path that decides a verdict.

What changes for tests, compared with running them in the sample's interpreter:
values cross as data (a candidate's mutation of an argument is not seen; a returned
object of the sample's own class is a handle that can be called or passed back but not
compared), and the program's names are a snapshot taken after its top level ran.
"""

from __future__ import annotations

import builtins
import dataclasses
import importlib
import json
import os
import resource
import signal
import socket
import sys
import types

from glm5_jax.eval.limits import SandboxLimits
from glm5_jax.eval.sandbox_child import control_socket, linux
from glm5_jax.eval.sandbox_child.framing import encode_frame, read_frame, write_all
from glm5_jax.eval.sandbox_child.process_hygiene import close_fds_except
from glm5_jax.eval.sandbox_child.protocol import (
    SETUP_FAILED_INDEX, decode_step, encode_report)
from glm5_jax.eval.sandbox_child.remote_objects import CallChannel, CandidateGone, RemoteObject
from glm5_jax.eval.sandbox_child.runner import describe_failure

MODULE_NAME = "__sandbox__"
IDLE = b"idle"  # on the control socket: the last sample's pipes are closed
CANDIDATE_FUNCTION = "candidate_function"
# Modules a program imported are bound for the tests by importing the same stdlib
# module here (never the sample's object); these would do something on import.
_NEVER_IMPORT = frozenset({"antigravity", "this", "idlelib", "tkinter", "turtle",
                           "turtledemo", "webbrowser", "pydoc", "pdb", "code", "ensurepip",
                           "venv", "lib2to3", "test"})


@dataclasses.dataclass(frozen=True)
class JudgeChannels:
    step_read: int  # tests from the supervisor
    report_write: int  # outcomes to the supervisor
    call_write: int  # calls to the runner
    reply_read: int  # the runner's replies (and, first, its exported names)


@dataclasses.dataclass(frozen=True)
class JudgeRequest:
    """What the judge learns when the sample arrives (sent before the first test)."""

    limits: SandboxLimits
    names_from_program: tuple[str, ...]  # builtin/stdlib names the tests take from the program

    def to_json(self) -> bytes:
        return json.dumps({"limits": self.limits.to_dict(),
                           "names_from_program": list(self.names_from_program)}).encode()

    @classmethod
    def from_json(cls, payload: bytes) -> "JudgeRequest":
        fields = json.loads(payload)
        return cls(SandboxLimits.from_dict(fields["limits"]), tuple(fields["names_from_program"]))


def become_judge(control_fd: int, supervisor_pid: int) -> None:
    """Isolate, then judge one sample per control message until hung up. Never returns.

    Each message is a ``JudgeRequest`` with the sample's four pipe ends (``JudgeChannels``
    order); the sample ends when its step pipe closes, and the judge answers ``IDLE`` on
    the control socket, ready for the next one. Each sample's tests get a fresh module.
    """
    try:
        linux.set_process_name("glm5-judge")
        linux.prctl(linux.PR_SET_PDEATHSIG, signal.SIGKILL)
        # Forked before the sample's pid namespace exists: the supervisor is our parent.
        if os.getppid() != supervisor_pid:
            os._exit(0)
        os.setpgid(0, 0)  # not the runner's group; the supervisor kills it by pid
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
        close_fds_except({control_fd})
        os.chdir("/")
        linux.prctl(linux.PR_SET_NO_NEW_PRIVS, 1)
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        control = socket.socket(fileno=control_fd)
    except BaseException:  # noqa: BLE001 - the supervisor sees the control socket close
        os._exit(70)
    while True:
        message, fds = control_socket.receive(control)
        if not message:
            os._exit(0)  # the supervisor is done with this sandbox
        if len(fds) != 4:
            os._exit(70)
        channels = JudgeChannels(*fds)
        try:
            request = JudgeRequest.from_json(message)
            _apply_rlimits(request.limits)
        except BaseException as exc:  # noqa: BLE001
            _report(channels.report_write, SETUP_FAILED_INDEX, "setup", False,
                    f"judge setup failed: {type(exc).__name__}: {exc}")
            os._exit(70)
        judge_tests(channels, request)
        for fd in fds:
            os.close(fd)
        control_socket.send(control, IDLE)


def _apply_rlimits(limits: SandboxLimits) -> None:
    """The sample's CPU and memory ceilings bound the judge too (a reply it must decode
    is bounded by the frame size, a test's own work by these). Soft limits only, the CPU
    one counted from what earlier samples used, so the next sample can have its own."""
    used = resource.getrusage(resource.RUSAGE_SELF)
    cpu = int(used.ru_utime + used.ru_stime) + 1 + limits.effective_cpu_s
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, resource.RLIM_INFINITY))
    resource.setrlimit(resource.RLIMIT_AS, (limits.memory_bytes, resource.RLIM_INFINITY))


def judge_tests(channels: JudgeChannels, request: JudgeRequest) -> None:
    """Run each test as it arrives, in one namespace; report each outcome."""
    calls = CallChannel(channels.call_write, channels.reply_read)
    module = types.ModuleType(MODULE_NAME)
    namespace = module.__dict__
    bound = False
    while True:
        frame = read_frame(channels.step_read)
        if frame is None:
            return  # the supervisor closed the step pipe: this sample is over
        index, token, source = decode_step(frame)
        ok, error = True, ""
        try:
            if not bound:
                bound = True
                bind_program_names(namespace, calls, request.names_from_program)
            code = compile(source, f"<step {index}>", "exec", dont_inherit=True)
            exec(code, namespace)
        except BaseException as exc:  # noqa: BLE001 - any failure, exits included, fails the test
            ok, error = False, describe_failure(exc, index)
        _report(channels.report_write, index, token, ok, error)


def bind_program_names(namespace: dict, calls: CallChannel,
                       names_from_program: tuple[str, ...]) -> None:
    """Give the tests the program's names: handles, data and stdlib modules.

    A builtin's name (``len``, ``abs``, ``sorted``...) or a stdlib module's (``math``,
    ``re``...) means the real one, whatever the program bound to it, unless the job lists
    it in ``names_from_program`` (MBPP task 126 defines ``sum``): otherwise a sample could
    redefine what the tests use to check it. A module the program imported is bound as
    the judge's own import of that stdlib module, never the sample's object.
    ``candidate_function(name)`` gives the program's ``name`` even where a test (or
    trusted setup such as a HumanEval prompt) shadowed it.
    """
    exported = calls.read_message()
    if type(exported) is not list:
        raise CandidateGone("the sample's exported names are malformed")
    program: dict[str, object] = {}
    for entry in exported:
        if type(entry) is not list or len(entry) != 3 or type(entry[0]) is not str:
            raise CandidateGone("the sample's exported names are malformed")
        name, kind, value = entry
        if kind == "m":
            module = _stdlib_module(value)
            if module is not None:
                program[name] = module
        elif kind == "v":
            program[name] = value
    for name, value in program.items():
        if name not in names_from_program:
            if hasattr(builtins, name):
                continue
            if name in sys.stdlib_module_names:
                value = _stdlib_module(name)
                if value is None:
                    continue
        namespace[name] = value

    def candidate_function(name: str) -> object:
        if name not in program:
            raise NameError(f"the program does not define {name!r}")
        return program[name]

    namespace[CANDIDATE_FUNCTION] = candidate_function


def _stdlib_module(name: object) -> types.ModuleType | None:
    if not isinstance(name, str) or not name:
        return None
    top = name.split(".")[0]
    if top in _NEVER_IMPORT or top not in sys.stdlib_module_names:
        return None
    if name in sys.modules:
        return sys.modules[name]
    try:
        return importlib.import_module(name)
    except BaseException:  # noqa: BLE001 - a test that needs it will fail with NameError
        return None


def _report(fd: int, index: int, token: str, ok: bool, error: str) -> None:
    payload = encode_report(index, token, ok, error)
    write_all(fd, encode_frame(payload))


__all__ = ["JudgeChannels", "JudgeRequest", "RemoteObject", "become_judge", "judge_tests"]
