// Magnitude tracing (tandem trace): per tap and step, absmax / mean / rms / NaN and Inf counts and headroom
// (absmax / the largest finite value of the run's dtype), and per layer and head the largest scaled attention
// logit q.k / sqrt(head_dim) over the keys a query sees: the number that says whether a softmax could overflow
// (or a dtype conversion of the scores saturate) there. It reads only taps, so it works on any path and plan.
//
// The Tracer is a TapSink for one sequence: it keeps every step's roped k rows (the L{l}.rope tap, q | k | v
// after RoPE) to score later queries against the whole history, with nothing else retained but the numbers.
#pragma once
#include <cstdint>
#include <limits>
#include <map>
#include <set>
#include <span>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "diag/taps.h"

namespace tandem {

struct TapStats {
  std::string tap;
  int step = 0;
  int64_t count = 0;
  double absmax = 0, mean = 0, rms = 0;  // over finite values
  int64_t nan = 0, inf = 0;
  double headroom = 0;  // absmax / dtype_max
  bool finite() const { return nan == 0 && inf == 0; }
};

// The largest finite value of a float dtype (f32 3.4e38, bf16 3.39e38, f16 65504).
double dtype_max(DType d);
// Statistics of an f32 CPU tensor (a tap); `dtype` is the run's activation dtype (for headroom).
TapStats tap_stats(const std::string& tap, int step, const Tensor& t, DType dtype);

struct HeadGeometry {
  int n_heads = 0, n_kv_heads = 0, head_dim = 0, sliding_window = 0;
};

// The largest |q.k| / sqrt(head_dim) of one layer and head in one step, and where it was.
struct LogitMax {
  int step = 0, layer = 0, head = 0;
  double value = 0;           // signed: the score of largest magnitude
  int32_t query_pos = 0, key_pos = 0;
};

class Tracer final : public TapSink {
 public:
  // filter: which taps get statistics (TapRecorder's rules: names, stage names, "*"; empty = all).
  Tracer(HeadGeometry heads, int n_layers, DType dtype, std::set<std::string> filter = {});
  // Before each step: the positions of its tokens (one sequence, in order, continuing the previous step).
  void begin_step(int step, std::span<const int32_t> positions);

  bool wants(Stage s, int layer) const override;
  void publish(Stage s, int layer, const Tensor& t) override;

  const std::vector<TapStats>& stats() const { return stats_; }
  const std::vector<LogitMax>& logit_max() const { return logit_max_; }
  // The first tap (in step, then execution order) holding a NaN or Inf, or nullptr.
  const TapStats* first_non_finite() const;
  // The terminal table: one line per layer and step (absmax of the residual stream, attention output and MLP,
  // the largest scaled logit and its head, headroom), the first non-finite tap marked.
  std::string table() const;
  std::string json() const;

 private:
  bool keep_stats(Stage s, int layer) const;
  HeadGeometry g_;
  int n_layers_;
  DType dtype_;
  std::set<std::string> filter_;
  int step_ = 0;
  std::vector<int32_t> positions_;
  std::vector<std::vector<float>> k_history_;  // per layer: [positions so far][kv_dim]
  std::vector<TapStats> stats_;
  std::vector<LogitMax> logit_max_;
};

}  // namespace tandem
