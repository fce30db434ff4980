#include "exec/step.h"

#include <cmath>
#include <map>

#include "core/error.h"


namespace tandem {

int32_t greedy_token(std::span<const float> row) {
  int32_t best = kNonFiniteRow;
  for (size_t i = 0; i < row.size(); ++i) {
    const float v = row[i];
    if (!std::isfinite(v)) return kNonFiniteRow;  // one NaN/Inf poisons the row (see step.h)
    if (best < 0 || v > row[size_t(best)]) best = int32_t(i);
  }
  return best;
}

void validate_step(const Step& step, int64_t vocab,
                   const std::function<std::optional<SequenceExtent>(int32_t)>& lookup) {
  const int64_t T = step.size();
  TD_CHECK(T > 0, "empty step");
  TD_CHECK(step.seq_ids.size() == size_t(T) && step.positions.size() == size_t(T) &&
               step.want_logits.size() == size_t(T),
           "step arrays disagree in length");
  std::map<int32_t, std::pair<int64_t, int64_t>> next;  // seq -> (expected position, capacity)
  for (int64_t t = 0; t < T; ++t) {
    const int32_t tok = step.tokens[size_t(t)], seq = step.seq_ids[size_t(t)], pos = step.positions[size_t(t)];
    TD_CHECK(tok >= 0 && tok < vocab, "step token {}: id {} outside the vocabulary (size {})", t, tok, vocab);
    auto it = next.find(seq);
    if (it == next.end()) {
      const auto extent = lookup(seq);
      TD_CHECK(extent.has_value(), "step token {}: unknown sequence {}", t, seq);
      it = next.emplace(seq, std::pair{extent->length, extent->capacity}).first;
    }
    TD_CHECK(pos == it->second.first, "step token {}: sequence {} expects position {}, got {}", t, seq,
             it->second.first, pos);
    TD_CHECK(pos < it->second.second, "step token {}: sequence {} is full ({} tokens)", t, seq, it->second.second);
    ++it->second.first;
  }
}
}  // namespace tandem
