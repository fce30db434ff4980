#!/usr/bin/env python3
"""CPU peer column for `tandem bench --device cpu`: llama.cpp (through llama-cpp-python, pinned) on the same GGUF
and thread count, prompt-N prefill tok/s and 64-token decode tok/s, written as runs of the tandem bench JSON schema
(bench/README.md) with path "llama.cpp" and `software`.

    .deps/venv-llama/bin/python tools/bench_cpu_peers.py --json bench/results/2026-12-04-cpu-2core-quant.json \
        --merge [--model models/SmolLM2-135M-Instruct.Q4_1.gguf] [--threads 2] [--prefill 313,2048] [--decode 64]

Prefill: one evaluation of N tokens (the same token ids tandem bench uses: (i * 7919 + 13) % vocab), logits for the
last row, after one warm-up; median of --reps. Decode: after a --decode-context-token prompt, --decode greedy
single-token evaluations (llama_decode of one token each, as tandem's decode steps), median per-token time.
"""
import argparse
import datetime
import json
import os
import statistics
import time

import llama_cpp


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="models/SmolLM2-135M-Instruct.Q4_1.gguf")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prefill", default="313,2048")
    ap.add_argument("--decode", type=int, default=64)
    ap.add_argument("--decode-context", type=int, default=313)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--json", required=True)
    ap.add_argument("--merge", action="store_true", help="append the runs to an existing result file")
    args = ap.parse_args()

    prefills = [int(x) for x in args.prefill.split(",") if x]
    n_ctx = max(prefills + [args.decode_context + args.decode + 8])
    llm = llama_cpp.Llama(model_path=args.model, n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=512, n_threads=args.threads,
                          n_threads_batch=args.threads, logits_all=False, verbose=False)
    vocab = llm.n_vocab()
    name = os.path.basename(args.model)
    software = {"llama-cpp-python": llama_cpp.__version__}
    runs = []

    def ids(n):
        return [(i * 7919 + 13) % vocab for i in range(n)]

    for p in prefills:
        times = []
        for r in range(args.reps + 1):
            llm.reset()
            llm._ctx.memory_clear(True) if hasattr(llm._ctx, "memory_clear") else None
            t0 = time.perf_counter()
            llm.eval(ids(p))
            if r > 0:
                times.append(time.perf_counter() - t0)
        med = statistics.median(times)
        runs.append({"model": name, "dtype": "gguf", "path": "llama.cpp", "phase": "prefill", "batch": 1,
                     "context": p, "tok_s": p / med, "step_ms_median": med * 1e3, "step_ms_min": min(times) * 1e3,
                     "step_ms_max": max(times) * 1e3, "reps": args.reps, "threads": args.threads,
                     "software": software})
        print(f"llama.cpp prefill {p}: {p / med:.1f} tok/s")

    steps = []
    for r in range(2):
        llm.reset()
        llm.eval(ids(args.decode_context))
        tok = llm.sample(temp=0.0)
        for s in range(args.decode):
            t0 = time.perf_counter()
            llm.eval([tok])
            dt = time.perf_counter() - t0
            tok = llm.sample(temp=0.0)
            if r == 1:
                steps.append(dt)
    med = statistics.median(steps)
    runs.append({"model": name, "dtype": "gguf", "path": "llama.cpp", "phase": "decode", "batch": 1,
                 "context": args.decode_context, "tok_s": 1.0 / med, "step_ms_median": med * 1e3,
                 "step_ms_min": min(steps) * 1e3, "step_ms_max": max(steps) * 1e3, "reps": args.decode,
                 "threads": args.threads, "software": software})
    print(f"llama.cpp decode at context {args.decode_context}: {1.0 / med:.1f} tok/s (median of {args.decode} steps)")

    out = {"date": datetime.date.today().isoformat(), "runs": []}
    if args.merge and os.path.exists(args.json):
        with open(args.json) as f:
            out = json.load(f)
    out.setdefault("runs", []).extend(runs)
    with open(args.json, "w") as f:
        json.dump(out, f, indent=2)
    print(f"results: {args.json}")


if __name__ == "__main__":
    main()
