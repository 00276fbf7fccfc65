"""Properties of the path checks every command runs before reading or writing: any name, any kind of thing there.
`CARELENS_FUZZ_EXAMPLES` sets the examples per property (`make fuzz`: 10,000)."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from carelens.data.contracts import ContractError
from carelens.data.errors import UsageError
from carelens.data.paths import output_file, output_folder, plain_file, shown_path

EXAMPLES = int(os.environ.get("CARELENS_FUZZ_EXAMPLES", 50))
#: File names as bytes: anything a POSIX file system takes (no slash, no NUL, at most 255 bytes), UTF-8 or not.
NAMES = st.binary(min_size=1, max_size=60).filter(lambda b: b"/" not in b and b"\0" not in b and b not in (b".", b".."))
KINDS = ("missing", "file", "folder", "fifo", "device", "link to file", "link to folder", "dangling link")


def made(folder: Path, name: bytes, kind: str) -> bytes:
    """The path (bytes) of `kind` made under `folder` with `name`."""
    path = os.path.join(os.fsencode(folder), name)
    target = os.path.join(os.fsencode(folder), b"target")
    if kind in ("file", "link to file"):
        Path(os.fsdecode(target if kind == "link to file" else path)).write_text("customer_id\n")
    if kind in ("folder", "link to folder"):
        os.mkdir(target if kind == "link to folder" else path)
    if kind == "fifo":
        os.mkfifo(path)
    if kind.startswith("link"):
        os.symlink(target, path)
    if kind == "device":
        os.symlink(b"/dev/zero", path)
    if kind == "dangling link":
        os.symlink(os.path.join(os.fsencode(folder), b"nowhere"), path)
    return path


def outcome(check, path) -> str:
    """'ok', or the refusal's message (which must name the path)."""
    try:
        check(path)
    except (ContractError, UsageError) as exc:
        return str(exc)
    return "ok"


def utf8(name: bytes) -> bool:
    try:
        name.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


@given(name=NAMES, kind=st.sampled_from(KINDS))
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_property_only_a_regular_file_with_a_utf8_name_is_read_and_a_refusal_names_the_path(name, kind):
    with tempfile.TemporaryDirectory() as folder:
        path = made(Path(folder), name, kind)
        result = outcome(plain_file, os.fsdecode(path))
        readable = kind in ("file", "link to file") and utf8(name)
        assert (result == "ok") == readable, (kind, name, result)
        if not readable:
            assert shown_path(os.fsdecode(path)) in result


@given(name=NAMES, kind=st.sampled_from(KINDS))
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_property_an_output_file_or_folder_is_refused_where_something_else_is_and_nothing_is_touched(name, kind):
    with tempfile.TemporaryDirectory() as folder:
        path = os.fsdecode(made(Path(folder), name, kind))
        before = sorted(os.listdir(folder))
        # A dangling link names nothing: writing through it creates its target, as for a missing path.
        nothing_there = kind in ("missing", "dangling link")
        assert (outcome(output_file, path) == "ok") == (nothing_there or kind in ("file", "link to file"))
        assert (outcome(output_folder, path) == "ok") == (nothing_there or kind in ("folder", "link to folder"))
        for check in (output_file, output_folder):
            result = outcome(check, path)
            assert result == "ok" or path in result
        assert sorted(os.listdir(folder)) == before


@pytest.mark.parametrize("kind", ["fifo", "device", "folder"])
def test_a_refused_input_is_never_opened(kind, tmp_path, monkeypatch):
    path = os.fsdecode(made(tmp_path, b"calls.jsonl", kind))
    opened = []
    monkeypatch.setattr("builtins.open", lambda *a, **k: opened.append(a) or pytest.fail("opened"))
    with pytest.raises(ContractError, match="expected a regular file"):
        plain_file(path)
    assert opened == []
