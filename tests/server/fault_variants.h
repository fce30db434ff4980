// The markers of the test-only fault variants (fault_variants.cpp).
#pragma once
#include <cstdint>

namespace tandem::server::test_support {

// attention.test_nan_on_marker writes NaN into L{kNanLayer}.attention's rows of this token;
// logits.test_one_nan_on_marker writes one NaN, at column nan_logit_column, into the logits row of this token (the
// rest of the row stays finite).
constexpr int kNanLayer = 3;
constexpr int32_t nan_marker(int64_t vocab_size) { return int32_t(vocab_size - 1); }
constexpr int64_t nan_logit_column(int64_t vocab_size) { return vocab_size / 2; }
// attention.test_throw_on_marker throws in any step that holds this token.
constexpr int32_t fault_marker(int64_t vocab_size) { return int32_t(vocab_size - 2); }

}  // namespace tandem::server::test_support
