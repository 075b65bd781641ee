"""The zygote: a long-lived, trusted helper that keeps a sandbox serving and one spare.

Why: starting a fresh interpreter per sample costs ~20 ms, and building the sandbox
(namespaces, mounts, four processes) costs more; a warm interpreter that forks, with the
common stdlib modules already imported, takes the first off each sample's critical path,
and a sandbox that serves many samples (one fresh runner each, see ``supervisor``) the
second. The spare is prepared ahead, for when the current sandbox retires.

The zygote never runs untrusted code and never holds a request in its memory: it
splices the request bytes from the host's pipe straight into the waiting supervisor's
pipe, so later sandboxes (forked from the zygote) cannot find earlier samples' tests or
nonces. stdin carries requests from the host; stdout carries verdicts to it.
"""

from __future__ import annotations

import dataclasses
import gc
import importlib
import json
import os

from glm5_jax.eval.sandbox_child import linux
from glm5_jax.eval.sandbox_child.process_hygiene import close_fds_except
from glm5_jax.eval.sandbox_child.framing import HEADER, encode_frame, read_exact, write_all
from glm5_jax.eval.sandbox_child.protocol import NONCE_BYTES, ZygoteConfig
from glm5_jax.eval.sandbox_child.supervisor import READY, SEQUENCE

REQUEST_FD = 0
RESPONSE_FD = 1

# Run with ``python -s -S -B -c BOOTSTRAP <eval package dir> <config json> <preload>...``.
# Stub parent packages let the zygote import this subpackage without executing
# glm5_jax/__init__.py (which imports jax): only stdlib and these files load.
BOOTSTRAP = """\
import os, sys, types
eval_dir = sys.argv[1]
for name, path in (("glm5_jax", os.path.dirname(eval_dir)), ("glm5_jax.eval", eval_dir)):
    package = types.ModuleType(name)
    package.__path__ = [path]
    sys.modules[name] = package
del sys.path[0]
from glm5_jax.eval.sandbox_child.zygote import main
main(sys.argv[2], sys.argv[3:])
"""


@dataclasses.dataclass(frozen=True)
class Sandbox:
    """A supervisor waiting for requests on ``request_write``'s pipe; it answers ``READY``
    on ``ready_read`` after each verdict it will follow with another sample, and closes it
    when it retires."""

    pid: int
    request_write: int
    ready_read: int
    cell: int  # the number of this sandbox (1, 2, ...), for its cgroup name


def main(config_json: str, preload: list[str]) -> None:
    config = ZygoteConfig.from_json(config_json)
    _preload(preload)
    linux.set_process_name("glm5-zygote")
    zygote_pid = os.getpid()
    current = _start_sandbox(config, zygote_pid, cell=1)
    spare = _start_sandbox(config, zygote_pid, cell=2)
    sequence = 0
    while True:
        sequence += 1
        if not _pass_request(current.request_write, sequence):
            for sandbox in (current, spare):  # each cleans up and exits
                os.close(sandbox.request_write)
                os.waitpid(sandbox.pid, 0)
            return
        if os.read(current.ready_read, 1) == READY:
            continue  # it takes the next sample too
        os.close(current.request_write)
        os.close(current.ready_read)
        _, wait_status = os.waitpid(current.pid, 0)
        if wait_status != 0:  # it died, maybe before writing the verdict (it never can pass)
            verdict = {"status": "error", "sequence": sequence, "runtime_s": 0.0,
                       "reason": f"sandbox supervisor died (wait status {wait_status})"}
            write_all(RESPONSE_FD, encode_frame(json.dumps(verdict).encode()))
        current, spare = spare, _start_sandbox(config, zygote_pid, spare.cell + 1)


def _start_sandbox(config: ZygoteConfig, zygote_pid: int, cell: int) -> Sandbox:
    request_read, request_write = os.pipe()
    ready_read, ready_write = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            devnull = os.open(os.devnull, os.O_RDONLY)
            os.dup2(devnull, REQUEST_FD)  # only the zygote reads the host's requests; fd 0
            os.close(devnull)             # stays taken so no sandbox pipe can land on 0-2
            # Nothing of the other sandboxes: their request pipes stay the zygote's alone.
            close_fds_except({request_read, ready_write})
            from glm5_jax.eval.sandbox_child.supervisor import run_supervisor

            run_supervisor(config, request_read, RESPONSE_FD, ready_write, zygote_pid, cell)
        except BaseException:  # noqa: BLE001 - a harness bug: say where on the host's stderr
            import traceback

            traceback.print_exc()
        finally:
            os._exit(70)
    os.close(request_read)
    os.close(ready_write)
    return Sandbox(pid, request_write, ready_read, cell)


def _pass_request(destination: int, sequence: int) -> bool:
    """Move one request (nonce + frame) from the host to a supervisor, after its sequence
    number; False on EOF."""
    write_all(destination, SEQUENCE.pack(sequence))
    if not _splice_exact(REQUEST_FD, destination, NONCE_BYTES):
        return False
    header = read_exact(REQUEST_FD, HEADER.size)  # a length, not a secret
    if header is None:
        return False
    write_all(destination, header)
    return _splice_exact(REQUEST_FD, destination, HEADER.unpack(header)[0])


def _splice_exact(source: int, destination: int, count: int) -> bool:
    """Pipe-to-pipe copy in the kernel: the bytes never enter this process's memory."""
    while count:
        moved = os.splice(source, destination, count)
        if moved == 0:
            return False
        count -= moved
    return True


def _preload(modules: list[str]) -> None:
    """Import once here so every forked sample inherits them already loaded."""
    import site

    site.setquit()  # `exit()`/`quit()` exist as usual although -S skipped site
    import glm5_jax.eval.sandbox_child.supervisor  # noqa: F401 - warm the fork path too

    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError:
            pass
    gc.freeze()  # forked children's collections then skip (and do not copy) these pages
