"""A deterministic corpus of varied strings for tokenizer tests (generated, never downloaded)."""

from __future__ import annotations

import random

HANDWRITTEN = [
    "", " ", "  ", "\n", "\t", " \n \t ", "a", " a", "a ", "  leading", "trailing  ", "   both   ",
    "Hello, world!", "Hello world", " Hello world", "hello\nworld", "tabs\tand\tspaces", "line\r\nbreak",
    "<s>", "</s>", "<unk>", "<s>hello</s>", "text with <s> inside", "</s><s>", "<<SYS>>", "[INST] hi [/INST]",
    "0", "12345", "3.14159", "1,000,000", "2026-11-29", "v1.2.3-rc4", "0x1F600",
    "café", "naïve résumé", "Ångström", "Straße", "e\u0301", "ﬁ ligature", "Ⅻ", "①②③",
    "日本語のテキスト", "中文文本测试", "한국어 텍스트", "Ελληνικά", "Русский текст", "עברית", "العربية", "हिन्दी",
    "🙂", "👍🏽", "👨‍👩‍👧‍👦", "🏳️‍🌈", "🇫🇷🇯🇵", "a🙂b", " 🙂 ", "\u200b", "\u200d", "\ufeffBOM", "\u00a0nbsp",
    "def f(x):\n    return x ** 2\n", "for (int i = 0; i < n; ++i) { sum += a[i]; }", "SELECT * FROM t WHERE x = 'y';",
    "<div class=\"a\">&amp;</div>", "{\"key\": [1, 2, {\"n\": null}]}", "$ ls -la | grep '^d'",
    "supercalifragilisticexpialidocious", "Pneumonoultramicroscopicsilicovolcanoconiosis" * 3,
    "x" * 1000, "ab" * 700, "\U0010FFFF", "\x00", "\x7f", "~!@#$%^&*()_+`-=[]\\{}|;':\",./<>?",
    "▁", "▁▁hello", "<0x41>", "⁇",
]

WORDS = ["the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "Llama", "tokenizer", "café", "über",
         "日本", "東京", "北京", "서울", "Москва", "🙂", "🚀", "👩‍💻", "42", "3.5", "<s>", "</s>", "[INST]", "def",
         "return", "()", "{}", "->", "==", "naïve", "ﬀ", "\u0301", "ß", "İ", "ǅ"]
SEPARATORS = [" ", "  ", "   ", "\n", "\n\n", "\t", " \t", "", "\u3000", "\u00a0"]


def random_string(rng: random.Random) -> str:
    kind = rng.randrange(5)
    if kind == 0:  # words and separators
        parts = []
        for _ in range(rng.randint(1, 12)):
            parts += [rng.choice(WORDS), rng.choice(SEPARATORS)]
        text = "".join(parts)
    elif kind == 1:  # random code points from several scripts
        ranges = [(0x20, 0x7E), (0xA0, 0x24F), (0x370, 0x3FF), (0x400, 0x4FF), (0x3040, 0x30FF),
                  (0x4E00, 0x9FFF), (0xAC00, 0xD7A3), (0x1F300, 0x1FAFF), (0x2000, 0x206F)]
        text = "".join(chr(rng.randint(*rng.choice(ranges))) for _ in range(rng.randint(1, 40)))
    elif kind == 2:  # digits and punctuation
        text = "".join(rng.choice("0123456789.,-+ ()%$") for _ in range(rng.randint(1, 30)))
    elif kind == 3:  # a long word
        text = "".join(rng.choice("abcdefghijklmnopqrstuvwxyzé") for _ in range(rng.randint(50, 400)))
    else:  # whitespace-heavy
        text = "".join(rng.choice([" ", "\n", "\t", "a", "b", " x", "\r"]) for _ in range(rng.randint(1, 30)))
    if rng.random() < 0.3:
        text = rng.choice(SEPARATORS) + text
    if rng.random() < 0.3:
        text = text + rng.choice(SEPARATORS)
    return text


def corpus(n_random: int = 1100, seed: int = 1234) -> list[str]:
    rng = random.Random(seed)
    return HANDWRITTEN + [random_string(rng) for _ in range(n_random)]


SPECIAL_TEXT = ("<s>", "</s>", "<unk>")


def classify_difference(s: str) -> str:
    """Which documented class (docs/tokenizer.md) explains transformers' ids differing from sentencepiece's."""
    if s.startswith(" "):
        return "leading-space"
    if "  " in s:
        return "space-runs"
    if "\u2581" in s:
        return "literal-U+2581"
    if any(t in s for t in SPECIAL_TEXT):
        return "special-text"
    return "unexplained"
