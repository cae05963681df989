"""Writes that a crash or a power cut cannot half-do: atomic and durable files, folders swapped whole."""

from __future__ import annotations

import os
import threading

from storage import files
from storage.files import atomic_write_text, replace_dir


def test_a_reader_never_sees_no_folder_while_it_is_replaced(tmp_path):
    """An index folder replaced 200 times while a reader looks at it: the reader sees the old or the new one,
    never a moment without one."""
    final = tmp_path / "index"
    final.mkdir()
    (final / "meta.json").write_text("0")
    missing: list[int] = []
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            if not (final / "meta.json").exists():
                missing.append(1)

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for i in range(1, 201):
            built = tmp_path / f"built-{i}"
            built.mkdir()
            (built / "meta.json").write_text(str(i))
            replace_dir(built, final)
    finally:
        stop.set()
        thread.join()
    assert not missing and (final / "meta.json").read_text() == "200"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index"]  # every old folder removed


def test_without_an_atomic_exchange_the_old_folder_still_goes_whole(tmp_path, monkeypatch):
    monkeypatch.setattr(files, "_exchange", lambda a, b: False)  # a kernel or file system without it
    final = tmp_path / "index"
    final.mkdir()
    (final / "a").write_text("old")
    built = tmp_path / "new"
    built.mkdir()
    (built / "a").write_text("new")
    replace_dir(built, final)
    assert (final / "a").read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["index"]


def test_data_reaches_the_disk_before_the_rename_that_commits_it(tmp_path, monkeypatch):
    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: events.append("fsync") or real_fsync(fd))
    monkeypatch.setattr(os, "replace", lambda a, b: events.append("replace") or real_replace(a, b))
    atomic_write_text(tmp_path / "part-00000.done", "{}")
    assert events == ["fsync", "replace", "fsync"]  # the file, the rename, the folder entry
