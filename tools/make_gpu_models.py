#!/usr/bin/env python3
"""Real-shape random-weight models and HF transformers' bf16 outputs for them, on the GPU.

For each shape (SmolLM2-135M, Qwen2.5-0.5B with a K bias giving |K| ~ 200, Llama-3.2-1B) this writes an HF
folder under --out with bf16 weights and `expected.safetensors` holding what HF computes in bf16 on the GPU
(eager attention) for one prompt:
  p0.prompt                 i32 [len]
  p0.<tap>                  f32 [len, ...]   prefill taps, named as tandem names them
  p0.decode_tokens          i32 [N]          HF's greedy continuation
  p0.decode_logits          f32 [N, vocab]   logits after feeding decode_tokens[s]
  p0.prefill_last_logits    f32 [vocab]
  p0.f32.<tap>              f32 [len, ...]   the same prefill taps from HF in fp32 (no TF32): the truth both
                                             bf16 implementations are measured against
tests/gpu/test_standard_path.cpp reads them when TANDEM_GPU_MODELS points at --out.

    python3 tools/make_gpu_models.py --out /tmp/gpu_models [--only llama-3.2-1b-shape]
"""
import argparse
import os
import shutil
import sys

import torch
from safetensors.torch import save_file
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fixture_common import capture_prefill, fan_in_std, randomize, rope_kwargs  # noqa: E402

PROMPT_LEN = 24
DECODE_STEPS = 32

SHAPES = {
    "smollm2-135m-shape": (LlamaForCausalLM, LlamaConfig, dict(
        vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
        num_key_value_heads=3, rms_norm_eps=1e-5, max_position_embeddings=8192, tie_word_embeddings=True,
        bos_token_id=1, eos_token_id=2, **rope_kwargs(100000.0)), None),
    "qwen2.5-0.5b-shape": (Qwen2ForCausalLM, Qwen2Config, dict(
        vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
        num_key_value_heads=2, rms_norm_eps=1e-6, max_position_embeddings=32768, tie_word_embeddings=True,
        use_sliding_window=False, bos_token_id=151643, eos_token_id=151645, **rope_kwargs(1000000.0)), 200.0),
    "llama-3.2-1b-shape": (LlamaForCausalLM, LlamaConfig, dict(
        vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
        num_key_value_heads=8, head_dim=64, rms_norm_eps=1e-5, max_position_embeddings=131072,
        tie_word_embeddings=True, bos_token_id=128000, eos_token_id=128001,
        **rope_kwargs(500000.0, {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                                  "high_freq_factor": 4.0, "original_max_position_embeddings": 8192})), None),
}


def build(name, out_root, seed):
    cls, cfg_cls, cfg, k_bias = SHAPES[name]
    gen = torch.Generator().manual_seed(seed)
    model = cls(cfg_cls(**cfg)).eval()
    # Weights scaled by fan-in so activations stay O(1) through every layer, and logits have real margins.
    randomize(model, gen, weight_std=fan_in_std(0.7), embed_std=1.0, k_bias_absmax=k_bias)
    folder = os.path.join(out_root, name)
    shutil.rmtree(folder, ignore_errors=True)
    model.to(torch.bfloat16).save_pretrained(folder)
    del model
    ref = cls.from_pretrained(folder, dtype=torch.bfloat16, attn_implementation="eager").cuda().eval()
    ids = torch.randint(3, cfg["vocab_size"], (PROMPT_LEN,), generator=gen).tolist()
    tensors = {"p0.prompt": torch.tensor(ids, dtype=torch.int32)}
    with torch.no_grad():
        taps, out = capture_prefill(ref, ids)
        for tap, t in taps.items():
            tensors[f"p0.{tap}"] = t.float().cpu().contiguous()
        tensors["p0.prefill_last_logits"] = out.logits[0, -1].float().cpu().contiguous()
        past, tok = out.past_key_values, int(out.logits[0, -1].argmax())
        tokens, logits = [], []
        for _ in range(DECODE_STEPS):
            tokens.append(tok)
            o = ref(torch.tensor([[tok]], device="cuda"), past_key_values=past, use_cache=True)
            past = o.past_key_values
            logits.append(o.logits[0, -1].float().cpu())
            tok = int(o.logits[0, -1].argmax())
    tensors["p0.decode_tokens"] = torch.tensor(tokens, dtype=torch.int32)
    tensors["p0.decode_logits"] = torch.stack(logits).contiguous()
    del ref
    torch.cuda.empty_cache()
    truth = cls.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager").cuda().eval()
    with torch.no_grad():
        f32_taps, _ = capture_prefill(truth, ids)
    for tap, t in f32_taps.items():
        tensors[f"p0.f32.{tap}"] = t.float().cpu().contiguous()
    del truth
    save_file(tensors, os.path.join(folder, "expected.safetensors"), metadata={"device": torch.cuda.get_device_name()})
    kmax = float(taps["L0.qkv"][:, cfg["num_attention_heads"] * cfg.get("head_dim", cfg["hidden_size"] // cfg["num_attention_heads"]):].abs().max())
    print(f"{name}: written to {folder}; |qkv[k|v]| max in layer 0 = {kmax:.1f}", flush=True)
    torch.cuda.empty_cache()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--only", nargs="*", default=list(SHAPES))
    args = ap.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    os.makedirs(args.out, exist_ok=True)
    for i, name in enumerate(args.only):
        build(name, args.out, seed=4321 + i)


if __name__ == "__main__":
    main()
