"""Read a user's directory of text and JSONL files as documents.

Why strict: a pretraining corpus that silently drops records trains on less than the
user thinks, and a JSONL file that is cut short or hand-edited usually has more than
one bad line. So a malformed record stops the build with an error naming the file and
line (`MalformedRecordError`), and the user fixes or removes it; nothing is skipped
silently.

Which files: `*.jsonl` gives one document per non-blank line, a JSON object whose
`text_field` is a string; other `TEXT_SUFFIXES` files give one document each (the
whole file, UTF-8). Anything else in the directory is ignored. Files are read in
sorted path order so the corpus is the same on every build. The directory may be on
``gs://`` (read through ``etils.epath``).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterator
from pathlib import Path

from etils import epath

from glm5_jax.paths import as_path, files_under, is_local

JSONL_SUFFIX = ".jsonl"
TEXT_SUFFIXES = frozenset({".txt", ".text", ".md", ".rst", ".py"})


class MalformedRecordError(ValueError):
    """A record in a user corpus that cannot become a document; says file and line."""

    def __init__(self, path: epath.Path, line_number: int | None, reason: str):
        location = f"{path}:{line_number}" if line_number is not None else str(path)
        super().__init__(f"{location}: {reason}")
        self.path = path
        self.line_number = line_number


@dataclasses.dataclass(frozen=True)
class TextDocument:
    """One document: its text, the file it came from (relative to the corpus
    directory) and its 1-based line in a JSONL file (0 for a whole-file document)."""

    text: str
    path: str
    line: int


def _all_files(source_dir: epath.Path) -> Iterator[epath.Path]:
    """Every file under ``source_dir``: pathlib's ``rglob`` on local disk, epath's listing
    on an object store."""
    if is_local(source_dir):
        return (as_path(path) for path in Path(source_dir).rglob("*") if path.is_file())
    return files_under(source_dir)


def corpus_files(source_dir: epath.Path) -> list[epath.Path]:
    """The files a corpus directory contributes, in sorted order."""
    suffixes = TEXT_SUFFIXES | {JSONL_SUFFIX}
    return sorted(path for path in _all_files(source_dir) if path.suffix in suffixes)


def _jsonl_documents(path: epath.Path, relative: str, text_field: str) -> Iterator[TextDocument]:
    with path.open("rb") as lines:
        for line_number, raw_line in enumerate(lines, start=1):
            if not raw_line.strip():
                continue
            try:
                record = json.loads(raw_line.decode("utf-8"))
            except UnicodeDecodeError as error:
                raise MalformedRecordError(path, line_number, f"not UTF-8 ({error})") from None
            except json.JSONDecodeError as error:
                raise MalformedRecordError(path, line_number, f"invalid JSON ({error})") from None
            if not isinstance(record, dict):
                raise MalformedRecordError(
                    path, line_number, f"expected a JSON object, got {type(record).__name__}"
                )
            text = record.get(text_field)
            if not isinstance(text, str):
                raise MalformedRecordError(
                    path, line_number, f"field {text_field!r} missing or not a string"
                )
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:
                raise MalformedRecordError(
                    path, line_number, f"field {text_field!r} holds a lone surrogate escape"
                ) from None
            yield TextDocument(text=text, path=relative, line=line_number)


def iter_text_documents(source_dir: str | os.PathLike, text_field: str = "text") -> Iterator[TextDocument]:
    """Every document of a corpus directory, in a fixed order.

    Raises:
      FileNotFoundError: source_dir is not a directory.
      MalformedRecordError: a JSONL line is not a JSON object with a string
        `text_field`, or a file is not UTF-8.
    """
    source_dir = as_path(source_dir)
    if not source_dir.is_dir():
        raise FileNotFoundError(f"corpus directory {source_dir} does not exist")
    for path in corpus_files(source_dir):
        relative = path.relative_to(source_dir).as_posix()
        if path.suffix == JSONL_SUFFIX:
            yield from _jsonl_documents(path, relative, text_field)
            continue
        try:
            text = path.read_bytes().decode("utf-8")
        except UnicodeDecodeError as error:
            raise MalformedRecordError(path, None, f"not UTF-8 ({error})") from None
        yield TextDocument(text=text, path=relative, line=0)
