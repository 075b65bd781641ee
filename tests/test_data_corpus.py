"""Corpus builders: the machine's Python sources and a user's text/JSONL directory,
built offline into ArrayRecord through TFDS."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from glm5_jax.data.code_corpus import build_code_corpus
from glm5_jax.data.python_sources import (
    SourceRoot,
    evenly_spaced,
    iter_python_sources,
    leading_comment_block,
)
from glm5_jax.data.text_corpus import build_text_corpus
from glm5_jax.data.text_files import MalformedRecordError, iter_text_documents

LICENSED_FILE = (
    "# Copyright 2024 Someone\n# Licensed under MIT.\n\n# more\n\nimport os\n# not header\n"
)


def _write(path: Path, text: str | bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")


@pytest.fixture
def fake_roots(tmp_path) -> tuple[SourceRoot, ...]:
    stdlib = tmp_path / "lib"
    _write(stdlib / "b_module.py", LICENSED_FILE)
    _write(stdlib / "a_pkg" / "__init__.py", "x = 1\n")
    _write(stdlib / "a_pkg" / "copy_of_b.py", LICENSED_FILE)  # duplicate content
    _write(stdlib / "a_pkg" / "latin1.py", "s = 'caf\xe9'\n".encode("latin-1"))
    _write(stdlib / "site-packages" / "ignored.py", "y = 2\n")  # not the stdlib
    _write(stdlib / "__pycache__" / "cached.py", "z = 3\n")
    _write(stdlib / "notes.txt", "not python")
    return (SourceRoot("stdlib", stdlib),)


def test_sources_are_sorted_deduplicated_and_keep_headers(fake_roots):
    sources = list(iter_python_sources(roots=fake_roots))
    assert [source.path for source in sources] == [
        "stdlib/a_pkg/__init__.py",
        "stdlib/a_pkg/copy_of_b.py",  # first copy in sorted order wins; latin-1 skipped
    ]
    licensed = sources[1]
    assert licensed.text == LICENSED_FILE  # the whole file, header included
    assert licensed.license_header == "# Copyright 2024 Someone\n# Licensed under MIT.\n\n# more\n"
    assert (licensed.package, licensed.license) == ("python-stdlib", "PSF-2.0")


def test_max_files_samples_evenly_and_max_bytes_stops(fake_roots):
    assert evenly_spaced(list(range(10)), 3) == [0, 3, 6]
    assert evenly_spaced([1, 2], None) == [1, 2]
    assert len(list(iter_python_sources(roots=fake_roots, max_files=1))) == 1
    assert [s.path for s in iter_python_sources(roots=fake_roots, max_bytes=10)] == [
        "stdlib/a_pkg/__init__.py"
    ]


def test_leading_comment_block_stops_at_code_or_docstring():
    assert leading_comment_block('#!/bin/python\n"""Doc."""\n# later\n') == "#!/bin/python\n"
    assert leading_comment_block("\n\n# a\n#b\nx=1") == "# a\n#b\n"
    assert leading_comment_block("x = 1  # no header\n") == ""


def test_code_corpus_from_this_machine_is_deterministic(tmp_path):
    first = build_code_corpus(tmp_path / "one", max_files=25, max_bytes=1 << 20)
    second = build_code_corpus(tmp_path / "two", max_files=25, max_bytes=1 << 20)
    records = first.as_data_source("train")
    assert 0 < len(records) <= 25
    assert list(Path(first.data_dir).glob("*.array_record-*"))
    paths = [records[i]["path"].decode() for i in range(len(records))]
    assert paths == sorted(paths, key=lambda p: (not p.startswith("stdlib/"), p))
    assert any(p.startswith("site-packages/") for p in paths)  # the sample spans both roots
    other = second.as_data_source("train")
    assert [other[i]["sha256"] for i in range(len(other))] == [
        records[i]["sha256"] for i in range(len(records))
    ]
    assert len({records[i]["sha256"] for i in range(len(records))}) == len(records)
    for i in range(len(records)):
        assert records[i]["package"] and records[i]["text"]


def test_code_corpus_reuses_an_existing_build(tmp_path, fake_roots):
    builder = build_code_corpus(tmp_path, max_files=None, max_bytes=None, source_roots=fake_roots)
    stamp = (Path(builder.data_dir) / "dataset_info.json").stat().st_mtime_ns
    again = build_code_corpus(tmp_path, max_files=None, max_bytes=None, source_roots=fake_roots)
    assert again.data_dir == builder.data_dir
    assert (Path(again.data_dir) / "dataset_info.json").stat().st_mtime_ns == stamp
    record = again.as_data_source("train")[1]
    assert record["license_header"].decode().startswith("# Copyright 2024 Someone")


def test_text_corpus_reads_jsonl_lines_and_whole_files(tmp_path):
    source = tmp_path / "corpus"
    _write(source / "b.jsonl", '{"text": "first", "id": 1}\n\n{"text": "sécond\\tline"}\n')
    _write(source / "a" / "notes.md", "# Notes\n\tindented ✓\n")
    _write(source / "image.png", b"\x89PNG")  # not a corpus file: ignored
    records = build_text_corpus(source, tmp_path / "data").as_data_source("train")
    assert [
        (records[i]["path"].decode(), int(records[i]["line"]), records[i]["text"].decode())
        for i in range(len(records))
    ] == [
        ("a/notes.md", 0, "# Notes\n\tindented ✓\n"),
        ("b.jsonl", 1, "first"),
        ("b.jsonl", 3, "sécond\tline"),
    ]


@pytest.mark.parametrize(
    "bad_line, reason",
    [
        ('{"text": "cut off', "invalid JSON"),
        ('["a list"]', "expected a JSON object"),
        ('{"body": "no text field"}', "field 'text' missing"),
        ('{"text": 42}', "field 'text' missing or not a string"),
        ('{"text": "\\ud800"}', "lone surrogate"),
    ],
)
def test_malformed_jsonl_record_names_file_and_line(tmp_path, bad_line, reason):
    source = tmp_path / "corpus"
    lines = [json.dumps({"text": "good"}), "", bad_line, json.dumps({"text": "never read"})]
    _write(source / "data.jsonl", "\n".join(lines) + "\n")
    with pytest.raises(MalformedRecordError, match=reason) as raised:
        list(iter_text_documents(source))
    assert str(raised.value).startswith(f"{source / 'data.jsonl'}:3: ")
    assert raised.value.line_number == 3
    # The TFDS build surfaces the same error.
    with pytest.raises(MalformedRecordError, match=r"data\.jsonl:3: "):
        build_text_corpus(source, tmp_path / "data")


def test_text_file_that_is_not_utf8_is_named(tmp_path):
    _write(tmp_path / "c" / "latin.txt", "caf\xe9".encode("latin-1"))
    with pytest.raises(MalformedRecordError, match=r"latin\.txt: not UTF-8"):
        list(iter_text_documents(tmp_path / "c"))


def test_missing_corpus_directory(tmp_path):
    with pytest.raises(FileNotFoundError):
        list(iter_text_documents(tmp_path / "absent"))
