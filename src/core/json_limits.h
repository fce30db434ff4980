// Bounds for untrusted JSON text (config.json, safetensors headers, shard indexes, tokenizer files, HTTP bodies),
// checked before the text reaches nlohmann::json: nesting depth (recursive consumers and dump() would overflow the
// stack on input a few hundred KB long). A byte scan, linear, no allocation.
#pragma once
#include <cstddef>
#include <string_view>

namespace tandem {

// Deeper than any real model or tokenizer file (tokenizer.json: ~6; chat requests: ~5).
inline constexpr size_t kMaxJsonDepth = 128;

// Throws tandem::Error "<what>: JSON nested deeper than <max_depth> levels (at byte N)" when an array/object
// nests deeper than max_depth (brackets inside strings do not count). Says nothing about validity otherwise.
void check_json_depth(std::string_view text, std::string_view what, size_t max_depth = kMaxJsonDepth);

}  // namespace tandem
