"""One process at a time: two index builds into one folder, two downloads of one file; readers of an index
while a build replaces it."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from miniclip.apps.index import LOCK_FILE, build_index, load_index
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


class _QuickModel:
    """A stand-in for CLIP that embeds a 1-colour image as [red, 1, nonce] (normalized): the first two
    numbers tie each row to its image, the nonce makes every build's embeddings file a new one."""

    config = SimpleNamespace(embed_dim=3)
    _miniclip_fingerprint = "quick"  # read by model_fingerprint instead of hashing weights

    def __init__(self):
        self.rng = np.random.default_rng(0)

    def encode_image(self, pixels):  # [B, 1] -> [B, 3]
        red = pixels[:, 0]
        return np.stack([red, np.ones_like(red), self.rng.uniform(0.1, 1.0, len(red))], axis=1).astype(np.float32)


def test_a_reader_sees_a_whole_index_while_builds_replace_it(tmp_path):
    """Readers go by the manifest, and a build deletes files only after its new manifest is in place; a reader
    that loaded the previous manifest finds a listed file gone and reads the new manifest. So a reader never
    sees a half-written index, and every row it gets belongs to its file. (Before this was fixed, this loop
    gave "cannot be read" errors, about 1 load in 1000.)"""
    photos, out = tmp_path / "photos", tmp_path / "idx"
    photos.mkdir()
    for i in range(6):
        Image.new("RGB", (4, 4), (40 * i, 0, 0)).save(photos / f"{i}.png")
    model = _QuickModel()

    def preprocess(image):
        return np.array([image.getpixel((0, 0))[0] / 255], np.float32)

    build_index(model, preprocess, photos, out)
    loads, errors, done = [], [], threading.Event()

    def reader():
        while not done.is_set() or len(loads) < 3:
            try:
                index = load_index(out)
            except Exception as e:  # BrokenIndexError is what a half-written index gave; anything else is a bug
                errors.append(f"{type(e).__name__}: {e}")
                continue
            for entry, row in zip(index.entries, index.embeddings, strict=True):
                if abs(row[0] / row[1] - 40 * int(entry.path[0]) / 255) > 1e-5:
                    errors.append(f"{entry.path}: a row that is not its image's")
            loads.append(index.complete)

    thread = threading.Thread(target=reader)
    thread.start()
    builds, stop = 0, time.monotonic() + 3.0
    try:
        while time.monotonic() < stop or builds < 3:
            path = photos / f"{builds % 6}.png"  # a newer mtime: that image is embedded again, with a new nonce
            os.utime(path, ns=(time.time_ns(), path.stat().st_mtime_ns + 1000))
            build_index(model, preprocess, photos, out, batch_size=1, checkpoint_every=1)
            builds += 1
    finally:
        done.set()
        thread.join()
    print(f"{builds} builds, {len(loads)} loads ({loads.count(False)} of a checkpoint), {len(errors)} errors")
    assert errors == [], errors[:3]
    assert load_index(out).complete and len(list(out.glob("*.npy"))) == 1
