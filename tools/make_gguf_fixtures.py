#!/usr/bin/env python3
"""Writes the GGUF dequantization fixtures used by tests/unit/test_dequant.cpp.

  tests/fixtures/gguf/dequant.gguf       one tensor per GGML type tandem dequantizes (F32, F16, BF16, Q8_0,
                                         Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K) named by the lower-case type,
                                         each with `expected.<name>`: gguf-py's dequantization as F32.
  tests/fixtures/gguf/smollm2_rows.gguf  a few rows of real tensors of models/SmolLM2-135M-Instruct.Q4_1.gguf
                                         (Q8_0 token_embd, Q4_1 projections) dequantized by gguf-py, as
                                         `expected.<tensor>` with the row indices in metadata `rows.<tensor>`.
                                         Skipped when the model is not present.

Pinned: pip install gguf==0.19.0 numpy   (generated with gguf 0.19.0, numpy 2.4)
Deterministic: fixed seeds, so re-running reproduces the committed files byte for byte.
"""
import argparse
import os
import sys

import numpy as np

import gguf
from gguf import GGMLQuantizationType as T

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT_DIR = os.path.join(ROOT, "tests", "fixtures", "gguf")
MODEL = os.path.join(ROOT, "models", "SmolLM2-135M-Instruct.Q4_1.gguf")

ROWS, COLS = 4, 256  # 256 = one K-quant super-block per row


def source_data(rng: np.random.Generator) -> np.ndarray:
    """Rows with different character: standard normal, large offset/spread, all positive, all zero."""
    x = np.empty((ROWS, COLS), dtype=np.float32)
    x[0] = rng.standard_normal(COLS)
    x[1] = rng.standard_normal(COLS) * 40.0 - 7.0
    x[2] = rng.uniform(0.25, 3.0, COLS)
    x[3] = 0.0
    return x


def random_f16(rng: np.random.Generator, n: int, scale: float) -> np.ndarray:
    """Finite f16 values of both signs (including subnormals sometimes) as raw bytes, shape (n, 2)."""
    v = (rng.standard_normal(n) * scale).astype(np.float16)
    v[::3] = (rng.standard_normal(len(v[::3])) * 1e-6).astype(np.float16)  # subnormal range
    assert np.all(np.isfinite(v))
    return v.view(np.uint8).reshape(n, 2)


def random_kquant_blocks(rng: np.random.Generator, qtype: T, n_blocks: int) -> np.ndarray:
    """gguf-py cannot quantize K-quants: random bytes everywhere, then finite f16 scales in the d/dmin slots."""
    _, type_size = gguf.GGML_QUANT_SIZES[qtype]
    b = rng.integers(0, 256, size=(n_blocks, type_size), dtype=np.uint8)
    if qtype in (T.Q4_K, T.Q5_K):  # {f16 d, f16 dmin, ...}
        b[:, 0:2] = random_f16(rng, n_blocks, 0.05)
        b[:, 2:4] = random_f16(rng, n_blocks, 0.05)
    elif qtype == T.Q6_K:  # {..., i8 scales[16], f16 d}
        b[:, 208:210] = random_f16(rng, n_blocks, 0.05)
    else:
        raise ValueError(qtype)
    return b


def encode(rng: np.random.Generator, qtype: T, x: np.ndarray) -> np.ndarray:
    """The stored form of x in qtype: numpy float arrays for F32/F16, raw uint8 block rows otherwise."""
    if qtype == T.F32:
        return x.astype(np.float32)
    if qtype == T.F16:
        return x.astype(np.float16)
    if qtype in (T.Q4_K, T.Q5_K, T.Q6_K):
        block, type_size = gguf.GGML_QUANT_SIZES[qtype]
        n_blocks = x.size // block
        return random_kquant_blocks(rng, qtype, n_blocks).reshape(x.shape[0], -1)
    return gguf.quants.quantize(x, qtype)  # BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1


def write_dequant_fixture(path: str) -> None:
    rng = np.random.default_rng(20250611)
    w = gguf.GGUFWriter(path, arch="tandem-fixture")
    w.add_string("fixture.generator", f"tools/make_gguf_fixtures.py (gguf {gguf_version()}, numpy {np.__version__})")
    types = [T.F32, T.F16, T.BF16, T.Q8_0, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q4_K, T.Q5_K, T.Q6_K]
    for qtype in types:
        x = source_data(rng)
        stored = encode(rng, qtype, x)
        expected = gguf.quants.dequantize(stored.view(np.uint8) if qtype not in (T.F32, T.F16) else stored, qtype)
        expected = np.asarray(expected, dtype=np.float32).reshape(ROWS, COLS)
        assert np.all(np.isfinite(expected)), qtype.name
        name = qtype.name.lower()
        if qtype in (T.F32, T.F16):
            w.add_tensor(name, stored)
        else:
            w.add_tensor(name, stored, raw_dtype=qtype)
        w.add_tensor(f"expected.{name}", expected)
    # A rank-3 quantized tensor: tandem shape [2, 3, 64] is GGUF ne [64, 3, 2].
    x3 = rng.standard_normal((2, 3, 64)).astype(np.float32)
    q3 = gguf.quants.quantize(x3, T.Q8_0)
    w.add_tensor("rank3.q8_0", q3, raw_dtype=T.Q8_0)
    w.add_tensor("expected.rank3.q8_0", gguf.quants.dequantize(q3, T.Q8_0).astype(np.float32))
    finish(w)


# Real-model rows: (tensor, row indices). Rows are the first dim of the tandem (row-major) shape.
REAL_ROWS = [
    ("token_embd.weight", [0, 1, 49151]),        # Q8_0 [49152, 576]
    ("blk.0.attn_q.weight", [0, 1, 575]),        # Q4_1 [576, 576]
    ("blk.29.ffn_down.weight", [0, 575]),        # Q4_1 [576, 1536]
]


def write_model_rows_fixture(path: str, model: str) -> None:
    r = gguf.GGUFReader(model)
    by_name = {t.name: t for t in r.tensors}
    w = gguf.GGUFWriter(path, arch="tandem-fixture")
    w.add_string("fixture.source", os.path.basename(model))
    w.add_uint64("fixture.source_size", os.path.getsize(model))
    for name, rows in REAL_ROWS:
        t = by_name[name]
        data = np.asarray(t.data)  # uint8 (rows, row_bytes) for quantized types, float32 (rows, cols) for F32
        picked = np.ascontiguousarray(data[rows])
        if t.tensor_type in (T.F32, T.F16):
            expected = picked.astype(np.float32)
        else:
            expected = gguf.quants.dequantize(picked, t.tensor_type).astype(np.float32)
        print(f"  {name}: {t.tensor_type.name} ne={[int(d) for d in t.shape]} rows {rows} -> {expected.shape}")
        w.add_array(f"rows.{name}", rows)
        w.add_string(f"type.{name}", t.tensor_type.name)
        w.add_tensor(f"expected.{name}", expected)
    finish(w)


def finish(w: gguf.GGUFWriter) -> None:
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def gguf_version() -> str:
    try:
        from importlib.metadata import version
        return version("gguf")
    except Exception:  # pragma: no cover
        return "?"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=OUT_DIR)
    ap.add_argument("--model", default=MODEL)
    args = ap.parse_args()
    if gguf_version() != "0.19.0":
        print(f"warning: fixtures were generated with gguf 0.19.0, this is {gguf_version()}", file=sys.stderr)
    os.makedirs(args.out, exist_ok=True)
    p = os.path.join(args.out, "dequant.gguf")
    write_dequant_fixture(p)
    print(f"wrote {p} ({os.path.getsize(p)} bytes)")
    if os.path.exists(args.model):
        p = os.path.join(args.out, "smollm2_rows.gguf")
        write_model_rows_fixture(p, args.model)
        print(f"wrote {p} ({os.path.getsize(p)} bytes)")
    else:
        print(f"skipped smollm2_rows.gguf: {args.model} not found (run tools/setup.sh)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
