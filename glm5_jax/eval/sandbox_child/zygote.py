"""The zygote: a long-lived, trusted helper that forks one supervisor per sample.

Why: starting a fresh interpreter per sample costs ~20 ms and dominates a HumanEval
run; forking a warm one with the common stdlib modules already imported costs ~1 ms.
The zygote never runs untrusted code itself and talks only to the host:
stdin carries requests (nonce + frame), stdout carries verdicts.
"""

from __future__ import annotations

import gc
import importlib
import json
import os

from glm5_jax.eval.sandbox_child.framing import encode_frame, read_frame, write_all
from glm5_jax.eval.sandbox_child.protocol import NONCE_BYTES, Request

REQUEST_FD = 0
RESPONSE_FD = 1

# Run with ``python -s -S -B -c BOOTSTRAP <eval package dir> <module to preload>...``.
# Stub parent packages let the zygote import this subpackage without executing
# glm5_jax/__init__.py (which may import jax): only stdlib and these files load.
BOOTSTRAP = """\
import os, sys, types
eval_dir = sys.argv[1]
for name, path in (("glm5_jax", os.path.dirname(eval_dir)), ("glm5_jax.eval", eval_dir)):
    package = types.ModuleType(name)
    package.__path__ = [path]
    sys.modules[name] = package
del sys.path[0]
from glm5_jax.eval.sandbox_child.zygote import main
main(sys.argv[2:])
"""


def main(preload: list[str]) -> None:
    _preload(preload)
    zygote_pid = os.getpid()
    while True:
        nonce = bytearray(NONCE_BYTES)
        if not _read_into(REQUEST_FD, nonce):
            return
        payload = read_frame(REQUEST_FD)
        if payload is None:
            return
        request = Request.from_json(payload)
        supervisor_pid = os.fork()
        if supervisor_pid == 0:
            try:
                from glm5_jax.eval.sandbox_child.supervisor import supervise

                supervise(request, nonce, RESPONSE_FD, zygote_pid)
            finally:
                os._exit(70)
        _, wait_status = os.waitpid(supervisor_pid, 0)
        if wait_status != 0:  # it died before writing a verdict
            verdict = {"status": "error", "nonce": bytes(nonce).hex(), "runtime_s": 0.0,
                       "reason": f"sandbox supervisor died (wait status {wait_status})"}
            write_all(RESPONSE_FD, encode_frame(json.dumps(verdict).encode()))
        nonce[:] = bytes(NONCE_BYTES)


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


def _read_into(fd: int, buffer: bytearray) -> bool:
    """Fill ``buffer`` straight from the pipe (no intermediate bytes copy); False on EOF."""
    view = memoryview(buffer)
    while view:
        got = os.readv(fd, [view])
        if got == 0:
            return False
        view = view[got:]
    return True
