"""Image search (miniclip/search.py, `miniclip index` / `miniclip search`) end to end on seeded weights: the
index's contents, incremental re-runs, unreadable files, interruption (an exception, and a killed process),
damaged indexes, and text / image queries."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import miniclip
from miniclip.apps.search import build_index, load_index, search
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
from miniclip.apps.search import build_index
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
