#!/usr/bin/env python3
"""CPU speed baseline of the reference path: prefill and decode tok/s of `tandem generate`.

Runs `build/tandem generate` REPS times on a fixed prompt (PROMPT_TOKENS ids, greedy, eos ignored), takes the
median of each phase, and writes bench/results/<date>-cpu-<cores>core.json. CPU numbers depend on the machine;
the JSON records the CPU model and thread count.

    python3 tools/bench_cpu.py [--model models/SmolLM2-135M-Instruct.Q4_1.gguf] [--reps 5]
"""
import argparse
import datetime
import json
import os
import platform
import re
import statistics
import subprocess


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="models/SmolLM2-135M-Instruct.Q4_1.gguf")
    ap.add_argument("--binary", default="build/tandem")
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--decode-tokens", type=int, default=128)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    ids = ",".join(str(100 + (i * 37) % 4000) for i in range(args.prompt_tokens))
    cmd = [args.binary, "generate", "-m", args.model, "--prompt-ids", ids, "-n", str(args.decode_tokens),
           "--temp", "0", "--ignore-eos", "--print-ids"]
    prefill, decode = [], []
    for _ in range(args.reps):
        err = subprocess.run(cmd, capture_output=True, text=True, check=True).stderr
        prefill.append(float(re.search(r"prompt: \d+ tokens in [\d.]+ ms \(([\d.]+) tok/s\)", err).group(1)))
        decode.append(float(re.search(r"decode: \d+ tokens in [\d.]+ ms \(([\d.]+) tok/s\)", err).group(1)))
        threads = int(re.search(r"(\d+) threads", err).group(1))
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    result = {
        "card": "cpu: " + cpu_model(), "driver": None, "commit": commit,
        "date": datetime.date.today().isoformat(), "threads": threads, "command": " ".join(cmd[:6]) + " ...",
        "runs": [
            {"model": os.path.basename(args.model), "dtype": "f32 (dequantized)", "path": "reference",
             "phase": "prefill", "batch": 1, "context": args.prompt_tokens, "tok_s": statistics.median(prefill),
             "samples": prefill},
            {"model": os.path.basename(args.model), "dtype": "f32 (dequantized)", "path": "reference",
             "phase": "decode", "batch": 1, "context": args.prompt_tokens + args.decode_tokens,
             "tok_s": statistics.median(decode), "samples": decode},
        ],
    }
    out = args.out or f"bench/results/{result['date']}-cpu-{os.cpu_count()}core.json"
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        json.dump(result, f, indent=2)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
