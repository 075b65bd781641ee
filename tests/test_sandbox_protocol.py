"""Wire formats between host, supervisor and runner, and the exit-reason wording."""

from __future__ import annotations

import os
import signal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from glm5_jax.eval.limits import SandboxLimits
from glm5_jax.eval.sandbox_child.framing import FrameBuffer, encode_frame, read_frame, write_all
from glm5_jax.eval.sandbox_child.protocol import (
    Request, ZygoteConfig, decode_limits, decode_report, decode_step, encode_limits,
    encode_report, encode_step)
from glm5_jax.eval.sandbox_child.step_watch import describe_exit


@given(st.lists(st.binary(max_size=300), max_size=8), st.integers(1, 50))
def test_frame_buffer_reassembles_frames_from_any_chunking(payloads, chunk):
    stream = b"".join(encode_frame(p) for p in payloads)
    buffer, out = FrameBuffer(), []
    for start in range(0, len(stream), chunk):
        buffer.feed(stream[start:start + chunk])
        while (frame := buffer.pop()) is not None:
            out.append(frame)
    assert out == payloads and buffer.pending_bytes == 0


def test_frame_buffer_rejects_an_absurd_declared_size():
    buffer = FrameBuffer(max_bytes=10)
    buffer.feed(encode_frame(b"x" * 11))
    with pytest.raises(ValueError):
        buffer.pop()


def test_blocking_frames_over_a_pipe():
    read_end, write_end = os.pipe()
    write_all(write_end, encode_frame(b"hello") + encode_frame(b""))
    os.close(write_end)
    assert read_frame(read_end) == b"hello"
    assert read_frame(read_end) == b""
    assert read_frame(read_end) is None
    os.close(read_end)


@given(st.integers(0, 10**6), st.text(alphabet="0123456789abcdef", max_size=16), st.text())
def test_steps_round_trip(index, token, source):
    assert decode_step(encode_step(index, token, source)) == (index, token, source)


def test_reports_round_trip_and_malformed_ones_are_rejected():
    report = decode_report(encode_report(3, "abc", False, "AssertionError\nwith newline"))
    assert (report.index, report.token, report.ok) == (3, "abc", False)
    assert report.error == "AssertionError\nwith newline"
    for garbage in (b"", b"1\nabc", b"x\nabc\n1\n", b"1\nabc\n2\n", b"\xff\xfe"):
        with pytest.raises(ValueError):
            decode_report(garbage)


def test_request_and_config_round_trip_through_json():
    request = Request(steps=("x = 1", "assert x"), limits=SandboxLimits(timeout_s=1.5))
    assert Request.from_json(request.to_json()) == request
    config = ZygoteConfig(uid=60600, gid=60600, use_namespaces=True)
    assert ZygoteConfig.from_json(config.to_json()) == config
    limits = SandboxLimits(memory_bytes=1 << 28)
    assert decode_limits(encode_limits(limits)) == limits


def test_exit_reasons_name_the_limit():
    limits = SandboxLimits(timeout_s=2.0)
    killed = lambda number: number  # noqa: E731 - a wait status for "killed by signal"
    assert describe_exit(killed(signal.SIGXCPU), limits) == \
        "killed by SIGXCPU (CPU time limit of 3s)"
    assert describe_exit(killed(signal.SIGSEGV), limits).startswith("killed by SIGSEGV (crash")
    assert describe_exit(0, limits) == "exited with status 0"
    assert describe_exit(3 << 8, limits) == "exited with status 3"
