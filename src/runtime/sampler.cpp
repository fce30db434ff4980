#include "runtime/sampler.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>

#include "core/error.h"
#include "core/hash.h"

namespace tandem {
namespace {

uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

uint64_t random_seed() {
  std::random_device rd;
  uint64_t hi = static_cast<uint64_t>(rd()) & 0xffffffffULL;
  uint64_t lo = static_cast<uint64_t>(rd()) & 0xffffffffULL;
  return (hi << 32) | lo;
}

// Descending by logit, ties -> lower id. Total order on the (non-NaN) candidates we keep.
bool better(const std::pair<float, int32_t>& a, const std::pair<float, int32_t>& b) {
  if (a.first != b.first) return a.first > b.first;
  return a.second < b.second;
}

}  // namespace

void SamplingParams::validate() const {
  if (!std::isfinite(temperature) || temperature < 0.0f)
    fail("sampling: temperature must be finite and >= 0 (<= 0 means greedy), got {}", temperature);
  if (!std::isfinite(top_p) || !(top_p > 0.0f && top_p <= 1.0f))
    fail("sampling: top_p must be in (0, 1] (1 disables it), got {}", top_p);
  if (!std::isfinite(min_p) || !(min_p >= 0.0f && min_p <= 1.0f))
    fail("sampling: min_p must be in [0, 1] (0 disables it), got {}", min_p);
  if (!std::isfinite(repeat_penalty) || !(repeat_penalty > 0.0f))
    fail("sampling: repeat_penalty must be finite and > 0 (1 disables it), got {}", repeat_penalty);
  if (repeat_last_n < -1)
    fail("sampling: repeat_last_n must be >= -1 (-1: all tokens, 0: none), got {}", repeat_last_n);
  // top_k: any value; <= 0 disables it.
}

Sampler::Sampler(const SamplingParams& params) : params_(params) {
  params_.validate();
  seed_ = params_.seed ? *params_.seed : random_seed();
  uint64_t x = seed_;
  for (auto& s : state_) s = splitmix64(x);
}

double Sampler::next_uniform() {
  // xoshiro256** (Blackman & Vigna), top 53 bits -> [0, 1).
  const uint64_t result = rotl(state_[1] * 5, 7) * 9;
  const uint64_t t = state_[1] << 17;
  state_[2] ^= state_[0];
  state_[3] ^= state_[1];
  state_[1] ^= state_[2];
  state_[0] ^= state_[3];
  state_[2] ^= t;
  state_[3] = rotl(state_[3], 45);
  return static_cast<double>(result >> 11) * 0x1.0p-53;
}

int32_t Sampler::sample(std::span<const float> logits, std::span<const int32_t> recent) {
  TD_CHECK(!logits.empty(), "sampler: logits row is empty");
  TD_CHECK(logits.size() <= static_cast<size_t>(std::numeric_limits<int32_t>::max()),
           "sampler: vocab size {} does not fit in int32", logits.size());
  const auto n = static_cast<int32_t>(logits.size());

  // scratch_[id] = (logit, id) until filtering starts.
  auto& cand = scratch_;
  cand.resize(logits.size());
  for (int32_t i = 0; i < n; ++i) cand[i] = {logits[i], i};

  // 1. Repetition penalty, once per distinct token in the window.
  if (params_.repeat_penalty != 1.0f && params_.repeat_last_n != 0 && !recent.empty()) {
    size_t window = recent.size();
    if (params_.repeat_last_n > 0) window = std::min(window, static_cast<size_t>(params_.repeat_last_n));
    const size_t start = recent.size() - window;
    std::vector<int32_t> ids(recent.begin() + static_cast<std::ptrdiff_t>(start), recent.end());
    for (size_t j = 0; j < ids.size(); ++j)
      TD_CHECK(ids[j] >= 0 && ids[j] < n,
               "sampler: recent token {} (position {}) is out of range for vocab size {}", ids[j],
               start + j, n);
    std::sort(ids.begin(), ids.end());
    ids.erase(std::unique(ids.begin(), ids.end()), ids.end());
    const float r = params_.repeat_penalty;
    for (int32_t id : ids) {
      float& l = cand[id].first;
      l = l > 0.0f ? l / r : l * r;  // NaN stays NaN, -inf stays -inf
    }
  }

  // Drop NaN and -inf: they can never be selected.
  cand.erase(std::remove_if(cand.begin(), cand.end(),
                            [](const auto& c) { return std::isnan(c.first) || c.first == -INFINITY; }),
             cand.end());
  TD_CHECK(!cand.empty(), "sampler: all {} logits are NaN/-inf", n);

  // 2. Greedy: argmax, ties -> lowest id (cand is still in id order).
  if (params_.greedy()) {
    auto best = cand.front();
    for (const auto& c : cand)
      if (c.first > best.first) best = c;
    return best.second;
  }

  // +inf logits (e.g. from an overflow) dominate: keep only those, uniformly weighted.
  if (std::any_of(cand.begin(), cand.end(), [](const auto& c) { return c.first == INFINITY; })) {
    cand.erase(std::remove_if(cand.begin(), cand.end(), [](const auto& c) { return c.first != INFINITY; }),
               cand.end());
    for (auto& c : cand) c.first = 0.0f;
  }

  // 3. top-k, then sort descending (ties -> lower id).
  if (params_.top_k > 0 && static_cast<size_t>(params_.top_k) < cand.size()) {
    const auto k = static_cast<std::ptrdiff_t>(params_.top_k);
    std::nth_element(cand.begin(), cand.begin() + k - 1, cand.end(), better);
    cand.resize(static_cast<size_t>(k));
  }
  std::sort(cand.begin(), cand.end(), better);

  const double max_logit = cand.front().first;

  // 4. top-p over softmax(logits) of the current candidates.
  if (params_.top_p < 1.0f && cand.size() > 1) {
    double total = 0.0;
    for (const auto& c : cand) total += std::exp(static_cast<double>(c.first) - max_logit);
    const double target = static_cast<double>(params_.top_p);
    double cum = 0.0;
    size_t keep = cand.size();
    for (size_t i = 0; i < cand.size(); ++i) {
      cum += std::exp(static_cast<double>(cand[i].first) - max_logit) / total;
      if (cum >= target) {
        keep = i + 1;
        break;
      }
    }
    cand.resize(keep);
  }

  // 5. min-p: p_i / p_max = exp(l_i - l_max) >= min_p. Candidates are sorted, so keep a prefix.
  if (params_.min_p > 0.0f && cand.size() > 1) {
    const double min_p = static_cast<double>(params_.min_p);
    size_t keep = 1;
    while (keep < cand.size() && std::exp(static_cast<double>(cand[keep].first) - max_logit) >= min_p) ++keep;
    cand.resize(keep);
  }

  // 6. temperature on the survivors, 7. draw.
  if (cand.size() == 1) {
    next_uniform();  // keep the RNG stream independent of how many candidates survived
    return cand.front().second;
  }
  const double temp = static_cast<double>(params_.temperature);
  double total = 0.0;
  for (const auto& c : cand) total += std::exp((static_cast<double>(c.first) - max_logit) / temp);
  const double target = next_uniform() * total;
  double cum = 0.0;
  for (size_t i = 0; i + 1 < cand.size(); ++i) {
    cum += std::exp((static_cast<double>(cand[i].first) - max_logit) / temp);
    if (target < cum) return cand[i].second;
  }
  return cand.back().second;  // guards against rounding in the cumulative sum
}

}  // namespace tandem
