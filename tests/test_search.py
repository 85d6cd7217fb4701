"""Image search (miniclip/search.py, `miniclip index` / `miniclip search`) end to end on seeded weights: the
index's contents, incremental re-runs, unreadable files, interruption (an exception, and a killed process),
damaged indexes, and text / image queries."""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import miniclip
from miniclip.apps.index import build_index, load_index
from miniclip.apps.search import search
from miniclip.cli import main
from miniclip.errors import BrokenIndexError

COLORS = [(250, 20, 20), (20, 250, 20), (20, 20, 250), (250, 250, 20), (20, 250, 250), (250, 20, 250),
          (128, 128, 128)]
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def model(checkpoint):
    return miniclip.load(checkpoint("odd_oc"))


@pytest.fixture
def photos(tmp_path):
    """Seven small images, some in sub-folders, plus a text file that is not an image."""
    root = tmp_path / "photos"
    for i, color in enumerate(COLORS):
        folder = root / ("sub/deeper" if i == 5 else "sub" if i % 2 else "")
        folder.mkdir(parents=True, exist_ok=True)
        image = Image.new("RGB", (90 + 9 * i, 80 + 5 * i), color)
        image.paste((255 - color[0], 255 - color[1], 255 - color[2]), (10, 10, 40 + 3 * i, 50))
        image.save(folder / f"img{i}.png")
    (root / "notes.txt").write_text("not an image")
    return root


def relpaths(root):
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*.png"))


def expected_embeddings(clip, preprocess, root, rel):
    feats = clip.encode_image(np.stack([preprocess(Image.open(root / r)) for r in rel]))
    return feats / np.linalg.norm(feats, axis=-1, keepdims=True)


def counting(monkeypatch, clip):
    """Wrap encode_image to count the images embedded."""
    seen = []
    original = clip.encode_image
    monkeypatch.setattr(clip, "encode_image", lambda x: seen.append(len(x)) or original(x))
    return seen


def test_index_then_search_by_text_and_by_image(model, photos, tmp_path, checkpoint, capsys):
    clip, preprocess = model
    weights, index_dir = str(checkpoint("odd_oc")), tmp_path / "photos.index"
    assert main(["index", str(photos), "--out", str(index_dir), "--weights", weights, "--batch-size", "3"]) == 0
    assert "7 images (7 embedded, 0 unchanged" in capsys.readouterr().out

    manifest = json.loads((index_dir / "manifest.json").read_text())
    rel = relpaths(photos)
    assert [f["path"] for f in manifest["files"]] == rel and manifest["count"] == 7 and manifest["complete"]
    assert manifest["embed_dim"] == 48 and manifest["root"] == str(photos.resolve())
    (shard,) = manifest["embeddings"]
    data = (index_dir / shard["file"]).read_bytes()
    assert hashlib.sha256(data).hexdigest() == shard["sha256"]
    assert sorted(p.name for p in index_dir.iterdir()) == sorted(["manifest.json", shard["file"]])
    stored = np.load(index_dir / shard["file"])
    assert stored.dtype == np.float32
    np.testing.assert_allclose(stored, expected_embeddings(clip, preprocess, photos, rel), atol=1e-6)

    # text -> image: the scores are the cosine similarities, best first
    assert main(["search", str(index_dir), "a red square", "--top", "4", "--weights", weights]) == 0
    lines = capsys.readouterr().out.splitlines()
    text = clip.encode_text(miniclip.tokenize(["a red square"], clip.config.context_length))[0]
    cosine = stored @ (text / np.linalg.norm(text))
    order = np.argsort(-cosine)[:4]
    assert len(lines) == 4
    for rank, (line, i) in enumerate(zip(lines, order, strict=True), start=1):
        n, score, path = line.split()
        assert int(n) == rank and Path(path).resolve() == (photos / rel[i]).resolve()
        assert float(score) == pytest.approx(cosine[i], abs=1e-4)

    # image -> image: the query image itself comes first, with cosine similarity 1
    query = photos / "sub" / "img3.png"
    assert main(["search", str(index_dir), "--image", str(query), "--top", "3", "--weights", weights]) == 0
    first = capsys.readouterr().out.splitlines()[0].split()
    assert Path(first[2]).resolve() == query.resolve() and float(first[1]) == pytest.approx(1.0, abs=1e-4)


def test_html_page_and_contact_sheet(model, photos, tmp_path):
    clip, preprocess = model
    index = build_index(clip, preprocess, photos, tmp_path / "idx").index
    from miniclip.apps.search import embed_text_query, write_contact_sheet, write_html
    results = search(index, embed_text_query(clip, "a blue square"), k=5)
    page, sheet = tmp_path / "out" / "results.html", tmp_path / "sheet.png"
    write_html(results, page, "a blue square")
    write_contact_sheet(results, sheet, "a blue square", columns=3)
    html = page.read_text()
    sources = [part.split('"')[0] for part in html.split('<img src="')[1:]]
    assert len(sources) == 5 and all(not s.startswith("/") for s in sources)  # relative links
    assert [(page.parent / s).resolve() for s in sources] == [p.resolve() for p, _ in results]
    assert f"{results[0][1]:.4f}" in html
    with Image.open(sheet) as im:
        assert im.format == "PNG" and im.width == 3 * (160 + 6) + 6 and im.height > 2 * 160


def test_unreadable_files_are_skipped_with_reasons(model, photos, tmp_path, checkpoint, capsys):
    (photos / "garbage.jpg").write_bytes(b"this is not a jpeg at all")
    png = (photos / "img0.png").read_bytes()
    (photos / "sub" / "truncated.png").write_bytes(png[: len(png) // 2])
    out = tmp_path / "idx"
    assert main(["index", str(photos), "--out", str(out), "--weights", str(checkpoint("odd_oc"))]) == 0
    stdout = capsys.readouterr().out
    assert "7 images" in stdout and "skipped 2 unreadable files:" in stdout
    assert "garbage.jpg: not an image file Pillow can identify" in stdout
    assert "sub/truncated.png: cannot read or decode the image (truncated or corrupt?)" in stdout
    index = load_index(out)
    assert len(index.entries) == 7 and "garbage.jpg" not in [e.path for e in index.entries]
    assert {s["path"] for s in index.manifest["skipped"]} == {"garbage.jpg", "sub/truncated.png"}


def test_rerun_embeds_only_new_or_changed_files(model, photos, tmp_path, monkeypatch):
    clip, preprocess = model
    out = tmp_path / "idx"
    build_index(clip, preprocess, photos, out, batch_size=2)
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    seen = counting(monkeypatch, clip)
    report = build_index(clip, preprocess, photos, out, batch_size=2)
    assert seen == [] and report.embedded == 0 and report.reused == 7
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before  # and leaves the files alone

    # modify one file's content, touch another, add one, delete one
    Image.new("RGB", (70, 70), (10, 200, 100)).save(photos / "img0.png")
    st = os.stat(photos / "img2.png")
    os.utime(photos / "img2.png", ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    Image.new("RGB", (60, 90), (200, 100, 10)).save(photos / "sub" / "new.png")
    (photos / "sub" / "img1.png").unlink()
    report = build_index(clip, preprocess, photos, out, batch_size=2)
    assert sum(seen) == 3 and report.embedded == 3 and report.reused == 4 and report.removed == 3
    incremental = load_index(out)

    clean = build_index(clip, preprocess, photos, tmp_path / "clean", batch_size=5).index
    assert incremental.entries == clean.entries and [e.path for e in clean.entries] == relpaths(photos)
    np.testing.assert_allclose(incremental.embeddings, clean.embeddings, atol=1e-6)
    assert len(list(out.glob("*.npy"))) == 1  # the superseded embeddings file was removed


def test_an_exception_mid_run_saves_progress_and_the_rerun_resumes(model, photos, tmp_path, monkeypatch):
    clip, preprocess = model
    out = tmp_path / "idx"
    original = clip.encode_image
    calls = []

    def failing(x):
        calls.append(len(x))
        if len(calls) == 4:
            raise KeyboardInterrupt  # as Ctrl-C would, in the middle of the 4th batch
        return original(x)

    monkeypatch.setattr(clip, "encode_image", failing)
    with pytest.raises(KeyboardInterrupt):
        build_index(clip, preprocess, photos, out, batch_size=1, checkpoint_every=100)
    partial = load_index(out)
    assert not partial.complete and len(partial.entries) == 3  # the 3 finished batches were saved

    monkeypatch.setattr(clip, "encode_image", original)
    seen = counting(monkeypatch, clip)
    report = build_index(clip, preprocess, photos, out, batch_size=1)
    assert report.embedded == 4 and report.reused == 3 and sum(seen) == 4
    resumed = load_index(out)
    clean = build_index(clip, preprocess, photos, tmp_path / "clean").index
    assert resumed.complete and resumed.entries == clean.entries
    np.testing.assert_allclose(resumed.embeddings, clean.embeddings, atol=1e-6)
    assert len(list(out.glob("*.npy"))) == 1 and not list(out.glob(".*"))  # parts and temp files cleaned up


KILLER = """
import os, signal, sys
import miniclip
from miniclip.apps.index import build_index
model, preprocess = miniclip.load(sys.argv[1])
original, calls = model.encode_image, []
def encode(x):
    calls.append(1)
    if len(calls) == 4:
        os.kill(os.getpid(), signal.SIGKILL)  # a hard crash: no exception handler runs
    return original(x)
model.encode_image = encode
build_index(model, preprocess, sys.argv[2], sys.argv[3], batch_size=1, checkpoint_every=2)
"""


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX signals")
def test_a_killed_run_loses_at_most_one_chunk(model, photos, tmp_path, checkpoint, monkeypatch, capsys):
    clip, preprocess = model
    out = tmp_path / "idx"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, "-c", KILLER, str(checkpoint("odd_oc")), str(photos), str(out)],
                            env=env, capture_output=True, text=True)
    assert result.returncode == -signal.SIGKILL, result.stderr
    partial = load_index(out)  # the checkpoint after batch 2 is a consistent (incomplete) index
    assert not partial.complete and len(partial.entries) == 2

    # searching it works, with a warning that it is incomplete
    assert main(["search", str(out), "a cat", "--weights", str(checkpoint("odd_oc"))]) == 0
    captured = capsys.readouterr()
    assert len(captured.out.splitlines()) == 2 and "incomplete" in captured.err

    seen = counting(monkeypatch, clip)
    report = build_index(clip, preprocess, photos, out, batch_size=1)
    assert report.embedded == 5 and report.reused == 2 and sum(seen) == 5
    clean = build_index(clip, preprocess, photos, tmp_path / "clean").index
    resumed = load_index(out)
    assert resumed.complete and resumed.entries == clean.entries
    np.testing.assert_allclose(resumed.embeddings, clean.embeddings, atol=1e-6)


def test_a_damaged_index_is_detected_never_used(model, photos, tmp_path, checkpoint, capsys):
    clip, preprocess = model
    weights = str(checkpoint("odd_oc"))
    out = tmp_path / "idx"
    build_index(clip, preprocess, photos, out)
    manifest_text = (out / "manifest.json").read_text()
    (npy,) = out.glob("embeddings-*.npy")
    good = npy.read_bytes()

    def broken(message):
        with pytest.raises(BrokenIndexError, match=message):
            load_index(out)
        assert main(["search", str(out), "a dog", "--weights", weights]) == 1
        err = capsys.readouterr().err
        assert "miniclip: error:" in err and "miniclip index" in err

    npy.write_bytes(good[: len(good) - 100])  # half-written embeddings
    broken("does not match the checksum")
    npy.write_bytes(good[:-4] + b"\0\0\0\0")  # same size, changed content
    broken("does not match the checksum")
    npy.unlink()
    broken("cannot be read")
    npy.write_bytes(good)
    (out / "manifest.json").unlink()  # embeddings but no manifest: a folder that is not (or no longer) an index
    broken("embeddings files but no manifest.json")
    assert main(["index", str(photos), "--out", str(out), "--weights", weights]) == 1  # not provably ours
    assert "not a miniclip index; refusing" in capsys.readouterr().err and npy.read_bytes() == good
    (out / "manifest.json").write_text(manifest_text[: len(manifest_text) // 2])  # half-written manifest
    broken("not valid JSON")

    # a miniclip manifest (by its format key, even cut short): `miniclip index` says so and rebuilds from scratch
    assert main(["index", str(photos), "--out", str(out), "--weights", weights]) == 0
    captured = capsys.readouterr()
    assert "rebuilt from scratch" in captured.err and "7 embedded" in captured.out
    assert load_index(out).complete


def test_another_model_invalidates_the_index(model, photos, tmp_path, checkpoint, capsys):
    clip, preprocess = model
    out = tmp_path / "idx"
    build_index(clip, preprocess, photos, out)
    other = str(checkpoint("odd_hf"))
    assert main(["search", str(out), "a dog", "--weights", other]) == 1
    assert "different model" in capsys.readouterr().err
    assert main(["index", str(photos), "--out", str(out), "--weights", other]) == 0
    captured = capsys.readouterr()
    assert "7 embedded, 0 unchanged" in captured.out and "different model" in captured.err
    assert main(["search", str(out), "a dog", "--weights", other]) == 0


def test_misuse_is_reported_clearly(photos, tmp_path, checkpoint, capsys):
    weights = str(checkpoint("odd_oc"))
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "thesis.tex").write_text("precious")
    assert main(["index", str(photos), "--out", str(busy), "--weights", weights]) == 1
    assert "not a miniclip index; refusing to write into it" in capsys.readouterr().err
    assert (busy / "thesis.tex").read_text() == "precious"
    assert main(["search", str(tmp_path / "nowhere"), "a dog", "--weights", weights]) == 1
    assert "no index there" in capsys.readouterr().err
    assert main(["index", str(tmp_path / "missing"), "--out", str(tmp_path / "i"), "--weights", weights]) == 1
    assert "not a folder" in capsys.readouterr().err
    out = tmp_path / "idx"
    assert main(["index", str(photos), "--out", str(out), "--weights", weights]) == 0
    assert main(["search", str(out), "a dog", "--image", str(photos / "img0.png"), "--weights", weights]) == 1
    assert "either a text query" in capsys.readouterr().err


def test_an_index_inside_the_folder_does_not_index_itself(model, photos):
    clip, preprocess = model
    report = build_index(clip, preprocess, photos, photos / "my-index")
    assert all(not e.path.startswith("my-index") for e in report.index.entries)
    assert len(report.index.entries) == 7 and report.ignored == 1  # notes.txt


def test_progress_bar_draws_on_a_terminal_only():
    import io

    from miniclip.terminal import Progress

    stream = io.StringIO()
    now = [0.0]
    bar = Progress("indexing", 4, unit="img", enabled=True, stream=stream, clock=lambda: now[0])
    now[0] += 1.0
    bar.update(1)
    now[0] += 1.0
    bar.update(3)
    bar.finish()
    text = stream.getvalue()
    assert "\rindexing  [#####...............]   25%  1/4  1.0 img/s  ETA 0:03" in text
    assert "100%  4/4" in text and text.endswith("\n")
    quiet = io.StringIO()  # not a terminal: nothing drawn by default
    bar = Progress("indexing", 4, unit="img", stream=quiet)
    bar.update(4)
    bar.finish()
    assert quiet.getvalue() == ""


# --------------------------------------------------------------------------------------------------
# Hostile folders, files and indexes (issue 15)
# --------------------------------------------------------------------------------------------------


def run_bounded(function, seconds=60):
    """Run function() in a thread and fail (instead of hanging the suite) if it does not return in time."""
    result = {}

    def target():
        try:
            result["value"] = function()
        except BaseException as e:  # handed to the caller
            result["error"] = e

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"{function} still running after {seconds} s (blocked?)"
    if "error" in result:
        raise result["error"]
    return result["value"]


def test_only_a_miniclip_manifest_makes_a_folder_an_index(model, photos, tmp_path, checkpoint, capsys):
    clip, preprocess = model
    weights = str(checkpoint("odd_oc"))
    webapp = tmp_path / "webapp"  # a folder with an unrelated manifest.json and .npy files named like ours
    webapp.mkdir()
    (webapp / "manifest.json").write_text('{"name": "my app", "icons": []}')
    (webapp / "embeddings-0123456789abcdef.npy").write_bytes(b"mine")
    assert main(["index", str(photos), "--out", str(webapp), "--weights", weights]) == 1
    assert "holds a manifest.json that is not a miniclip index's; refusing" in capsys.readouterr().err
    assert (webapp / "manifest.json").read_text() == '{"name": "my app", "icons": []}'
    assert sorted(p.name for p in webapp.iterdir()) == ["embeddings-0123456789abcdef.npy", "manifest.json"]

    # an index holding files it never listed: a rebuild that replaces its embeddings keeps them
    out = tmp_path / "idx"
    build_index(clip, preprocess, photos, out)
    (old,) = out.glob("embeddings-*.npy")
    strangers = {"embeddings-fedcba9876543210.npy": b"a", "part-0000000000000000.npy": b"b",
                 "embeddings-notes.npy": b"c", "part-1.npy": b"d", ".embeddings-x.npy.1.tmp": b"e"}
    for name, data in strangers.items():
        (out / name).write_bytes(data)
    Image.new("RGB", (70, 70), (10, 200, 100)).save(photos / "img0.png")  # changes the embeddings
    report = build_index(clip, preprocess, photos, out)
    assert report.embedded == 1 and not old.exists()  # the index's own superseded file is deleted
    assert {name: (out / name).read_bytes() for name in strangers} == strangers
    assert any("left in place" in n and "embeddings-fedcba9876543210.npy" in n for n in report.notes)
    assert load_index(out).complete


def test_a_file_named_before_it_is_written_is_deleted_by_the_next_build(model, photos, tmp_path, monkeypatch):
    """A build names each data file in the manifest (as pending) before writing it, so a run killed just
    after writing one leaves no file that the next build does not know to delete."""
    import miniclip.apps.index as search_module
    clip, preprocess = model
    out = tmp_path / "idx"
    real_write = search_module.atomic_write_bytes

    def killed_after_the_embeddings(path, data):
        real_write(path, data)
        if Path(path).name.startswith("embeddings-"):
            raise KeyboardInterrupt  # as a kill right after the file, before the manifest naming it complete

    monkeypatch.setattr(search_module, "atomic_write_bytes", killed_after_the_embeddings)
    with pytest.raises(KeyboardInterrupt):
        build_index(clip, preprocess, photos, out, checkpoint_every=100)
    monkeypatch.undo()
    (orphan,) = out.glob("embeddings-*.npy")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["pending"] == [orphan.name] and manifest["count"] == 0  # named, not yet used

    Image.new("RGB", (70, 70), (10, 200, 100)).save(photos / "img0.png")  # a different final file this time
    report = build_index(clip, preprocess, photos, out)
    assert not orphan.exists() and report.notes == []
    (shard,) = out.glob("*.npy")
    assert sorted(p.name for p in out.iterdir()) == sorted(["manifest.json", shard.name])
    assert json.loads((out / "manifest.json").read_text())["pending"] == []


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_fifos_and_devices_named_like_images_are_skipped_never_read(model, photos, tmp_path, checkpoint, capsys):
    from miniclip.errors import ImageError
    from miniclip.preprocess import load_image
    os.mkfifo(photos / "pipe.png")  # opening it for reading would block until a writer comes: never
    (photos / "sub" / "zero.jpg").symlink_to("/dev/zero")  # reading it would never end
    with pytest.raises(ImageError, match=r"pipe.png: cannot read the file: a FIFO \(named pipe\), not a regular"):
        run_bounded(lambda: load_image(photos / "pipe.png"))
    with pytest.raises(ImageError, match="zero.jpg: cannot read the file: a character device"):
        run_bounded(lambda: load_image(photos / "sub" / "zero.jpg"))
    with pytest.raises(ImageError, match="a folder, not a regular file"):
        load_image(photos / "sub")

    out = tmp_path / "idx"
    weights = str(checkpoint("odd_oc"))
    assert run_bounded(lambda: main(["index", str(photos), "--out", str(out), "--weights", weights])) == 0
    stdout = capsys.readouterr().out
    assert "7 images (7 embedded" in stdout and "skipped 2 unreadable files:" in stdout
    assert "  pipe.png: cannot read the file: a FIFO (named pipe), not a regular file" in stdout
    assert "  sub/zero.jpg: cannot read the file: a character device, not a regular file" in stdout
    assert {s["path"] for s in load_index(out).manifest["skipped"]} == {"pipe.png", "sub/zero.jpg"}


def _craft(out: Path, change) -> None:
    """Rewrite the index's manifest through change(manifest) (which may return a replacement)."""
    manifest = json.loads((out / "manifest.json").read_text())
    changed = change(manifest)
    text = changed if isinstance(changed, str) else json.dumps(manifest if changed is None else changed)
    (out / "manifest.json").write_text(text)


def _npy_file(out: Path, array_bytes: bytes, rows: int):
    """Put .npy bytes into the index as its one embeddings file, with a manifest record that matches them."""
    digest = hashlib.sha256(array_bytes).hexdigest()
    name = f"embeddings-{digest[:16]}.npy"
    (out / name).write_bytes(array_bytes)
    return lambda m: m.update(embeddings=[{"file": name, "rows": rows, "bytes": len(array_bytes), "sha256": digest}])


def _lying_header(rows: int, dim: int, descr: str = "<f4") -> bytes:
    """A .npy whose header declares a [rows, dim] array of `descr` but which holds 7 x 48 float32 values."""
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": descr, "fortran_order": False, "shape": (rows, dim)})
    return buffer.getvalue() + np.zeros((7, 48), np.float32).tobytes()


def test_a_crafted_index_is_refused_never_read_outside_and_rebuilt(photos, tmp_path, checkpoint, capsys):
    weights = str(checkpoint("odd_oc"))
    out = tmp_path / "idx"
    assert main(["index", str(photos), "--out", str(out), "--weights", weights]) == 0
    good = (out / "manifest.json").read_text()
    outside = tmp_path / "secret.png"  # beside the photos folder: an entry must never reach it
    Image.new("RGB", (20, 20), (1, 2, 3)).save(outside)
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "embeddings-0123456789abcdef.npy").write_bytes(b"keep me")
    os.mkfifo(out / "embeddings-aaaaaaaaaaaaaaaa.npy")
    (out / "embeddings-bbbbbbbbbbbbbbbb.npy").symlink_to("/dev/zero")

    def shard_file(name):
        return lambda m: m["embeddings"][0].update(file=name)

    def record(name, size):
        return lambda m: m["embeddings"][0].update(file=name, bytes=size, rows=7)

    cases = {
        "/dev/zero": (shard_file("/dev/zero"), "not an index file's name"),
        "../../../../etc/passwd": (shard_file("../../../../etc/passwd"), "not an index file's name"),
        "/etc/passwd": (shard_file("/etc/passwd"), "not an index file's name"),
        "outside the folder": (shard_file("../victim/embeddings-0123456789abcdef.npy"), "not an index file's name"),
        "a FIFO": (record("embeddings-aaaaaaaaaaaaaaaa.npy", 1472), r"a FIFO \(named pipe\), not a regular file"),
        "a device": (record("embeddings-bbbbbbbbbbbbbbbb.npy", 1472), "a character device, not a regular file"),
        "a string as shard": (lambda m: m.update(embeddings=["embeddings-0123456789abcdef.npy"]),
                              "embeddings 'file' missing or not a str"),
        "10^8 rows in the .npy header": (_npy_file(out, _lying_header(10**8, 48), 7),
                                         r"holds float32 \[100000000, 48\], the manifest says float32 \[7, 48\]"),
        "10^8 rows in the manifest": (lambda m: m["embeddings"][0].update(rows=10**8), "out of range"),
        "object dtype": (_npy_file(out, _lying_header(7, 48, "|O"), 7), r"holds object \[7, 48\]"),
        "100k-deep JSON": (lambda m: '{"format": "miniclip-index", "version": 1, "files": '
                           + "[" * 100_000 + "]" * 100_000 + "}", "not valid JSON"),
        "an entry outside the folder": (lambda m: m["files"][0].update(path="../secret.png"),
                                        "not a relative path inside the indexed folder"),
        "an absolute entry": (lambda m: m["files"][0].update(path=str(outside)),
                              "not a relative path inside the indexed folder"),
        "a string as entry": (lambda m: m["files"].__setitem__(0, "img0.png"), "file 'path' missing"),
        "a boolean count": (lambda m: m.update(count=True), "'count' missing or not an int"),
        "a huge embed_dim": (lambda m: m.update(embed_dim=10**12), "out of range"),
        "a list as manifest": (lambda m: [m], "not a miniclip index manifest"),
    }
    for case, (change, message) in cases.items():
        _craft(out, change)
        with pytest.raises(BrokenIndexError, match=message):
            run_bounded(lambda: load_index(out), seconds=30)
        assert main(["search", str(out), "a dog", "--sheet", str(tmp_path / "s.png"), "--weights", weights]) == 1, case
        assert "miniclip: error:" in capsys.readouterr().err and not (tmp_path / "s.png").exists()
        if case == "a list as manifest":  # no longer a miniclip manifest by its format key: refused, kept
            assert main(["index", str(photos), "--out", str(out), "--weights", weights]) == 1
            assert "not a miniclip index's" in capsys.readouterr().err
            (out / "manifest.json").write_text(good)
            continue
        # `miniclip index` notes the damage and rebuilds, deleting nothing it did not write
        assert run_bounded(lambda: main(["index", str(photos), "--out", str(out), "--weights", weights])) == 0, case
        captured = capsys.readouterr()
        assert "rebuilt from scratch" in captured.err and "7 embedded" in captured.out, case
        assert load_index(out).complete and (out / "manifest.json").read_text() == good, case
    assert (victim / "embeddings-0123456789abcdef.npy").read_bytes() == b"keep me"
    assert Path("/etc/passwd").exists() and outside.exists()
    # the FIFO and the symlink were named by a manifest of this index: the rebuild deleted them (unlinking opens
    # nothing; the symlink goes, never its target)
    assert not os.path.lexists(out / "embeddings-aaaaaaaaaaaaaaaa.npy")
    assert not os.path.lexists(out / "embeddings-bbbbbbbbbbbbbbbb.npy")
    assert Path("/dev/zero").is_char_device()

    # the manifest itself a device: refused at once, and not taken for an index (nothing to go by)
    (out / "manifest.json").unlink()
    (out / "manifest.json").symlink_to("/dev/zero")
    with pytest.raises(BrokenIndexError, match="manifest.json: cannot be read .a character device"):
        run_bounded(lambda: load_index(out), seconds=30)
    assert run_bounded(lambda: main(["index", str(photos), "--out", str(out), "--weights", weights])) == 1
    assert "holds a manifest.json that is not a miniclip index's" in capsys.readouterr().err


def test_names_that_are_not_utf8_or_hold_control_characters(model, photos, tmp_path, checkpoint, capsys):
    """A name that is not UTF-8 is kept (surrogateescape, written as a JSON escape); names reach the terminal,
    the contact sheet and the page with their control characters escaped."""
    weights = str(checkpoint("odd_oc"))
    latin1 = os.fsdecode(b"caf\xe9.png")  # "caf\udce9.png": the byte 0xE9 is not UTF-8
    hostile = {latin1: (240, 10, 10), "new\nline.png": (10, 240, 10), "esc\x1b[31mred\r.png": (10, 10, 240)}
    for name, color in hostile.items():
        Image.new("RGB", (64, 64), color).save(photos / name)
    (photos / "bad\x1b]0;title\x07.png").write_bytes(b"not an image")
    out = tmp_path / "idx"
    assert main(["index", str(photos), "--out", str(out), "--weights", weights]) == 0
    stdout = capsys.readouterr().out
    assert "10 images (10 embedded" in stdout and "  bad\\x1b]0;title\\x07.png: not an image" in stdout
    raw = (out / "manifest.json").read_bytes()
    manifest = json.loads(raw.decode("utf-8"))  # strict UTF-8: the odd byte is a JSON escape
    assert b'"caf\\udce9.png"' in raw and latin1 in [f["path"] for f in manifest["files"]]
    index = load_index(out)
    assert all(p.is_file() for p in index.paths()) and (photos / latin1) in index.paths()

    sheet, page = tmp_path / "sheet.png", tmp_path / "page.html"
    assert main(["search", str(out), "a\nred\x1b[2J square", "--top", "10", "--sheet", str(sheet), "--html", str(page),
                 "--weights", weights]) == 0
    captured = capsys.readouterr()
    assert not any(c in captured.out for c in "\x1b\r\x07") and len(captured.out.splitlines()) == 10
    for shown in ["caf\\xe9.png", "new\\nline.png", "esc\\x1b[31mred\\r.png"]:
        assert shown in captured.out
    with Image.open(sheet) as im:
        assert im.format == "PNG"
    html = page.read_text(encoding="utf-8")
    assert 'src="photos/caf%E9.png"' in html and "caf\\xe9.png" in html and "a\\nred\\x1b[2J square" in html


def test_printable_escapes_what_a_terminal_would_obey():
    from miniclip.terminal import printable
    assert printable("café 日本 👨\u200d👩\u200d👧 a b.png") == "café 日本 👨\u200d👩\u200d👧 a b.png"
    assert printable("a\nb\r\t\x1b[31m\x07\x7f\x9b") == "a\\nb\\r\\t\\x1b[31m\\x07\\x7f\\x9b"
    assert printable(os.fsdecode(b"caf\xe9\xff.png")) == "caf\\xe9\\xff.png"
    assert printable("gnp.\u202eexe \u2028 \ud800") == "gnp.\\u202eexe \\u2028 \\ud800"
