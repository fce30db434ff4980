#include "exec/sampling.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "core/error.h"

namespace tandem {
namespace {

// Descending by logit, ties -> lower id. Total order on the (non-NaN) candidates we keep.
bool better(const std::pair<float, int32_t>& a, const std::pair<float, int32_t>& b) {
  if (a.first != b.first) return a.first > b.first;
  return a.second < b.second;
}

void check_row(std::span<const float> logits, std::span<const int32_t> penalized) {
  TD_CHECK(!logits.empty(), "sampler: logits row is empty");
  TD_CHECK(logits.size() <= static_cast<size_t>(std::numeric_limits<int32_t>::max()),
           "sampler: vocab size {} does not fit in int32", logits.size());
  const auto n = static_cast<int64_t>(logits.size());
  for (size_t j = 0; j < penalized.size(); ++j)
    TD_CHECK(penalized[j] >= 0 && penalized[j] < n,
             "sampler: recent token {} (position {} of the penalty window) is out of range for vocab size {}",
             penalized[j], j, n);
}

// sample_row() on a checked row, with kNoCandidate where it throws for want of a choosable logit.
int32_t choose(std::span<const float> logits, std::span<const int32_t> penalized, const SamplingParams& p, double u,
               SampleScratch* scratch) {
  const auto n = static_cast<int32_t>(logits.size());
  SampleScratch local;
  auto& cand = scratch ? *scratch : local;
  // cand[id] = (logit, id) until filtering starts.
  cand.resize(logits.size());
  for (int32_t i = 0; i < n; ++i) cand[i] = {logits[i], i};

  // 1. Repetition penalty, once per distinct token in the window.
  if (p.repeat_penalty != 1.0f && !penalized.empty()) {
    std::vector<int32_t> ids(penalized.begin(), penalized.end());
    std::sort(ids.begin(), ids.end());
    ids.erase(std::unique(ids.begin(), ids.end()), ids.end());
    const float r = p.repeat_penalty;
    for (int32_t id : ids) {
      float& l = cand[id].first;
      l = l > 0.0f ? l / r : l * r;  // NaN stays NaN, -inf stays -inf
    }
  }

  // Drop NaN and -inf: they can never be selected.
  cand.erase(std::remove_if(cand.begin(), cand.end(),
                            [](const auto& c) { return std::isnan(c.first) || c.first == -INFINITY; }),
             cand.end());
  if (cand.empty()) return kNoCandidate;

  // 2. Greedy: argmax, ties -> lowest id (cand is still in id order).
  if (p.greedy()) {
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
  if (p.top_k > 0 && static_cast<size_t>(p.top_k) < cand.size()) {
    const auto k = static_cast<std::ptrdiff_t>(p.top_k);
    std::nth_element(cand.begin(), cand.begin() + k - 1, cand.end(), better);
    cand.resize(static_cast<size_t>(k));
  }
  std::sort(cand.begin(), cand.end(), better);

  const double max_logit = cand.front().first;

  // 4. top-p over softmax(logits) of the current candidates.
  if (p.top_p < 1.0f && cand.size() > 1) {
    double total = 0.0;
    for (const auto& c : cand) total += std::exp(static_cast<double>(c.first) - max_logit);
    const double target = static_cast<double>(p.top_p);
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
  if (p.min_p > 0.0f && cand.size() > 1) {
    const double min_p = static_cast<double>(p.min_p);
    size_t keep = 1;
    while (keep < cand.size() && std::exp(static_cast<double>(cand[keep].first) - max_logit) >= min_p) ++keep;
    cand.resize(keep);
  }

  // 6. temperature on the survivors, 7. draw.
  if (cand.size() == 1) return cand.front().second;
  const double temp = static_cast<double>(p.temperature);
  double total = 0.0;
  for (const auto& c : cand) total += std::exp((static_cast<double>(c.first) - max_logit) / temp);
  const double target = u * total;
  double cum = 0.0;
  for (size_t i = 0; i + 1 < cand.size(); ++i) {
    cum += std::exp((static_cast<double>(cand[i].first) - max_logit) / temp);
    if (target < cum) return cand[i].second;
  }
  return cand.back().second;  // guards against rounding in the cumulative sum
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

std::span<const int32_t> penalty_window(std::span<const int32_t> recent, const SamplingParams& p) {
  if (p.repeat_penalty == 1.0f || p.repeat_last_n == 0) return {};
  size_t window = recent.size();
  if (p.repeat_last_n > 0) window = std::min(window, static_cast<size_t>(p.repeat_last_n));
  return recent.subspan(recent.size() - window);
}

int32_t sample_row(std::span<const float> logits, std::span<const int32_t> penalized, const SamplingParams& p, double u,
                   SampleScratch* scratch) {
  check_row(logits, penalized);
  const int32_t token = choose(logits, penalized, p, u, scratch);
  TD_CHECK(token != kNoCandidate, "sampler: all {} logits are NaN/-inf", logits.size());
  return token;
}

int32_t sample_token(std::span<const float> logits, std::span<const int32_t> penalized, const SamplingParams& p,
                     double u, SampleScratch* scratch) {
  check_row(logits, penalized);
  for (float v : logits)
    if (!std::isfinite(v)) return kNonFiniteRow;
  return choose(logits, penalized, p, u, scratch);
}

}  // namespace tandem
