#!/usr/bin/env python3
"""Writes the committed seed corpora under tests/fuzz/corpus/<target>/: small valid inputs cut from the fixtures
(a few KB each) plus attack payloads (deep nesting, length bombs, huge ids, overflowing products).

Re-run after changing it: python3 tests/fuzz/make_corpus.py   (stdlib only; deterministic output)
"""
import json
import shutil
import struct
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
FIX = ROOT / "tests" / "fixtures"
OUT = HERE / "corpus"


def put(target, name, data):
    d = OUT / target
    d.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        data = data.encode("utf-8", "surrogateescape")
    (d / name).write_bytes(data)


def deep(n, open_="[", close="]", inner="0"):
    return open_ * n + inner + close * n


# ---------------------------------------------------------------- safetensors
DTYPES = {"F32": ("<f", 4), "F16": ("<e", 2), "BF16": (None, 2), "I32": ("<i", 4), "I8": ("<b", 1), "U8": ("<B", 1),
          "F64": ("<d", 8), "I64": ("<q", 8), "BOOL": ("<?", 1)}


def safetensors(tensors, metadata=None, header_override=None, pad=True, trailing=b""):
    """tensors: [(name, dtype, shape)] laid out in order, filled with a byte ramp."""
    hdr, blobs, off = {}, [], 0
    if metadata is not None:
        hdr["__metadata__"] = metadata
    for name, dt, shape in tensors:
        n = DTYPES[dt][1]
        for s in shape:
            n *= s
        hdr[name] = {"dtype": dt, "shape": shape, "data_offsets": [off, off + n]}
        blobs.append(bytes((off + k) & 0xFF for k in range(n)))
        off += n
    h = (header_override if header_override is not None else json.dumps(hdr, separators=(",", ":"))).encode()
    if pad:
        h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + b"".join(blobs) + trailing


def st_raw(header, data=b""):
    h = header.encode() if isinstance(header, str) else header
    return struct.pack("<Q", len(h)) + h + data


def make_safetensors():
    t = "safetensors"
    put(t, "valid_small", safetensors([("a", "F32", [2, 3]), ("b", "BF16", [4]), ("c", "I8", [3, 1, 2])],
                                       {"format": "pt"}))
    put(t, "valid_all_dtypes", safetensors([(f"t.{d}", d, [2, 2]) for d in DTYPES]))
    put(t, "valid_zero_rank_and_empty", safetensors([("scalar", "F32", []), ("empty", "F16", [0, 4]),
                                                      ("x", "U8", [5])]))
    put(t, "valid_unpadded", safetensors([("w", "F16", [3])], pad=False))
    put(t, "valid_5d", safetensors([("w", "U8", [1, 2, 1, 2, 1])]))
    # A real header cut from the default model fixture (first tensors only, data section re-laid out).
    raw = (FIX / "default_model" / "default_model.safetensors").read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    hdr = json.loads(raw[8:8 + n])
    keep = [k for k in hdr if k != "__metadata__"][:6]
    cut = [(k, hdr[k]["dtype"], [min(s, 4) for s in hdr[k]["shape"]]) for k in keep]
    put(t, "valid_cut_default_model", safetensors(cut, {"format": "pt"}))
    # Attacks (each one field wrong).
    put(t, "header_len_huge", struct.pack("<Q", 2**63 + 5) + b"{}")
    put(t, "header_len_past_eof", struct.pack("<Q", 1000) + b"{}")
    put(t, "header_len_100mb", struct.pack("<Q", 100 * 2**20 + 1) + b"{}")
    put(t, "header_not_json", st_raw("not json at all "))
    put(t, "header_not_object", st_raw("[1,2,3]"))
    put(t, "header_bad_utf8", st_raw(b'{"\xff\xfe":{"dtype":"F32","shape":[],"data_offsets":[0,4]}}', b"\0" * 4))
    put(t, "overlap", st_raw('{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},'
                             '"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}', b"\0" * 12))
    put(t, "gap", st_raw('{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},'
                         '"b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}}', b"\0" * 12))
    put(t, "end_before_begin", st_raw('{"a":{"dtype":"F32","shape":[0],"data_offsets":[8,4]}}', b"\0" * 8))
    put(t, "offset_past_eof", st_raw('{"a":{"dtype":"U8","shape":[16],"data_offsets":[0,16]}}', b"\0" * 4))
    put(t, "offset_u64_max", st_raw('{"a":{"dtype":"U8","shape":[1],"data_offsets":[18446744073709551615,0]}}'))
    put(t, "offset_negative", st_raw('{"a":{"dtype":"U8","shape":[1],"data_offsets":[-1,0]}}'))
    put(t, "offset_float", st_raw('{"a":{"dtype":"U8","shape":[1],"data_offsets":[0.5,1.5]}}', b"\0"))
    put(t, "shape_product_overflow", st_raw('{"a":{"dtype":"F32","shape":[4294967296,4294967296,4],'
                                            '"data_offsets":[0,0]}}'))
    put(t, "shape_negative", st_raw('{"a":{"dtype":"F32","shape":[-1,-4],"data_offsets":[0,16]}}', b"\0" * 16))
    put(t, "size_mismatch", st_raw('{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}', b"\0" * 8))
    put(t, "trailing_bytes", safetensors([("a", "U8", [2])], trailing=b"xx"))
    put(t, "unknown_dtype", st_raw('{"a":{"dtype":"F8_E9M9","shape":[1],"data_offsets":[0,1]}}', b"\0"))
    put(t, "extra_key", st_raw('{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1],"x":1}}', b"\0"))
    put(t, "duplicate_key", st_raw('{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},'
                                   '"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}', b"\0"))
    put(t, "metadata_not_strings", st_raw('{"__metadata__":{"k":[1,{"x":2}]}}'))
    put(t, "deep_nesting_header", st_raw('{"a":' + deep(5000) + "}"))
    put(t, "deep_nesting_metadata", st_raw('{"__metadata__":{"k":' + deep(5000, "{\"k\":", "}", "1") + "}}"))
    put(t, "long_name", st_raw('{"' + "n" * 10000 + '":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}', b"\0"))
    many = {f"t{k}": {"dtype": "U8", "shape": [1], "data_offsets": [k, k + 1]} for k in range(300)}
    put(t, "many_entries", st_raw(json.dumps(many, separators=(",", ":")), b"\0" * 300))


# ---------------------------------------------------------------- shard index
def make_shard_index():
    t = "shard_index"
    idx = json.loads((FIX / "llama" / "model.safetensors.index.json").read_text())
    put(t, "valid_llama", json.dumps(idx, indent=1))
    wm = idx["weight_map"]
    first = next(iter(wm))
    for name, path in [("escape_dotdot", "../model-00001-of-00006.safetensors"), ("absolute", "/etc/passwd"),
                       ("unknown_file", "model-00009-of-00006.safetensors"), ("dev_zero", "/dev/zero"),
                       ("dot", "."), ("empty_name", ""), ("subdir", "sub/../model-00001-of-00006.safetensors")]:
        bad = dict(wm)
        bad[first] = path
        put(t, name, json.dumps({"metadata": {}, "weight_map": bad}))
    missing = dict(wm)
    missing["model.not.there"] = "model-00001-of-00006.safetensors"
    put(t, "tensor_not_in_shard", json.dumps({"weight_map": missing}))
    put(t, "wrong_shard", json.dumps({"weight_map": {first: "model-00006-of-00006.safetensors"}}))
    put(t, "duplicate_key", '{"weight_map":{"lm_head.weight":"model-00006-of-00006.safetensors",'
                            '"lm_head.weight":"model-00001-of-00006.safetensors"}}')
    put(t, "weight_map_not_object", '{"weight_map":["a","b"]}')
    put(t, "values_not_strings", '{"weight_map":{"lm_head.weight":6}}')
    put(t, "no_weight_map", '{"metadata":{}}')
    put(t, "empty_weight_map", '{"weight_map":{}}')
    put(t, "deep_nesting", '{"metadata":' + deep(5000) + ',"weight_map":{}}')
    put(t, "not_json", "{\"weight_map\": {")


# ---------------------------------------------------------------- gguf
GT = {"u8": 0, "i8": 1, "u16": 2, "i16": 3, "u32": 4, "i32": 5, "f32": 6, "bool": 7, "str": 8, "arr": 9, "u64": 10,
      "i64": 11, "f64": 12}
FMT = {"u8": "<B", "i8": "<b", "u16": "<H", "i16": "<h", "u32": "<I", "i32": "<i", "f32": "<f", "bool": "<?",
       "u64": "<Q", "i64": "<q", "f64": "<d"}


def gstr(s):
    b = s.encode() if isinstance(s, str) else s
    return struct.pack("<Q", len(b)) + b


def gval(typ, v):
    if typ == "str":
        return gstr(v)
    if typ.startswith("arr:"):
        et = typ[4:]
        return struct.pack("<IQ", GT["arr"] if et.startswith("arr:") else GT[et], len(v)) + b"".join(
            gval(et, x) for x in v)
    return struct.pack(FMT[typ], v)


def gguf(kv, tensors, version=3, align=32, magic=b"GGUF"):
    """kv: [(key, type, value)]; tensors: [(name, ggml_type, ne list, nbytes)] laid out in order, aligned."""
    out = magic + struct.pack("<IQQ", version, len(tensors), len(kv))
    for k, typ, v in kv:
        out += gstr(k) + struct.pack("<I", GT["arr"] if typ.startswith("arr:") else GT[typ]) + gval(typ, v)
    off, blobs = 0, b""
    for name, gt, ne, nbytes in tensors:
        out += gstr(name) + struct.pack("<I", len(ne)) + b"".join(struct.pack("<Q", x) for x in ne)
        out += struct.pack("<IQ", gt, off)
        blob = bytes((off + k) & 0xFF for k in range(nbytes))
        blob += b"\0" * (-len(blob) % align)
        blobs += blob
        off += len(blob)
    out += b"\0" * (-len(out) % align)
    return out + blobs


def tiny_llama_kv(vocab=16):
    toks = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(4)] + ["\u2581", "a", "b", "\u2581a", "ab",
                                                                            "ba", "\u2581ab", "c", "d"]
    toks = toks[:vocab]
    return [("general.architecture", "str", "llama"), ("general.alignment", "u32", 32),
            ("llama.block_count", "u32", 1), ("llama.embedding_length", "u32", 8),
            ("llama.feed_forward_length", "u32", 16), ("llama.attention.head_count", "u32", 2),
            ("llama.attention.head_count_kv", "u32", 1), ("llama.context_length", "u32", 64),
            ("llama.rope.freq_base", "f32", 10000.0), ("llama.attention.layer_norm_rms_epsilon", "f32", 1e-5),
            ("tokenizer.ggml.model", "str", "llama"), ("tokenizer.ggml.tokens", "arr:str", toks),
            ("tokenizer.ggml.scores", "arr:f32", [float(-k) for k in range(len(toks))]),
            ("tokenizer.ggml.token_type", "arr:i32", [2, 3, 3] + [6] * 4 + [1] * (len(toks) - 7)),
            ("tokenizer.ggml.bos_token_id", "u32", 1), ("tokenizer.ggml.eos_token_id", "u32", 2)]


def make_gguf():
    t = "gguf"
    V = 16
    tensors = [("token_embd.weight", 0, [8, V], 8 * V * 4), ("output_norm.weight", 0, [8], 32),
               ("blk.0.attn_q.weight", 1, [8, 8], 128), ("blk.0.ffn_down.weight", 2, [32, 8], 8 * 18),
               ("blk.0.ffn_up.weight", 8, [32, 16], 16 * 34), ("blk.0.attn_norm.weight", 30, [8], 16)]
    put(t, "valid_llama_tiny", gguf(tiny_llama_kv(V), tensors))
    gpt2 = [("general.architecture", "str", "qwen2"), ("tokenizer.ggml.model", "str", "gpt2"),
            ("tokenizer.ggml.pre", "str", "qwen2"),
            ("tokenizer.ggml.tokens", "arr:str", ["a", "b", "ab", "\u0120", "\u0120a", "<|im_end|>"]),
            ("tokenizer.ggml.merges", "arr:str", ["a b", "\u0120 a"]),
            ("tokenizer.ggml.token_type", "arr:i32", [1, 1, 1, 1, 1, 3]),
            ("tokenizer.ggml.eos_token_id", "u32", 5), ("qwen2.block_count", "u64", 1),
            ("qwen2.embedding_length", "i64", 8), ("qwen2.feed_forward_length", "i32", 16),
            ("qwen2.attention.head_count", "u16", 2), ("qwen2.attention.key_length", "u8", 4),
            ("qwen2.rope.scaling.type", "str", "linear"), ("qwen2.rope.scaling.factor", "f64", 2.0),
            ("nested", "arr:arr:u8", [[1, 2], [3]]), ("flag", "bool", True), ("i8", "i8", -3), ("i16", "i16", -300)]
    put(t, "valid_qwen2_gpt2_vocab", gguf(gpt2, [("token_embd.weight", 1, [8, 6], 96)]))
    put(t, "valid_v2_no_tensors", gguf([("general.architecture", "str", "mistral")], [], version=2))
    # Cut of the real fixture: its header up to the first tensor info (metadata only; n_tensors patched to 0).
    raw = (FIX / "gguf" / "smollm2_rows.gguf").read_bytes()
    if len(raw) > 4096:
        put(t, "cut_smollm2_rows_head", raw[:4096])
    # Attacks.
    hdr = lambda nt, nkv: b"GGUF" + struct.pack("<IQQ", 3, nt, nkv)
    put(t, "bad_magic", gguf([], [], magic=b"GGUE"))
    put(t, "bad_version", gguf([], [], version=7))
    put(t, "n_tensors_2_63", hdr(2**63, 0))
    put(t, "n_kv_2_63", hdr(0, 2**63))
    put(t, "n_kv_u64_max", hdr(0, 2**64 - 1))
    put(t, "key_len_2_63", hdr(0, 1) + struct.pack("<Q", 2**63) + b"k")
    put(t, "string_len_2_63", hdr(0, 1) + gstr("k") + struct.pack("<IQ", 8, 2**63) + b"v")
    put(t, "array_count_2_63", hdr(0, 1) + gstr("k") + struct.pack("<IIQ", 9, 4, 2**63) + b"\0" * 8)
    put(t, "array_of_strings_bomb", hdr(0, 1) + gstr("k") + struct.pack("<IIQ", 9, 8, 2**40) + gstr("x") * 4)
    put(t, "nested_array_deep", hdr(0, 1) + gstr("k") + struct.pack("<IIQ", 9, 9, 1) * 1000 + struct.pack("<IQ", 0, 0))
    put(t, "value_type_out_of_range", hdr(0, 1) + gstr("k") + struct.pack("<I", 13) + b"\0" * 8)
    put(t, "duplicate_key", gguf([("a", "u8", 1), ("a", "u8", 2)], []))
    put(t, "alignment_zero", gguf([("general.alignment", "u32", 0)], []))
    put(t, "alignment_odd", gguf([("general.alignment", "u32", 3)], [("w", 0, [1], 4)]))
    put(t, "alignment_wrong_type", gguf([("general.alignment", "str", "32")], []))
    put(t, "n_dims_5", gguf([], [("w", 0, [1, 1, 1, 1, 1], 4)]))
    put(t, "dim_zero", gguf([], [("w", 0, [0, 4], 0)]))
    put(t, "dim_negative", gguf([], [("w", 0, [2**63 + 1, 1], 4)]))
    put(t, "ne_product_overflow", gguf([], [("w", 0, [2**32, 2**32, 4], 4)]))
    put(t, "padded_size_wraps", gguf([], [("w", 2, [2**63 - 31, 1], 18)]))
    put(t, "type_out_of_range", gguf([], [("w", 99, [4], 16)]))
    put(t, "type_removed", gguf([], [("w", 4, [32], 20)]))
    put(t, "row_not_block_multiple", gguf([], [("w", 2, [33], 18)]))
    put(t, "duplicate_tensor", gguf([], [("w", 0, [1], 4), ("w", 0, [1], 4)]))
    data = bytearray(gguf([], [("w", 0, [4], 16)]))
    put(t, "data_past_eof", bytes(data[:-8]))
    put(t, "head_count_overflow", gguf([("general.architecture", "str", "llama"), ("llama.block_count", "u32", 1),
                                        ("llama.embedding_length", "u32", 8),
                                        ("llama.feed_forward_length", "u32", 16),
                                        ("llama.attention.head_count", "u64", 2**62 + 2),
                                        ("llama.attention.key_length", "u32", 4)], []))
    put(t, "token_ids_past_int32", gguf(tiny_llama_kv() + [("tokenizer.ggml.eos_token_id", "u64", 4294967298)], []))
    put(t, "vocab_types_wrong_length", gguf([("tokenizer.ggml.model", "str", "llama"),
                                             ("tokenizer.ggml.tokens", "arr:str", ["a", "b"]),
                                             ("tokenizer.ggml.token_type", "arr:i32", [1])], []))
    put(t, "vocab_wrong_elem_type", gguf([("tokenizer.ggml.model", "str", "gpt2"),
                                          ("tokenizer.ggml.tokens", "arr:u32", [1, 2, 3])], []))


# ---------------------------------------------------------------- config.json
def make_hf_config():
    t = "hf_config"
    for arch in ("llama", "qwen2", "mistral"):
        put(t, f"valid_{arch}", (FIX / arch / "config.json").read_text())
    base = json.loads((FIX / "llama" / "config.json").read_text())

    def variant(name, **kw):
        c = dict(base)
        for k, v in kw.items():
            if v is None:
                c.pop(k, None)
            else:
                c[k] = v
        put(t, name, json.dumps(c))

    variant("heads_overflow", num_attention_heads=2**62 + 2, head_dim=4)
    variant("kv_heads_overflow", num_key_value_heads=2**62, head_dim=8)
    variant("head_dim_huge", head_dim=2**40)
    variant("hidden_u64", hidden_size=2**64 - 1)
    variant("layers_huge", num_hidden_layers=2**31)
    variant("vocab_negative", vocab_size=-1)
    variant("eos_past_int32", eos_token_id=4294967298)
    variant("eos_list", eos_token_id=[2, 4294967298, -5])
    variant("bos_out_of_vocab", bos_token_id=100000)
    variant("rope_factor_denormal", rope_scaling={"rope_type": "linear", "factor": 1e-320})
    variant("rope_factor_zero", rope_scaling={"rope_type": "llama3", "factor": 0.0, "low_freq_factor": 1.0,
                                              "high_freq_factor": 1.0, "original_max_position_embeddings": 0})
    variant("rope_theta_negative", rope_theta=-1.0)
    variant("context_zero", max_position_embeddings=0)
    variant("context_negative", max_position_embeddings=-1)
    variant("eps_string", rms_norm_eps="1e-5")
    variant("no_architectures", architectures=None)
    variant("arch_unknown", architectures=["GPTNeoXForCausalLM"])
    variant("sliding_window_negative", sliding_window=-3)
    put(t, "deep_nesting", '{"architectures":["LlamaForCausalLM"],"x":' + deep(5000) + "}")
    put(t, "deep_nesting_objects", deep(5000, '{"a":', "}", "1"))
    put(t, "not_object", "[]")
    put(t, "number_overflow", '{"hidden_size": 1e999}')
    put(t, "duplicate_key", '{"hidden_size": 64, "hidden_size": 128}')


# ---------------------------------------------------------------- tokenizer.json
def cut_tokenizer(path, n_vocab, n_merges):
    tok = json.loads(Path(path).read_text())
    vocab = tok["model"]["vocab"]
    keep = {k: v for k, v in vocab.items() if v < n_vocab}
    merges = []
    for m in tok["model"]["merges"]:
        a, b = (m.split(" ", 1) if isinstance(m, str) else m)
        if a in keep and b in keep and a + b in keep:
            merges.append(m)
        if len(merges) >= n_merges:
            break
    tok["model"]["vocab"] = keep
    tok["model"]["merges"] = merges
    ids = set(keep.values())
    tok["added_tokens"] = [a for a in tok.get("added_tokens", [])][:4]
    for a in tok["added_tokens"]:
        if a["id"] not in ids:
            keep[a["content"]] = a["id"]
    return tok


def make_tokenizer_json():
    t = "tokenizer_json"
    spm = cut_tokenizer(FIX / "tokenizer" / "spm_bpe" / "tokenizer.json", 300, 60)
    put(t, "valid_spm_cut", json.dumps(spm, ensure_ascii=False))
    bl = cut_tokenizer(FIX / "tokenizer" / "smollm2" / "tokenizer.json", 300, 60)
    put(t, "valid_smollm2_cut", json.dumps(bl, ensure_ascii=False))
    qw = cut_tokenizer(FIX / "tokenizer" / "qwen2" / "tokenizer.json", 300, 60)
    put(t, "valid_qwen2_cut", json.dumps(qw, ensure_ascii=False))
    small = {"model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2, "<s>": 3}, "merges": ["a b"]},
             "added_tokens": [{"id": 3, "content": "<s>", "special": True}],
             "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True},
             "decoder": {"type": "ByteLevel"}}

    def v(name, **kw):
        d = json.loads(json.dumps(small))
        for k, x in kw.items():
            d[k] = x
        put(t, name, json.dumps(d))

    v("minimal")
    v("id_2_27", model={"type": "BPE", "vocab": {"a": 134217728}, "merges": []})
    v("id_negative", model={"type": "BPE", "vocab": {"a": -1}, "merges": []})
    v("id_past_int32", model={"type": "BPE", "vocab": {"a": 0}, "merges": []},
      added_tokens=[{"id": 4294967298, "content": "x", "special": True}])
    v("added_id_huge", added_tokens=[{"id": 2**27, "content": "<big>", "special": True}])
    v("duplicate_ids", model={"type": "BPE", "vocab": {"a": 0, "b": 0}, "merges": []})
    v("merge_unknown_token", model={"type": "BPE", "vocab": {"a": 0}, "merges": ["a zz", "q"]})
    v("merges_as_pairs", model={"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2}, "merges": [["a", "b"]]})
    v("bad_regex", pre_tokenizer={"type": "Split", "pattern": {"Regex": "(((("}, "behavior": "Isolated"})
    v("catastrophic_regex", pre_tokenizer={"type": "Split", "pattern": {"Regex": "(a+)+$"}, "behavior": "Isolated"})
    v("normalizer_seq", normalizer={"type": "Sequence", "normalizers": [{"type": "NFC"},
                                                                        {"type": "Prepend", "prepend": "\u2581"}]})
    v("unknown_normalizer", normalizer={"type": "Lowercase"})
    v("post_processor_bad_ids", post_processor={"type": "TemplateProcessing", "single": [], "pair": [],
                                                "special_tokens": {"<s>": {"id": "<s>", "ids": [4294967298, -1],
                                                                           "tokens": ["<s>"]}}})
    v("decoder_strip_huge", decoder={"type": "Strip", "content": " ", "start": 2**40, "stop": -1})
    nest = '{"type":"Sequence","pretokenizers":[' * 1000 + '{"type":"ByteLevel"}' + "]}" * 1000
    put(t, "sequence_deep", '{"model":' + json.dumps(small["model"]) + ',"pre_tokenizer":' + nest + "}")
    put(t, "deep_nesting_raw", '{"model":' + deep(5000) + "}")
    put(t, "not_object", '"tokenizer"')
    many = {"model": small["model"], "added_tokens": [{"id": 4 + k % 50, "content": f"<t{k % 50}>", "special": True}
                                                      for k in range(400)]}
    put(t, "added_duplicates", json.dumps(many))


# ---------------------------------------------------------------- tokenizer encode/decode
def make_tokenizer_codec():
    t = "tokenizer_codec"
    lines = [json.loads(l) for l in (FIX / "tokenizer" / "corpus.jsonl").read_text().split("\n") if l.strip()]
    texts = []
    for l in lines:
        s = l.get("text") if isinstance(l, dict) else l
        if isinstance(s, str) and 0 < len(s.encode()) < 600:
            texts.append(s)
    step = max(1, len(texts) // 8)
    for k, s in enumerate(texts[::step][:8]):
        put(t, f"corpus_{k}", bytes([k % 3 | ((k & 1) << 3)]) + s.encode())
    inv = [json.loads(l)["hex"] for l in (FIX / "tokenizer" / "invalid_utf8.jsonl").read_text().split("\n") if l]
    put(t, "invalid_utf8_fixture", bytes([0]) + b" x ".join(bytes.fromhex(h) for h in inv))
    put(t, "raw_invalid_utf8", b"\x00\xff\xfe\xc3(\xe2\x82\xf0\x9f\x98hello\xed\xa0\x80 \xc0\xaf")
    put(t, "specials", b"\x08<|im_start|>user\n<|im_end|><|endoftext|><s></s><unk>")
    put(t, "specials_spm", b"\x1e<s>[INST] hi [/INST]</s>")
    put(t, "one_char_many", b"\x01" + "\u00e9".encode() * 3000)
    put(t, "spaces", b"\x02" + b" " * 4000 + b"\t\n\r\n" * 200)
    put(t, "digits", b"\x00" + b"1234567890" * 400)
    put(t, "combining_marks", b"\x01" + ("e" + "\u0301" * 50).encode() * 20)
    put(t, "ids_high", b"\x10" + b"\xff\xff\xfe\xff\x00\x80" * 50)


# ---------------------------------------------------------------- chat templates
SEP = "\n\x01\n"
CHATML_TPL = ("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
              "{{ '<|im_start|>system\\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
              "<|im_end|>\\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + "
              "'<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
              "{% endif %}")
LLAMA3_TPL = ("{{- bos_token }}{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + "
              "'<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}{% endfor %}")
MISTRAL_TPL = ("{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}"
               "{{ '[INST] ' + message['content'] + ' [/INST]' }}{% else %}{{ message['content'] + eos_token }}"
               "{% endif %}{% endfor %}")


def make_chat_template():
    t = "chat_template"
    conv = ["system", "Be brief.", "user", "What is 2+2?", "assistant", "4", "user", "And 3+3?"]
    for name, tpl, arch in [("chatml", CHATML_TPL, "llama"), ("llama3", LLAMA3_TPL, "llama"),
                            ("mistral", MISTRAL_TPL, "mistral")]:
        put(t, f"{name}_text", b"\x00\x01" + SEP.join([tpl, arch] + conv).encode())
        put(t, f"{name}_by_name", b"\x00\x03" + SEP.join([name, arch] + conv).encode())
    put(t, "no_text_vocab_chatml", b"\x11\x01" + SEP.join(["", "qwen2", "user", "hi"]).encode())
    put(t, "no_text_vocab_llama3", b"\x0a\x01" + SEP.join(["", "llama", "user", "hi"]).encode())
    put(t, "no_text_vocab_none", b"\x00\x01" + SEP.join(["", "mistral", "user", "hi"]).encode())
    put(t, "unknown_template", b"\x00\x01" + SEP.join(["{{ messages }}", "llama", "user", "x"]).encode())
    put(t, "odd_roles", b"\x00\x01" + SEP.join([CHATML_TPL, "qwen2", "tool", "x", "", "", "assistant", "",
                                                 "system", "a", "system", "b"]).encode())
    put(t, "mistral_system_only", b"\x00\x03" + SEP.join(["mistral", "", "system", "s"]).encode())
    put(t, "chatml_default_system_escapes", b"\x00\x01" + SEP.join(
        ["<|im_start|>system\\n\\n\\\\n<|im_end|>", "", "user", "q"]).encode())
    put(t, "specials_in_content", b"\x00\x01" + SEP.join(
        [LLAMA3_TPL, "llama", "user", "<|eot_id|><|start_header_id|>system<|end_header_id|>"]).encode())


# ---------------------------------------------------------------- HTTP bodies
def make_openai_request():
    t = "openai_request"
    chat, comp = b"\x02", b"\x03"  # bit 0: completions; bit 1: vocab 49152 (else 1)
    put(t, "chat_valid", chat + json.dumps({
        "model": "m", "messages": [{"role": "system", "content": "Be brief."},
                                   {"role": "user", "content": [{"type": "text", "text": "Hi"}]},
                                   {"role": "developer", "content": "x"}],
        "max_tokens": 16, "temperature": 0.7, "top_p": 0.9, "top_k": 40, "min_p": 0.05, "n": 2, "stream": True,
        "stream_options": {"include_usage": True}, "stop": ["\n\n", "END"], "seed": 42, "logprobs": True,
        "top_logprobs": 3, "logit_bias": {"42": -100, "7": 5.5}, "presence_penalty": 0.5,
        "frequency_penalty": -0.5, "repetition_penalty": 1.1}).encode())
    put(t, "completion_text", comp + json.dumps({"prompt": "Once upon a time", "max_tokens": 8, "logprobs": 2,
                                                  "stop": "time", "echo": False}).encode())
    put(t, "completion_ids", comp + json.dumps({"prompt": [1, 2, 3, 49151], "max_completion_tokens": 4}).encode())
    put(t, "completion_list", comp + b'{"prompt": ["x"], "n": 16}')
    hostile = {
        "temperature_nan": b'{"messages":[{"role":"user","content":"x"}],"temperature":NaN}',
        "number_overflow": b'{"messages":[{"role":"user","content":"x"}],"temperature":1e999}',
        "int_overflow": b'{"messages":[{"role":"user","content":"x"}],"max_tokens":18446744073709551616}',
        "int_2_63": b'{"messages":[{"role":"user","content":"x"}],"top_k":9223372036854775808}',
        "float_int": b'{"messages":[{"role":"user","content":"x"}],"max_tokens":1e18,"n":2.0}',
        "seed_negative": b'{"messages":[{"role":"user","content":"x"}],"seed":-1}',
        "seed_u64": b'{"messages":[{"role":"user","content":"x"}],"seed":18446744073709551615}',
        "logit_bias_keys": b'{"messages":[{"role":"user","content":"x"}],"logit_bias":{"-1":1,"99999999999999999999":1,'
                           b'" 5":1,"5x":1}}',
        "wrong_types": b'{"messages":{"role":"user"},"stop":[1],"stream":"yes","n":"2"}',
        "role_bad": b'{"messages":[{"role":"tool","content":"x"},{"role":7}]}',
        "content_parts_bad": b'{"messages":[{"role":"user","content":[{"type":"image_url"},1,null]}]}',
        "stop_many": b'{"messages":[{"role":"user","content":"x"}],"stop":["a","b","c","d","e",""]}',
        "invalid_utf8": b'{"messages":[{"role":"user\xff","content":"\xc3("}],"model":"\xed\xa0\x80"}',
        "not_object": b"[1,2,3]",
        "empty": b"",
        "deep_nesting": b'{"messages":' + deep(5000).encode() + b"}",
        "huge_prompt_ids": b'{"prompt":[' + b",".join(b"49151" for _ in range(3000)) + b"]}",
        "prompt_id_out_of_range": b'{"prompt":[0,49152,-1]}',
        "top_logprobs_without": b'{"messages":[{"role":"user","content":"x"}],"top_logprobs":5}',
    }
    for name, body in hostile.items():
        put(t, name, (comp if b'"prompt"' in body else chat) + body)


def main():
    if OUT.exists():
        shutil.rmtree(OUT)
    make_safetensors()
    make_shard_index()
    make_gguf()
    make_hf_config()
    make_tokenizer_json()
    make_tokenizer_codec()
    make_chat_template()
    make_openai_request()
    total = sum(f.stat().st_size for f in OUT.rglob("*") if f.is_file())
    print(f"{sum(1 for f in OUT.rglob('*') if f.is_file())} seed files, {total // 1024} KB under {OUT}")


if __name__ == "__main__":
    main()
