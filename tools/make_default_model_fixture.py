#!/usr/bin/env python3
"""Record what HF transformers computes for the default model (SmolLM2-135M-Instruct Q4_1 GGUF).

transformers loads the GGUF itself (dequantizing every tensor to fp32 with the `gguf` package), so the
numbers are an independent reference for tandem's GGUF reader, dequantizer, Q/K un-permutation, tokenizer
and reference path. Writes `default_model.safetensors` with, for every prompt p:
  p{p}.prompt          i32 [len]      prompt ids (chat template applied by HF for the chat prompts)
  p{p}.last_logits     f32 [vocab]    logits at the last prompt position
  p{p}.topk_ids        i32 [len, K]   top-K ids at every prompt position ...
  p{p}.topk_logits     f32 [len, K]   ... and their logits
  p{p}.greedy          i32 [64]       greedy continuation (eos ignored)
  p{p}.greedy_topk_ids / greedy_topk_logits   [64, K] top-K at each decode step
  p{p}.greedy_margin   f32 [64]       top-1 minus top-2 logit at each step (how safe the argmax is)
and metadata: the prompt texts, and the perplexity of a text file under the protocol tandem uses.

Perplexity protocol (the HF "sliding window" recipe): tokens = encode(text) without BOS; windows of
`ctx` tokens starting every `stride` tokens; each window scores only the tokens not scored by an earlier
window (all but its first token for the first window); ppl = exp(mean NLL).

Run where torch, transformers and gguf are installed:
    python3 tools/make_default_model_fixture.py --gguf models/SmolLM2-135M-Instruct.Q4_1.gguf \
        --text .deps/kjv-genesis.txt --out tests/fixtures/default_model
"""
import argparse
import json
import math
import os

import torch
import transformers
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, AutoTokenizer

TOPK = 16
GREEDY_STEPS = 64
CHAT_PROMPTS = ["What is the capital of France?", "Write a short story about a robot who learns to paint."]
PLAIN_PROMPTS = ["The quick brown fox jumps over the lazy dog. The quick brown",
                 "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n"]


def perplexity(model, ids, ctx, stride):
    nll, count, prev_end = 0.0, 0, 0
    for begin in range(0, len(ids), stride):
        end = min(begin + ctx, len(ids))
        window = torch.tensor([ids[begin:end]])
        with torch.no_grad():
            logp = torch.log_softmax(model(window).logits[0].double(), dim=-1)
        first_target = max(prev_end, begin + 1)  # positions scored in this window
        for pos in range(first_target, end):
            nll -= float(logp[pos - begin - 1, ids[pos]])
            count += 1
        prev_end = end
        if end == len(ids):
            break
    return math.exp(nll / count), count


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gguf", required=True)
    ap.add_argument("--text", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--ctx", type=int, default=256)
    ap.add_argument("--stride", type=int, default=128)
    ap.add_argument("--max-tokens", type=int, default=1024)
    args = ap.parse_args()
    torch.set_num_threads(8)
    folder, name = os.path.split(os.path.abspath(args.gguf))
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32,
                                                 attn_implementation="eager").eval()

    prompts = [tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
               for p in CHAT_PROMPTS] + PLAIN_PROMPTS
    tensors = {}
    min_margin = float("inf")
    for p, text in enumerate(prompts):
        ids = tok(text, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            out = model(torch.tensor([ids]), use_cache=True)
        logits = out.logits[0]
        top = torch.topk(logits, TOPK, dim=-1)
        tensors[f"p{p}.prompt"] = torch.tensor(ids, dtype=torch.int32)
        tensors[f"p{p}.last_logits"] = logits[-1].contiguous()
        tensors[f"p{p}.topk_ids"] = top.indices.to(torch.int32).contiguous()
        tensors[f"p{p}.topk_logits"] = top.values.contiguous()
        past, nxt = out.past_key_values, int(logits[-1].argmax())
        greedy, gids, gvals, margins = [], [], [], []
        step_logits = logits[-1]
        for _ in range(GREEDY_STEPS):
            t2 = torch.topk(step_logits, TOPK)
            gids.append(t2.indices.to(torch.int32))
            gvals.append(t2.values)
            margins.append(float(t2.values[0] - t2.values[1]))
            greedy.append(nxt)
            with torch.no_grad():
                o = model(torch.tensor([[nxt]]), past_key_values=past, use_cache=True)
            past, step_logits = o.past_key_values, o.logits[0, -1]
            nxt = int(step_logits.argmax())
        tensors[f"p{p}.greedy"] = torch.tensor(greedy, dtype=torch.int32)
        tensors[f"p{p}.greedy_topk_ids"] = torch.stack(gids).contiguous()
        tensors[f"p{p}.greedy_topk_logits"] = torch.stack(gvals).contiguous()
        tensors[f"p{p}.greedy_margin"] = torch.tensor(margins)
        min_margin = min(min_margin, min(margins))
        print(f"prompt {p}: {len(ids)} tokens; greedy: {tok.decode(greedy)!r}; min margin {min(margins):.4f}")

    with open(args.text, encoding="utf-8") as f:
        text = f.read()
    text_ids = tok(text, add_special_tokens=False)["input_ids"][: args.max_tokens]
    ppl, scored = perplexity(model, text_ids, args.ctx, args.stride)
    print(f"perplexity {ppl:.6f} over {scored} tokens (ctx {args.ctx}, stride {args.stride})")
    tensors["ppl.ids"] = torch.tensor(text_ids, dtype=torch.int32)

    os.makedirs(args.out, exist_ok=True)
    meta = {"prompts": json.dumps(prompts), "perplexity": f"{ppl:.9g}", "ppl_ctx": str(args.ctx),
            "ppl_stride": str(args.stride), "ppl_scored": str(scored), "ppl_max_tokens": str(args.max_tokens),
            "transformers": transformers.__version__, "torch": torch.__version__,
            "min_greedy_margin": f"{min_margin:.6g}"}
    save_file(tensors, os.path.join(args.out, "default_model.safetensors"), metadata=meta)


if __name__ == "__main__":
    main()
