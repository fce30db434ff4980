#!/usr/bin/env python3
"""Build tiny random-weight HF models and record what HF transformers computes on them.

Each fixture folder (tests/fixtures/<name>/) holds an HF model directory (config.json + safetensors) and
`expected.safetensors` with, for every prompt p:
  p{p}.prompt             i32 [len]            the prompt token ids
  p{p}.<tap>              f32 [len, ...]       prefill taps named as tandem names them (see TAP_HOOKS)
  p{p}.decode_tokens      i32 [16]             greedy continuation (token 0 = argmax of the prefill's last row)
  p{p}.decode_logits      f32 [16, vocab]      logits after feeding decode_tokens[s]
All numbers come from the model as reloaded from disk in fp32 with eager attention on the CPU, so the
stored weights (f32, bf16 or f16) are exactly what both sides compute with.

Run where torch + transformers are installed (the GPU machine has both):
    python3 tools/make_fixtures.py --out tests/fixtures
"""
import argparse
import json
import os
import shutil

import torch
import transformers
from safetensors.torch import save_file
from transformers import (LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM, Qwen2Config,
                          Qwen2ForCausalLM)

from fixture_common import capture_prefill, randomize, rope_kwargs

DECODE_STEPS = 16
PROMPT_LENGTHS = [6, 19, 1]

LLAMA3_SCALING = {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                  "original_max_position_embeddings": 8192}

FIXTURES = {
    # Llama 3 style: llama3 rope scaling, GQA group 2, f32 weights, sharded, classic config keys.
    "llama": dict(
        cls=LlamaForCausalLM, cfg_cls=LlamaConfig, dtype=torch.float32, shard="120KB", classic_config=True,
        cfg=dict(vocab_size=320, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-5, max_position_embeddings=131072,
                 tie_word_embeddings=False, bos_token_id=1, eos_token_id=2,
                 **rope_kwargs(500000.0, LLAMA3_SCALING))),
    # Qwen2 style: q/k/v biases with a K bias making |K| ~ 200, GQA group 3, tied embeddings, bf16 weights.
    "qwen2": dict(
        cls=Qwen2ForCausalLM, cfg_cls=Qwen2Config, dtype=torch.bfloat16, shard=None, k_bias_absmax=200.0,
        cfg=dict(vocab_size=384, hidden_size=96, intermediate_size=224, num_hidden_layers=2,
                 num_attention_heads=6, num_key_value_heads=2, rms_norm_eps=1e-6, max_position_embeddings=512,
                 tie_word_embeddings=True, use_sliding_window=False, bos_token_id=1, eos_token_id=2,
                 **rope_kwargs(1000000.0))),
    # Mistral style: sliding window 8 (shorter than the long prompt), head_dim 32 != hidden/heads,
    # GQA group 4, f16 weights.
    "mistral": dict(
        cls=MistralForCausalLM, cfg_cls=MistralConfig, dtype=torch.float16, shard=None,
        cfg=dict(vocab_size=352, hidden_size=128, intermediate_size=192, num_hidden_layers=3,
                 num_attention_heads=8, num_key_value_heads=2, head_dim=32, rms_norm_eps=1e-5,
                 max_position_embeddings=512, sliding_window=8, tie_word_embeddings=False, bos_token_id=1,
                 eos_token_id=2, **rope_kwargs(10000.0))),
}


def write_classic_config(path):
    """Rewrite a transformers-5 config.json in the rope_theta/rope_scaling form hub checkpoints use."""
    with open(path) as f:
        cfg = json.load(f)
    params = cfg.pop("rope_parameters", None)
    if params is not None:
        cfg["rope_theta"] = params.pop("rope_theta")
        cfg["rope_scaling"] = params if params.get("rope_type", "default") != "default" else None
    with open(path, "w") as f:
        json.dump(cfg, f, indent=2)


def greedy_decode(model, prefill_out):
    past = prefill_out.past_key_values
    tok = int(prefill_out.logits[0, -1].argmax())
    tokens, logits = [], []
    for _ in range(DECODE_STEPS):
        tokens.append(tok)
        out = model(torch.tensor([[tok]]), past_key_values=past, use_cache=True)
        past = out.past_key_values
        logits.append(out.logits[0, -1].detach().clone())
        tok = int(out.logits[0, -1].argmax())
    return torch.tensor(tokens, dtype=torch.int32), torch.stack(logits)


def build(name, spec, out_root, seed):
    gen = torch.Generator().manual_seed(seed)
    cfg = spec["cfg_cls"](**spec["cfg"])
    cfg._attn_implementation = "eager"
    model = spec["cls"](cfg).eval()
    randomize(model, gen, weight_std=0.08, k_bias_absmax=spec.get("k_bias_absmax"))

    folder = os.path.join(out_root, name)
    shutil.rmtree(folder, ignore_errors=True)
    kwargs = {"max_shard_size": spec["shard"]} if spec["shard"] else {}
    model.to(spec["dtype"]).save_pretrained(folder, **kwargs)
    for extra in ("generation_config.json",):
        if os.path.exists(os.path.join(folder, extra)):
            os.remove(os.path.join(folder, extra))
    if spec.get("classic_config"):
        write_classic_config(os.path.join(folder, "config.json"))

    # Everything below is computed by the model as HF reads it back from disk.
    ref = spec["cls"].from_pretrained(folder, dtype=torch.float32, attn_implementation="eager").eval()
    if spec.get("classic_config"):
        want = model.model.rotary_emb.inv_freq.float()
        got = ref.model.rotary_emb.inv_freq.float()
        assert torch.allclose(want, got), "classic config did not reproduce the rope frequencies"

    vocab = cfg.vocab_size
    tensors = {}
    margins = []
    with torch.no_grad():
        for p, length in enumerate(PROMPT_LENGTHS):
            ids = torch.randint(3, vocab, (length,), generator=gen).tolist()
            taps, out = capture_prefill(ref, ids)
            tensors[f"p{p}.prompt"] = torch.tensor(ids, dtype=torch.int32)
            for tap, t in taps.items():
                tensors[f"p{p}.{tap}"] = t.float().contiguous()
            tokens, logits = greedy_decode(ref, out)
            tensors[f"p{p}.decode_tokens"] = tokens
            tensors[f"p{p}.decode_logits"] = logits.float().contiguous()
            top2 = torch.topk(torch.cat([out.logits[0, -1:], logits]), 2, dim=-1).values
            margins.append(float((top2[:, 0] - top2[:, 1]).min()))
    meta = {"transformers": transformers.__version__, "torch": torch.__version__, "seed": str(seed),
            "min_top2_margin": f"{min(margins):.6g}", "decode_steps": str(DECODE_STEPS)}
    save_file(tensors, os.path.join(folder, "expected.safetensors"), metadata=meta)
    size = sum(os.path.getsize(os.path.join(folder, f)) for f in os.listdir(folder))
    print(f"{name}: {size / 1024:.0f} KiB, min top-2 margin {min(margins):.4g}, files {sorted(os.listdir(folder))}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="tests/fixtures")
    ap.add_argument("--only", nargs="*", default=list(FIXTURES))
    args = ap.parse_args()
    torch.set_num_threads(4)
    for i, name in enumerate(args.only):
        build(name, FIXTURES[name], args.out, seed=1234 + i)


if __name__ == "__main__":
    main()
