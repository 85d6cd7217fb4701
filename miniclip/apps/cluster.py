"""`miniclip index` and `miniclip search` on a Dask cluster (``pip install miniclip[dask]``).

Embedding a photo collection is embarrassingly parallel: every batch of images is read, preprocessed and
run through the image tower on its own. Dask (``dask.distributed``) does the scheduling, the transport and
the retries; this module only says what a task is:

- the driver (the ``miniclip index`` process) lists the files, decides which need embedding, and hands
  them out a batch per task, keeping only a few tasks per worker thread in flight;
- a worker loads the model once per process (``_worker_model``: a module-level cache keyed by the weights,
  backend and activation), reads the batch's files *by the same path* (a shared folder), and returns the
  embeddings, the unreadable files with their reasons, and the model's fingerprint (the driver refuses
  rows from other weights than its own);
- the driver writes the index: ``build_index`` gets the results through its ``embed`` argument, so the
  checkpoints, the manifest, the incremental re-runs and the progress bar are the single-machine ones.

A worker that dies mid-task (killed, out of memory, its machine lost): the scheduler gives its tasks to
another worker (up to ``distributed.scheduler.allowed-failures`` times, 3 by default); each task's result is
taken once, when it completes, so no batch is lost or counted twice. A killed driver: the workers of a
``local:N`` cluster exit with it (Dask's nanny processes watch their parent); the checkpoints on disk are
those of a single-machine run, and re-running the command continues.

Search: ``top_k_on_cluster`` scores the blocks of a memory-mapped embeddings file on the workers (each
maps its block of the file by path, so the file must be on the shared folder too) and merges their top k.

Nothing here is imported unless ``--cluster`` is given (``import miniclip`` never imports dask).
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ..errors import MiniclipError
from .index import Embedder, Entry, iter_image_embeddings
from .search import best_of, top_k
from .zeroshot import model_fingerprint

__all__ = ["ModelSpec", "connect", "embedder", "scorer", "top_k_on_cluster", "worker_loads"]

INSTALL_HINT = 'the Dask extra is not installed: pip install "miniclip[dask]"'


def _distributed():
    """dask.distributed, or a clear error saying how to install it."""
    try:
        import distributed
    except ImportError as e:
        raise MiniclipError(f"--cluster needs Dask: {INSTALL_HINT} ({e})") from None
    return distributed


@contextlib.contextmanager
def connect(address: str) -> Iterator:
    """A ``dask.distributed.Client`` for ``address``, closed (with its cluster, if local) on leaving.

    ``local:N``: a LocalCluster of N worker processes on this machine, one thread each (and one BLAS
    thread each: Dask's nanny sets OMP/MKL/OPENBLAS_NUM_THREADS=1 in its workers). Anything else is a
    scheduler's address, e.g. ``tcp://host:8786`` (see docs/scale.md for starting one)."""
    distributed = _distributed()
    cluster = None
    if address.startswith("local:"):
        try:
            workers = int(address.removeprefix("local:"))
        except ValueError:
            workers = 0
        if workers < 1:
            raise MiniclipError(f"--cluster {address!r}: local:N needs a number of worker processes N >= 1")
        # No dashboard (it needs bokeh, and a port); only errors from Dask's loggers on the terminal.
        cluster = distributed.LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                           dashboard_address=None, silence_logs=logging.ERROR)
        client = distributed.Client(cluster)
    else:
        if "://" not in address and ":" not in address:
            raise MiniclipError(f"--cluster {address!r}: give a scheduler address (tcp://host:8786) or local:N")
        try:
            client = distributed.Client(address, timeout="20s")
        except OSError as e:
            raise MiniclipError(f"--cluster {address}: cannot reach a Dask scheduler there ({e}); start one with "
                                "`dask scheduler`, and workers with `dask worker ADDRESS` (docs/scale.md)") from None
    try:
        yield client
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


# --------------------------------------------------------------------------------------------------
# Embedding on the workers
# --------------------------------------------------------------------------------------------------


class ModelSpec(NamedTuple):
    """What a worker loads: the arguments of ``miniclip.load``. ``weights`` is an absolute path (the same
    on every machine, like the images) or a published model's name, which each worker resolves itself."""

    weights: str
    backend: str = "numpy"
    activation: str | None = None

    @classmethod
    def of(cls, weights: str | os.PathLike, backend: str = "numpy", activation: str | None = None) -> ModelSpec:
        path = Path(weights).expanduser()
        return cls(str(path.resolve()) if path.exists() else str(weights), backend, activation)


_MODELS: dict[ModelSpec, tuple] = {}  # on a worker: spec -> (model, preprocess, fingerprint)
_MODELS_LOCK = threading.Lock()  # a worker with several threads loads each model once all the same
LOADS: list[ModelSpec] = []  # every load this process did (the tests check there is one per worker)


def _worker_model(spec: ModelSpec) -> tuple:
    with _MODELS_LOCK:
        if spec not in _MODELS:
            import miniclip

            # threads=1: each Dask thread runs one task; the parallelism is the cluster's processes x threads.
            model, preprocess = miniclip.load(spec.weights, backend=spec.backend, activation=spec.activation,
                                              threads=1)
            _MODELS[spec] = (model, preprocess, model_fingerprint(model))
            LOADS.append(spec)
        return _MODELS[spec]


def _embed_batch(spec: ModelSpec, root: str, entries: list[Entry]
                 ) -> tuple[list[Entry], np.ndarray, list[tuple[str, str]], str]:
    """One task, run on a worker: embed ``entries`` (files under ``root``) as ``iter_image_embeddings``
    does on one machine (unreadable files are returned with their reasons, not raised)."""
    if not os.path.isdir(root):
        raise MiniclipError(f"{root}: not a folder on the worker {socket.gethostname()}; every worker must see "
                            "the images at the same path as the `miniclip index` process (a shared folder, "
                            "docs/scale.md)")
    model, preprocess, fingerprint = _worker_model(spec)
    ((ok, features, bad),) = iter_image_embeddings(model, preprocess, Path(root), entries, len(entries))
    return ok, features, bad, fingerprint


def embedder(client, spec: ModelSpec, model, batch_size: int) -> Embedder:
    """An ``embed`` for ``build_index``: the entries go to the cluster ``batch_size`` at a time; the
    batches are yielded as they complete (in any order). ``model`` is the driver's copy of the model:
    each result's fingerprint must match it (a worker with other weights at the same path is an error)."""
    if batch_size < 1:
        raise MiniclipError(f"--batch-size must be at least 1, got {batch_size}")
    expected = model_fingerprint(model)
    distributed = _distributed()

    def embed(root: Path, entries: Sequence[Entry]):
        batches = iter([list(entries[i:i + batch_size]) for i in range(0, len(entries), batch_size)])
        run, number = uuid.uuid4().hex[:12], itertools.count()  # unique task keys: Dask merges equal ones
        pending = distributed.as_completed()
        in_flight: set = set()
        window, checked = _window(client), time.monotonic()

        def refill() -> None:
            while len(in_flight) < window:
                batch = next(batches, None)
                if batch is None:
                    return
                future = client.submit(_embed_batch, spec, str(root), batch, pure=False,
                                       key=f"miniclip-embed-{run}-{next(number)}")
                in_flight.add(future)
                pending.add(future)

        refill()
        try:
            for future in pending:
                try:
                    ok, features, bad, fingerprint = future.result()
                except distributed.KilledWorker as e:
                    raise MiniclipError(f"a batch of images was running on {e.allowed_failures + 1} workers "
                                        "when each of them died (out of memory?); stopped. The images embedded "
                                        "so far are saved: re-run the command to continue") from e
                in_flight.discard(future)
                future.release()  # the result is ours now: the cluster may forget it
                if fingerprint != expected:
                    raise MiniclipError(f"a worker loaded other weights than this process from "
                                        f"{spec.weights} (fingerprint {fingerprint}, expected {expected}): every "
                                        "machine must have the same weights at the same path")
                if time.monotonic() - checked > 5:  # workers may have joined or left
                    window, checked = _window(client), time.monotonic()
                refill()
                yield ok, features, bad
        finally:  # finished, failed or interrupted: nothing of this run keeps running on the cluster
            if in_flight:
                client.cancel(list(in_flight))

    return embed


def _window(client) -> int:
    """Tasks kept in flight: two per worker thread (one running, one ready to start), at least 4."""
    return max(4, 2 * sum(client.nthreads().values()))


# --------------------------------------------------------------------------------------------------
# Searching on the workers
# --------------------------------------------------------------------------------------------------


def _top_k_block(filename: str, offset: int, rows: int, width: int, start: int, stop: int, query: np.ndarray,
                 k: int) -> tuple[np.ndarray, np.ndarray]:
    """One task: map rows [start, stop) of an [rows, width] float32 .npy file (data at ``offset``) and
    return its best ``k`` (global row numbers)."""
    if os.path.getsize(filename) < offset + rows * width * 4:
        raise MiniclipError(f"{filename} on the worker {socket.gethostname()} is not the driver's file (too "
                            "short); the index must be on a shared folder, at the same path")
    block = np.memmap(filename, dtype=np.float32, mode="r", offset=offset + start * width * 4,
                      shape=(stop - start, width))
    best, scores = top_k(block, query, k)
    return best + start, scores


def scorer(client) -> Callable[[np.ndarray, np.ndarray, int], tuple[np.ndarray, np.ndarray]]:
    """A ``scorer`` for ``search.search``: ``top_k_on_cluster`` on this client's cluster."""
    return functools.partial(top_k_on_cluster, client)


def top_k_on_cluster(client, embeddings: np.ndarray, query: np.ndarray, k: int
                     ) -> tuple[np.ndarray, np.ndarray]:  # [N, E], [E] -> [k] rows, [k] scores
    """``search.top_k`` with the blocks scored on the cluster's workers: each task maps its part of the
    embeddings file (by path: the index must be on the shared folder) and returns its best ``k``, which are
    merged here. ``embeddings`` must be a memory-mapped file (``load_index(mmap=True)`` of a complete index);
    an array in memory (an interrupted run's checkpoint) is searched here."""
    if not (isinstance(embeddings, np.memmap) and embeddings.filename and embeddings.flags.c_contiguous
            and embeddings.dtype == np.float32 and embeddings.base is not None
            and not isinstance(embeddings.base, np.ndarray)):  # a whole mapped file, not a view of one
        return top_k(embeddings, query, k)
    n, width = embeddings.shape
    parts = max(1, 2 * sum(client.nthreads().values()))
    step = max(4096, -(-n // parts))
    query = np.ascontiguousarray(query, dtype=np.float32)
    futures = [client.submit(_top_k_block, str(embeddings.filename), int(embeddings.offset), n, width, start,
                             min(n, start + step), query, k, pure=False) for start in range(0, n, step)]
    results = client.gather(futures)
    rows = np.concatenate([r for r, _ in results]) if results else np.zeros(0, np.int64)
    scores = np.concatenate([s for _, s in results]) if results else np.zeros(0, np.float32)
    return best_of(rows, scores, k)


def worker_loads() -> int:
    """How many models this process has loaded: ``client.run(worker_loads)`` shows one per worker however
    many batches it embedded (the tests check it)."""
    return len(LOADS)
