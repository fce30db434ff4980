#!/usr/bin/env python3
# Requires matplotlib (tested with matplotlib==3.10.9): pip install 'matplotlib==3.10.*'
"""Plots `tandem bench` / `tools/bench_peers.py` result JSONs.

Top row: decode tok/s vs batch (log-x), one panel per model, one line per path (and per context, or per card,
when the inputs hold several), context in the panel title. Bottom row (when any prefill runs exist): prefill
TFLOP/s vs prompt tokens per path, with the card's measured bf16 GEMM peak as a dashed line.
Runs from the CPU-side JSON will plot too; runs without the plotted value are left out.

    python3 tools/plot_bench.py bench/results/A.json [B.json ...] --out bench/results/NAME.png
"""
import argparse
import collections
import json
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

PATH_ORDER = ["reference", "standard", "fused", "hf-eager", "hf-sdpa"]
PATH_COLOR = {"reference": "tab:gray", "standard": "tab:blue", "fused": "tab:green", "hf-eager": "tab:orange",
              "hf-sdpa": "tab:red"}
CARD_STYLE = ["-", "--", ":", "-."]
MODEL_ORDER = ["llama-3.2-1b-shape", "llama-3.1-8b-shape", "qwen2.5-7b-shape"]


def load(paths):
    runs, peaks = [], {}
    for p in paths:
        with open(p) as fh:
            doc = json.load(fh)
        card = doc.get("card") or "unknown card"
        if doc.get("gemm_peak_tflops"):
            peaks[card] = doc["gemm_peak_tflops"]
        for r in doc.get("runs", []):
            r = dict(r)
            r["_card"] = card
            runs.append(r)
    return runs, peaks


def order_key(order):
    return lambda x: (order.index(x) if x in order else len(order), x)


def num(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("json", nargs="+", help="result JSON files")
    ap.add_argument("--out", default=None, help="output image (default: first JSON with .png)")
    ap.add_argument("--dpi", type=int, default=120)
    args = ap.parse_args()
    out = args.out or os.path.splitext(args.json[0])[0] + ".png"

    runs, peaks = load(args.json)
    decode = [r for r in runs if r.get("phase") == "decode" and num(r.get("tok_s")) and num(r.get("batch"))]
    prefill = [r for r in runs if r.get("phase") == "prefill" and num(r.get("tflops")) and num(r.get("context"))]
    if not decode and not prefill:
        sys.exit("no decode tok_s or prefill tflops in the inputs")

    models = sorted({r["model"] for r in decode + prefill}, key=order_key(MODEL_ORDER))
    cards = sorted({r["_card"] for r in decode + prefill})
    multi_card = len(cards) > 1
    style = {c: CARD_STYLE[i % len(CARD_STYLE)] for i, c in enumerate(cards)}
    nrows = (1 if decode else 0) + (1 if prefill else 0)
    fig, axes = plt.subplots(nrows, len(models), figsize=(5.2 * len(models), 4.2 * nrows), squeeze=False)

    row = 0
    if decode:
        for col, model in enumerate(models):
            ax = axes[row][col]
            mine = [r for r in decode if r["model"] == model]
            contexts = sorted({r.get("context") for r in mine}, key=lambda c: (c is None, c))
            lines = collections.defaultdict(dict)
            for r in mine:  # a later file's run of the same point wins
                lines[(r["path"], r.get("context"), r["_card"])][r["batch"]] = r["tok_s"]
            for (path, ctx, card) in sorted(lines, key=lambda k: (order_key(PATH_ORDER)(k[0]), k[1] or 0, k[2])):
                pts = sorted(lines[(path, ctx, card)].items())
                label = path
                if len(contexts) > 1:
                    label += f", ctx {ctx}"
                if multi_card:
                    label += f" ({card})"
                ax.plot([b for b, _ in pts], [t for _, t in pts], style[card], marker="o",
                        color=PATH_COLOR.get(path), label=label)
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            batches = sorted({r["batch"] for r in mine})
            ax.set_xticks(batches)
            ax.set_xticklabels([str(b) for b in batches])
            ax.minorticks_off()
            ctx_txt = ", ".join(str(c) for c in contexts)
            ax.set_title(f"{model} decode, context {ctx_txt}", fontsize=10)
            ax.set_xlabel("batch (sequences)")
            ax.set_ylabel("tok/s")
            ax.grid(True, which="both", alpha=0.3)
            if mine:
                ax.legend(fontsize=8)
            else:
                ax.text(0.5, 0.5, "no decode runs", ha="center", va="center", transform=ax.transAxes)
        row += 1

    if prefill:
        for col, model in enumerate(models):
            ax = axes[row][col]
            mine = [r for r in prefill if r["model"] == model]
            lines = collections.defaultdict(dict)
            for r in mine:
                lines[(r["path"], r["_card"])][r["context"]] = r["tflops"]
            for (path, card) in sorted(lines, key=lambda k: (order_key(PATH_ORDER)(k[0]), k[1])):
                pts = sorted(lines[(path, card)].items())
                label = path + (f" ({card})" if multi_card else "")
                ax.plot([p for p, _ in pts], [t for _, t in pts], style[card], marker="s",
                        color=PATH_COLOR.get(path), label=label)
            for card in sorted({r["_card"] for r in mine}):
                if card in peaks:
                    ax.axhline(peaks[card], color="black", linestyle=style[card], linewidth=0.8,
                               label=f"bf16 GEMM peak {peaks[card]:.0f}" + (f" ({card})" if multi_card else ""))
            ax.set_xscale("log", base=2)
            tokens = sorted({r["context"] for r in mine})
            if tokens:
                ax.set_xticks(tokens)
                ax.set_xticklabels([str(t) for t in tokens])
                ax.minorticks_off()
                ax.legend(fontsize=8)
            else:
                ax.text(0.5, 0.5, "no prefill runs", ha="center", va="center", transform=ax.transAxes)
            ax.set_ylim(bottom=0)
            ax.set_title(f"{model} prefill (batch 1)", fontsize=10)
            ax.set_xlabel("prompt tokens")
            ax.set_ylabel("TFLOP/s")
            ax.grid(True, alpha=0.3)

    fig.suptitle(", ".join(cards), fontsize=11)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    fig.savefig(out, dpi=args.dpi)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
