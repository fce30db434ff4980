#include "server/metrics.h"

#include <fmt/format.h>

namespace tandem::server {

void Histogram::observe(double seconds) {
  std::lock_guard<std::mutex> lock(mu_);
  for (size_t i = 0; i < kBounds.size(); ++i)
    if (seconds <= kBounds[i]) buckets_[i]++;
  count_++;
  sum_ += seconds;
}

std::string Histogram::render(const std::string& name, const std::string& help) const {
  std::lock_guard<std::mutex> lock(mu_);
  std::string s = fmt::format("# HELP {0} {1}\n# TYPE {0} histogram\n", name, help);
  for (size_t i = 0; i < kBounds.size(); ++i) s += fmt::format("{}_bucket{{le=\"{}\"}} {}\n", name, kBounds[i], buckets_[i]);
  s += fmt::format("{0}_bucket{{le=\"+Inf\"}} {1}\n{0}_sum {2}\n{0}_count {1}\n", name, count_, sum_);
  return s;
}

void Metrics::count_request(int status) {
  std::lock_guard<std::mutex> lock(mu_);
  requests_[status]++;
}

std::string Metrics::render(const EngineCounters& c) const {
  std::string s;
  auto one = [&](const char* name, const char* type, const char* help, int64_t v) {
    s += fmt::format("# HELP tandem_{0} {1}\n# TYPE tandem_{0} {2}\ntandem_{0} {3}\n", name, help, type, v);
  };
  {
    std::lock_guard<std::mutex> lock(mu_);
    s += "# HELP tandem_requests_total Completion, model and error responses by HTTP status.\n"
         "# TYPE tandem_requests_total counter\n";
    for (const auto& [status, n] : requests_) s += fmt::format("tandem_requests_total{{status=\"{}\"}} {}\n", status, n);
  }
  one("prompt_tokens_total", "counter", "Prompt tokens of finished requests.", c.prompt_tokens);
  one("generation_tokens_total", "counter", "Tokens generated.", c.generated_tokens);
  one("num_requests_running", "gauge", "Sequences in the running batch.", c.running);
  one("num_requests_waiting", "gauge", "Requests waiting for admission.", c.waiting);
  one("kv_pages_total", "gauge", "KV cache pages.", c.kv_pages_total);
  one("kv_pages_free", "gauge", "KV cache pages free.", c.kv_pages_free);
  one("kv_pages_used", "gauge", "KV cache pages in use.", c.kv_pages_total - c.kv_pages_free);
  one("kv_pages_cached", "gauge", "KV pages of released sequences kept for prefix caching (evictable).",
      c.kv_pages_cached);
  one("prefix_cache_hit_tokens_total", "counter", "Prompt tokens found in the prefix cache.", c.prefix_hit_tokens);
  one("prefix_cache_query_tokens_total", "counter", "Prompt tokens looked up in the prefix cache.",
      c.prefix_query_tokens);
  s += fmt::format("# HELP tandem_prefix_cache_hit_rate Prompt tokens found cached over those looked up.\n"
                   "# TYPE tandem_prefix_cache_hit_rate gauge\ntandem_prefix_cache_hit_rate {:.6f}\n",
                   c.prefix_query_tokens ? double(c.prefix_hit_tokens) / double(c.prefix_query_tokens) : 0.0);
  one("preemptions_total", "counter", "Sequences preempted (recomputed later) for lack of KV pages.", c.preemptions);
  one("engine_steps_total", "counter", "Engine steps run.", c.steps);
  one("requests_finished_total", "counter", "Sequences that finished by stop or length.", c.finished);
  one("requests_aborted_total", "counter", "Sequences aborted (client gone, shutdown).", c.aborted);
  one("requests_failed_total", "counter", "Sequences that failed in the engine.", c.failed);
  s += ttft.render("tandem_time_to_first_token_seconds", "Time from request to its first token.");
  s += itl.render("tandem_inter_token_latency_seconds", "Time between consecutive tokens of a choice.");
  return s;
}

}  // namespace tandem::server
