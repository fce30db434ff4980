#include "diag/trace.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <nlohmann/json.hpp>

#include "core/error.h"

namespace tandem {

double dtype_max(DType d) {
  switch (d) {
    case DType::F16: return 65504.0;
    case DType::BF16: return 3.3895313892515355e38;
    default: return double(std::numeric_limits<float>::max());
  }
}

TapStats tap_stats(const std::string& tap, int step, const Tensor& t, DType dtype) {
  TD_CHECK(t.device == Device::CPU && t.dtype == DType::F32, "tap_stats: {} must be an f32 CPU tensor, got {}", tap,
           t.describe());
  TapStats s;
  s.tap = tap;
  s.step = step;
  s.count = t.numel();
  const float* p = t.ptr<const float>();
  double sum = 0, ss = 0;
  int64_t finite = 0;
  for (int64_t i = 0; i < s.count; ++i) {
    const float v = p[i];
    if (std::isnan(v)) {
      ++s.nan;
    } else if (std::isinf(v)) {
      ++s.inf;
    } else {
      ++finite;
      sum += v;
      ss += double(v) * v;
      s.absmax = std::max(s.absmax, double(std::fabs(v)));
    }
  }
  if (finite > 0) {
    s.mean = sum / double(finite);
    s.rms = std::sqrt(ss / double(finite));
  }
  s.headroom = s.absmax / dtype_max(dtype);
  return s;
}

Tracer::Tracer(HeadGeometry heads, int n_layers, DType dtype, std::set<std::string> filter)
    : g_(heads), n_layers_(n_layers), dtype_(dtype), filter_(std::move(filter)), k_history_(size_t(n_layers)) {
  TD_CHECK(g_.n_heads > 0 && g_.n_kv_heads > 0 && g_.n_heads % g_.n_kv_heads == 0 && g_.head_dim > 0,
           "Tracer: bad head geometry {} / {} heads, head_dim {}", g_.n_heads, g_.n_kv_heads, g_.head_dim);
}

void Tracer::begin_step(int step, std::span<const int32_t> positions) {
  step_ = step;
  positions_.assign(positions.begin(), positions.end());
}

bool Tracer::keep_stats(Stage s, int layer) const {
  if (filter_.empty() || filter_.count("*")) return true;
  return filter_.count(std::string(stage_name(s))) || filter_.count(tap_name(s, layer));
}

bool Tracer::wants(Stage s, int layer) const { return s == Stage::rope || keep_stats(s, layer); }

void Tracer::publish(Stage s, int layer, const Tensor& t) {
  const HostTensor f = HostTensor::to_f32(t);
  if (keep_stats(s, layer)) stats_.push_back(tap_stats(tap_name(s, layer), step_, f.view(), dtype_));
  if (s != Stage::rope || layer < 0 || layer >= n_layers_) return;
  // Scaled logits of this step's queries against every key they see (the history plus this step's earlier rows).
  const int64_t T = f.view().shape[0], W = f.view().shape[1];
  const int64_t hd = g_.head_dim, q_dim = int64_t(g_.n_heads) * hd, kv_dim = int64_t(g_.n_kv_heads) * hd;
  TD_CHECK(W == q_dim + 2 * kv_dim && T == int64_t(positions_.size()),
           "Tracer: {} is {} for {} positions; expected [{}, {}] (call begin_step first)", tap_name(s, layer),
           f.view().describe(), positions_.size(), positions_.size(), q_dim + 2 * kv_dim);
  std::vector<float>& keys = k_history_[size_t(layer)];
  for (int64_t r = 0; r < T; ++r) {
    const int64_t pos = positions_[size_t(r)];
    TD_CHECK(pos == int64_t(keys.size()) / kv_dim, "Tracer: {} row {} is position {}, but {} keys are cached: trace "
             "runs one sequence whose positions continue", tap_name(s, layer), r, pos, keys.size() / size_t(kv_dim));
    const float* row = f.f32() + r * W;
    keys.insert(keys.end(), row + q_dim, row + q_dim + kv_dim);
  }
  const int group = g_.n_heads / g_.n_kv_heads;
  const double scale = 1.0 / std::sqrt(double(hd));
  for (int h = 0; h < g_.n_heads; ++h) {
    LogitMax best{step_, layer, h, 0.0, 0, 0};
    for (int64_t r = 0; r < T; ++r) {
      const int64_t pos = positions_[size_t(r)];
      const int64_t lo = g_.sliding_window > 0 ? std::max<int64_t>(0, pos - g_.sliding_window + 1) : 0;
      const float* q = f.f32() + r * W + int64_t(h) * hd;
      for (int64_t p = lo; p <= pos; ++p) {
        const float* k = keys.data() + p * kv_dim + int64_t(h / group) * hd;
        double dot = 0;
        for (int64_t d = 0; d < hd; ++d) dot += double(q[d]) * k[d];
        dot *= scale;
        if (std::fabs(dot) > std::fabs(best.value) || std::isnan(dot)) {
          best.value = dot;
          best.query_pos = int32_t(pos);
          best.key_pos = int32_t(p);
        }
      }
    }
    logit_max_.push_back(best);
  }
}

const TapStats* Tracer::first_non_finite() const {
  for (const TapStats& s : stats_)
    if (!s.finite()) return &s;
  return nullptr;
}

std::string Tracer::table() const {
  auto find = [&](int step, const std::string& tap) -> const TapStats* {
    for (const TapStats& s : stats_)
      if (s.step == step && s.tap == tap) return &s;
    return nullptr;
  };
  auto cell = [](const TapStats* s) {
    if (!s) return fmt::format("{:>11}", "-");
    if (!s->finite()) return fmt::format("{:>11}", fmt::format("{}nan/{}inf", s->nan, s->inf));
    return fmt::format("{:>11.3e}", s->absmax);
  };
  const TapStats* bad = first_non_finite();
  int last_step = 0;
  for (const TapStats& s : stats_) last_step = std::max(last_step, s.step);
  std::string out = fmt::format("{:>4} {:>5} {:>11} {:>11} {:>11} {:>11} {:>12} {:>5} {:>9}  {}\n", "step", "layer",
                                "attn_norm", "attention", "mlp_resid", "layer max", "max q.k/sqrt", "head",
                                "headroom", "first non-finite");
  for (int step = 0; step <= last_step; ++step)
    for (int l = 0; l < n_layers_; ++l) {
      const TapStats* x = find(step, tap_name(Stage::mlp_residual, l));
      const TapStats* worst = nullptr;  // the layer's tap closest to the dtype's limit
      for (const TapStats& s : stats_)
        if (s.step == step && s.tap.rfind(fmt::format("L{}.", l), 0) == 0 && (!worst || s.headroom > worst->headroom))
          worst = &s;
      const LogitMax* lm = nullptr;
      for (const LogitMax& m : logit_max_)
        if (m.step == step && m.layer == l && (!lm || std::fabs(m.value) > std::fabs(lm->value))) lm = &m;
      std::string mark;
      if (bad && bad->step == step && bad->tap.rfind(fmt::format("L{}.", l), 0) == 0)
        mark = "<-- " + bad->tap + " (first NaN/Inf)";
      out += fmt::format("{:>4} {:>5} {} {} {} {} {:>12} {:>5} {:>9.2e}  {}\n", step, l,
                         cell(find(step, tap_name(Stage::attn_norm, l))), cell(find(step, tap_name(Stage::attention, l))),
                         cell(x), worst ? fmt::format("{:>11.3e}", worst->absmax) : fmt::format("{:>11}", "-"),
                         lm ? fmt::format("{:.3e}", lm->value) : std::string("n/a"),
                         lm ? std::to_string(lm->head) : std::string("-"), worst ? worst->headroom : 0.0, mark);
    }
  if (bad && bad->tap.rfind('L', 0) != 0) out += fmt::format("first NaN/Inf: {} at step {}\n", bad->tap, bad->step);
  if (logit_max_.empty())
    out += "max q.k: n/a (this plan publishes no L*.rope tap: a fused attn_norm..kv_write run; trace --path reference "
           "or --variant attn_norm=standard --variant qkv=standard --variant rope=standard --variant "
           "kv_write=standard)\n";
  return out;
}

std::string Tracer::json() const {
  nlohmann::json j;
  j["dtype"] = std::string(dtype_name(dtype_));
  j["dtype_max"] = dtype_max(dtype_);
  for (const TapStats& s : stats_)
    j["taps"].push_back({{"tap", s.tap}, {"step", s.step}, {"count", s.count}, {"absmax", s.absmax},
                         {"mean", s.mean}, {"rms", s.rms}, {"nan", s.nan}, {"inf", s.inf}, {"headroom", s.headroom}});
  for (const LogitMax& m : logit_max_)
    j["attention_logit_max"].push_back({{"step", m.step}, {"layer", m.layer}, {"head", m.head}, {"value", m.value},
                                        {"query_pos", m.query_pos}, {"key_pos", m.key_pos}});
  if (const TapStats* b = first_non_finite()) j["first_non_finite"] = {{"tap", b->tap}, {"step", b->step}};
  return j.dump(1);
}

}  // namespace tandem
