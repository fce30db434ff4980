"""What the fixture builders share (tools/make_fixtures.py, tools/make_gpu_models.py): random weights, rope
config keys across transformers versions, and the prefill taps under tandem's names. Needs torch + transformers."""
import math

import torch
import transformers

V5 = int(transformers.__version__.split(".")[0]) >= 5


def rope_kwargs(theta, scaling=None):
    """transformers 5 takes rope_parameters; 4.x takes rope_theta + rope_scaling."""
    if V5:
        params = {"rope_type": "default", "rope_theta": theta}
        if scaling:
            params.update(scaling)
        return {"rope_parameters": params}
    return {"rope_theta": theta, "rope_scaling": scaling}


def randomize(model, gen, weight_std, embed_std=None, k_bias_absmax=None):
    """Draw every parameter from `gen`: HF's init leaves norms at 1 and biases at 0, real checkpoints have neither.

    norm weights 1 + 0.1 N(0, 1); biases 0.1 N(0, 1); embed_tokens embed_std N(0, 1) (None: like the other
    weights); every other weight weight_std N(0, 1), weight_std a number or a function of the parameter
    (fan_in_std). k_bias_absmax: then redraw each layer's K bias scaled to that max |value| (Qwen2-style
    outliers). Draws in named_parameters() order, one per parameter, so a seed gives the same model each run.
    """
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen))
            elif name.endswith(".bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
            elif embed_std is not None and "embed_tokens" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * embed_std)
            else:
                std = weight_std(p) if callable(weight_std) else weight_std
                p.copy_(torch.randn(p.shape, generator=gen) * std)
        if k_bias_absmax:
            for layer in model.model.layers:
                b = torch.randn(layer.self_attn.k_proj.bias.shape, generator=gen)
                layer.self_attn.k_proj.bias.copy_(b / b.abs().max() * k_bias_absmax)


def fan_in_std(gain):
    """weight_std for randomize(): gain / sqrt(fan-in), so activations stay O(1) through every layer."""
    return lambda p: gain / math.sqrt(p.shape[1])


def first_tensor(x):
    return x[0] if isinstance(x, (tuple, list)) else x


def capture_prefill(model, ids):
    """Run one prefill with hooks that record every stage tandem names."""
    taps = {}

    def out_hook(name):
        return lambda mod, inp, out: taps.__setitem__(name, first_tensor(out)[0].detach().clone())

    def in_hook(name):
        return lambda mod, inp: taps.__setitem__(name, first_tensor(inp)[0].detach().clone())

    hooks = [model.model.embed_tokens.register_forward_hook(out_hook("embed")),
             model.model.norm.register_forward_hook(out_hook("final_norm"))]
    for i, layer in enumerate(model.model.layers):
        a, m = layer.self_attn, layer.mlp
        hooks += [
            layer.input_layernorm.register_forward_hook(out_hook(f"L{i}.attn_norm")),
            a.q_proj.register_forward_hook(out_hook(f"L{i}.q")),
            a.k_proj.register_forward_hook(out_hook(f"L{i}.k")),
            a.v_proj.register_forward_hook(out_hook(f"L{i}.v")),
            a.o_proj.register_forward_pre_hook(in_hook(f"L{i}.attention")),
            a.o_proj.register_forward_hook(out_hook(f"L{i}.o_proj")),
            layer.post_attention_layernorm.register_forward_pre_hook(in_hook(f"L{i}.attn_residual")),
            layer.post_attention_layernorm.register_forward_hook(out_hook(f"L{i}.mlp_norm")),
            m.gate_proj.register_forward_hook(out_hook(f"L{i}.gate")),
            m.up_proj.register_forward_hook(out_hook(f"L{i}.up")),
            m.down_proj.register_forward_pre_hook(in_hook(f"L{i}.act")),
            m.down_proj.register_forward_hook(out_hook(f"L{i}.down")),
            layer.register_forward_hook(out_hook(f"L{i}.mlp_residual")),
        ]
    out = model(torch.tensor([ids], device=model.device), use_cache=True)
    for h in hooks:
        h.remove()
    taps["logits"] = out.logits[0].detach().clone()
    # tandem's fused stage outputs: qkv = [q | k | v], gate_up = [gate | up] along the last dim.
    for i in range(len(model.model.layers)):
        taps[f"L{i}.qkv"] = torch.cat([taps.pop(f"L{i}.q"), taps.pop(f"L{i}.k"), taps.pop(f"L{i}.v")], dim=-1)
        taps[f"L{i}.gate_up"] = torch.cat([taps.pop(f"L{i}.gate"), taps.pop(f"L{i}.up")], dim=-1)
    return taps, out
