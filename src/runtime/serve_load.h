// A serving load through the Engine (no HTTP): `requests` requests of `prompt_len` random prompt tokens, each
// generating exactly `output_len` tokens (greedy, end-of-text ignored), at most `concurrency` in flight (closed
// loop: a new request enters when one finishes). Measures output throughput, time to first token and inter-token
// latency (p50/p99) as a client of the engine sees them. `tandem bench --phase serve` reports it.
#pragma once
#include <cstdint>

#include "runtime/engine.h"

namespace tandem {

struct ServeLoadResult {
  int concurrency = 0;
  int64_t requests = 0, prompt_len = 0, output_len = 0;
  int64_t output_tokens = 0;  // generated in all
  double seconds = 0;         // first submit to last token
  double output_tok_s = 0, requests_s = 0;
  double ttft_p50 = 0, ttft_p99 = 0, itl_p50 = 0, itl_p99 = 0;  // seconds
};

ServeLoadResult run_serve_load(Engine& engine, int64_t vocab_size, int64_t requests, int64_t prompt_len,
                               int64_t output_len, int concurrency, uint64_t seed = 1);

}  // namespace tandem
