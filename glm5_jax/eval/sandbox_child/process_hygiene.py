"""What the runner inherits, cut down before any sample code: descriptors, environment,
and the import path (re-anchored so imports still work after the privilege drop).
"""

from __future__ import annotations

import os
import resource
import sys

SAFE_PATH = "/usr/local/bin:/usr/bin:/bin"


def close_fds_except(keep: set[int]) -> None:
    """Close every inherited descriptor not in ``keep`` (0, 1 and 2 are always kept)."""
    start = 0
    for fd in sorted(keep | {0, 1, 2}):
        if fd > start:
            os.closerange(start, fd)
        start = fd + 1
    os.closerange(start, max(start + 1, resource.getrlimit(resource.RLIMIT_NOFILE)[0]))


def anchor_import_paths() -> list[int]:
    """Reach the stdlib through open directory descriptors; returns the descriptors.

    The interpreter may live where the unprivileged uid cannot traverse (e.g. pyenv
    under a 0700 /root). A directory opened while still privileged stays usable through
    /proc/self/fd/N after the drop, so imports keep working -- both ``sys.path`` and the
    ``__path__`` of packages already imported, whose submodules load from there --
    while nothing else in that private tree becomes reachable by name.
    """
    anchors: dict[str, str] = {}
    fds: list[int] = []
    for entry in sys.path:
        root = os.path.abspath(entry)
        if root in anchors or not os.path.isdir(root):
            continue
        fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
        fds.append(fd)
        anchors[root] = f"/proc/self/fd/{fd}"
    sys.path[:] = list(anchors.values())
    sys.path_importer_cache.clear()
    for module in list(sys.modules.values()):
        search_path = getattr(module, "__path__", None)
        if isinstance(search_path, list):
            search_path[:] = [_reanchor(path, anchors) for path in search_path]
    return fds


def _reanchor(path: str, anchors: dict[str, str]) -> str:
    for root in sorted(anchors, key=len, reverse=True):
        if path == root or path.startswith(root + os.sep):
            return anchors[root] + path[len(root):]
    return path


def scrub_environment(workdir: str, private_tmp: bool) -> None:
    """Replace the environment with a minimal one: no host secrets can be inherited."""
    os.environ.clear()
    os.environ.update({
        "PATH": SAFE_PATH,
        "HOME": workdir,
        "TMPDIR": "/tmp" if private_tmp else workdir,
        "LANG": "C.UTF-8",
    })
