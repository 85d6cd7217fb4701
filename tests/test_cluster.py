"""Indexing and searching on a Dask cluster (miniclip/apps/cluster.py, `--cluster`), and search at scale
(memory-mapped, blockwise top-k): a LocalCluster of 2 worker processes on the seeded small model gives the
single-process index; a killed worker and a killed driver lose and duplicate nothing; a large synthetic
index is searched exactly with bounded memory. The Dask tests skip when the `dask` extra is not installed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import miniclip
from miniclip.apps.index import Entry, build_index, load_index
from miniclip.apps.search import search, top_k
from miniclip.bench.scale import write_synthetic_index
from miniclip.cli import main
from miniclip.errors import BrokenIndexError

REPO = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
try:
    import distributed  # noqa: F401

    HAVE_DASK, WHY = True, ""
except ImportError:
    HAVE_DASK, WHY = False, 'dask.distributed is not installed (pip install -e ".[test]" or "miniclip[dask]")'
needs_dask = pytest.mark.skipif(not HAVE_DASK, reason=WHY)
needs_kill = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX signals")


@pytest.fixture(scope="module")
def model(checkpoint):
    return miniclip.load(checkpoint("odd_oc"))


@pytest.fixture(scope="module")
def client():
    if not HAVE_DASK:
        pytest.skip(WHY)
    from miniclip.apps.cluster import connect

    with connect("local:2") as c:
        yield c


@pytest.fixture
def photos(tmp_path):
    """24 small distinct images in two folders, and one file that is not a readable image."""
    root = tmp_path / "photos"
    for i in range(24):
        folder = root / ("sub" if i % 3 == 0 else "")
        folder.mkdir(parents=True, exist_ok=True)
        image = Image.new("RGB", (70 + 3 * i, 60 + 2 * i), (10 * i, 250 - 10 * i, (37 * i) % 256))
        image.paste((255 - 10 * i, 10 * i, 128), (5, 5, 20 + i, 30))
        image.save(folder / f"img{i:02d}.png")
    (root / "sub" / "garbage.jpg").write_bytes(b"not a jpeg")
    return root


def cluster_embed(client, checkpoint, clip, batch_size):
    from miniclip.apps.cluster import ModelSpec, embedder

    return embedder(client, ModelSpec.of(checkpoint("odd_oc")), clip, batch_size)


def same_index(a, b):
    assert a.complete and b.complete and a.entries == b.entries
    assert len({e.path for e in a.entries}) == len(a.entries)  # nothing duplicated
    np.testing.assert_allclose(a.embeddings, b.embeddings, atol=1e-5)


# --------------------------------------------------------------------------------------------------
# Indexing on a cluster
# --------------------------------------------------------------------------------------------------


@needs_dask
def test_cluster_index_equals_the_single_process_index(client, model, photos, tmp_path, checkpoint):
    from miniclip.apps.cluster import worker_loads

    clip, preprocess = model
    single = build_index(clip, preprocess, photos, tmp_path / "single", batch_size=5)
    report = build_index(clip, preprocess, photos, tmp_path / "cluster", batch_size=2,
                         embed=cluster_embed(client, checkpoint, clip, 2))
    assert report.embedded == 24 and report.skipped == single.skipped == [
        ("sub/garbage.jpg", "not an image file Pillow can identify")]  # reported by the worker as here
    same_index(load_index(tmp_path / "cluster"), single.index)
    loads = client.run(worker_loads)
    assert len(loads) == 2 and all(n == 1 for n in loads.values()), loads  # 12 batches, one load per worker

    # incremental as ever: nothing new, nothing sent to the cluster; one new file, one batch
    again = build_index(clip, preprocess, photos, tmp_path / "cluster",
                        embed=cluster_embed(client, checkpoint, clip, 2))
    assert again.embedded == 0 and again.reused == 24
    Image.new("RGB", (50, 50), (1, 2, 3)).save(photos / "new.png")
    again = build_index(clip, preprocess, photos, tmp_path / "cluster",
                        embed=cluster_embed(client, checkpoint, clip, 2))
    assert again.embedded == 1 and again.reused == 24
    same_index(load_index(tmp_path / "cluster"), build_index(clip, preprocess, photos, tmp_path / "single").index)


@needs_dask
def test_the_command_line_with_a_scheduler_address(client, photos, tmp_path, checkpoint, capsys):
    weights, out, address = str(checkpoint("odd_oc")), tmp_path / "idx", client.scheduler.address
    assert address.startswith("tcp://")  # the module's LocalCluster, reached as a remote scheduler would be
    assert main(["index", str(photos), "--out", str(out), "--weights", weights, "--cluster", address,
                 "--batch-size", "5"]) == 0
    stdout = capsys.readouterr().out
    assert "24 images (24 embedded" in stdout and "sub/garbage.jpg: not an image file" in stdout
    assert main(["search", str(out), "a green square", "--weights", weights, "--top", "5"]) == 0
    here = capsys.readouterr().out
    assert main(["search", str(out), "a green square", "--weights", weights, "--top", "5", "--cluster",
                 address]) == 0
    assert capsys.readouterr().out == here and len(here.splitlines()) == 5


@needs_dask
@needs_kill
def test_a_killed_worker_loses_and_duplicates_nothing(client, model, photos, tmp_path, checkpoint):
    clip, preprocess = model
    pids = client.run(os.getpid)  # worker address -> process id
    inner = cluster_embed(client, checkpoint, clip, 1)
    victims = []

    def embed(root, entries):
        for n, batch in enumerate(inner(root, entries)):
            if n == 2:  # kill a worker that has batches assigned (running or next), as a crash would
                deadline = time.monotonic() + 10  # the scheduler's view may lag a result just handed back
                while True:
                    processing = client.processing()
                    busy = [address for address, keys in processing.items() if keys]
                    if busy or time.monotonic() > deadline:
                        break
                    time.sleep(0.05)
                assert busy, f"no worker had work to lose: {processing}"
                victims.append(pids[busy[0]])
                os.kill(pids[busy[0]], signal.SIGKILL)
            yield batch

    report = build_index(clip, preprocess, photos, tmp_path / "idx", batch_size=1, embed=embed)
    assert victims and report.embedded == 24 and len(report.skipped) == 1
    same_index(load_index(tmp_path / "idx"), build_index(clip, preprocess, photos, tmp_path / "single").index)
    client.wait_for_workers(2, timeout=120)  # the nanny restarted it: the next test has two workers again
    assert victims[0] not in client.run(os.getpid).values()


@needs_dask
def test_an_interrupted_cluster_run_saves_progress_and_leaves_no_tasks(client, model, photos, tmp_path,
                                                                         checkpoint):
    clip, preprocess = model
    inner = cluster_embed(client, checkpoint, clip, 1)

    def embed(root, entries):
        for n, batch in enumerate(inner(root, entries)):
            if n == 3:
                raise KeyboardInterrupt  # Ctrl-C while batches are in flight
            yield batch

    with pytest.raises(KeyboardInterrupt):
        build_index(clip, preprocess, photos, tmp_path / "idx", batch_size=1, checkpoint_every=100, embed=embed)
    partial = load_index(tmp_path / "idx")
    assert not partial.complete and len(partial.entries) == 3  # the batches received were saved

    def ours(dask_scheduler):  # runs in the scheduler: the tasks of an embedding run still known there
        return [str(key) for key in dask_scheduler.tasks if str(key).startswith("miniclip-embed-")]

    deadline = time.monotonic() + 2
    while client.run_on_scheduler(ours) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert client.run_on_scheduler(ours) == []  # the batches in flight were cancelled: nothing left running
    report = build_index(clip, preprocess, photos, tmp_path / "idx",
                         embed=cluster_embed(client, checkpoint, clip, 4))
    assert report.reused == 3 and report.embedded == 21


DRIVER = """
import os, signal, sys
import miniclip
from miniclip.apps.cluster import ModelSpec, connect, embedder
from miniclip.apps.index import build_index
model, preprocess = miniclip.load(sys.argv[1])
with connect(sys.argv[4]) as client:
    inner = embedder(client, ModelSpec.of(sys.argv[1]), model, 1)
    def embed(root, entries):
        for n, batch in enumerate(inner(root, entries)):
            if n == 5:
                os.kill(os.getpid(), signal.SIGKILL)  # a hard crash of the driver: no handler runs
            yield batch
    build_index(model, preprocess, sys.argv[2], sys.argv[3], batch_size=1, checkpoint_every=2, embed=embed)
"""


@needs_dask
@needs_kill
def test_a_killed_driver_resumes(client, model, photos, tmp_path, checkpoint):
    """The driver is killed while the cluster (the module's, reached by its address) carries on: the
    scheduler drops the dead client's tasks, and the re-run continues from the last checkpoint."""
    clip, preprocess = model
    out = tmp_path / "idx"
    run = subprocess.run([sys.executable, "-c", DRIVER, str(checkpoint("odd_oc")), str(photos), str(out),
                          client.scheduler.address], env=ENV, capture_output=True, text=True, timeout=120)
    assert run.returncode == -signal.SIGKILL, run.stderr
    partial = load_index(out)  # the checkpoint after batch 4 (of 5 received) is a consistent index
    assert not partial.complete and len(partial.entries) == 4

    report = build_index(clip, preprocess, photos, out, embed=cluster_embed(client, checkpoint, clip, 3))
    assert report.reused == 4 and report.embedded == 20
    same_index(load_index(out), build_index(clip, preprocess, photos, tmp_path / "single").index)


@needs_dask
def test_workers_that_do_not_see_the_folder_are_an_error(client, tmp_path):
    from miniclip.apps.cluster import _embed_batch

    with pytest.raises(miniclip.errors.MiniclipError, match="same path"):
        client.submit(_embed_batch, None, str(tmp_path / "not-there"), [Entry("a.png", 1, 1)]).result()


# --------------------------------------------------------------------------------------------------
# Without dask, and misuse
# --------------------------------------------------------------------------------------------------


def test_dask_is_never_imported_without_cluster():
    code = ("import sys, miniclip, miniclip.cli, miniclip.apps.index, miniclip.apps.search, miniclip.cli.search\n"
            "assert not {'dask', 'distributed'} & set(sys.modules), sorted(m for m in sys.modules if 'dask' in m)")
    subprocess.run([sys.executable, "-c", code], env=ENV, check=True)


def test_cluster_without_dask_installed_says_how_to_install(photos, tmp_path, checkpoint):
    code = ("import sys; sys.modules['distributed'] = None\n"  # as if not installed
            "from miniclip.cli import main\n"
            "sys.exit(main(sys.argv[1:]))")
    run = subprocess.run([sys.executable, "-c", code, "index", str(photos), "--out", str(tmp_path / "i"),
                          "--weights", str(checkpoint("odd_oc")), "--cluster", "local:2"],
                         env=ENV, capture_output=True, text=True)
    assert run.returncode == 1 and 'pip install "miniclip[dask]"' in run.stderr, run.stderr
    assert not (tmp_path / "i").exists()


@needs_dask
def test_bad_cluster_addresses(photos, tmp_path, checkpoint, capsys):
    for address, message in [("local:0", "local:N needs"), ("local:two", "local:N needs"),
                             ("nowhere", "give a scheduler address")]:
        assert main(["index", str(photos), "--out", str(tmp_path / "i"), "--weights", str(checkpoint("odd_oc")),
                     "--cluster", address]) == 1
        assert message in capsys.readouterr().err


# --------------------------------------------------------------------------------------------------
# Search at scale
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def large_index(tmp_path_factory):
    out = tmp_path_factory.mktemp("large") / "index"
    return out, write_synthetic_index(out, 100_000, 512)  # 195 MiB of float32 (1M in the benchmark)


SEARCHER = """
import json, resource, sys
import numpy as np
from miniclip.apps.index import load_index
from miniclip.apps.search import search

def peak_rss():
    # Linux's getrusage ru_maxrss carries over the parent's high-water mark across fork + exec (here:
    # pytest's); /proc's VmHWM is this program's own. Elsewhere, getrusage (an upper bound).
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)

before = peak_rss()
index = load_index(sys.argv[1], mmap=True)
loaded = peak_rss()
queries = np.load(sys.argv[2])
results = [[(str(p), s) for p, s in search(index, q, 10)] for q in queries]
peak = peak_rss()
print(json.dumps({"before": before, "loaded": loaded, "peak": peak, "results": results}))
"""


def test_a_large_index_is_searched_exactly_in_bounded_memory(large_index, tmp_path):
    out, npy = large_index
    size = npy.stat().st_size
    rng = np.random.default_rng(1)
    queries = rng.standard_normal((3, 512), dtype=np.float32)
    queries[2] = np.load(npy, mmap_mode="r")[76_543] * 3  # an indexed vector itself: it must come first
    np.save(tmp_path / "q.npy", queries)
    run = subprocess.run([sys.executable, "-c", SEARCHER, str(out), str(tmp_path / "q.npy")], env=ENV,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    got = json.loads(run.stdout)

    embeddings = np.load(npy, mmap_mode="r")  # brute force: every score, one full sort
    index = load_index(out, mmap=True)
    for query, results in zip(queries, got["results"], strict=True):
        scores = embeddings @ (query / np.linalg.norm(query))
        order = np.lexsort((np.arange(len(scores)), -scores))[:10]
        assert [p for p, _ in results] == [str(index.root / index.entries[i].path) for i in order]
        np.testing.assert_allclose([s for _, s in results], scores[order], atol=1e-6)
    assert got["results"][2][0][0].endswith("/0076543.jpg") and got["results"][2][0][1] == pytest.approx(1, abs=1e-6)

    # The rows never become resident: searching adds under a tenth of the index's size to the peak
    # memory; loading (the manifest: ~350 bytes per image while its JSON is parsed) and searching under 30%
    # (measured: 11 MiB and 47 MiB of 195 MiB).
    mib = {key: round(value / 2**20) for key, value in got.items() if key != "results"}
    assert got["peak"] - got["loaded"] < 0.1 * size, (mib, size / 2**20)
    assert got["peak"] - got["before"] < 0.3 * size, (mib, size / 2**20)


def test_top_k_in_blocks_equals_a_full_sort_with_ties():
    rng = np.random.default_rng(2)
    embeddings = rng.integers(-2, 3, (1000, 8)).astype(np.float32)  # many exactly equal scores
    query = rng.integers(-2, 3, 8).astype(np.float32)
    scores = embeddings @ query
    for k in (0, 1, 7, 50, 1000, 2000):
        expected = np.lexsort((np.arange(1000), -scores))[:k]
        for block_rows in (1, 33, 128, 5000):
            rows, got = top_k(embeddings, query, k, block_rows=block_rows)
            assert rows.tolist() == expected.tolist() and got.tolist() == scores[expected].tolist()


@needs_dask
def test_search_on_the_cluster_equals_search_here(client, large_index):
    from miniclip.apps.cluster import scorer

    out, _ = large_index
    index = load_index(out, mmap=True)
    assert isinstance(index.embeddings, np.memmap)
    query = np.random.default_rng(3).standard_normal(512).astype(np.float32)
    assert search(index, query, 25, scorer=scorer(client)) == search(index, query, 25)


def test_memory_mapped_loading_checks_cheaply_and_verifies_on_request(tmp_path, monkeypatch):
    import miniclip.apps.index as search_module

    out = tmp_path / "idx"
    npy = write_synthetic_index(out, 3000, 64)  # 768 kB
    monkeypatch.setattr(search_module, "VERIFY_LIMIT", 100_000)  # as if it were large
    data = bytearray(npy.read_bytes())
    data[-8:] = b"\0" * 8  # same size, other content: only the checksum sees it
    npy.write_bytes(bytes(data))
    index = load_index(out, mmap=True)  # large: not hashed by default
    assert isinstance(index.embeddings, np.memmap) and index.embeddings.shape == (3000, 64)
    with pytest.raises(BrokenIndexError, match="does not match the checksum"):
        load_index(out, mmap=True, verify=True)
    with pytest.raises(BrokenIndexError, match="does not match the checksum"):
        load_index(out)  # read whole: always hashed
    monkeypatch.setattr(search_module, "VERIFY_LIMIT", 10_000_000)
    with pytest.raises(BrokenIndexError, match="does not match the checksum"):
        load_index(out, mmap=True)  # small: hashed by default
    npy.write_bytes(bytes(data[:-4096]))  # truncated: seen without hashing
    with pytest.raises(BrokenIndexError, match="764032 bytes instead of 768128"):
        load_index(out, mmap=True, verify=False)
