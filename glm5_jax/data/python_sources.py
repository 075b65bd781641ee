"""Find the Python source files installed on this machine, for the code corpus.

Why this shape: the corpus must build offline, identically on every run, and quickly
at tiny sizes. So files are listed in sorted order per named root (standard library,
then site-packages); when `max_files` is smaller than that list, an evenly spaced
sample is taken so that a small corpus still spans the standard library and many
packages rather than only the alphabetically first few. Files are deduplicated by the
SHA-256 of their bytes (the first in sorted order wins), each keeps its full text
(licence header included), and the leading comment block is recorded separately so
licence notices can be audited without re-reading the file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import sysconfig
from collections.abc import Iterator, Sequence
from pathlib import Path

from glm5_jax.data.package_licenses import (
    PYTHON_STDLIB_LICENSE,
    PYTHON_STDLIB_PACKAGE,
    package_and_license,
)

STDLIB_ROOT_NAME = "stdlib"
SITE_PACKAGES_ROOT_NAME = "site-packages"
DEFAULT_MAX_FILE_BYTES = 256 * 1024  # larger files are mostly generated tables
_SKIPPED_DIRECTORIES = frozenset({"site-packages", "dist-packages", "__pycache__"})


@dataclasses.dataclass(frozen=True)
class SourceRoot:
    """A directory tree of Python files, named so record paths do not leak the
    machine's layout (e.g. "stdlib/json/decoder.py")."""

    name: str
    directory: Path


@dataclasses.dataclass(frozen=True)
class PythonSourceFile:
    """One corpus record: a file's whole text and where it came from."""

    path: str  # "<root name>/<path inside the root>"
    package: str  # distribution name, or "python-stdlib"
    license: str  # what the package declares; "" if nothing
    license_header: str  # the file's leading comment block, verbatim
    sha256: str  # of the file's bytes; the deduplication key
    text: str


def default_source_roots() -> list[SourceRoot]:
    """The interpreter's standard library and this environment's site-packages."""
    paths = sysconfig.get_paths()
    roots = [
        SourceRoot(STDLIB_ROOT_NAME, Path(paths["stdlib"])),
        SourceRoot(SITE_PACKAGES_ROOT_NAME, Path(paths["purelib"])),
    ]
    if Path(paths["platlib"]) != Path(paths["purelib"]):
        roots.append(SourceRoot("platlib", Path(paths["platlib"])))
    return roots


def _sorted_python_files(root: SourceRoot) -> list[Path]:
    files = []
    for directory, subdirectories, names in os.walk(root.directory):
        # Pruning in place stops os.walk from entering them.
        subdirectories[:] = [name for name in subdirectories if name not in _SKIPPED_DIRECTORIES]
        files.extend(Path(directory, name) for name in names if name.endswith(".py"))
    # Sort whole relative paths, not per directory: os.walk lists a directory's files
    # before its subdirectories, which is not the order a reader expects.
    return sorted(files, key=lambda path: path.relative_to(root.directory).as_posix())


def evenly_spaced(items: Sequence, count: int | None) -> list:
    """`count` items spread evenly over `items`, in order (all of them if count is None
    or not smaller)."""
    if count is None or count >= len(items):
        return list(items)
    return [items[(index * len(items)) // count] for index in range(count)]


def leading_comment_block(text: str) -> str:
    """The comment lines at the top of a file (shebang and licence notices included),
    up to the first line of code, docstring or anything else; blank lines between
    comments are kept, trailing ones dropped."""
    header_lines: list[str] = []
    for line in text.splitlines(keepends=True):
        stripped = line.strip()
        if stripped.startswith("#") or (not stripped and header_lines):
            header_lines.append(line)
        elif stripped:
            break
    while header_lines and not header_lines[-1].strip():
        header_lines.pop()
    return "".join(header_lines)


def _package_and_license(root: SourceRoot, relative: Path) -> tuple[str, str]:
    if root.name == STDLIB_ROOT_NAME:
        return PYTHON_STDLIB_PACKAGE, PYTHON_STDLIB_LICENSE
    top_level = relative.parts[0]
    return package_and_license(top_level.removesuffix(".py"))


def iter_python_sources(
    roots: Sequence[SourceRoot] | None = None,
    max_files: int | None = None,
    max_bytes: int | None = None,
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
) -> Iterator[PythonSourceFile]:
    """Yields deduplicated, UTF-8 decodable Python files in a fixed order.

    Args:
      roots: trees to read; default `default_source_roots()`.
      max_files: how many files to sample evenly from the sorted listing; files
        dropped afterwards (duplicates, undecodable, too large, empty) are not replaced, so
        at most this many are yielded.
      max_bytes: stop before the total text would exceed this many bytes.
      max_file_bytes: skip larger files. Files with only whitespace are always skipped.
    """
    roots = default_source_roots() if roots is None else roots
    listing = [(root, path) for root in roots for path in _sorted_python_files(root)]
    seen_hashes: set[str] = set()
    total_bytes = 0
    for root, path in evenly_spaced(listing, max_files):
        try:
            data = path.read_bytes()
        except OSError:
            continue  # broken symlink or unreadable file: not part of the corpus
        if len(data) > max_file_bytes or not data.strip():
            continue  # too large, or empty (an empty `__init__.py` teaches nothing)
        if max_bytes is not None and total_bytes + len(data) > max_bytes:
            return
        digest = hashlib.sha256(data).hexdigest()
        if digest in seen_hashes:
            continue
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            continue  # e.g. the standard library's deliberately mis-encoded test files
        seen_hashes.add(digest)
        total_bytes += len(data)
        relative = path.relative_to(root.directory)
        package, license_name = _package_and_license(root, relative)
        yield PythonSourceFile(
            path=f"{root.name}/{relative.as_posix()}",
            package=package,
            license=license_name,
            license_header=leading_comment_block(text),
            sha256=digest,
            text=text,
        )
