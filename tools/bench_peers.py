#!/usr/bin/env python3
"""Peer baseline for `tandem bench`: HF transformers (eager and SDPA attention) on the same model shapes and GPU.

Builds each model shape from its HF config with random bf16 weights (no download), then measures
  decode:  `batch` sequences with `context` tokens already in a DynamicCache, one new token each per step;
           warm-up steps, then --decode-steps timed steps (the cache is cut back to `context` after every
           step, so each step reads exactly `context` cached tokens); median/min/max step ms.
  prefill: one sequence of P tokens, forward with logits for the last row only (logits_to_keep=1);
           warm-up, then median of --reps.
and writes the runs in the `tandem bench` JSON schema (paths "hf-eager" and "hf-sdpa").

    python3 tools/bench_peers.py --shapes llama-3.2-1b-shape,llama-3.1-8b-shape,qwen2.5-7b-shape \\
        --batch 1,64 --context 128 --prefill 512,4096 --reps 5 --json bench/results/FILE.json [--merge]

--merge: if FILE exists, keep its card/driver/commit/date/copy_bw_GBps/gemm_peak_tflops and add these runs
(a run with the same model/dtype/path/phase/batch/context replaces the old one); otherwise, and without
--merge, copy bandwidth (1 GiB device-to-device copy, bytes read + written, median of 10) and the bf16
8192^3 matmul rate (median of 10) are measured here. A configuration that runs out of GPU memory is printed
and listed under the top-level "skipped" key; it does not stop the run.

Definitions (same as `tandem bench`):
  decode  tok_s = batch / step time; bytes read per step = bf16 weights (all parameters except the embedding
          table, plus batch*hidden*2 for the gathered embedding rows; a tied lm_head counts once, as the
          lm_head read) + KV read (batch*context*n_layers*2*kv_heads*head_dim*2); bytes_per_token = that / batch;
          pct_copy_bw = (bytes per step / step time) / copy_bw * 100.
  prefill tok_s = tokens / time; tflops = (2*tokens*matmul_params (q,k,v,o,gate,up,down, all layers)
          + 2*hidden*vocab (one logits row) + 4*n_layers*n_heads*head_dim*tokens*(tokens+1)/2) / time / 1e12;
          pct_gemm_peak = tflops / gemm_peak_tflops * 100.
Fields a phase does not define (tflops for decode, bytes for prefill) are null.
"""
import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import time

import torch

DTYPE = torch.bfloat16
DTYPE_NAME = "bf16"
PATHS = {"hf-eager": "eager", "hf-sdpa": "sdpa"}

# HF config fields of each shape (bf16, random weights). Llama 3 rope scaling as in the released configs.
SHAPES = {
    "llama-3.2-1b-shape": dict(
        arch="llama", vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
        num_attention_heads=32, num_key_value_heads=8, head_dim=64, tie_word_embeddings=True,
        rms_norm_eps=1e-5, max_position_embeddings=131072,
        rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0, "low_freq_factor": 1.0,
                         "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}),
    "llama-3.1-8b-shape": dict(
        arch="llama", vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=8, head_dim=128, tie_word_embeddings=False,
        rms_norm_eps=1e-5, max_position_embeddings=131072,
        rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
                         "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}),
    # Qwen2 has q/k/v biases built in (Qwen2Attention uses bias=True for q_proj, k_proj, v_proj).
    "qwen2.5-7b-shape": dict(
        arch="qwen2", vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
        num_attention_heads=28, num_key_value_heads=4, head_dim=128, tie_word_embeddings=False,
        rms_norm_eps=1e-6, max_position_embeddings=32768, use_sliding_window=False,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}),
}


def csv_ints(s):
    return [int(x) for x in s.split(",") if x.strip()]


def csv_strs(s):
    return [x.strip() for x in s.split(",") if x.strip()]


# ---------------------------------------------------------------------------------------------------------------
# machine facts

def driver_version():
    try:
        with open("/proc/driver/nvidia/version") as f:
            first = f.readline()
        # "NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.54.15  Tue Mar  5 ..."
        for tok in first.split():
            if tok[:1].isdigit() and tok.count(".") >= 1:
                return tok
        return first.strip()
    except OSError:
        return "cuda " + str(torch.version.cuda)


def git_commit():
    try:
        here = os.path.dirname(os.path.abspath(__file__))
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True, text=True,
                             timeout=10)
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return "unknown"


def time_ms(fn, warmup, reps):
    """Runs fn warmup times, then reps times with CUDA events around each call; returns the list of ms."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    out = []
    for _ in range(reps):
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        out.append(start.elapsed_time(end))
    return out


def measure_copy_bw_GBps():
    n = 1 << 30
    src = torch.empty(n, dtype=torch.uint8, device="cuda")
    src.fill_(1)
    dst = torch.empty_like(src)
    ms = statistics.median(time_ms(lambda: dst.copy_(src), 3, 10))
    del src, dst
    torch.cuda.empty_cache()
    return 2 * n / (ms * 1e-3) / 1e9


def measure_gemm_peak_tflops():
    n = 8192
    a = torch.randn(n, n, dtype=DTYPE, device="cuda")
    b = torch.randn(n, n, dtype=DTYPE, device="cuda")
    c = torch.empty(n, n, dtype=DTYPE, device="cuda")
    ms = statistics.median(time_ms(lambda: torch.matmul(a, b, out=c), 5, 10))
    del a, b, c
    torch.cuda.empty_cache()
    return 2 * n ** 3 / (ms * 1e-3) / 1e12


# ---------------------------------------------------------------------------------------------------------------
# models

def build_model(shape_name):
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    spec = dict(SHAPES[shape_name])
    arch = spec.pop("arch")
    cfg_cls, model_cls = {"llama": (LlamaConfig, LlamaForCausalLM), "qwen2": (Qwen2Config, Qwen2ForCausalLM)}[arch]
    config = cfg_cls(**spec)
    # Built directly on the GPU in bf16 (no fp32 copy on the host), then re-initialised there: fast.
    old_dtype = torch.get_default_dtype()
    torch.set_default_dtype(DTYPE)
    try:
        with torch.device("cuda"):
            model = model_cls._from_config(config, dtype=DTYPE, attn_implementation="sdpa")
    finally:
        torch.set_default_dtype(old_dtype)
    model.to(device="cuda")
    if config.tie_word_embeddings:
        model.tie_weights()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dtype != DTYPE:
                p.data = p.data.to(DTYPE)
            if name.endswith("norm.weight"):
                p.fill_(1.0)  # RMSNorm scales stay 1 so activations keep a sane range
            else:
                torch.nn.init.normal_(p, std=0.02)
    model.eval()
    emb = model.get_input_embeddings().weight
    out = model.get_output_embeddings().weight
    tied = emb.data_ptr() == out.data_ptr()
    if tied != bool(config.tie_word_embeddings):
        print(f"warning: {shape_name}: tie_word_embeddings={config.tie_word_embeddings} but tied={tied}",
              file=sys.stderr)
    return model, config, tied


def shape_facts(model, config, tied):
    hidden = config.hidden_size
    layers = config.num_hidden_layers
    heads = config.num_attention_heads
    kv_heads = config.num_key_value_heads
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    inter = config.intermediate_size
    vocab = config.vocab_size
    emb = model.get_input_embeddings().weight
    seen = set()
    param_bytes = 0
    for p in model.parameters():  # parameters() yields a shared (tied) tensor once
        if p.data_ptr() in seen:
            continue
        seen.add(p.data_ptr())
        param_bytes += p.numel() * p.element_size()
    emb_bytes = emb.numel() * emb.element_size()
    # All parameters except the embedding table; if tied, the one shared matrix is read once as the lm_head.
    weight_bytes = param_bytes if tied else param_bytes - emb_bytes
    matmul_params = layers * (hidden * heads * head_dim + 2 * hidden * kv_heads * head_dim
                              + heads * head_dim * hidden + 3 * hidden * inter)
    return dict(hidden=hidden, layers=layers, heads=heads, kv_heads=kv_heads, head_dim=head_dim, vocab=vocab,
                weight_bytes=weight_bytes, matmul_params=matmul_params, elt=torch.finfo(DTYPE).bits // 8)


def set_attn(model, impl):
    if hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation(impl)
    else:
        model.config._attn_implementation = impl
    got = getattr(model.config, "_attn_implementation", impl)
    if got != impl:
        raise RuntimeError(f"attn_implementation is {got!r}, wanted {impl!r}")


def cut_cache(cache, n):
    """Cuts every layer of a DynamicCache back to its first n positions (views, no copy)."""
    layers = getattr(cache, "layers", None)
    if layers is None:  # older cache layout
        cache.key_cache = [k[..., :n, :] for k in cache.key_cache]
        cache.value_cache = [v[..., :n, :] for v in cache.value_cache]
        return
    for layer in layers:
        if getattr(layer, "keys", None) is not None:
            layer.keys = layer.keys[..., :n, :]
            layer.values = layer.values[..., :n, :]


# ---------------------------------------------------------------------------------------------------------------
# measurements

def bench_decode(model, f, batch, context, warmup, steps):
    gen = torch.Generator(device="cuda").manual_seed(1234)
    prompt = torch.randint(0, f["vocab"], (batch, context), device="cuda", generator=gen)
    token = torch.randint(0, f["vocab"], (batch, 1), device="cuda", generator=gen)
    cache = model(input_ids=prompt, use_cache=True, logits_to_keep=1).past_key_values  # a DynamicCache
    if cache.get_seq_length() != context:
        raise RuntimeError(f"cache holds {cache.get_seq_length()} positions after prefill, expected {context}")

    def step():
        cut_cache(cache, context)
        model(input_ids=token, past_key_values=cache, use_cache=True, logits_to_keep=1)

    ms = time_ms(step, warmup, steps)
    if cache.get_seq_length() != context + 1:
        raise RuntimeError(f"cache holds {cache.get_seq_length()} positions after a step, expected {context + 1}")
    del cache, prompt, token
    return ms


def bench_prefill(model, f, tokens, warmup, reps):
    gen = torch.Generator(device="cuda").manual_seed(4321)
    ids = torch.randint(0, f["vocab"], (1, tokens), device="cuda", generator=gen)

    def run():
        model(input_ids=ids, use_cache=True, logits_to_keep=1)

    ms = time_ms(run, warmup, reps)
    del ids
    return ms


def bench_serve(model, f, requests, prompt_len, output_len, concurrency):
    """HF's batched generate as a serving peer: static batches of `concurrency` requests (random prompts, greedy,
    exactly output_len new tokens). Returns (total seconds, first-token seconds of one batch, decode step seconds).
    TTFT here is one batch's prefill + first token (a request never waits behind a running batch in this
    measurement, which favours HF); ITL is the mean per-token time of a batch after its first token."""
    gen = torch.Generator(device="cuda").manual_seed(99)
    n_batches = max(1, requests // concurrency)
    kw = dict(do_sample=False, use_cache=True, pad_token_id=0, eos_token_id=None)

    def batch_ids():
        return torch.randint(1, f["vocab"], (concurrency, prompt_len), device="cuda", generator=gen)

    ids = batch_ids()
    model.generate(input_ids=ids, max_new_tokens=4, min_new_tokens=4, **kw)  # warm-up
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    model.generate(input_ids=ids, max_new_tokens=1, min_new_tokens=1, **kw)
    torch.cuda.synchronize()
    ttft = time.perf_counter() - t0
    t0 = time.perf_counter()
    produced = 0
    for _ in range(n_batches):
        out = model.generate(input_ids=batch_ids(), max_new_tokens=output_len, min_new_tokens=output_len, **kw)
        produced += (out.shape[1] - prompt_len) * concurrency
    torch.cuda.synchronize()
    total = time.perf_counter() - t0
    if produced != n_batches * concurrency * output_len:
        raise RuntimeError(f"generate produced {produced} tokens, expected {n_batches * concurrency * output_len}")
    per_batch = total / n_batches
    return total, n_batches * concurrency, ttft, (per_batch - ttft) / max(1, output_len - 1)


def serve_run(shape, path, f, concurrency, prompt_len, output_len, measured):
    total, n_requests, ttft, itl = measured
    return {
        "model": shape, "dtype": DTYPE_NAME, "path": path, "phase": "serve", "batch": concurrency,
        "context": prompt_len, "output_len": output_len, "requests": n_requests,
        "tok_s": n_requests * output_len / total, "requests_s": n_requests / total,
        "ttft_ms_p50": ttft * 1e3, "ttft_ms_p99": None, "itl_ms_p50": itl * 1e3, "itl_ms_p99": None,
        "step_ms_median": itl * 1e3,
        "note": "static batches of `batch` requests through model.generate; TTFT = one batch's prefill + 1 token",
    }


def decode_run(shape, path, f, batch, context, ms, copy_bw):
    step_s = statistics.median(ms) * 1e-3
    kv = batch * context * f["layers"] * 2 * f["kv_heads"] * f["head_dim"] * f["elt"]
    step_bytes = f["weight_bytes"] + batch * f["hidden"] * f["elt"] + kv
    return {
        "model": shape, "dtype": DTYPE_NAME, "path": path, "phase": "decode", "batch": batch, "context": context,
        "tok_s": batch / step_s,
        "bytes_per_token": step_bytes / batch,
        "pct_copy_bw": (step_bytes / step_s) / (copy_bw * 1e9) * 100 if copy_bw else None,
        "tflops": None, "pct_gemm_peak": None,
        "step_ms_median": statistics.median(ms), "step_ms_min": min(ms), "step_ms_max": max(ms), "reps": len(ms),
    }


def prefill_run(shape, path, f, tokens, ms, gemm_peak):
    t = statistics.median(ms) * 1e-3
    flops = (2 * tokens * f["matmul_params"] + 2 * f["hidden"] * f["vocab"]
             + 4 * f["layers"] * f["heads"] * f["head_dim"] * tokens * (tokens + 1) / 2)
    tflops = flops / t / 1e12
    return {
        "model": shape, "dtype": DTYPE_NAME, "path": path, "phase": "prefill", "batch": 1, "context": tokens,
        "tok_s": tokens / t,
        "bytes_per_token": None, "pct_copy_bw": None,
        "tflops": tflops, "pct_gemm_peak": tflops / gemm_peak * 100 if gemm_peak else None,
        "step_ms_median": statistics.median(ms), "step_ms_min": min(ms), "step_ms_max": max(ms), "reps": len(ms),
    }


def is_oom(e):
    return isinstance(e, torch.cuda.OutOfMemoryError) or "out of memory" in str(e).lower()


def fmt(v, spec):
    if v is None:
        width = "".join(ch for ch in spec.split(".")[0] if ch.isdigit())
        return "-".rjust(int(width or 1))
    return format(v, spec)


def print_table(runs):
    print()
    print(f"{'model':<20} {'path':<9} {'phase':<8} {'batch':>5} {'ctx':>5} {'tok/s':>10} {'ms(med)':>9} "
          f"{'%copybw':>8} {'TFLOP/s':>8} {'%peak':>6}")
    for r in runs:
        print(f"{r['model']:<20} {r['path']:<9} {r['phase']:<8} {r['batch']:>5} {r['context']:>5} "
              f"{fmt(r.get('tok_s'), '10.1f')} {fmt(r.get('step_ms_median'), '9.3f')} "
              f"{fmt(r.get('pct_copy_bw'), '8.1f')} {fmt(r.get('tflops'), '8.1f')} "
              f"{fmt(r.get('pct_gemm_peak'), '6.1f')}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default=",".join(SHAPES), help="comma-separated: " + ", ".join(SHAPES))
    ap.add_argument("--paths", default=",".join(PATHS), help="comma-separated: " + ", ".join(PATHS))
    ap.add_argument("--batch", default="1,64", help="decode batch sizes, comma-separated")
    ap.add_argument("--context", default="128", help="decode KV-cache lengths, comma-separated")
    ap.add_argument("--prefill", default="512,4096", help="prefill prompt lengths, comma-separated ('' for none)")
    ap.add_argument("--reps", type=int, default=5, help="timed prefill forwards per configuration")
    ap.add_argument("--decode-steps", type=int, default=10, help="timed decode steps per configuration")
    ap.add_argument("--warmup", type=int, default=3, help="untimed calls before timing")
    ap.add_argument("--serve-concurrency", default="", help="serve phase: batch sizes ('' for none)")
    ap.add_argument("--serve-requests", default="", help="serve phase: requests per level, one per concurrency")
    ap.add_argument("--serve-len", default="128,128", help="serve phase: prompt,output tokens a request")
    ap.add_argument("--json", required=True, help="output JSON file")
    ap.add_argument("--merge", action="store_true", help="add to FILE if it exists, keeping its machine fields")
    args = ap.parse_args()

    shapes, paths = csv_strs(args.shapes), csv_strs(args.paths)
    for s in shapes:
        if s not in SHAPES:
            ap.error(f"unknown shape {s!r}; known: {', '.join(SHAPES)}")
    for p in paths:
        if p not in PATHS:
            ap.error(f"unknown path {p!r}; known: {', '.join(PATHS)}")
    batches, contexts, prefills = csv_ints(args.batch), csv_ints(args.context), csv_ints(args.prefill)
    if not torch.cuda.is_available():
        sys.exit("bench_peers.py needs a CUDA GPU")

    import transformers
    software = f"torch {torch.__version__}, transformers {transformers.__version__}"
    card = torch.cuda.get_device_name()

    doc = None
    if args.merge and os.path.exists(args.json):
        with open(args.json) as fh:
            doc = json.load(fh)
        if doc.get("card") and doc["card"] != card:
            print(f"warning: {args.json} was measured on {doc['card']!r}, this GPU is {card!r}", file=sys.stderr)
        doc.setdefault("runs", [])
        print(f"merging into {args.json} ({len(doc['runs'])} runs); copy_bw {doc.get('copy_bw_GBps')} GB/s, "
              f"gemm peak {doc.get('gemm_peak_tflops')} TFLOP/s from the file")
    if doc is None:
        print(f"{card}: measuring copy bandwidth and bf16 GEMM peak ...", flush=True)
        doc = {
            "card": card,
            "driver": driver_version(),
            "commit": git_commit(),
            "date": datetime.date.today().isoformat(),
            "copy_bw_GBps": round(measure_copy_bw_GBps(), 1),
            "gemm_peak_tflops": round(measure_gemm_peak_tflops(), 1),
            "runs": [],
        }
        print(f"copy {doc['copy_bw_GBps']} GB/s, bf16 8192^3 GEMM {doc['gemm_peak_tflops']} TFLOP/s", flush=True)
    copy_bw, gemm_peak = doc.get("copy_bw_GBps"), doc.get("gemm_peak_tflops")

    new_runs, skipped = [], []

    def attempt(desc, key, fn):
        try:
            with torch.inference_mode():
                r = fn()
            r["software"] = software
            new_runs.append(r)
            print(f"  {desc}: {r['tok_s']:.1f} tok/s, {r['step_ms_median']:.3f} ms", flush=True)
        except Exception as e:  # noqa: BLE001 - OOM is recorded, anything else re-raised
            if not is_oom(e):
                raise
            print(f"  {desc}: SKIPPED (CUDA out of memory)", flush=True)
            skipped.append(dict(key, reason="CUDA out of memory"))
        torch.cuda.empty_cache()

    for shape in shapes:
        print(f"{shape}: building ...", flush=True)
        try:
            model, config, tied = build_model(shape)
        except Exception as e:  # noqa: BLE001
            if not is_oom(e):
                raise
            print(f"{shape}: SKIPPED (CUDA out of memory building the model)", flush=True)
            skipped.append({"model": shape, "reason": "CUDA out of memory building the model"})
            torch.cuda.empty_cache()
            continue
        f = shape_facts(model, config, tied)
        print(f"{shape}: {f['weight_bytes'] / 2**30:.2f} GiB of weights read per step, tied={tied}", flush=True)
        for path in paths:
            set_attn(model, PATHS[path])
            for ctx in contexts:
                for b in batches:
                    key = {"model": shape, "dtype": DTYPE_NAME, "path": path, "phase": "decode", "batch": b,
                           "context": ctx}
                    attempt(f"{path} decode batch {b} context {ctx}", key,
                            lambda b=b, ctx=ctx: decode_run(
                                shape, path, f, b, ctx,
                                bench_decode(model, f, b, ctx, args.warmup, args.decode_steps), copy_bw))
            serve_levels = csv_ints(args.serve_concurrency)
            serve_requests = csv_ints(args.serve_requests) or [512] * len(serve_levels)
            plen, olen = csv_ints(args.serve_len)
            for c, n in zip(serve_levels, serve_requests):
                key = {"model": shape, "dtype": DTYPE_NAME, "path": path, "phase": "serve", "batch": c,
                       "context": plen}
                attempt(f"{path} serve concurrency {c} ({n} requests)", key,
                        lambda c=c, n=n: serve_run(shape, path, f, c, plen, olen,
                                                   bench_serve(model, f, n, plen, olen, c)))
            for p in prefills:
                key = {"model": shape, "dtype": DTYPE_NAME, "path": path, "phase": "prefill", "batch": 1,
                       "context": p}
                attempt(f"{path} prefill {p}", key,
                        lambda p=p: prefill_run(shape, path, f, p,
                                                bench_prefill(model, f, p, min(args.warmup, 2), args.reps),
                                                gemm_peak))
        del model
        torch.cuda.empty_cache()

    def ident(r):
        return (r.get("model"), r.get("dtype"), r.get("path"), r.get("phase"), r.get("batch"), r.get("context"))

    fresh = {ident(r) for r in new_runs} | {ident(s) for s in skipped}
    doc["runs"] = [r for r in doc["runs"] if ident(r) not in fresh] + new_runs
    old_skipped = [s for s in doc.get("skipped", []) if ident(s) not in fresh]
    if old_skipped or skipped:
        doc["skipped"] = old_skipped + skipped
    out_dir = os.path.dirname(os.path.abspath(args.json))
    os.makedirs(out_dir, exist_ok=True)
    with open(args.json, "w") as fh:
        json.dump(doc, fh, indent=2)
        fh.write("\n")

    print_table(new_runs)
    for s in skipped:
        print(f"skipped: {s}")
    print(f"\nwrote {args.json} ({len(doc['runs'])} runs)")


if __name__ == "__main__":
    main()
