"""Benchmarks of indexing on a Dask cluster and of search at scale (docs/scale.md), on seeded weights.

    python -m miniclip.bench.scale --index [--images 96] [--rounds 2]   # images/s: one process vs local:N
    python -m miniclip.bench.scale --search [--rows 1000000]            # one query vs reading the matrix once

--index: ViT-B/32 with random weights embeds the same folder of random 320x240 JPEGs (decoded and
preprocessed as real photos are) with ``build_index``: in one process with 2 BLAS threads, and with
``--cluster local:1`` and ``local:2`` (one thread, one BLAS thread per worker). Each contender runs in a
fresh process, after a warm-up batch (and, on a cluster, once the model is loaded on every worker); the
rounds are interleaved and the best of each contender's rounds is reported, as in miniclip.bench.
Besides images/s (wall time), images per CPU-second (of the driver, its threads and the workers) shows the
engine's overhead even where other jobs share the cores.

--search: an index of ``--rows`` random unit 512-d float32 vectors (2 GB for a million) is written to a
temporary folder; a fresh process then alternates, three times, reading the embeddings file once from the
page cache (8 MiB ``readinto`` calls into one buffer: the memory-bandwidth floor) and one ``search`` of the
memory-mapped index, and reports both times, their ratio, and its peak resident memory (VmHWM) against
the index's size. Needs the `dask` extra for --index (and for the cluster search row).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from ..config import ARCHITECTURES
from . import machine, random_params

_INDEX_CHILD = """
import json, os, shutil, sys, time
import numpy as np
import miniclip
from miniclip.apps.index import build_index, find_images, iter_image_embeddings

weights, root, out, contender, images = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
model, preprocess = miniclip.load(weights, activation="quick_gelu")
entries, _ = find_images(root)
if contender == "single":
    embed = None
    next(iter(iter_image_embeddings(model, preprocess, __import__("pathlib").Path(root), entries[:16], 16)))
    context = None
else:
    from miniclip.apps.cluster import ModelSpec, connect, embedder
    context = connect(contender)
    client = context.__enter__()
    spec = ModelSpec.of(weights, "numpy", "quick_gelu")
    embed = embedder(client, spec, model, 16)
    workers = list(client.nthreads())
    from miniclip.apps.cluster import _embed_batch
    client.gather([client.submit(_embed_batch, spec, root, entries[:16], workers=[w], pure=False) for w in workers])
def cpu():  # CPU seconds of this process (all its threads: BLAS, Dask's scheduler) and of the workers
    return time.process_time() + (sum(client.run(time.process_time).values()) if context is not None else 0)
cpu0, t0 = cpu(), time.perf_counter()
report = build_index(model, preprocess, root, out, batch_size=16, embed=embed, progress=False)
seconds = time.perf_counter() - t0
cpu_seconds = cpu() - cpu0
assert report.embedded == images, report
if context is not None:
    context.__exit__(None, None, None)
shutil.rmtree(out)
print(json.dumps({"contender": contender, "seconds": seconds, "images_per_s": images / seconds,
                  "images_per_cpu_s": images / cpu_seconds}))
"""


def bench_index(images: int, rounds: int) -> list[dict]:
    from PIL import Image
    from safetensors.numpy import save_file

    rng = np.random.default_rng(0)
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / "open_clip_model.safetensors"
        save_file(random_params(ARCHITECTURES["ViT-B-32"]), str(weights))
        root = Path(tmp) / "photos"
        root.mkdir()
        for i in range(images):
            pixels = rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / f"{i:05d}.jpg", quality=90)
        contenders = {"single": {"OPENBLAS_NUM_THREADS": "2", "OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2"},
                      "local:1": {}, "local:2": {}}
        for r in range(rounds):
            for contender, env in contenders.items():
                out = subprocess.run([sys.executable, "-c", _INDEX_CHILD, str(weights), str(root),
                                      str(Path(tmp) / f"idx-{r}-{contender.replace(':', '')}"), contender,
                                      str(images)], env={**os.environ, **env}, capture_output=True, text=True)
                if out.returncode != 0:
                    raise SystemExit(f"{contender}: failed\n{out.stderr}")
                row = json.loads(out.stdout.strip().splitlines()[-1])
                row["round"], row["load_average"] = r, os.getloadavg()[0]
                rows.append(row)
                print(json.dumps(row), flush=True)
    return rows


_SEARCH_CHILD = """
import json, os, sys, time
import numpy as np
from miniclip.apps.index import load_index
from miniclip.apps.search import search

def peak_mib():
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:")) / 1024

directory, npy, cluster = sys.argv[1], sys.argv[2], sys.argv[3]
base = peak_mib()
t0 = time.perf_counter()
index = load_index(directory, mmap=True)
load_s = time.perf_counter() - t0
loaded = peak_mib()
query = np.random.default_rng(7).standard_normal(index.embeddings.shape[1]).astype(np.float32)
buffer = bytearray(8 << 20)
view = memoryview(buffer)
reads, searches = [], []
for _ in range(3):
    t0 = time.perf_counter()
    with open(npy, "rb", buffering=0) as f:
        while f.readinto(view):
            pass
    reads.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    search(index, query, 10)
    searches.append(time.perf_counter() - t0)
result = {"read_s": min(reads), "search_s": min(searches), "load_index_s": load_s, "peak_mib": peak_mib(),
          "peak_mib_after_imports": base, "peak_mib_after_load": loaded}
if cluster != "-":
    from miniclip.apps.cluster import connect, scorer
    with connect(cluster) as client:
        search(index, query, 10, scorer=scorer(client))  # warm-up: the workers import, map, fault pages in
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            search(index, query, 10, scorer=scorer(client))
            times.append(time.perf_counter() - t0)
        result["cluster_search_s"] = min(times)
print(json.dumps(result))
"""


def write_synthetic_index(out: Path, rows: int, width: int, seed: int = 0, block: int = 20_000) -> Path:
    """An index of ``rows`` random unit vectors, written block by block (never whole in memory), in the index
    writer's own manifest format; returns its embeddings file. For the search benchmark and tests/test_cluster.py."""
    from ..apps.index import Entry, _write_manifest
    out.mkdir(parents=True)
    tmp = out / "embeddings.tmp.npy"
    array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(rows, width))
    rng = np.random.default_rng(seed)
    for start in range(0, rows, block):
        x = rng.random((min(block, rows - start), width), dtype=np.float32) - 0.5  # uniform: quick to draw
        array[start:start + len(x)] = x / np.linalg.norm(x, axis=1, keepdims=True)
    array.flush()
    del array
    digest = hashlib.sha256()
    with open(tmp, "rb") as f:
        while chunk := f.read(1 << 24):
            digest.update(chunk)
    name = f"embeddings-{digest.hexdigest()[:16]}.npy"
    os.replace(tmp, out / name)
    shard = {"file": name, "rows": rows, "bytes": (out / name).stat().st_size, "sha256": digest.hexdigest()}
    _write_manifest(out, root=out.parent / "images", model="synthetic", embed_dim=width,
                    entries=[Entry(f"{i // 1000:03d}/{i:07d}.jpg", 1000, 1) for i in range(rows)], shards=[shard],
                    complete=True, skipped=[], weights=None)
    return out / name


def bench_search(rows: int, cluster: str | None) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "index"
        final = write_synthetic_index(out, rows, 512)
        result = subprocess.run([sys.executable, "-c", _SEARCH_CHILD, str(out), str(final), cluster or "-"],
                                capture_output=True, text=True)
        if result.returncode != 0:
            raise SystemExit(result.stderr)
        row = json.loads(result.stdout.strip().splitlines()[-1])
        row.update(rows=rows, index_mib=final.stat().st_size / 2**20, load_average=os.getloadavg()[0])
        row["search_over_read"] = row["search_s"] / row["read_s"]
        row["peak_over_index"] = row["peak_mib"] / row["index_mib"]
        return row


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m miniclip.bench.scale", description=__doc__.split("\n")[0])
    parser.add_argument("--index", action="store_true", help="images/s: one process vs local:1 and local:2")
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--search", action="store_true", help="one query over --rows vectors vs one read")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--cluster", help="also time the search on this cluster (e.g. local:2)")
    args = parser.parse_args(argv)
    print(f"# {machine()}; load average {os.getloadavg()[0]:.1f} at {time.strftime('%H:%M:%S')}")
    if args.index:
        rows = bench_index(args.images, args.rounds)
        for unit in ("images_per_s", "images_per_cpu_s"):
            best = {c: max(r[unit] for r in rows if r["contender"] == c) for c in ("single", "local:1", "local:2")}
            print(f"# {unit}, best of {args.rounds} interleaved rounds: "
                  + ", ".join(f"{c} {v:.2f}" for c, v in best.items())
                  + f"; local:2 / single = {best['local:2'] / best['single']:.2f}x, "
                  f"local:2 / local:1 = {best['local:2'] / best['local:1']:.2f}x")
    if args.search:
        print(json.dumps(bench_search(args.rows, args.cluster)))


if __name__ == "__main__":
    main()
