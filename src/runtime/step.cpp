#include "runtime/step.h"

namespace tandem {
int64_t Step::num_logit_rows() const {
  int64_t n = 0;
  for (uint8_t w : want_logits) n += w;
  return n;
}
}  // namespace tandem
