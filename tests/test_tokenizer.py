"""miniclip's tokenizer against open_clip's, id for id, plus its own contract (shapes, errors, decode).

The reference output in tests/fixtures/tokenizer_open_clip.npz was produced from the texts in
tests/data/tokenizer_corpus.txt by tests/make_tokenizer_fixtures.py (run in an environment with
open_clip and torch); these tests need neither.
"""

from __future__ import annotations

import hashlib
import json
import random
import string
import subprocess
import sys
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest

from miniclip import tokenizer as tk
from miniclip.errors import TokenizerError

HERE = Path(__file__).resolve().parent
CORPUS_PATH = HERE / "data" / "tokenizer_corpus.txt"
FIXTURE_PATH = HERE / "fixtures" / "tokenizer_open_clip.npz"

try:
    import ftfy
except ImportError:  # ftfy is in the `test` extra, so this is unusual
    ftfy = None

needs_ftfy_mark = pytest.mark.skipif(ftfy is None, reason="ftfy is not installed; mojibake is not repaired")


def load_corpus() -> list[str]:
    lines = CORPUS_PATH.read_text(encoding="utf-8").split("\n")
    return [json.loads(line) for line in lines if line and not line.startswith("#")]


def unpack_strings(buffer: np.ndarray, offsets: np.ndarray) -> list[str]:
    data = buffer.tobytes()
    return [data[a:b].decode("utf-8") for a, b in pairwise(offsets)]


@pytest.fixture(scope="module")
def corpus() -> list[str]:
    return load_corpus()


@pytest.fixture(scope="module")
def ref() -> dict[str, np.ndarray]:
    with np.load(FIXTURE_PATH) as f:
        return {name: f[name] for name in f.files}


@pytest.fixture(scope="module")
def checked(ref: dict[str, np.ndarray]) -> np.ndarray:
    """Indices of corpus texts to compare: all of them, or without ftfy those ftfy leaves unchanged
    (for the others open_clip's ids depend on ftfy's repairs, which we then cannot make)."""
    if ftfy is None:
        return np.flatnonzero(~ref["needs_ftfy"])
    return np.arange(len(ref["lengths"]))


@pytest.fixture(scope="module")
def tokenizer() -> tk.SimpleTokenizer:
    return tk.default_tokenizer()


def describe_mismatches(corpus: list[str], bad: list[int]) -> str:
    return f"{len(bad)} texts differ from open_clip, e.g. " + "; ".join(f"#{i} {corpus[i][:50]!r}" for i in bad[:5])


# ------------------------------------------------------------------------------------------------
# The fixture itself
# ------------------------------------------------------------------------------------------------


def test_fixture_belongs_to_corpus(corpus, ref):
    digest = hashlib.sha256(CORPUS_PATH.read_bytes()).hexdigest()
    assert str(ref["corpus_sha256"]) == digest, "corpus changed: rerun tests/make_tokenizer_fixtures.py"
    assert len(corpus) == len(ref["lengths"]) == ref["tokens"].shape[0] >= 1500
    assert ref["tokens"].shape[1] == 77 and ref["tokens_ctx16"].shape[1] == 16
    # The corpus must contain the boundary cases the tests below rely on.
    assert (ref["lengths"] == 77).any() and (ref["lengths"] == 78).any()
    assert (ref["lengths"] > 77).sum() >= 20
    assert "" in corpus and "The Mona Lisa doesnÃ¢â‚¬â„¢t have eyebrows." in corpus


# ------------------------------------------------------------------------------------------------
# Parity with open_clip
# ------------------------------------------------------------------------------------------------


def test_encode_matches_open_clip(corpus, ref, checked, tokenizer):
    flat, offsets = ref["encoded_flat"], ref["encoded_offsets"]
    bad = [int(i) for i in checked if tokenizer.encode(corpus[i]) != flat[offsets[i] : offsets[i + 1]].tolist()]
    assert not bad, describe_mismatches(corpus, bad)


@pytest.mark.parametrize(("key", "context_length"), [("tokens", 77), ("tokens_ctx16", 16)])
def test_tokenize_truncate_matches_open_clip(corpus, ref, checked, key, context_length):
    # open_clip.tokenize always truncates, like miniclip's truncate=True.
    texts = [corpus[i] for i in checked]
    ours = tk.tokenize(texts, context_length=context_length, truncate=True)
    assert ours.shape == (len(texts), context_length) and ours.dtype == np.int64
    expected = ref[key][checked].astype(np.int64)
    bad = [int(checked[row]) for row in np.flatnonzero((ours != expected).any(axis=1))]
    assert not bad, describe_mismatches(corpus, bad)


def test_truncate_false_accepts_fitting_texts_and_rejects_longer_ones(corpus, ref, checked):
    lengths = ref["lengths"]
    fitting = [int(i) for i in checked if lengths[i] <= 77]
    ours = tk.tokenize([corpus[i] for i in fitting])  # truncate=False is the default
    np.testing.assert_array_equal(ours, ref["tokens"][fitting])
    too_long = [int(i) for i in checked if lengths[i] > 77]
    assert too_long
    for i in too_long:
        # Encoding stops once the ids no longer fit, so the message gives a lower bound.
        with pytest.raises(TokenizerError, match="is at least 78 tokens long"):
            tk.tokenize(corpus[i])


def test_exactly_77_fits_and_78_raises(corpus, ref):
    lengths = ref["lengths"]
    text77 = corpus[int(np.flatnonzero(lengths == 77)[0])]
    text78 = corpus[int(np.flatnonzero(lengths == 78)[0])]
    row = tk.tokenize(text77)[0]
    assert row[0] == tk.SOT_ID and row[-1] == tk.EOT_ID and (row != 0).all()
    with pytest.raises(TokenizerError) as excinfo:
        tk.tokenize(["a cat", text78])
    message = str(excinfo.value)
    assert "text 1" in message and "at least 78 tokens" in message and "context_length=77" in message
    assert repr(text78[:37] + "...") in message  # a preview of the offending text
    truncated = tk.tokenize(text78, truncate=True)[0]
    assert truncated[-1] == tk.EOT_ID
    np.testing.assert_array_equal(truncated[:76], [tk.SOT_ID, *tk.default_tokenizer().encode(text78)[:75]])


def test_decode_matches_open_clip(corpus, ref, checked, tokenizer):
    # open_clip decodes each row's ids between start and end token to `expected`, which ends in the
    # space of the last </w>; we drop that space. Rows cut mid-character decode with U+FFFD in both.
    expected = unpack_strings(ref["decoded_utf8"], ref["decoded_offsets"])
    bad = []
    for i in checked:
        n = min(int(ref["lengths"][i]), 77)
        content = ref["tokens"][i, 1 : n - 1]
        if tokenizer.decode(content, skip_special_tokens=False) != expected[i].removesuffix(" "):
            bad.append(int(i))
    assert not bad, describe_mismatches(corpus, bad)


# ------------------------------------------------------------------------------------------------
# Our own contract
# ------------------------------------------------------------------------------------------------


def test_vocabulary_and_special_ids(tokenizer):
    assert tokenizer.vocab_size == tk.VOCAB_SIZE == 49408
    assert len(tokenizer.bpe_ranks) == tk.NUM_MERGES == 48894
    assert (tk.SOT_ID, tk.EOT_ID) == (49406, 49407)
    assert tokenizer.encoder["<start_of_text>"] == 49406 and tokenizer.decoder[49407] == "<end_of_text>"
    assert tokenizer.decoder[0] == "!" and tokenizer.decoder[256] == "!</w>"
    table = tk.bytes_to_unicode()
    assert len(set(table.values())) == 256 and all(c.isprintable() and not c.isspace() for c in table.values())
    assert table[ord("a")] == "a" and table[ord(" ")] == "Ġ"
    np.testing.assert_array_equal(tk.tokenize("")[0, :3], [49406, 49407, 0])
    assert tk.tokenize("a photo of a cat")[0, :7].tolist() == [49406, 320, 1125, 539, 320, 2368, 49407]


def test_single_string_and_batch_shapes():
    one = tk.tokenize("a diagram")
    assert one.shape == (1, 77) and one.dtype == np.int64
    batch = tk.tokenize(["a diagram", "a dog", "a cat"], context_length=10)
    assert batch.shape == (3, 10) and batch.dtype == np.int64
    np.testing.assert_array_equal(batch[0], tk.tokenize("a diagram", context_length=10)[0])
    assert tk.tokenize(("a", "b")).shape == (2, 77)
    assert tk.tokenize(np.array(["a dog", "a cat"])).shape == (2, 77)
    assert tk.tokenize([]).shape == (0, 77)


@pytest.mark.parametrize("bad", [None, b"a photo", bytearray(b"x"), 3, 1.5, {"a set"}, ["ok", None], ("ok", b"x")])
def test_non_string_input_raises_type_error(bad):
    with pytest.raises(TypeError, match="str"):
        tk.tokenize(bad)


def test_type_error_names_the_bad_element():
    with pytest.raises(TypeError, match=r"texts\[2\] must be a str, got int"):
        tk.tokenize(["a", "b", 7])
    with pytest.raises(TypeError, match="encode"):
        tk.default_tokenizer().encode(None)


@pytest.mark.parametrize("bad", [0, 1, -5, 2.5, True, "77", None])
def test_bad_context_length_raises_value_error(bad):
    with pytest.raises(ValueError, match="context_length"):
        tk.tokenize("a cat", context_length=bad)


def test_smallest_context_length():
    assert tk.tokenize("a cat", context_length=2, truncate=True).tolist() == [[49406, 49407]]
    assert tk.tokenize("", context_length=2).tolist() == [[49406, 49407]]
    assert tk.tokenize("a", context_length=np.int64(3)).tolist() == [[49406, 320, 49407]]
    with pytest.raises(TokenizerError):
        tk.tokenize("a cat", context_length=2)


def test_cleaning():
    same = [
        ("A PHOTO OF A CAT", "a photo of a cat"),
        ("fish &amp;amp; chips", "fish & chips"),  # unescaped twice
        ("&lt;b&gt;", "<b>"),
        (" a\t\n photo\u00a0of\u3000a\r\ncat  ", "a photo of a cat"),
        ("IT'S", "it's"),
    ]
    for raw, clean in same:
        np.testing.assert_array_equal(tk.tokenize(raw), tk.tokenize(clean), err_msg=raw)
    assert tk.clean_text("  Hello &amp;amp;\tWORLD ") == "hello & world"
    # "'s" is one pre-token; a curly apostrophe is punctuation like any other.
    assert tk.PRETOKENIZE_PATTERN.findall("it's 2021!!") == ["it", "'s", "2", "0", "2", "1", "!!"]


@needs_ftfy_mark
def test_mojibake_is_repaired():
    np.testing.assert_array_equal(
        tk.tokenize("The Mona Lisa doesnÃ¢â‚¬â„¢t have eyebrows."),
        tk.tokenize("The Mona Lisa doesn't have eyebrows."),
    )
    assert tk.clean_text("schÃ¶n") == "schön"


def test_without_ftfy_texts_ftfy_leaves_alone_are_unchanged(corpus, ref, monkeypatch):
    monkeypatch.setattr(tk, "_ftfy_fix_text", lambda: None)
    assert tk.clean_text("schÃ¶n") == "schã¶n"  # no repair now
    rows = np.flatnonzero(~ref["needs_ftfy"])
    ours = tk.tokenize([corpus[i] for i in rows], truncate=True)
    np.testing.assert_array_equal(ours, ref["tokens"][rows])


def test_missing_ftfy_is_said_once():
    code = ("import sys, warnings; sys.modules['ftfy'] = None; import miniclip\n"
            "with warnings.catch_warnings(record=True) as w:\n"
            "    warnings.simplefilter('always')\n"
            "    miniclip.tokenize(['a dog']); miniclip.tokenize(['a cat'])\n"
            "print(len(w), w[0].message)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("1 ftfy is not installed")


def test_special_token_strings_follow_open_clip_spelling():
    ids = tk.tokenize("<start_of_text>a<end_of_text>")[0, :5].tolist()
    assert ids == [49406, 49406, 320, 49407, 49407]
    assert 49407 not in tk.default_tokenizer().encode("<|endoftext|>")


def test_decode_round_trip(corpus, tokenizer):
    # Decoding gives the cleaned, lower-cased text with one space after every pre-token.
    # (Literal special tokens are skipped: decode drops them by default.)
    ascii_texts = [t for t in corpus if t.isascii() and "_of_text>" not in tk.clean_text(t)]
    assert len(ascii_texts) > 1000
    for text in ascii_texts:
        expected = " ".join(tk.PRETOKENIZE_PATTERN.findall(tk.clean_text(text)))
        assert tokenizer.decode(tokenizer.encode(text)) == expected, text
    # Words separated by whitespace come back exactly as the cleaned text.
    for text in ["a photo of a cat", "A  Bad\tPhoto of THE tench", "supercalifragilisticexpialidocious"]:
        assert tk.decode(tk.tokenize(text)[0]) == tk.clean_text(text)


def test_decode_special_tokens_and_padding(tokenizer):
    row = tk.tokenize("a cat!!", context_length=12)[0]
    assert tk.decode(row) == "a cat !!"
    assert tk.decode(row, skip_special_tokens=False).startswith("<start_of_text>a cat !! <end_of_text>!!")
    assert tk.decode(row.tolist()) == tk.decode(row)
    # A "!" inside a word is id 0; only *trailing* zeros are padding.
    ids = tokenizer.encode("!~")
    assert ids == [0, 349] and tk.decode(ids) == "!~"
    assert tk.decode(tk.tokenize("!~", context_length=6)[0]) == "!~"
    assert tk.decode([]) == ""


def test_decode_rejects_bad_ids():
    with pytest.raises(TokenizerError, match="49408"):
        tk.decode([320, 49408])
    with pytest.raises(TokenizerError, match="-1"):
        tk.decode([-1])
    with pytest.raises(TypeError, match="row by row"):
        tk.decode(tk.tokenize(["a", "b"]))
    with pytest.raises(TypeError):
        tk.decode([1.5, 2.0])


def test_vocabulary_is_loaded_lazily():
    code = (
        "import miniclip.tokenizer as t; "
        "assert t.default_tokenizer.cache_info().currsize == 0; "
        "t.tokenize('a'); assert t.default_tokenizer.cache_info().currsize == 1"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=HERE.parent)


# ------------------------------------------------------------------------------------------------
# Long words: BPE in O(n log n), and only as much of a word as fits in the row
# ------------------------------------------------------------------------------------------------


def reference_bpe(tokenizer: tk.SimpleTokenizer, word: str) -> tuple[str, ...]:
    """openai/CLIP's ``bpe`` (quadratic): the lowest-ranked pair, all its occurrences left to right."""
    symbols = [*word[:-1], word[-1] + tk.END_OF_WORD]
    while len(symbols) > 1:
        best = min(pairwise(symbols), key=lambda pair: tokenizer.bpe_ranks.get(pair, np.inf))
        if best not in tokenizer.bpe_ranks:
            break
        merged, i = [], 0
        while i < len(symbols):
            if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                merged.append(best[0] + best[1])
                i += 2
            else:
                merged.append(symbols[i])
                i += 1
        symbols = merged
    return tuple(symbols)


def random_word(rng: random.Random, alphabet: str, n: int) -> str:
    return "".join(rng.choices(alphabet, k=n))


ALPHABETS = [string.ascii_lowercase, "ab", "a", "ant", "esrtlin", "aeiou", "ing", "!?.", "éü"]


def test_merges_build_on_earlier_merges(tokenizer):
    # Why popping (rank, position) from a heap merges in the reference's order: both halves of every
    # merge are byte symbols or products of earlier merges, so a merge never creates a pair that
    # ranks before it; and no two merges make the same symbol.
    made = {c: -1 for c in tk.bytes_to_unicode().values()}
    made |= {c + tk.END_OF_WORD: -1 for c in tk.bytes_to_unicode().values()}
    for (left, right), rank in sorted(tokenizer.bpe_ranks.items(), key=lambda item: item[1]):
        assert made.get(left, rank) < rank and made.get(right, rank) < rank, (left, right, rank)
        assert left + right not in made
        made[left + right] = rank


def test_bpe_matches_the_reference_algorithm_on_random_words(tokenizer):
    rng = random.Random(0)
    for trial in range(600):
        alphabet = ALPHABETS[trial % len(ALPHABETS)]
        if trial % 3:
            text = random_word(rng, alphabet, rng.choice([1, 2, 3, 7, 30, 120, 300]))
        else:  # periodic: the boundary test fails everywhere, the bound on a cut's reach decides
            text = random_word(rng, alphabet, rng.randint(1, 4)) * rng.randint(1, 120)
        word = "".join(tokenizer.byte_encoder[b] for b in text.encode())
        expected = reference_bpe(tokenizer, word)
        assert tokenizer.bpe(word) == expected, word
        # Prefixes of every size, from a start small enough that many boundaries fail the proofs
        # (without them, some of these come out wrong).
        for count in (1, 4, 12):
            for start in (2, 8):
                assert tuple(tokenizer._bpe_head(word, count, start=start)) == expected[:count], (word, count, start)


@pytest.fixture()
def merged_characters(tokenizer, monkeypatch) -> list[int]:
    """Counts the characters that BPE merges (the work) while a test runs."""
    counted: list[int] = []
    merge = tokenizer._merge

    def counting_merge(symbols, *args, **kwargs):
        counted.append(len(symbols))
        return merge(symbols, *args, **kwargs)

    monkeypatch.setattr(tokenizer, "_merge", counting_merge)
    return counted


def test_a_megabyte_word_is_merged_only_as_far_as_the_row_reaches(merged_characters):
    letters = random_word(random.Random(1), string.ascii_lowercase, 1 << 20)
    for word in ("a" * (1 << 20), "ab" * (1 << 19), "onion" * 200_000, letters):
        merged_characters.clear()  # each word is one pre-token: the regex does not split letters
        row = tk.tokenize(word, truncate=True)[0]
        assert sum(merged_characters) < 20_000, word[:10]  # instead of 2**20 (seconds) or more
        # The first 75 ids are those of the first 2,000 characters taken as a word of their own
        # under the reference algorithm (fast at that size; the proof in _bpe_head says they must be).
        expected = [tk.default_tokenizer().encoder[s] for s in reference_bpe(tk.default_tokenizer(), word[:2000])]
        assert row.tolist() == [tk.SOT_ID, *expected[:75], tk.EOT_ID]
        # Without truncation the word's length alone shows it cannot fit: no merging at all.
        merged_characters.clear()
        with pytest.raises(TokenizerError, match="at least 78 tokens"):
            tk.tokenize(word)
        assert merged_characters == []


def test_a_64k_letter_word_truncates_as_its_full_merge(tokenizer, merged_characters):
    word = random_word(random.Random(2), string.ascii_lowercase, 1 << 16)
    row = tk.tokenize(word, truncate=True)[0]
    assert sum(merged_characters) < 20_000
    full = tokenizer.bpe(word)  # the whole word, O(n log n): under a second
    assert row.tolist() == [tk.SOT_ID, *(tokenizer.encoder[s] for s in full[:75]), tk.EOT_ID]
    assert tokenizer.encode(word) == [tokenizer.encoder[s] for s in full]


def test_a_megabyte_of_words_stops_at_the_row(merged_characters):
    text = " ".join(["photograph"] * 200_000)
    with pytest.raises(TokenizerError, match="at least 78 tokens"):
        tk.tokenize(text)
    row = tk.tokenize(text, truncate=True)[0]
    assert len(merged_characters) <= 1  # "photograph" once, then from the cache
    assert row.tolist() == tk.tokenize(" ".join(["photograph"] * 75))[0].tolist()


def test_long_words_are_not_cached(tokenizer):
    before = tokenizer._bpe_cached.cache_info().currsize
    tokenizer.encode("x" + "ab" * 2000)
    assert tokenizer._bpe_cached.cache_info().currsize == before
