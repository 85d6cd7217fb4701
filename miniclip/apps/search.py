"""Image search: embed a folder of images once, then find images by text or by example.

CLIP puts images and texts in one embedding space where the cosine similarity of matching pairs is high
(paper section 2.3, Figure 3), so retrieval is a nearest-neighbour search: embed every image once, keep
the L2-normalized vectors, and rank them by their dot product with the query's normalized vector, a text
("a dog on a beach") or another image. It is the similarity zero-shot classification uses (section
3.1.2), with images in place of class prompts; the paper's appendix E.1 evaluates it as zero-shot
image-text retrieval on Flickr30k and MS-COCO.

    miniclip index photos/ --out photos.index            # embeds every image under photos/, recursively
    miniclip search photos.index "a dog on a beach"       # text -> image
    miniclip search photos.index --image query.jpg        # image -> image

The index (index.py: ``build_index``, ``load_index``) holds the normalized embeddings. ``search`` scores
the rows in blocks and keeps each block's best ``k`` (``np.argpartition``), so a memory-mapped index is
never held in memory whole; ``miniclip.apps.cluster`` embeds and searches on a Dask cluster with the same
index format.
"""

from __future__ import annotations

import html
import io
import mmap
import os
import urllib.parse
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..errors import ImageError, MiniclipError
from ..model import normalize
from ..preprocess import load_image
from ..store import atomic_write_bytes
from ..terminal import printable
from ..tokenizer import tokenize
from .index import Index

__all__ = ["best_of", "embed_image_query", "embed_text_query", "search", "top_k", "write_contact_sheet",
           "write_html"]

#: search() scores this many bytes of rows at a time (8 MiB: 4096 rows of 512 floats).
BLOCK_BYTES = 8 << 20


# --------------------------------------------------------------------------------------------------
# Searching
# --------------------------------------------------------------------------------------------------


def embed_text_query(model, text: str, truncate: bool = False) -> np.ndarray:  # -> [E], unit norm
    return normalize(model.encode_text(tokenize([text], model.config.context_length, truncate=truncate)))[0]


def embed_image_query(model, preprocess, path: str | os.PathLike) -> np.ndarray:  # -> [E], unit norm
    return normalize(model.encode_image(preprocess(load_image(path))[None]))[0]


def search(index: Index, query: np.ndarray, k: int = 10, *,
           scorer: Callable[[np.ndarray, np.ndarray, int], tuple[np.ndarray, np.ndarray]] | None = None
           ) -> list[tuple[Path, float]]:
    """The ``k`` indexed images most similar to ``query`` (an [E] embedding, normalized here), best first,
    as (path, cosine similarity). Ties keep index order. The rows are scored in blocks (``top_k``), so a
    memory-mapped index (``load_index(mmap=True)``) is never in memory whole. ``scorer``: another
    ``top_k``, e.g. ``miniclip.apps.cluster.scorer(client)``, which scores the blocks on a Dask cluster."""
    query = np.asarray(query, dtype=np.float32).reshape(-1)
    if query.shape[0] != index.embeddings.shape[1]:
        raise MiniclipError(f"query embedding has {query.shape[0]} dimensions, the index {index.embeddings.shape[1]}")
    query = query / np.linalg.norm(query)  # cosine similarity: the rows are unit vectors
    rows, scores = (scorer or top_k)(index.embeddings, query, k)
    return [(index.root / index.entries[i].path, float(s)) for i, s in zip(rows, scores, strict=True)]


def top_k(embeddings: np.ndarray, query: np.ndarray, k: int, *, block_rows: int | None = None
          ) -> tuple[np.ndarray, np.ndarray]:  # [N, E], [E] -> [k] rows, [k] scores
    """The rows of ``embeddings`` with the ``k`` highest scores ``embeddings @ query``, best first (ties: the
    lower row first), and those scores. Blocks of ``block_rows`` rows (default: ``BLOCK_BYTES`` of them)
    are scored one at a time, each block's best ``k`` merged with the best so far: the memory used is one
    block's, and a memory-mapped block's pages are handed back to the OS page cache once scored."""
    n, width = embeddings.shape
    step = block_rows or max(1, BLOCK_BYTES // max(1, width * embeddings.itemsize))
    best_rows, best_scores = np.zeros(0, np.int64), np.zeros(0, np.float32)
    for start in range(0, n, step):
        block = embeddings[start:start + step]
        scores = _scores(block, query)  # [b]
        _release(block)
        rows, scores = best_of(np.arange(start, start + len(scores)), scores, k)
        best_rows, best_scores = best_of(np.concatenate([best_rows, rows]), np.concatenate([best_scores, scores]), k)
    return best_rows, best_scores


def _scores(block: np.ndarray, query: np.ndarray) -> np.ndarray:  # [b, E], [E] -> [b]
    """``block @ query`` on one core: one pass over the rows, so memory bandwidth is the limit, not the
    arithmetic. One dot product per row (np.vecdot; einsum before NumPy 2) rather than BLAS's matrix-vector
    product, which splits every block over threads: that gains nothing on a memory-bound pass and, on a
    busy machine, measured 2-9x slower for 4096-row blocks (threads waiting for each other)."""
    vecdot = getattr(np, "vecdot", None)
    return np.asarray(vecdot(block, query) if vecdot is not None else np.einsum("ij,j->i", block, query))


def best_of(rows: np.ndarray, scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` highest ``scores`` and their ``rows``, best first, ties by lower row. ``np.argpartition``
    finds the k-th highest score in O(n); every score at least that high is kept (all the ties at the
    boundary, so the tie order is exact), and only those few are sorted."""
    k = max(0, k)
    if len(scores) > k:
        if k == 0:
            return rows[:0], scores[:0]
        kth = scores[np.argpartition(scores, len(scores) - k)[len(scores) - k]]
        keep = scores >= kth
        rows, scores = rows[keep], scores[keep]
    order = np.lexsort((rows, -scores))[:k]
    return rows[order], scores[order]


def _release(block: np.ndarray) -> None:
    """Drop a memory-mapped block's pages from this process's memory. They stay in the OS page cache (the
    next search finds them there), but without this every page read stays mapped, and a search through a
    2 GB index would end with 2 GB resident. ``madvise(MADV_DONTNEED)`` on a read-only file mapping only
    unmaps the pages: the data is read again from the file if touched again. ``_mmap`` is np.memmap's
    mapping (an attribute NumPy has always had); other arrays are left alone."""
    mapping = getattr(block, "_mmap", None)
    if not isinstance(mapping, mmap.mmap) or not hasattr(mmap, "MADV_DONTNEED") or block.nbytes == 0:
        return
    begin = block.ctypes.data - np.frombuffer(mapping, np.uint8).ctypes.data  # the block's offset in the mapping
    aligned = begin - begin % mmap.PAGESIZE  # madvise wants a page-aligned start
    mapping.madvise(mmap.MADV_DONTNEED, aligned, begin + block.nbytes - aligned)


def _href(image: Path, page: Path) -> str:
    """A link from the page to the image: relative when possible, so the page survives moving both."""
    try:
        rel = os.path.relpath(image.resolve(), page.resolve().parent)
    except ValueError:  # another drive on Windows
        return image.resolve().as_uri()
    # Quoted from the name's bytes: a name that is not UTF-8 (b"caf\xe9.png") links to itself as %E9.
    return urllib.parse.quote(os.fsencode(Path(rel).as_posix()))


def write_html(results: Sequence[tuple[Path, float]], out: str | os.PathLike, title: str) -> None:
    """A page showing the results as a grid of images with rank, score and path."""
    out = Path(out)
    cells = "\n".join(
        f'<figure><a href="{_href(p, out)}"><img src="{_href(p, out)}" loading="lazy"></a>'
        f"<figcaption><b>{rank}.</b> {score:.4f}<br>{html.escape(printable(str(p)))}</figcaption></figure>"
        for rank, (p, score) in enumerate(results, start=1))
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{html.escape(printable(title))}</title>
<style>body{{font-family:sans-serif}} figure{{display:inline-block;width:220px;margin:6px;vertical-align:top}}
img{{max-width:220px;max-height:220px}} figcaption{{font-size:12px;word-break:break-all}}</style></head>
<body><h1>{html.escape(printable(title))}</h1>
{cells}
</body></html>
"""
    atomic_write_bytes(out, page.encode("utf-8"))


def write_contact_sheet(results: Sequence[tuple[Path, float]], out: str | os.PathLike, title: str,
                        columns: int = 5, cell: int = 160) -> None:
    """A PNG grid of the result images (thumbnails), each captioned with rank, score and file name (drawn as
    terminal.printable shows it: a newline or control character in a name is drawn escaped)."""
    columns = max(1, min(columns, len(results) or 1))
    rows = max(1, -(-len(results) // columns))
    caption, header, pad = 30, 24, 6
    sheet = Image.new("RGB", (columns * (cell + pad) + pad, header + rows * (cell + caption + pad) + pad), "white")
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    draw.text((pad, 6), _fit(draw, printable(title), font, sheet.width - 2 * pad), fill="black", font=font)
    for i, (path, score) in enumerate(results):
        x = pad + (i % columns) * (cell + pad)
        y = header + (i // columns) * (cell + caption + pad)
        try:
            thumb = load_image(path).convert("RGB")
            thumb.thumbnail((cell, cell))
            sheet.paste(thumb, (x + (cell - thumb.width) // 2, y + (cell - thumb.height) // 2))
        except ImageError:
            draw.rectangle((x, y, x + cell - 1, y + cell - 1), fill=(220, 220, 220))
            draw.text((x + 6, y + cell // 2), "(unreadable)", fill="black", font=font)
        draw.text((x, y + cell + 2), f"{i + 1}. {score:.4f}", fill="black", font=font)
        draw.text((x, y + cell + 15), _fit(draw, printable(Path(path).name), font, cell), fill=(80, 80, 80),
                  font=font)
    buffer = io.BytesIO()
    sheet.save(buffer, format="PNG")
    atomic_write_bytes(out, buffer.getvalue())


def _fit(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> str:
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "...", font=font) > width:
        text = text[:-1]
    return text + "..."
