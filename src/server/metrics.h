// Prometheus text exposition of the server's counters (every series prefixed tandem_).
#pragma once
#include <array>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>

#include "runtime/engine.h"

namespace tandem::server {

// A cumulative histogram over fixed upper bounds (seconds).
class Histogram {
 public:
  static constexpr std::array<double, 14> kBounds = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                                                     0.25,  0.5,    1.0,   2.5,  5.0,   10.0, 30.0};
  void observe(double seconds);
  // "<name>_bucket{le=..} n" lines, _sum and _count.
  std::string render(const std::string& name, const std::string& help) const;

 private:
  mutable std::mutex mu_;
  std::array<int64_t, kBounds.size()> buckets_{};
  int64_t count_ = 0;
  double sum_ = 0;
};

class Metrics {
 public:
  void count_request(int status);
  std::string render(const EngineCounters& c) const;
  Histogram ttft, itl;  // time to first token, inter-token latency

 private:
  mutable std::mutex mu_;
  std::map<int, int64_t> requests_;  // by HTTP status
};

}  // namespace tandem::server
