#include "runtime/serve_load.h"

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <vector>

#include "core/error.h"
#include "core/hash.h"

namespace tandem {
namespace {
using Clock = std::chrono::steady_clock;

double percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t i = std::min(v.size() - 1, size_t(p / 100.0 * double(v.size() - 1) + 0.5));
  return v[i];
}
}  // namespace

ServeLoadResult run_serve_load(Engine& engine, int64_t vocab_size, int64_t requests, int64_t prompt_len,
                               int64_t output_len, int concurrency, uint64_t seed) {
  TD_CHECK(requests > 0 && prompt_len > 0 && output_len > 0 && concurrency > 0,
           "serve load: requests {}, prompt {} and output {} tokens, concurrency {} must all be positive", requests,
           prompt_len, output_len, concurrency);
  std::mutex mu;
  std::condition_variable cv;
  int in_flight = 0;
  int64_t done = 0, tokens = 0;
  std::string error;
  std::vector<double> ttft, itl;
  Clock::time_point last_token = Clock::now();
  uint64_t x = seed;  // the same prompts for the same seed
  auto next_id = [&] { return int32_t(splitmix64(x) % uint64_t(vocab_size)); };
  const Clock::time_point t0 = Clock::now();
  int64_t submitted = 0;
  for (int64_t r = 0; r < requests; ++r) {
    EngineRequest q;
    q.prompt.resize(size_t(prompt_len));
    for (int32_t& t : q.prompt) t = next_id();
    q.max_new_tokens = output_len;
    q.sampling.temperature = 0;
    q.stop_at_eos = false;
    struct Times {
      Clock::time_point start, prev;
      bool first = true;
    };
    auto times = std::make_shared<Times>();
    q.on_token = [&, times](const TokenEvent&) {
      const Clock::time_point now = Clock::now();
      std::lock_guard<std::mutex> lock(mu);
      (times->first ? ttft : itl).push_back(std::chrono::duration<double>(now - (times->first ? times->start : times->prev)).count());
      times->first = false;
      times->prev = now;
      last_token = now;
      ++tokens;
      return true;
    };
    q.on_done = [&](const EngineResult& res) {
      std::lock_guard<std::mutex> lock(mu);
      if (res.finish_reason == "error" && error.empty()) error = res.error;
      --in_flight;
      ++done;
      cv.notify_all();
    };
    {
      std::unique_lock<std::mutex> lock(mu);
      cv.wait(lock, [&] { return in_flight < concurrency; });
      ++in_flight;
      times->start = Clock::now();
    }
    try {
      engine.submit(std::move(q));
      ++submitted;
    } catch (const std::exception& e) {
      // The requests in flight still call back into this frame: wait for them before leaving.
      std::unique_lock<std::mutex> lock(mu);
      --in_flight;
      cv.wait(lock, [&] { return done == submitted; });
      fail("serve load: request {} was refused: {}", r, e.what());
    }
  }
  std::unique_lock<std::mutex> lock(mu);
  cv.wait(lock, [&] { return done == requests; });
  TD_CHECK(error.empty(), "serve load: a request failed: {}", error);
  ServeLoadResult out;
  out.concurrency = concurrency;
  out.requests = requests;
  out.prompt_len = prompt_len;
  out.output_len = output_len;
  out.output_tokens = tokens;
  out.seconds = std::chrono::duration<double>(last_token - t0).count();
  out.output_tok_s = double(tokens) / std::max(out.seconds, 1e-9);
  out.requests_s = double(requests) / std::max(out.seconds, 1e-9);
  out.ttft_p50 = percentile(ttft, 50);
  out.ttft_p99 = percentile(ttft, 99);
  out.itl_p50 = percentile(itl, 50);
  out.itl_p99 = percentile(itl, 99);
  return out;
}

}  // namespace tandem
