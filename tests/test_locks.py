"""One process at a time: two index builds into one folder, two downloads of one file."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import threading
import time

import pytest

from miniclip.apps.search import LOCK_FILE, build_index
from miniclip.errors import MiniclipError
from miniclip.hub import download as hub
from miniclip.store import Locked, file_lock

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="flock is POSIX-only (README Limitations)")


def test_second_holder_is_refused_and_the_lock_file_goes_away(tmp_path):
    path = tmp_path / "x.lock"
    with file_lock(path, wait=False):
        assert path.read_text() == str(os.getpid())
        with pytest.raises(Locked) as e, file_lock(path, wait=False):
            pass
        assert e.value.holder == str(os.getpid())
    assert not path.exists()
    with file_lock(path, wait=False):  # free again
        pass


def test_a_lock_file_left_by_a_killed_process_is_not_a_lock(tmp_path):
    path = tmp_path / "x.lock"
    path.write_text("999999")  # what a SIGKILLed holder leaves: the kernel released its flock
    with file_lock(path, wait=False):
        assert path.read_text() == str(os.getpid())


def test_waiting_for_another_process(tmp_path):
    path, started, done = tmp_path / "x.lock", tmp_path / "started", tmp_path / "done"
    child = subprocess.Popen([sys.executable, "-c", (
        "import pathlib, sys, time\n"
        "from miniclip.store import file_lock\n"
        f"with file_lock({str(path)!r}, wait=False):\n"
        f"    pathlib.Path({str(started)!r}).touch()\n"
        "    time.sleep(1.0)\n"
        f"    pathlib.Path({str(done)!r}).touch()\n")])
    try:
        deadline = time.monotonic() + 30
        while not started.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert started.exists(), "the child never took the lock"
        waited = []
        with file_lock(path, wait=True, on_wait=waited.append):
            assert done.exists()  # we only got it once the child was through with it
        assert waited == [str(child.pid)]
    finally:
        child.wait(timeout=30)
    assert child.returncode == 0


def test_second_index_build_into_one_folder_is_refused(tmp_path):
    photos, out = tmp_path / "photos", tmp_path / "idx"
    photos.mkdir()
    out.mkdir()
    with file_lock(out / LOCK_FILE, wait=False):  # as a running `miniclip index` holds it
        with pytest.raises(MiniclipError, match=r"another `miniclip index` \(process \d+\) is writing"):
            build_index(model=None, preprocess=None, root=photos, out=out)


def test_second_download_of_a_file_waits_then_uses_the_first_ones(tmp_path, monkeypatch):
    """While another process holds a file's download lock, download_file waits (saying so), and when that
    process has put the verified file in place, returns it without downloading anything."""
    def no_network(*args, **kwargs):
        raise AssertionError("nothing should be fetched: the other process downloaded the file")

    monkeypatch.setattr(hub, "locate", no_network)
    directory, stream = tmp_path / "repo", io.StringIO()
    directory.mkdir()
    result = {}
    with file_lock(directory / "model.safetensors.lock", wait=False):
        thread = threading.Thread(target=lambda: result.setdefault(
            "path", hub.download_file("some/repo", "model.safetensors", directory, stream=stream)))
        thread.start()
        deadline = time.monotonic() + 30
        while "waiting for another process" not in stream.getvalue() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert f"waiting for another process ({os.getpid()}) downloading model.safetensors" in stream.getvalue()
        (directory / "model.safetensors").write_bytes(b"done")  # the other process finishes
    thread.join(timeout=30)
    assert result["path"] == directory / "model.safetensors"
    assert sorted(p.name for p in directory.iterdir()) == ["model.safetensors"]  # no lock or .part left
