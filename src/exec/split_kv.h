// FlashInfer's split-KV choice (--split-kv): whether attention over a long context may be cut into KV chunks
// whose partial softmax results a merge kernel combines. One enum for the options (HostOptions), the CUDA context
// and the adapter (cuda/flashinfer.cuh); header-only so that nvcc translation units can include it.
#pragma once
#include <cstdint>
#include <optional>
#include <string_view>

namespace tandem {

enum class SplitKv : uint8_t {
  automatic,  // FlashInfer's scheduler decides (it splits when few long sequences would leave SMs idle)
  off,        // never split: one CTA per (query tile, KV head) over the whole context
  on,         // always split, in small fixed chunks (cuda/flashinfer.cuh kForcedSplitChunkTokens): a diagnostic
              // mode, so that short test prompts go through the split kernels and the merge as well
};

constexpr std::string_view split_kv_name(SplitKv m) {
  switch (m) {
    case SplitKv::automatic: return "auto";
    case SplitKv::off: return "off";
    case SplitKv::on: return "on";
  }
  return "?";
}

// "auto" | "off" | "on"; nullopt otherwise.
constexpr std::optional<SplitKv> split_kv_from_name(std::string_view s) {
  if (s == "auto") return SplitKv::automatic;
  if (s == "off") return SplitKv::off;
  if (s == "on") return SplitKv::on;
  return std::nullopt;
}

}  // namespace tandem
