"""CLIP's text tokenizer: byte-level BPE, token-for-token identical to the reference.

CLIP reads text as a fixed-length row of 77 integer ids::

    [<start_of_text>, bpe ids..., <end_of_text>, 0, 0, ..., 0]

The ids come from a byte-pair encoding (BPE) learned by OpenAI. This module reproduces, in plain
Python + NumPy, the tokenizer of openai/CLIP (``clip/simple_tokenizer.py`` and ``clip.tokenize`` in
``clip/clip.py``) and of open_clip (``src/open_clip/tokenizer.py``, ``SimpleTokenizer`` with its
default ``clean="lower"``). The tests compare it id-for-id with open_clip on ~2,000 varied texts.

How one text becomes ids (each step is a function or method below):

1. ``clean_text``: repair mojibake with ftfy (when installed), unescape HTML entities twice, collapse
   runs of whitespace to single spaces, lower-case.
2. ``PRETOKENIZE_PATTERN`` cuts the clean text into "pre-tokens": runs of letters, single digits,
   runs of other symbols, and English contraction suffixes. Whitespace only separates them.
3. Every pre-token is turned into UTF-8 bytes and each byte into one printable stand-in character
   (``bytes_to_unicode``), so the BPE vocabulary covers every possible input: no unknown tokens.
4. ``SimpleTokenizer.bpe`` repeatedly merges the adjacent pair of symbols that was merged earliest
   during BPE training, until no learned merge applies. The last symbol of each pre-token carries a
   ``</w>`` ("end of word") marker, which is how decoding knows where spaces go.
5. Each resulting symbol is looked up in the 49,408-entry vocabulary.

The vocabulary file ``bpe_simple_vocab_16e6.txt.gz`` is the one published with openai/CLIP (MIT
license) and shipped unchanged by open_clip.
"""

from __future__ import annotations

import functools
import gzip
import heapq
import html
import math
import os
import warnings
from collections.abc import Callable, Iterable, Sequence
from itertools import pairwise
from pathlib import Path

import numpy as np
import regex

from .errors import TokenizerError

__all__ = [
    "CONTEXT_LENGTH",
    "EOT_ID",
    "SOT_ID",
    "VOCAB_SIZE",
    "SimpleTokenizer",
    "bytes_to_unicode",
    "clean_text",
    "decode",
    "default_tokenizer",
    "tokenize",
]

VOCAB_PATH = Path(__file__).with_name("bpe_simple_vocab_16e6.txt.gz")

#: Every published CLIP model reads 77 tokens of text (openai/CLIP ``clip.tokenize`` default).
CONTEXT_LENGTH = 77

#: CLIP used only the first 48,894 merges of the 262,145 in the file. openai/CLIP writes this as
#: ``49152 - 256 - 2``: a 49,152-entry budget minus 256 byte symbols and 2 special tokens (the 256
#: byte symbols are then counted twice, with and without ``</w>``, giving 49,408 below).
NUM_MERGES = 49152 - 256 - 2

#: 256 byte symbols + the same 256 with ``</w>`` + one token per merge + 2 special tokens.
VOCAB_SIZE = 256 + 256 + NUM_MERGES + 2  # 49,408

#: The special tokens. Their ids are the last two in the vocabulary in both references, but their
#: *spelling* differs: openai/CLIP calls them ``<|startoftext|>`` / ``<|endoftext|>``, open_clip
#: renamed them ``<start_of_text>`` / ``<end_of_text>``. The spelling matters only when such a literal
#: string appears inside a text: the pre-tokenizer then maps it straight to the special id. We follow
#: open_clip, the reference our tests compare against, so ``"<end_of_text>"`` inside a text encodes to
#: 49407 while ``"<|endoftext|>"`` is tokenized as ordinary punctuation and letters (openai/CLIP does
#: the opposite).
SOT_TOKEN = "<start_of_text>"
EOT_TOKEN = "<end_of_text>"
SOT_ID = VOCAB_SIZE - 2  # 49406
EOT_ID = VOCAB_SIZE - 1  # 49407

#: Marks the last symbol of a word; decoding turns it back into a space.
END_OF_WORD = "</w>"

#: BPE results of words up to this many characters (bytes) are cached; longer words are rare.
_CACHED_WORD = 256

#: The pre-tokenizer of openai/CLIP and open_clip, character for character (only the special-token
#: spelling differs between the two, see above). Alternatives are tried left to right at each position:
#: a special token; an English contraction suffix ('s 't 're 've 'm 'll 'd); a run of letters (any
#: script); a *single* digit (so "2021" becomes four pre-tokens); a run of anything that is neither
#: whitespace, letter nor digit (punctuation, symbols, emoji). Whitespace matches nothing and so only
#: separates pre-tokens. IGNORECASE is kept as in the references. The text is already lower-cased by
#: then, yet the flag still matters for the rare lower-case letters that case-fold to another one: the
#: long s "ſ" matches "s", so "it'ſ" splits as "it" + "'ſ" (a corpus case in the tests).
PRETOKENIZE_PATTERN = regex.compile(
    rf"{SOT_TOKEN}|{EOT_TOKEN}|'s|'t|'re|'ve|'m|'ll|'d|\p{{L}}+|\p{{N}}|[^\s\p{{L}}\p{{N}}]+",
    regex.IGNORECASE,
)


# --------------------------------------------------------------------------------------------------
# Step 3: bytes as printable characters
# --------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """Map each of the 256 byte values to a printable character (GPT-2's trick, used by CLIP).

    Why: the BPE merges file is text with one ``"left right"`` pair per line, so every symbol must be
    a visible, non-space character. Bytes that already are printable Latin-1 characters
    (``!``..``~``, ``¡``..``¬``, ``®``..``ÿ``; 188 of them) stand for themselves. The remaining 68
    (control characters, space, DEL, NBSP, soft hyphen, ...) are given the characters U+0100,
    U+0101, ... in byte order. The dict's order (printable bytes first, then the others) is also the
    order of the first 256 vocabulary entries, exactly as in openai/CLIP.
    """
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    table = {byte: chr(byte) for byte in printable}
    others = [byte for byte in range(256) if byte not in table]
    for n, byte in enumerate(others):
        table[byte] = chr(256 + n)
    return table


# --------------------------------------------------------------------------------------------------
# Step 1: text cleaning
# --------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _ftfy_fix_text() -> Callable[[str], str] | None:
    """``ftfy.fix_text``, looked up once, on first use. ftfy is a dependency; where it is missing anyway (an
    install without dependencies), say once that the ids may differ from the references' and go on."""
    try:
        import ftfy
    except ImportError:
        warnings.warn("ftfy is not installed: texts with curly quotes, ligatures, fullwidth letters or mojibake "
                      "tokenize differently from openai/CLIP and open_clip (pip install ftfy)", stacklevel=3)
        return None
    return ftfy.fix_text


def clean_text(text: str) -> str:
    """Normalise a text the way openai/CLIP and open_clip do before tokenizing.

    The steps and their order follow ``basic_clean`` + ``whitespace_clean`` + ``.lower()`` in the
    references:

    - ``ftfy.fix_text`` repairs mojibake ("doesnÃ¢â‚¬â„¢t" -> "doesn't"), fullwidth letters,
      ligatures, terminal escapes, lone surrogates and more. Without ftfy (a dependency, but an install
      without dependencies lacks it) this step is skipped with a warning: the ids then differ for
      every text that ftfy would have changed, e.g. "don’t" or "ﬁne".
    - ``html.unescape`` twice, so double-escaped entities such as ``&amp;amp;`` become ``&``
      (CLIP's training captions were scraped from the web).
    - ``" ".join(text.split())`` turns every run of Unicode whitespace (tabs, newlines, NBSP, ...)
      into one space and drops it at both ends.
    - lower-casing: CLIP's vocabulary has no upper-case letters.
    """
    fix_text = _ftfy_fix_text()
    if fix_text is not None:
        text = fix_text(text)
    text = html.unescape(html.unescape(text)).strip()
    return " ".join(text.split()).lower()


# --------------------------------------------------------------------------------------------------
# The tokenizer
# --------------------------------------------------------------------------------------------------


class SimpleTokenizer:
    """CLIP's byte-level BPE tokenizer (named after openai/CLIP's ``SimpleTokenizer``).

    ``encode`` turns one text into its BPE ids (without start/end tokens); ``tokenize`` builds the
    padded ``(N, context_length)`` id matrix the text encoder reads; ``decode`` goes back to text.
    Building one reads and indexes the 49k-line merges file (a fraction of a second), so the module
    keeps one shared instance, created on first use (``default_tokenizer``).
    """

    def __init__(self, vocab_path: str | os.PathLike[str] | None = None) -> None:
        path = Path(vocab_path) if vocab_path is not None else VOCAB_PATH
        with gzip.open(path, "rt", encoding="utf-8") as f:
            lines = f.read().split("\n")
        # Line 0 is a header ("#version: 0.2"); then one merge per line, best-ranked first.
        merge_lines = lines[1 : 1 + NUM_MERGES]
        merges = [tuple(line.split()) for line in merge_lines]
        if len(merges) != NUM_MERGES or any(len(pair) != 2 for pair in merges):
            raise TokenizerError(
                f"{path} is not a CLIP BPE merges file: expected {NUM_MERGES} lines of two symbols after the header"
            )

        byte_chars = list(bytes_to_unicode().values())
        vocab = byte_chars + [c + END_OF_WORD for c in byte_chars]
        vocab += ["".join(pair) for pair in merges]
        vocab += [SOT_TOKEN, EOT_TOKEN]

        self.encoder: dict[str, int] = {symbol: i for i, symbol in enumerate(vocab)}
        self.decoder: dict[int, str] = dict(enumerate(vocab))
        # A pair's rank is its line number: lower rank = learned earlier = merged first.
        self.bpe_ranks: dict[tuple[str, str], int] = {pair: rank for rank, pair in enumerate(merges)}
        self.special_ids: dict[str, int] = {SOT_TOKEN: SOT_ID, EOT_TOKEN: EOT_ID}
        self.byte_encoder = bytes_to_unicode()
        self.byte_decoder = {char: byte for byte, char in self.byte_encoder.items()}
        # The same words recur constantly ("a", "photo", "of"), and BPE on a long word is the slow
        # part, so remember recent results (the references use an unbounded dict instead); only for
        # words of up to _CACHED_WORD characters, so that the cache's memory stays bounded.
        self._bpe_cached = functools.lru_cache(maxsize=1 << 16)(self.bpe)
        # No symbol spans more characters than this (``_bpe_head`` and the length bound in ``_encode``).
        self._longest_symbol = max(len(symbol.removesuffix(END_OF_WORD)) for symbol in vocab)
        self._merge_products = frozenset("".join(pair) for pair in merges)

        # The special tokens must land on the ids every CLIP checkpoint was trained with.
        if len(self.encoder) != VOCAB_SIZE or self.encoder[EOT_TOKEN] != EOT_ID:
            raise TokenizerError(f"{path} does not give CLIP's {VOCAB_SIZE}-token vocabulary")

    @property
    def vocab_size(self) -> int:
        return len(self.encoder)

    # ---- step 4: BPE on one pre-token -------------------------------------------------------------

    def bpe(self, word: str) -> tuple[str, ...]:
        """Split one pre-token (already in byte characters) into vocabulary symbols.

        Start from single characters, the last one marked ``</w>``. Then repeat: among all adjacent
        pairs, find the one with the lowest merge rank; replace each occurrence of it, scanning left
        to right without overlap, by the joined symbol. Stop when no adjacent pair is a learned merge
        or one symbol is left. This is the GPT-2 algorithm that openai/CLIP's ``bpe`` implements;
        ``_merge`` computes the same result in O(n log n) instead of O(n^2) for a word of n characters.
        """
        return tuple(self._merge([*word[:-1], word[-1] + END_OF_WORD]))

    def _merge(self, symbols: list[str], history: dict[int, list[tuple[str, float]]] | None = None) -> list[str]:
        """BPE-merge ``symbols`` (one per character) in place; return the resulting symbols.

        The references rescan the whole word once per merge applied, which is quadratic: a word of
        64k letters (one pre-token: the regex does not split letters) took 45 s. Here every adjacent
        pair with a rank waits in a heap ordered by (rank, position), and the symbols form a linked
        list, so each merge costs O(log n). Popping in that order performs the references' merges in
        the references' order: they apply ranks in increasing order, each rank's occurrences left to
        right, and a merge of rank r never creates a pair of rank <= r, because in CLIP's merges file
        every merge's two halves are single bytes or products of earlier lines (checked by
        ``tests/test_tokenizer.py``). A heap entry whose pair has changed since it was pushed is
        skipped: symbols only grow, so a changed pair never becomes the same pair again.

        Symbol i spans characters ``[i, next[i])``. When ``history`` is given, it collects for every
        end position the earlier symbols that ended there and the rank of the merge that replaced them
        (``_bpe_head`` needs them).
        """
        n = len(symbols)
        ranks = self.bpe_ranks
        nxt = list(range(1, n + 1))  # n marks the end of the word
        prv = list(range(-1, n - 1))
        heap = [(rank, i) for i, pair in enumerate(pairwise(symbols)) if (rank := ranks.get(pair)) is not None]
        heapq.heapify(heap)
        while heap:
            rank, i = heapq.heappop(heap)
            left = symbols[i]
            j = nxt[i]
            if left is None or j == n or ranks.get((left, symbols[j])) != rank:
                continue  # stale: symbol i was absorbed into its left neighbour, or a neighbour changed
            merged = left + symbols[j]
            k = nxt[j]
            if history is not None:
                history.setdefault(k, []).append((symbols[j], rank))
            symbols[i], symbols[j] = merged, None
            nxt[i] = k
            if k < n:
                prv[k] = i
                if (new_rank := ranks.get((merged, symbols[k]))) is not None:
                    heapq.heappush(heap, (new_rank, i))
            h = prv[i]
            if h >= 0 and (new_rank := ranks.get((symbols[h], merged))) is not None:
                heapq.heappush(heap, (new_rank, h))
        out = []
        i = 0
        while i < n:
            out.append(symbols[i])
            i = nxt[i]
        return out

    def _bpe_head(self, word: str, count: int, start: int = 256) -> list[str]:
        """The first ``count`` symbols of ``bpe(word)`` (all of them if it has fewer), without merging
        all of a long word.

        ``bpe`` of a pre-token of a megabyte (one run of letters) takes seconds even at O(n log n), and
        truncation needs only its first few symbols. BPE is not local in general (a merge can cascade
        from the end of a word to its start), so prefixes are used only where it is *proven* that no
        merge ever crosses a boundary c, i.e. that characters ``[0, c)`` come out as they would alone:

        1. Merge a prefix of ``m`` characters alone (no ``</w>``). Each boundary c between its
           resulting symbols was never crossed, so the part left of c evolved as it would alone.
        2. In the whole word, nothing can cross c before something does, so until then the symbol
           ending at c goes through the same states ``L`` as in step 1, each alive until the merge that
           replaced it (rank ``until``), and the symbol starting at c is some vocabulary symbol ``R``
           that is a prefix of ``word[c:]``. A merge across c needs a pair (L, R) with a rank below
           ``until``. If no such pair exists, nothing ever crosses c: the symbols left of c are final.
        3. Periodic words ("abab...") fail that test everywhere, but their merges are few, and a cut has
           a bounded reach: the prefix's merges and the whole word's first differ next to the cut at m,
           and the difference spreads left one symbol (at most ``_longest_symbol`` characters) per step,
           each step a merge of higher rank than the step before (a merge's product forms only pairs of
           higher rank, and the older pairs of lower rank were already merged alike in both). So it
           stops within ``_longest_symbol`` times (number of distinct merges that occur in the word's
           first m + ``_longest_symbol`` characters) of the cut; symbols left of that are final.
        4. If no boundary past the first ``count`` symbols passes either test, double ``m``; at the end of
           the word this is plain ``bpe``.
        """
        n = len(word)
        m = min(n, start)
        while m < n:
            history: dict[int, list[tuple[str, float]]] = {}
            symbols = self._merge(list(word[:m]), history)
            reach = self._longest_symbol * (self._merges_within(word, m + self._longest_symbol) + 1)
            c = 0
            for k, symbol in enumerate(symbols[:-1], start=1):
                c += len(symbol)
                if k >= count and (c <= m - reach or self._never_crossed(
                        word, c, [*history.get(c, ()), (symbol, math.inf)])):
                    return symbols[:count]
            m = min(n, 2 * m)
        return list(self._bpe_cached(word))[:count] if n <= _CACHED_WORD else self.bpe(word)[:count]

    def _merges_within(self, word: str, end: int) -> int:
        """How many different merges have a product that occurs in ``word[:end]`` (``</w>`` included at
        the end of the word): an upper bound on the merges any BPE run there can use."""
        n, longest = len(word), self._longest_symbol
        found = set()
        for i in range(min(n, end)):
            for j in range(i + 2, min(n, end, i + longest) + 1):
                piece = word[i:j] + (END_OF_WORD if j == n else "")
                if piece in self._merge_products:
                    found.add(piece)
        return len(found)

    def _never_crossed(self, word: str, c: int, left_states: list[tuple[str, float]]) -> bool:
        """True if no merge can join a symbol ending at character c of ``word`` (one of ``left_states``,
        each alive until a rank) with a symbol starting there; see ``_bpe_head``."""
        n = len(word)
        rights = []
        for end in range(c + 1, min(n, c + self._longest_symbol) + 1):
            candidate = word[c:end] + (END_OF_WORD if end == n else "")
            if candidate in self.encoder:
                rights.append(candidate)
        for left, until in left_states:
            for right in rights:
                rank = self.bpe_ranks.get((left, right))
                if rank is not None and rank < until:
                    return False
        return True

    # ---- text <-> ids ---------------------------------------------------------------------------

    def encode(self, text: str) -> list[int]:
        """BPE ids of one text, without the start/end tokens (like ``SimpleTokenizer.encode``)."""
        return self._encode(text, limit=None)

    def _encode(self, text: str, limit: int | None, exact: bool = True) -> list[int]:
        """``encode``, stopping early: with a ``limit``, at most ``limit + 1`` ids are returned, so
        more than ``limit`` ids means the text has more (the rest is never computed). With
        ``exact=False`` those ``limit + 1`` ids are placeholders when a word's length alone shows that
        the text is too long (only the count is wanted then)."""
        if not isinstance(text, str):
            raise TypeError(f"encode() takes a str, got {type(text).__name__}")
        ids: list[int] = []
        for match in PRETOKENIZE_PATTERN.finditer(clean_text(text)):
            if limit is not None and len(ids) > limit:
                break
            piece = match.group()
            if piece in self.special_ids:  # a literal "<start_of_text>" / "<end_of_text>" in the text
                ids.append(self.special_ids[piece])
                continue
            try:
                utf8 = piece.encode("utf-8")
            except UnicodeEncodeError as e:  # a lone surrogate; ftfy would have replaced it
                raise TokenizerError(
                    f"text {_preview(text)} is not valid Unicode ({e.reason}); install ftfy to repair it"
                ) from None
            chars = "".join(self.byte_encoder[b] for b in utf8)
            if limit is None:
                symbols = self._bpe_cached(chars) if len(chars) <= _CACHED_WORD else self.bpe(chars)
            else:
                wanted = limit + 1 - len(ids)
                if not exact and -(-len(chars) // self._longest_symbol) >= wanted:
                    return ids + [EOT_ID] * wanted  # at least len(chars) / longest symbol ids: too many
                symbols = self._bpe_head(chars, wanted)
            ids.extend(self.encoder[symbol] for symbol in symbols)
        return ids
    def decode(self, ids: Iterable[int] | np.ndarray, skip_special_tokens: bool = True) -> str:
        """Text of a sequence of ids: every ``</w>`` becomes a space between words.

        With ``skip_special_tokens=True`` (the default) a padded row from ``tokenize`` decodes to just
        its text: trailing zeros are dropped as padding, then the start/end tokens. (Id 0 is also
        the symbol "!", but a real encoding never *ends* with it: a word's last symbol always carries
        ``</w>``, and "!" with ``</w>`` is id 256.) With ``False`` every id is decoded as it is, as
        the references do, so the special tokens appear as ``<start_of_text>``/``<end_of_text>`` and
        padding as "!!!".

        Decoding is not an exact inverse of encoding: the text comes back cleaned and lower-cased,
        with a single space after every pre-token ("a cat, 2 dogs." -> "a cat , 2 dogs ."). Unlike
        the references we drop the space left at the very end by the last ``</w>``. Ids that split
        a UTF-8 character (e.g. a row cut by truncation) decode to U+FFFD, as in the references.
        """
        array = np.asarray(ids)
        if array.size == 0:
            return ""
        if array.ndim != 1 or not np.issubdtype(array.dtype, np.integer):
            raise TypeError(
                f"decode() takes one sequence of integer ids, got an array of shape {array.shape} and "
                f"dtype {array.dtype}; decode a batch row by row"
            )
        id_list = [int(i) for i in array]
        bad = [i for i in id_list if not 0 <= i < self.vocab_size]
        if bad:
            raise TokenizerError(f"token id {bad[0]} is outside the vocabulary (0..{self.vocab_size - 1})")
        if skip_special_tokens:
            while id_list and id_list[-1] == 0:
                id_list.pop()
            id_list = [i for i in id_list if i not in (SOT_ID, EOT_ID)]
        chars = "".join(self.decoder[i] for i in id_list)
        utf8 = bytes(self.byte_decoder[c] for c in chars)
        text = utf8.decode("utf-8", errors="replace").replace(END_OF_WORD, " ")
        return text.removesuffix(" ")

    def tokenize(
        self,
        texts: str | Sequence[str],
        context_length: int = CONTEXT_LENGTH,
        truncate: bool = False,
    ) -> np.ndarray:
        """The ``(N, context_length)`` int64 id matrix of ``texts``; see the module-level ``tokenize``."""
        text_list = _as_text_list(texts)
        context_length = _check_context_length(context_length)
        result = np.zeros((len(text_list), context_length), dtype=np.int64)  # 0 = padding
        for row, text in enumerate(text_list):
            # Encoding stops as soon as the ids no longer fit: a megabyte of text costs no more than
            # what fits in the row (plus cleaning, which is linear).
            ids = [SOT_ID, *self._encode(text, limit=context_length - 2, exact=truncate), EOT_ID]
            if len(ids) > context_length:
                if not truncate:
                    raise TokenizerError(
                        f"text {row} ({_preview(text)}) is at least {len(ids)} tokens long including the "
                        f"start and end tokens, more than context_length={context_length}; shorten it or "
                        "pass truncate=True"
                    )
                # openai/CLIP: keep the first context_length ids, then overwrite the last with the end
                # token, because the text encoder reads its output at the end token's position.
                ids = ids[:context_length]
                ids[-1] = EOT_ID
            result[row, : len(ids)] = ids
        return result


# --------------------------------------------------------------------------------------------------
# Module-level API (shared tokenizer)
# --------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def default_tokenizer() -> SimpleTokenizer:
    """The shared tokenizer for the packaged vocabulary, built on first call (not at import)."""
    return SimpleTokenizer()


def tokenize(
    texts: str | Sequence[str],
    context_length: int = CONTEXT_LENGTH,
    truncate: bool = False,
) -> np.ndarray:
    """Token ids for CLIP's text encoder, as openai/CLIP's ``clip.tokenize``.

    Each row is ``[49406 (start), BPE ids..., 49407 (end), 0, 0, ...]``, shape
    ``(len(texts), context_length)``, dtype int64 (openai/CLIP returns an int64 ``LongTensor``). A
    single str gives shape ``(1, context_length)``.

    A text whose ids, start and end tokens included, do not fit in ``context_length`` raises
    ``TokenizerError`` naming it, unless ``truncate=True``: then its first ``context_length`` ids are
    kept and the last one is replaced by the end token. (This is openai/CLIP's behaviour;
    ``open_clip.tokenize`` always truncates, i.e. behaves like ``truncate=True``.)

    Raises TypeError for anything but a str or a sequence of str, and ValueError for a
    ``context_length`` that is not an integer >= 2 (start and end tokens need two places).
    """
    return default_tokenizer().tokenize(texts, context_length=context_length, truncate=truncate)


def decode(ids: Iterable[int] | np.ndarray, skip_special_tokens: bool = True) -> str:
    """Text of one sequence of ids (e.g. a row of ``tokenize``); see ``SimpleTokenizer.decode``."""
    return default_tokenizer().decode(ids, skip_special_tokens=skip_special_tokens)


# --------------------------------------------------------------------------------------------------
# Argument checks
# --------------------------------------------------------------------------------------------------


def _preview(text: str, width: int = 40) -> str:
    """A short repr of a text for error messages."""
    return repr(text if len(text) <= width else text[: width - 3] + "...")


def _as_text_list(texts: object) -> list[str]:
    """``texts`` as a list of str, or TypeError saying what was wrong."""
    if isinstance(texts, str):
        return [texts]
    # bytes are a Sequence (of ints), so they need an explicit check; decode them first.
    if isinstance(texts, (bytes, bytearray)) or not isinstance(texts, (Sequence, np.ndarray)):
        raise TypeError(f"texts must be a str or a sequence of str, got {type(texts).__name__}")
    text_list = list(texts)
    for i, text in enumerate(text_list):
        if not isinstance(text, str):
            raise TypeError(f"texts[{i}] must be a str, got {type(text).__name__}")
    return text_list


def _check_context_length(context_length: object) -> int:
    """``context_length`` as an int >= 2, or ValueError (bool is refused although it is an int)."""
    if isinstance(context_length, bool) or not isinstance(context_length, (int, np.integer)):
        raise ValueError(f"context_length must be an integer >= 2, got {context_length!r}")
    if context_length < 2:
        raise ValueError(f"context_length must be >= 2 (start and end tokens), got {context_length}")
    return int(context_length)
