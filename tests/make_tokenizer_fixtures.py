"""Regenerate the tokenizer parity corpus and open_clip's reference output for it.

Run with a Python environment that has open_clip_torch, torch and ftfy (NOT run by CI or pytest)::

    PYTHONPATH=. ../refenv/bin/python tests/make_tokenizer_fixtures.py   (see tests/README.md)

It writes two files that tests/test_tokenizer.py reads:

- ``tests/data/tokenizer_corpus.txt``: the texts, one JSON string literal per line (so tabs, newlines,
  NBSP, zero-width joiners and even lone surrogates survive exactly; invisible characters are written
  as ``\\uXXXX`` escapes so the file stays readable). Lines starting with ``#`` are comments.
- ``tests/fixtures/tokenizer_open_clip.npz``: what open_clip's tokenizer makes of each text.

The corpus is generated deterministically (fixed seed) from hand-written cases, the ImageNet class
names and prompt templates of ../shared/data/imagenet_prompts.json (beside the repository), and random mixtures. It is
committed, so the test reads exactly the strings this script tokenized; rerunning the script only
matters after changing the corpus or upgrading open_clip/ftfy.
"""

from __future__ import annotations

import hashlib
import json
import random
import sys
import unicodedata
from pathlib import Path

import ftfy
import numpy as np
import open_clip
import regex
from open_clip import tokenizer as oc_tokenizer

HERE = Path(__file__).resolve().parent
CORPUS_PATH = HERE / "data" / "tokenizer_corpus.txt"
FIXTURE_PATH = HERE / "fixtures" / "tokenizer_open_clip.npz"
IMAGENET_PATH = Path(__file__).resolve().parents[2] / "shared" / "data" / "imagenet_prompts.json"
SEED = 20210226  # CLIP paper's arXiv date; any fixed number works

# ------------------------------------------------------------------------------------------------
# Hand-written cases, by category
# ------------------------------------------------------------------------------------------------

ASCII_SENTENCES = [
    "a photo of a cat.",
    "A photo of a dog.",
    "a diagram",
    "a dog",
    "a cat",
    "Hello, world!",
    "The quick brown fox jumps over the lazy dog.",
    "THE QUICK BROWN FOX JUMPS OVER THE LAZY DOG",
    "tHe QuIcK bRoWn FoX",
    "This is a test sentence, with commas; semicolons: colons - and dashes -- and em-dashes.",
    "What's up? Not much... you?!",
    "(parentheses) [brackets] {braces} <angles>",
    "email@example.com https://openai.com/research/clip?x=1&y=2#frag",
    "C:\\Users\\clip\\Documents\\file_name.txt",
    "snake_case camelCase PascalCase kebab-case SCREAMING_SNAKE",
    "#hashtag @mention $dollar %percent ^caret &ampersand *star",
    "~tilde `backtick` |pipe| \\backslash/ +plus= -minus_",
    "\"double quotes\" and 'single quotes'",
    "!!!???...,,,;;;:::",
    "...",
    "!",
    "?!?!?!",
    "a",
    "I",
    "x y z",
    "a.b.c.d.e",
    "e.g. i.e. etc. vs. Mr. Mrs. Dr.",
    "don't stop believin'",
    "rock'n'roll",
    "'quoted'",
    "''",
    "'",
    "'s",
    "'s's's",
    "it''s",
    "a photo of a {}.",
    "itap of a {}.",
    "a centered satellite photo of Lake Tahoe.",
    "a black and white photo of the Eiffel Tower at night",
    "an origami crane made of red paper",
    "two dogs playing in the snow",
    "ViT-B/32 and RN50x64 are CLIP image encoders",
    "supercalifragilisticexpialidocious",
    "pneumonoultramicroscopicsilicovolcanoconiosis",
    "Llanfairpwllgwyngyllgogerychwyrndrobwllllantysiliogogogoch",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    "zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz",
    "qwertyuiopasdfghjklzxcvbnm",
    "xkcd lol omg wtf brb",
    "<unk> <pad> <mask> [CLS] [SEP] </s>",
    "</w>",
    "a</w>b",
]

CONTRACTIONS = [
    "it's he's she's that's what's there's",
    "don't won't can't isn't aren't wasn't shouldn't",
    "we're you're they're",
    "I've we've you've they've",
    "I'm",
    "I'll you'll he'll we'll they'll",
    "I'd you'd he'd we'd they'd",
    "IT'S DON'T WE'RE I'VE I'M YOU'LL THEY'D",
    "It'S dOn'T We'Re I'Ve i'M yoU'lL ThEy'D",
    "'re 've 'm 'll 'd 't 's",
    "'RE 'VE 'M 'LL 'D 'T 'S",
    "rock'sroll don'tcha y'all ma'am o'clock",
    "the dog's bone, the dogs' bones",
    "it’s don’t we’re I’ve",  # curly apostrophes are not contractions to the regex
    "it`s don`t",
    "'''s'''",
    "I'd've",
    "ol' man river",
    "'tis the season",
    "rock 'n' roll",
    # IGNORECASE matters even after lower-casing: the long s "ſ" case-folds to "s", so "'ſ" is a
    # contraction pre-token (and "<ſtart_of_text>" one pre-token, though not the special id).
    "it'ſ",
    "'ſ",
    "WHAT'ſ UP",
    "<ſtart_of_text> a <end_of_text>",
]

DIGITS = [
    "0",
    "1234567890",
    "3.14159265358979",
    "1,000,000",
    "1 000 000",
    "2021-02-26",
    "12:34:56",
    "+1 (555) 123-4567",
    "$19.99 €5 £3 ¥100 ₹50 ₿0.001",
    "50% off, 2x faster, 3rd place, 21st century, 4K 8K 1080p",
    "covid19 mp3 h264 b2b 24/7 9-5 3d",
    "version 1.2.3-rc.4+build.5",
    "0x1F600 0b1010 0o777 1e-9 6.02e23",
    "½ ¼ ¾ ⅓ ⅔ ⅛",
    "x² y³ H₂O CO₂ E=mc²",
    "① ② ③ ⑩ ⑳",
    "Ⅰ Ⅱ Ⅲ Ⅳ Ⅻ ⅿ",
    "٠١٢٣٤٥٦٧٨٩",
    "۰۱۲۳۴۵۶۷۸۹",
    "०१२३४५६७८९",
    "๐๑๒๓๔๕๖๗๘๙",
    "一二三四五六七八九十百千万",
    "０１２３４５６７８９",
    "𝟎𝟏𝟐𝟑 𝟘𝟙𝟚",
    "π ≈ 3.14, √2 ≈ 1.414, ∞ > 10^100",
]

HTML = [
    "&amp;",
    "&amp;amp;",
    "&amp;amp;amp;",
    "fish &amp; chips",
    "fish &amp;amp; chips",
    "&lt;b&gt;bold&lt;/b&gt;",
    "&amp;lt;i&amp;gt;",
    "&#39;single&#39; &quot;double&quot;",
    "&#x27;hex&#x27; &#X41;",
    "caf&eacute; na&iuml;ve &Uuml;ber",
    "&nbsp;padded&nbsp;&nbsp;text&nbsp;",
    "&copy; 2021 &reg; &trade; &mdash; &hellip;",
    "&copy 2021 (no semicolon)",
    "&notanentity; &; &#; &#xZZ;",
    "AT&T and H&M and R&D",
    "&#128512; &#x1F600;",
    "&#0; &#65;&#66;&#67;",
    "<p>Hello <b>World</b></p>",
    '<a href="https://example.com">link</a>',
    "&amp;lt;script&amp;gt;alert(1)&amp;lt;/script&amp;gt;",
    "Tom &amp; Jerry &lt;3",
    "&AMP; &Amp; &LT;",
]

MOJIBAKE = [
    "The Mona Lisa doesnÃ¢â‚¬â„¢t have eyebrows.",
    "schÃ¶n",
    "Ã¼ber cafÃ©",
    "naÃ¯ve",
    "â€œquotedâ€\x9d",
    "It was â€˜coolâ€™",
    "ðŸ˜€ smiley",
    "Ð¿Ñ€Ð¸Ð²ÐµÑ‚",
    "æ—¥æœ¬èªž",
    "âœ” done",
    "EspaÃ±a",
    "ï¬\x81 ligature",
    "ﬁne ﬂower ﬀ ﬃ",
    "ｆｕｌｌｗｉｄｔｈ ＡＢＣ",
    "\x1b[31mred text\x1b[0m",
    "\ufeffbyte order mark",
    "l’esprit",
    "a\ud800b lone surrogate",
    "x\udfffy \ud83d lone surrogates",
    "Ã",
    "Â\xa0",
    "cafe\u0301 (decomposed)",
    "Å (angstrom sign) vs Å",
]

ACCENTED = [
    "café crème brûlée",
    "naïve façade résumé",
    "Über Größe straße STRASSE",
    "ß ẞ",
    "Ærøskøbing Å Ø æ ø å",
    "Kraków Łódź Gdańsk Żółć",
    "čeština Škoda Dvořák",
    "Ğ ğ İ ı Ş ş",
    "İSTANBUL istanbul ISTANBUL",
    "Ǆ ǅ ǆ ǈ ǉ",
    "ﬀ ﬁ ﬂ",
    "Ἀθῆναι Ελληνικά ΣΊΣΥΦΟΣ",
    "Москва РОССИЯ ёлка",
    "Київ ґ є і ї",
    "Tiếng Việt Nguyễn",
    "Ñandú pingüino",
    "ǅemal",
    "ŉ ǰ ΐ",
]

CJK = [
    "猫の写真",
    "一只猫的照片",
    "一張貓的照片",
    "中华人民共和国",
    "東京タワー",
    "ひらがな カタカナ ﾊﾝｶｸｶﾀｶﾅ",
    "こんにちは、世界！",
    "「かぎかっこ」『二重』【隅付き】",
    "漢字かな交じり文",
    "강아지 사진",
    "안녕하세요 세계",
    "한국어 조선말",
    "ㄱㄴㄷ ㅏㅑㅓ",
    "𠀀𠀁𪚥 (CJK extension B)",
    "〇〻々〆",
    "猫🐱ねこネコ고양이cat",
    "日本語テキストとEnglish textの混在",
]

EMOJI = [
    "😀",
    "😀😃😄😁",
    "I love 🍕 and 🍣!",
    "👍🏻 👍🏼 👍🏽 👍🏾 👍🏿",
    "👩‍💻 👨‍👩‍👧‍👦 🏳️‍🌈 🏴‍☠️",
    "🧑🏽‍🚀 astronaut",
    "❤️ ❤ ♥",
    "🇺🇸 🇯🇵 🇫🇷 🇩🇪",
    "🏴󠁧󠁢󠁳󠁣󠁴󠁿 Scotland",
    "1️⃣ #️⃣ *️⃣",
    "🐶🐱🐭🐹🐰🦊🐻🐼",
    "✨ sparkles ✨",
    "☃ ☂ ☀ ★ ☆ ♠ ♣ ♦",
    "→ ← ↑ ↓ ⇒ ⇔",
    "■□▲△●○◆◇",
    "😀a😀b😀",
    "text😀text",
    ":-) :( ;) :D <3 ^_^ ¯\\_(ツ)_/¯",
    "🫠 🫶 🪿 🩷",
]

RTL_AND_INDIC = [
    "مرحبا بالعالم",
    "صورة قطة",
    "العربية: الْعَرَبِيَّة",
    "שלום עולם",
    "תמונה של חתול",
    "עִבְרִית",
    "فارسی: سلام دنیا",
    "اردو",
    "mixed العربية and English",
    "\u202eright-to-left override\u202c",
    "नमस्ते दुनिया",
    "बिल्ली की तस्वीर",
    "हिन्दी क्षत्रिय",
    "বাংলা ভাষা",
    "தமிழ் மொழி",
    "తెలుగు",
    "ਪੰਜਾਬੀ",
    "ภาษาไทย",
    "สวัสดีชาวโลก",
    "ພາສາລາວ",
    "ខ្មែរ",
    "မြန်မာ",
    "ქართული",
    "Հայերեն",
    "አማርኛ",
    "ᠮᠣᠩᠭᠣᠯ",
    "ᚠᚢᚦᚨᚱᚲ",
    "ꦗꦮ",
]

COMBINING = [
    "e\u0301",
    "a\u0300\u0301\u0302\u0303\u0304",
    "Z\u0351\u036b\u0343\u036a\u0302\u036b\u033d\u034f\u0334\u0319\u0324\u031e\u0349\u035a\u032f\u031e\u0320\u034dA\u036b\u0357\u0334\u0362\u0335\u031c\u0330\u0354L\u0368\u0367\u0369\u0358\u0320G\u0311\u0357\u030e\u0305\u035b\u0341\u0334\u033b\u0348\u034d\u0354\u0339O",
    "\u0301 leading combining mark",
    "n\u0303 vs ñ",
    "ק\u05b8",
    "क\u094d\u0937",
    "x\u20dd \u20e3",
    "a\u200db\u200cc",
    "a\u2060b\u00adc",
    "\u034f",
]

WHITESPACE = [
    "",
    " ",
    "   ",
    "\t",
    "\n",
    "\r\n",
    " \t\n\r\x0b\x0c ",
    "\u00a0",
    "\u3000",
    "\u2028\u2029",
    "\u200b",
    "\u200b\u200b",
    "\ufeff",
    "tab\tseparated\tvalues",
    "line one\nline two\r\nline three\rline four",
    "  leading and trailing  ",
    "many     spaces     between",
    "non\u00a0breaking\u00a0space",
    "thin\u2009space hair\u200aspace em\u2003space en\u2002space",
    "ideographic\u3000space",
    "zero\u200bwidth\u200bspace",
    "next\u0085line",
    "info\x1fsep\x1cfile\x1dgroup\x1erecord",
    "vertical\x0btab form\x0cfeed",
    "nul\x00char",
    "bell\x07 backspace\x08 delete\x7f",
    "\x80\x81\x9f c1 controls",
    "&nbsp;",
    "&nbsp;&nbsp;&nbsp;",
    "\t\t&#32;&#9;\n",
]

SPECIAL_TOKEN_STRINGS = [
    "<start_of_text>",
    "<end_of_text>",
    "<start_of_text>a photo<end_of_text>",
    "<START_OF_TEXT> shouting <END_OF_TEXT>",
    "x<end_of_text>y",
    "!<end_of_text>",
    "<end_of_text><end_of_text><end_of_text>",
    "<|startoftext|>",
    "<|endoftext|>",
    "<|startoftext|>a photo of a cat<|endoftext|>",
    "&lt;end_of_text&gt;",
    "<start of text>",
    "<end_of_text",
]


# ------------------------------------------------------------------------------------------------
# Generated cases
# ------------------------------------------------------------------------------------------------

LONG_ENGLISH = (
    "Learning directly from raw text about images is a promising alternative which leverages a much "
    "broader source of supervision. We demonstrate that the simple pre-training task of predicting "
    "which caption goes with which image is an efficient and scalable way to learn state-of-the-art "
    "image representations from scratch on a dataset of 400 million (image, text) pairs collected from "
    "the internet. After pre-training, natural language is used to reference learned visual concepts "
    "(or describe new ones) enabling zero-shot transfer of the model to downstream tasks. We study the "
    "performance of this approach by benchmarking on over 30 different existing computer vision "
    "datasets, spanning tasks such as OCR, action recognition in videos, geo-localization, and many "
    "types of fine-grained object classification."
)
LONG_JAPANESE = (
    "吾輩は猫である。名前はまだ無い。どこで生れたかとんと見当がつかぬ。何でも薄暗いじめじめした所で"
    "ニャーニャー泣いていた事だけは記憶している。吾輩はここで始めて人間というものを見た。しかもあとで"
    "聞くとそれは書生という人間中で一番獰悪な種族であったそうだ。"
)
LONG_RUSSIAN = (
    "Все счастливые семьи похожи друг на друга, каждая несчастливая семья несчастлива по-своему. Всё "
    "смешалось в доме Облонских. Жена узнала, что муж был в связи с бывшею в их доме француженкою-"
    "гувернанткой, и объявила мужу, что не может жить с ним в одном доме."
)

WORD_POOL = (
    "a an the photo picture image drawing painting sketch of on in with and or small large big tiny red "
    "blue green yellow black white dog dogs cat cats bird car truck tree house city street beach mountain "
    "river person people man woman child running sitting standing flying old new bright dark blurry "
    "close-up cropped rendering sculpture tattoo origami toy plastic cartoon"
).split()
MULTILINGUAL_POOL = [
    "café",
    "Straße",
    "naïve",
    "Ελλάδα",
    "Москва",
    "猫",
    "写真",
    "ねこ",
    "カメラ",
    "고양이",
    "사진",
    "مرحبا",
    "שלום",
    "नमस्ते",
    "สวัสดี",
    "ქართ",
    "Ærø",
    "İstanbul",
    "ǅ",
    "ﬁ",
    "ｆｕｌｌ",
    "𝐛𝐨𝐥𝐝",
]
EMOJI_POOL = ["😀", "🐱", "👍🏽", "👩‍💻", "🏳️‍🌈", "🇯🇵", "❤️", "✨", "🍕", "1️⃣", "🫠"]
PUNCT_POOL = list(".,;:!?-_'\"()[]{}<>/\\|@#$%^&*+=~`") + [
    "...",
    "--",
    "—",
    "–",
    "“",
    "”",
    "‘",
    "’",
    "«",
    "»",
    "¿",
    "¡",
]
ENTITY_POOL = ["&amp;", "&amp;amp;", "&lt;", "&gt;", "&#39;", "&quot;", "&nbsp;", "&eacute;", "&#x1F600;", "&bogus;"]
CONTRACTION_POOL = ["'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "'S", "'T", "'RE", "'VE", "'M", "'LL", "'D", "n't"]
SEPARATORS = [" "] * 12 + ["", "", "\t", "\n", "\u00a0", "  ", "\u3000", ", ", " - ", "\u200b", "\r\n"]
CODE_POINT_BLOCKS = [
    (0x20, 0x7E),
    (0x00, 0x1F),
    (0x80, 0xFF),
    (0x100, 0x24F),
    (0x300, 0x36F),
    (0x370, 0x3FF),
    (0x400, 0x4FF),
    (0x590, 0x5FF),
    (0x600, 0x6FF),
    (0x900, 0x97F),
    (0xE00, 0xE7F),
    (0x1100, 0x11FF),
    (0x2000, 0x206F),
    (0x2190, 0x21FF),
    (0x2200, 0x22FF),
    (0x2500, 0x257F),
    (0x3040, 0x30FF),
    (0x4E00, 0x9FFF),
    (0xAC00, 0xD7A3),
    (0xFF00, 0xFFEF),
    (0x1D400, 0x1D7FF),
    (0x1F300, 0x1F64F),
    (0x1F900, 0x1F9FF),
]


def random_code_points(rng: random.Random) -> str:
    """A few random *assigned* characters from one block (unassigned ones could be classified
    differently by different Unicode versions of `regex`, which is not what we want to test)."""
    lo, hi = rng.choice(CODE_POINT_BLOCKS)
    chars = []
    while len(chars) < rng.randint(1, 8):
        ch = chr(rng.randint(lo, hi))
        if unicodedata.category(ch) not in ("Cn", "Cs", "Co"):
            chars.append(ch)
    return "".join(chars)


def random_mixture(rng: random.Random) -> str:
    parts = []
    for _ in range(rng.randint(1, 30)):
        r = rng.random()
        if r < 0.35:
            part = rng.choice(WORD_POOL)
        elif r < 0.48:
            part = rng.choice(MULTILINGUAL_POOL)
        elif r < 0.58:
            part = random_code_points(rng)
        elif r < 0.66:
            part = "".join(rng.choice(PUNCT_POOL) for _ in range(rng.randint(1, 4)))
        elif r < 0.74:
            part = str(rng.choice([rng.randint(0, 9), rng.randint(0, 10**6), round(rng.uniform(-100, 100), 3)]))
        elif r < 0.80:
            part = rng.choice(ENTITY_POOL)
        elif r < 0.88:
            part = rng.choice(EMOJI_POOL)
        else:
            part = rng.choice(WORD_POOL) + rng.choice(CONTRACTION_POOL)
        case = rng.random()
        if case < 0.1:
            part = part.upper()
        elif case < 0.2:
            part = part.title()
        parts.append(part)
        parts.append(rng.choice(SEPARATORS))
    text = "".join(parts)
    if rng.random() < 0.05:  # mojibake: UTF-8 bytes misread as Windows-1252, which ftfy may repair
        text = text.encode("utf-8").decode("cp1252", errors="ignore")
    return text


def imagenet_texts(rng: random.Random) -> list[str]:
    data = json.loads(IMAGENET_PATH.read_text(encoding="utf-8"))
    classes, templates = data["classes"], data["templates"]
    texts = list(classes) + list(templates)
    texts += [template.format(rng.choice(classes)) for template in templates]
    for _ in range(60):  # upper-cased / odd-spaced prompts
        text = rng.choice(templates).format(rng.choice(classes))
        texts.append(text.upper() if rng.random() < 0.5 else "  " + text.replace(" ", rng.choice(SEPARATORS)))
    return texts


def long_texts(rng: random.Random) -> list[str]:
    texts = [
        LONG_ENGLISH,
        LONG_ENGLISH.upper(),
        LONG_JAPANESE,
        LONG_RUSSIAN,
        LONG_ENGLISH + " " + LONG_JAPANESE + " " + LONG_RUSSIAN,
        "a " * 1000,
        "a" * 1000,
        "!" * 300,
        "😀" * 100,
        "猫" * 200,
        "🧑🏽‍🚀 " * 40,
        "1234567890" * 20,
        "&amp;amp; " * 60,
        " ".join(WORD_POOL),
        "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(300)),
    ]
    # Texts cut by truncation just inside a multi-token word, emoji or CJK character.
    for tail in ["🧑🏽‍🚀", "👨‍👩‍👧‍👦", "猫の写真", "pneumonoultramicroscopicsilicovolcanoconiosis", "Ærøskøbing"]:
        for n_words in (72, 73, 74, 75):
            texts.append("a " * n_words + tail + " end")
    return texts


def exact_length_texts(encode) -> list[str]:
    """Texts whose token count, start and end tokens included, is exactly 76, 77, 78 or 79: a prefix
    of a natural text, topped up with one-token words ("a", "photo") to hit the count exactly."""
    texts = []
    for base in (LONG_ENGLISH, LONG_RUSSIAN, " ".join(WORD_POOL) * 2):
        words = base.split()
        for target in (76, 77, 78, 79):
            k = 0
            while k < len(words) and len(encode(" ".join(words[: k + 1]))) + 2 <= target - 2:
                k += 1
            text = " ".join(words[:k])
            filler = "a"
            while len(encode(text)) + 2 < target:
                text += " " + filler
                filler = "photo" if filler == "a" else "a"
            assert len(encode(text)) + 2 == target, (target, text)
            texts.append(text)
    texts.append(" ".join(["a"] * 75))  # 75 + start + end = 77
    texts.append(" ".join(["a"] * 76))  # 78
    texts.append("a photo of " + "a " * 72 + "cat")  # 77
    return texts


def build_corpus() -> list[str]:
    rng = random.Random(SEED)
    hand = (
        ASCII_SENTENCES
        + CONTRACTIONS
        + DIGITS
        + HTML
        + MOJIBAKE
        + ACCENTED
        + CJK
        + EMOJI
        + RTL_AND_INDIC
        + COMBINING
        + WHITESPACE
        + SPECIAL_TOKEN_STRINGS
    )
    texts = hand + imagenet_texts(rng) + long_texts(rng) + exact_length_texts(oc_tokenizer._tokenizer.encode)
    texts += [random_mixture(rng) for _ in range(450)]
    seen = set()
    unique = [t for t in texts if not (t in seen or seen.add(t))]  # drop duplicates, keep order
    return unique


# ------------------------------------------------------------------------------------------------
# Writing
# ------------------------------------------------------------------------------------------------


def corpus_line(text: str) -> str:
    """One JSON string literal; characters that are invisible or would break lines are escaped."""
    dumped = json.dumps(text, ensure_ascii=False)
    return "".join(c if c.isprintable() else json.dumps(c)[1:-1] for c in dumped)


def pack_strings(strings: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Strings as one uint8 UTF-8 buffer plus int64 offsets (npz can store these without pickle)."""
    blobs = [s.encode("utf-8", errors="surrogatepass") for s in strings]
    offsets = np.cumsum([0] + [len(b) for b in blobs]).astype(np.int64)
    return np.frombuffer(b"".join(blobs), dtype=np.uint8), offsets


def main() -> None:
    corpus = build_corpus()
    CORPUS_PATH.parent.mkdir(parents=True, exist_ok=True)
    header = [
        "# Tokenizer parity corpus, written by tests/make_tokenizer_fixtures.py; do not edit by hand.",
        "# One text per line as a JSON string literal; lines starting with # are comments.",
    ]
    CORPUS_PATH.write_text("\n".join(header + [corpus_line(t) for t in corpus]) + "\n", encoding="utf-8")

    # Read the file back, exactly as the test does, and tokenize what was read.
    lines = CORPUS_PATH.read_text(encoding="utf-8").split("\n")
    texts = [json.loads(line) for line in lines if line and not line.startswith("#")]
    assert texts == corpus

    tok = oc_tokenizer._tokenizer
    encoded = [tok.encode(t) for t in texts]
    lengths = np.array([len(ids) + 2 for ids in encoded], dtype=np.int64)
    tokens = open_clip.tokenize(texts).numpy()  # context_length 77, always truncates
    tokens16 = open_clip.tokenize(texts, context_length=16).numpy()
    assert tokens.max() < 2**31 and tokens16.max() < 2**31
    # What open_clip's decode makes of each row's ids between the start and end tokens.
    decoded = [tok.decode(row[1 : min(n, 77) - 1].tolist()) for row, n in zip(tokens, lengths, strict=True)]
    decoded_utf8, decoded_offsets = pack_strings(decoded)
    needs_ftfy = np.array([ftfy.fix_text(t) != t for t in texts])

    np.savez_compressed(
        FIXTURE_PATH,
        corpus_sha256=np.array(hashlib.sha256(CORPUS_PATH.read_bytes()).hexdigest()),
        tokens=tokens.astype(np.int32),
        tokens_ctx16=tokens16.astype(np.int32),
        lengths=lengths,
        encoded_flat=np.array([i for ids in encoded for i in ids], dtype=np.int32),
        encoded_offsets=np.cumsum([0] + [len(ids) for ids in encoded]).astype(np.int64),
        decoded_utf8=decoded_utf8,
        decoded_offsets=decoded_offsets,
        needs_ftfy=needs_ftfy,
        open_clip_version=np.array(open_clip.__version__),
        ftfy_version=np.array(ftfy.__version__),
        regex_version=np.array(regex.__version__),
        python_version=np.array(sys.version.split()[0]),
    )
    print(
        f"{len(texts)} texts -> {CORPUS_PATH.relative_to(HERE.parent)} ({CORPUS_PATH.stat().st_size} bytes), "
        f"{FIXTURE_PATH.relative_to(HERE.parent)} ({FIXTURE_PATH.stat().st_size} bytes); "
        f"{int((lengths > 77).sum())} longer than 77 tokens, {int(needs_ftfy.sum())} changed by ftfy; "
        f"open_clip {open_clip.__version__}, ftfy {ftfy.__version__}"
    )


if __name__ == "__main__":
    main()
