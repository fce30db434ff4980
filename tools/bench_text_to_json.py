#!/usr/bin/env python3
"""Rebuild a bench result JSON from `tandem bench`'s printed output, for a run whose --json file was lost.

    tools/bench_text_to_json.py --out RUN.json --commit SHA LOG...   (one log per `tandem bench` process)

Takes what the text holds: the card line (card, driver, copy bandwidth, GEMM peak), the model/path line, the prefill
and decode tables and the per-op breakdown; writes bench/README.md's schema with "source" saying it was parsed from
text. Fields the text lacks (step min/max, reps, cuda_graphs) are left out rather than guessed.
"""
import argparse
import json
import re


def parse(text):
    card = re.search(r"^card (.+), driver (\S+): copy (\d+) GB/s \(read \+ write\), bf16 GEMM (\d+) TFLOP/s", text, re.M)
    model = re.search(r"^model (\S+) on the (\S+) path, (\S+):", text, re.M)
    if not card or not model:
        raise SystemExit("not a tandem bench output: no card or model line")
    name, path, dtype = model.groups()
    runs, stages = [], []
    for m in re.finditer(r"^(\d+) +(\d+(?:\.\d+)?) +(\d+(?:\.\d+)?) +(\d+(?:\.\d+)?) +(\d+(?:\.\d+)?)%$", text, re.M):
        n, tok_s, ms, tflops, pct = m.groups()
        runs.append({"model": name, "dtype": dtype, "path": path, "phase": "prefill", "batch": 1, "context": int(n),
                     "tok_s": float(tok_s), "step_ms_median": float(ms), "tflops": float(tflops),
                     "pct_gemm_peak": float(pct)})
    for m in re.finditer(r"^(\d+) +(\d+) +(\d+(?:\.\d+)?) +(\d+(?:\.\d+)?) +([\d.e+]+) +(\d+) +(\d+(?:\.\d+)?)%$", text,
                         re.M):
        b, c, tok_s, ms, bytes_step, gbps, pct = m.groups()
        runs.append({"model": name, "dtype": dtype, "path": path, "phase": "decode", "batch": int(b), "context": int(c),
                     "tok_s": float(tok_s), "step_ms_median": float(ms), "bytes_per_token": float(bytes_step) / int(b),
                     "GBps": float(gbps), "pct_copy_bw": float(pct)})
    for m in re.finditer(r"^    (\S+) +(\d+\.\d+) ms +(\d+\.\d+)% +(\d+) calls +(\d+\.\d+) MB +(\d+) GB/s$", text, re.M):
        v, ms, _, calls, mb, gbps = m.groups()
        stages.append({"variant": v, "ms": float(ms), "calls": int(calls), "bytes": float(mb) * 1e6, "GBps": float(gbps)})
    mem = re.search(r"^peak GPU memory in use: ([\d.]+) GB", text, re.M)
    return card.groups(), name, path, runs, stages, float(mem.group(1)) if mem else None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--commit", required=True)
    ap.add_argument("--date", required=True)
    ap.add_argument("logs", nargs="+")
    a = ap.parse_args()
    out = {"source": "parsed from tandem bench's printed output by tools/bench_text_to_json.py (the run's --json file "
                     "did not come back from the GPU machine): " + ", ".join(a.logs),
           "commit": a.commit, "date": a.date, "runs": [], "limits_per_process": []}
    for log in a.logs:
        (card, driver, copy_bw, gemm), name, path, runs, stages, mem = parse(open(log).read())
        out["card"], out["driver"] = card, driver
        out["limits_per_process"].append({"model": name, "path": path, "copy_bw_GBps": float(copy_bw),
                                          "gemm_peak_tflops": float(gemm), "peak_gpu_mem_GB": mem})
        out["runs"] += runs
        if stages:
            out[f"decode_breakdown_{path}_{name}"] = {"path": path, "model": name, "batch": 1, "context": 128,
                                                      "total_ms": sum(s["ms"] for s in stages), "stages": stages}
    with open(a.out, "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
