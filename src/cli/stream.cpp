// Streaming one generation to the user: stop strings, ending early, prefill progress on a terminal.
#include <unistd.h>

#include <chrono>
#include <cstdio>

#include "cli/common.h"

namespace tandem::cli {

PrefillProgress prefill_progress() {
  if (!isatty(fileno(stderr))) return {};
  return [](int64_t done, int64_t total) {
    if (done < total) {
      std::fprintf(stderr, "\rprefill %lld/%lld tokens", (long long)done, (long long)total);
    } else {
      std::fprintf(stderr, "\r%40s\r", "");
    }
    std::fflush(stderr);
  };
}

namespace {
struct EndEarly {};  // thrown from the token callback; generate() releases the sequence on the way out
double seconds(std::chrono::steady_clock::time_point a, std::chrono::steady_clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}
}  // namespace

GenerationResult generate_one(Executor& runner, const GenerationRequest& req,
                              const std::function<bool(int32_t)>& on_token, GenerationStats& st, TapSink* taps) {
  using clock = std::chrono::steady_clock;
  GenerationResult partial;
  partial.seed = req.sampling.seed.value_or(0);
  const auto t0 = clock::now();
  auto first = t0;
  try {
    auto results = generate(
        runner, std::vector<GenerationRequest>{req},
        [&](size_t, int32_t t) {
          if (partial.tokens.empty()) first = clock::now();
          partial.tokens.push_back(t);
          if (!on_token(t)) throw EndEarly{};
        },
        &st, taps, prefill_progress());
    return results[0];
  } catch (const EndEarly&) {
    // generate() had not finished its stats: they cover the tokens so far.
    const auto now = clock::now();
    if (st.prefill_seconds <= 0) st.prefill_seconds = seconds(t0, first);
    st.generated_tokens = int64_t(partial.tokens.size()) - 1;
    st.decode_seconds = seconds(first, now);
    partial.finish_reason = "stop";
    return partial;
  }
}

}  // namespace tandem::cli
