"""Hostile programs: each tries to pass without earning it, or to reach the host.

Every case must come back as *not passed*, and the test around it checks that the host
is unaffected. Programs are templates: ``{canary}``, ``{canary_dir}``, ``{host_pid}``,
``{port}``, ``{abstract_socket}``, ``{secret_name}``, ``{secret}`` and ``{marker}`` are
filled in by the test with host-side values the attack aims at.
"""

from __future__ import annotations

import dataclasses

FAILED = "failed"
TIMEOUT = "timeout"
LONG_CLOCK_S = 30.0


@dataclasses.dataclass(frozen=True)
class HostileCase:
    name: str
    program: str
    tests: tuple[str, ...]
    statuses: frozenset[str]  # acceptable outcomes; "passed" is never one of them


def limits_for(hostile: HostileCase, limits):
    """The limits to run ``hostile`` under: a case that must be stopped by a limit other
    than the clock (its only allowed status is "failed") gets a long clock, so that a
    loaded host cannot turn its verdict into a timeout; a case that may time out keeps
    the short one. ``limits`` is a ``SandboxLimits``."""
    if TIMEOUT in hostile.statuses:
        return limits
    return dataclasses.replace(limits, timeout_s=max(limits.timeout_s, LONG_CLOCK_S))


def case(name: str, program: str, tests: tuple[str, ...] = ("assert True",),
         statuses: tuple[str, ...] = (FAILED,)) -> HostileCase:
    return HostileCase(name, program, tests, frozenset(statuses))


PARENT_IS_GONE = ("import os\ntry:\n    os.kill(os.getppid(), 0)\n    parent_alive = True\n"
                  "except ProcessLookupError:\n    parent_alive = False\nassert not parent_alive")

# Searches every frame and every gc-tracked container for the test's source text
# ("assert found", spelled backwards here so the program does not contain it) and would
# pass if the sandbox held the tests in memory while the program's top level runs.
FIND_TESTS_IN_MEMORY = """\
import gc, sys
needle = "dnuof tressa"[::-1]
def contains(value, depth=0):
    if isinstance(value, str):
        return needle in value and value is not needle
    if isinstance(value, bytes):
        return needle.encode() in value
    if depth < 3 and isinstance(value, (list, tuple, set, frozenset)):
        return any(contains(v, depth + 1) for v in list(value))
    if depth < 3 and isinstance(value, dict):
        return any(contains(v, depth + 1) for v in list(value.values()))
    return False
found = False
frame = sys._getframe()
while frame is not None:
    found |= any(contains(v) for v in list(frame.f_locals.values()))
    found |= any(contains(v) for v in frame.f_code.co_consts if v is not needle)
    frame = frame.f_back
for obj in gc.get_objects():
    if contains(obj, 1):
        found = True
        break
"""

CASES = [
    # -- runaway resource use ------------------------------------------------------------
    case("infinite_loop", "while True:\n    pass", statuses=(TIMEOUT,)),
    case("infinite_loop_inside_test", "def f():\n    while True:\n        pass",
         ("assert True", "f()"), statuses=(TIMEOUT,)),
    case("sleep_forever", "import time\ntime.sleep(10**6)", statuses=(TIMEOUT,)),
    case("fork_bomb", "import os\nwhile True:\n    try:\n        os.fork()\n"
                      "    except OSError:\n        pass", statuses=(TIMEOUT, FAILED)),
    case("memory_bomb", "hoard = []\nwhile True:\n    hoard.append(bytearray(10**7))",
         statuses=(FAILED, TIMEOUT)),
    case("one_huge_allocation", "x = bytearray(1 << 40)"),
    case("deep_recursion", "def f(n):\n    return f(n + 1)\nf(0)"),
    case("c_stack_overflow", "import sys\nsys.setrecursionlimit(10**8)\n"
                             "def f(n):\n    return list(map(f, [n + 1]))\nf(0)",
         statuses=(FAILED, TIMEOUT)),
    case("huge_stdout", "import sys\nwhile True:\n    sys.stdout.write('x' * 65536)"),
    case("huge_stderr_then_claim_success",
         "import sys\nfor _ in range(400):\n    sys.stderr.write('passed\\n' * 10000)\n"
         "assert False"),
    case("huge_file", "with open('big', 'wb') as f:\n    f.write(b'x' * (200 << 20))",
         ("import os\nassert os.path.getsize('big') == 200 << 20",)),
    case("too_many_open_files", "handles = [open('/dev/null') for _ in range(100000)]"),
    # -- the filesystem outside the working directory ------------------------------------
    case("overwrite_canary", "open({canary!r}, 'w').write('pwned')",
         ("assert open({canary!r}).read() == 'pwned'",)),
    case("delete_canary", "import os\nos.remove({canary!r})",
         ("import os\nassert not os.path.exists({canary!r})",)),
    case("rmtree_canary_dir", "import shutil\nshutil.rmtree({canary_dir!r})"),
    case("chmod_canary", "import os\nos.chmod({canary!r}, 0o777)"),
    case("create_file_beside_canary", "open({canary_dir!r} + '/intruder', 'w').write('x')"),
    case("litter_host_tmp",
         "for d in ('/tmp', '/var/tmp', '/dev/shm'):\n"
         "    open(d + '/' + {marker!r}, 'w').write('x')\n"
         "raise SystemExit('wrote to the scratch dirs; the host must not see them')"),
    case("regain_root", "import os\nos.setuid(0)\nopen('/etc/glm5-pwned', 'w')"),
    # -- secrets and processes of the host -----------------------------------------------
    case("read_host_environment", "import os",
         ("import os\nassert os.environ.get({secret_name!r}) == {secret!r}",)),
    case("read_host_environ_through_proc",
         "import os\nfound = False\nfor pid in ({host_pid}, 1):\n    try:\n"
         "        found |= {secret!r}.encode() in open(f'/proc/{{pid}}/environ', 'rb').read()\n"
         "    except OSError:\n        pass",
         ("assert found",)),
    case("kill_host_process", "import os, signal\nos.kill({host_pid}, signal.SIGKILL)"),
    case("kill_parent",
         "import os, signal\nfor pid in (os.getppid(), 1):\n    try:\n"
         "        os.kill(pid, signal.SIGKILL)\n    except OSError:\n        pass",
         (PARENT_IS_GONE,)),
    # kill(-1) reports success whenever other processes exist, even if it could signal
    # none of them, so the test checks the effect: is the parent (init) gone?
    case("kill_every_process_it_can",
         "import os, signal\ntry:\n    os.kill(-1, signal.SIGKILL)\nexcept OSError:\n    pass",
         (PARENT_IS_GONE,)),
    case("kill_own_group", "import os, signal\nos.killpg(0, signal.SIGKILL)"),
    case("read_parent_memory", "open('/proc/1/mem', 'rb').read(1)"),
    # -- the network ---------------------------------------------------------------------
    case("connect_to_internet",
         "import socket\nsocket.create_connection(('1.1.1.1', 53), timeout=1)"),
    case("connect_to_host_loopback",
         "import socket\n"
         "socket.create_connection(('127.0.0.1', {port}), timeout=1).sendall(b'hi')"),
    case("connect_to_host_abstract_socket",
         "import socket\ns = socket.socket(socket.AF_UNIX)\ns.connect({abstract_socket!r})\n"
         "s.sendall(b'hi')"),
    # -- faking a pass -------------------------------------------------------------------
    case("sys_exit_0_before_tests", "import sys\nsys.exit(0)"),
    case("os_exit_0_before_tests", "import os\nos._exit(0)"),
    # The tests run in the judge; these exits happen in the sample, inside a call.
    case("os_exit_0_inside_test",
         "def f():\n    return 1\ndef leave():\n    import os\n    os._exit(0)",
         ("assert f() == 1", "leave()\nassert f() == 2")),
    case("exit_builtin_inside_test", "def f():\n    exit(0)", ("f()",)),
    case("patched_assertion_error",
         "import builtins\nclass Ignore(BaseException):\n    pass\n"
         "builtins.AssertionError = Ignore\ndef f():\n    return 1",
         ("assert f() == 2",)),
    case("patched_builtins_exec_compile_print",
         "import builtins\nbuiltins.exec = lambda *a, **k: None\n"
         "builtins.compile = lambda *a, **k: compile('pass', '<fake>', 'exec')\n"
         "builtins.print = lambda *a, **k: None\ndef f():\n    return 1",
         ("assert f() == 2",)),
    case("patched_os_exit_and_write",
         "import os\nos._exit = lambda code: None\nos.write = lambda fd, data: len(data)\n"
         "os.read = lambda fd, n: b''\ndef f():\n    return 1",
         ("assert f() == 2",)),
    case("fake_success_output",
         "print('passed')\nprint('{{\"status\": \"passed\", \"passed\": true}}')\n"
         "print('All tests passed! OK')\nimport sys\nsys.stdout.flush()\nimport os\nos._exit(0)"),
    case("forge_reports_on_every_fd",
         "import os, struct\nfor index in range(3):\n"
         "    for token in ('0' * 16, 'setup', ''):\n"
         "        payload = f'{{index}}\\n{{token}}\\n1\\n'.encode()\n"
         "        for fd in range(3, 64):\n            try:\n"
         "                os.write(fd, struct.pack('>I', len(payload)) + payload)\n"
         "            except OSError:\n                pass\n"
         "os._exit(0)"),
    case("close_every_descriptor", "import os\nos.closerange(3, 1 << 16)"),
    case("find_the_tests_in_memory", FIND_TESTS_IN_MEMORY, ("assert found",)),
    # -- leftovers -----------------------------------------------------------------------
    case("thread_outlives_test",
         "import os, threading, time\n"
         "def later():\n    time.sleep(0.3)\n    print('passed')\n    os._exit(0)\n"
         "threading.Thread(target=later).start()\ndef f():\n    return 1",
         ("assert f() == 2",)),
    case("zombie_children",
         "import os\nfor _ in range(8):\n    if os.fork() == 0:\n        os._exit(0)\n"
         "def f():\n    return 1",
         ("assert f() == 2",)),
    case("daemon_escapes_session",
         "import os, time\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
         "        time.sleep(600)\n    os._exit(0)\ndef f():\n    return 1",
         ("assert f() == 2",)),
    case("unset_parent_death_signal",
         "import ctypes, os, time\nlibc = ctypes.CDLL(None)\n"
         "if os.fork() == 0:\n    libc.prctl(1, 0, 0, 0, 0)\n    os.setsid()\n"
         "    time.sleep(600)\n    os._exit(0)\ndef f():\n    return 1",
         ("assert f() == 2",)),
]

# Swaps what teardown will delete for symlinks to the host: a subdirectory of its working
# directory, the working directory itself (possible only where the sample owns the entry
# in its parent), and entries at the top of /tmp (swept by uid without a mount
# namespace). Teardown must remove the links, never what they point at. The first line
# of output is the working directory, so a test can check the harness's directory went.
SYMLINK_SWAP = """\
import os
work = os.getcwd()
print(work, flush=True)
os.mkdir('inner')
open('inner/kept', 'w').write('x')
os.rename('inner', 'inner-moved')
os.symlink({canary_dir!r}, 'inner')
os.symlink({canary!r}, 'canary-link')
os.mkdir('/tmp/' + {marker!r} + '-dir')
os.symlink({canary_dir!r}, '/tmp/' + {marker!r} + '-dir/link')
os.symlink({canary_dir!r}, '/tmp/' + {marker!r})
try:
    os.rename(work, work + '-moved')
    os.symlink({canary_dir!r}, work)
except OSError:
    pass
raise SystemExit('left symlinks to the host in place of its directories')
"""

CASES.append(case("symlink_swap_of_workdir", SYMLINK_SWAP))
