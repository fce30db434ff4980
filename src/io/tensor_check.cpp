#include "io/tensor_check.h"

#include <fmt/format.h>

#include <algorithm>
#include <cstring>

#include "core/error.h"
#include "core/parallel.h"
#include "io/dequant.h"

namespace tandem {
namespace {

// Elements (or blocks) per parallel chunk: large enough that scheduling costs nothing next to the scan.
constexpr int64_t kChunk = int64_t(1) << 20;

// IEEE-style classification from the raw bits: all exponent bits set means Inf (mantissa 0) or NaN.
template <typename Bits>
struct Format {
  Bits exp_mask;
  Bits mant_mask;
};

template <typename Bits>
void scan_elements(const uint8_t* p, int64_t begin, int64_t end, Format<Bits> f, NonFiniteCount& out) {
  for (int64_t i = begin; i < end; ++i) {
    Bits b;
    std::memcpy(&b, p + i * int64_t(sizeof(Bits)), sizeof(Bits));  // views may be unaligned
    if ((b & f.exp_mask) != f.exp_mask) continue;
    if (b & f.mant_mask)
      ++out.nan;
    else
      ++out.inf;
    if (out.first < 0) out.first = i;
  }
}

// f8 e4m3 (the "fn" variant safetensors uses) has no Inf; S.1111.111 is its only NaN.
void scan_e4m3(const uint8_t* p, int64_t begin, int64_t end, NonFiniteCount& out) {
  for (int64_t i = begin; i < end; ++i) {
    if ((p[i] & 0x7f) != 0x7f) continue;
    ++out.nan;
    if (out.first < 0) out.first = i;
  }
}

void scan_block_scales(const uint8_t* p, int64_t begin, int64_t end, DType t, NonFiniteCount& out) {
  const int64_t block_bytes = dtype_block_bytes(t), block_elems = dtype_block_elems(t);
  const auto offsets = block_f16_scale_offsets(t);
  for (int64_t b = begin; b < end; ++b) {
    for (int off : offsets) {
      uint16_t h;
      std::memcpy(&h, p + b * block_bytes + off, 2);
      if ((h & 0x7c00) != 0x7c00) continue;
      if (h & 0x03ff)
        ++out.nan;
      else
        ++out.inf;
      if (out.first < 0) out.first = b * block_elems;
    }
  }
}

// One chunk [begin, end) of elements (plain types) or blocks (quantized types).
void scan(const uint8_t* p, DType t, int64_t begin, int64_t end, NonFiniteCount& out) {
  switch (t) {
    case DType::F32: return scan_elements<uint32_t>(p, begin, end, {0x7f800000u, 0x007fffffu}, out);
    case DType::F64: return scan_elements<uint64_t>(p, begin, end, {0x7ff0000000000000ull, 0x000fffffffffffffull}, out);
    case DType::F16: return scan_elements<uint16_t>(p, begin, end, {0x7c00, 0x03ff}, out);
    case DType::BF16: return scan_elements<uint16_t>(p, begin, end, {0x7f80, 0x007f}, out);
    case DType::F8_E5M2: return scan_elements<uint8_t>(p, begin, end, {0x7c, 0x03}, out);
    case DType::F8_E4M3: return scan_e4m3(p, begin, end, out);
    default: return scan_block_scales(p, begin, end, t, out);
  }
}

bool is_checked(DType t) {
  switch (t) {
    case DType::F32:
    case DType::F64:
    case DType::F16:
    case DType::BF16:
    case DType::F8_E5M2:
    case DType::F8_E4M3: return true;
    default: return !block_f16_scale_offsets(t).empty();
  }
}

}  // namespace

NonFiniteCount count_non_finite(const Tensor& t) {
  NonFiniteCount total;
  if (!is_checked(t.dtype)) return total;
  TD_CHECK(t.device == Device::CPU && t.is_contiguous(), "count_non_finite needs a contiguous CPU tensor, got {}",
           t.describe());
  total.in_scales = dtype_block_elems(t.dtype) > 1;
  const int64_t units = t.numel() / dtype_block_elems(t.dtype);  // elements, or whole blocks
  if (units <= 0) return total;
  const int64_t chunks = (units + kChunk - 1) / kChunk;
  std::vector<NonFiniteCount> part(static_cast<size_t>(chunks));
  const auto* p = static_cast<const uint8_t*>(t.data);
  parallel_for(chunks, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) scan(p, t.dtype, c * kChunk, std::min(units, (c + 1) * kChunk), part[size_t(c)]);
  });
  for (const NonFiniteCount& c : part) {  // chunks in order, so `first` is the lowest index
    total.nan += c.nan;
    total.inf += c.inf;
    if (total.first < 0) total.first = c.first;
  }
  return total;
}

std::vector<TensorFinding> check_tensors(std::span<const CheckedTensor> tensors) {
  std::vector<TensorFinding> out;
  for (const CheckedTensor& ct : tensors) {
    const NonFiniteCount n = count_non_finite(ct.view);
    if (n.any()) out.push_back({ct.name, ct.file, ct.view.dtype, n});
  }
  return out;
}

std::string describe_findings(std::span<const TensorFinding> findings, size_t max_lines) {
  std::string s;
  for (size_t i = 0; i < findings.size() && i < max_lines; ++i) {
    const TensorFinding& f = findings[i];
    const NonFiniteCount& n = f.counts;
    const char* unit = n.in_scales ? " block scale" : "";
    const auto plural = [&](int64_t k) { return n.in_scales && k != 1 ? "s" : ""; };
    s += fmt::format("\n  {} ({}, in {}): {} NaN{}{}, {} Inf{}{}, first {} element {}", f.name, dtype_name(f.dtype),
                     f.file, n.nan, unit, plural(n.nan), n.inf, unit, plural(n.inf),
                     n.in_scales ? "in the block starting at" : "at", n.first);
  }
  if (findings.size() > max_lines) s += fmt::format("\n  ... and {} more", findings.size() - max_lines);
  return s;
}

}  // namespace tandem
