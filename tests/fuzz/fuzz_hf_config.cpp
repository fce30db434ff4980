// HF config.json -> ModelConfig on arbitrary text: types, ranges, products of sizes (heads x head_dim), rope
// scaling, token ids. A config that parses must be usable: its derived sizes do not overflow and the rope
// frequencies can be computed.
#include <string>

#include "core/error.h"
#include "model/config.h"
#include "model/hf_config.h"

using namespace tandem;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  try {
    HfConfig hc = parse_hf_config(text, "config.json");
    const ModelConfig& c = hc.config;
    if (!hc.arch) __builtin_trap();
    volatile int64_t dims = c.q_dim() + c.kv_dim() + c.qkv_dim();
    (void)dims;
    std::vector<float> f = rope_inv_freq(c);
    if (int64_t(f.size()) * 2 > c.head_dim + 1) __builtin_trap();
  } catch (const Error&) {
  }
  return 0;
}
