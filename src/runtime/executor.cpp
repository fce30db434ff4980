#include "runtime/executor.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>

#include "core/error.h"
#include "core/hash.h"
#include "diag/trace.h"

namespace tandem {
namespace {

// The step's tokens grouped by sequence (sequences in order of first appearance, each one's tokens in step order),
// as indices into the step; empty when the step is grouped already.
std::vector<int32_t> grouped_order(std::span<const int32_t> seq_ids) {
  std::map<int32_t, int32_t> rank;
  bool grouped = true;
  for (size_t t = 0; t < seq_ids.size(); ++t) {
    auto [it, fresh] = rank.emplace(seq_ids[t], int32_t(rank.size()));
    if (!fresh && t > 0 && seq_ids[t - 1] != seq_ids[t]) grouped = false;
  }
  if (grouped) return {};
  std::vector<int32_t> order(seq_ids.size());
  for (size_t t = 0; t < order.size(); ++t) order[t] = int32_t(t);
  std::stable_sort(order.begin(), order.end(),
                   [&](int32_t a, int32_t b) { return rank[seq_ids[size_t(a)]] < rank[seq_ids[size_t(b)]]; });
  return order;
}

// A variant that runs once per layer (its stages lie within attn_norm .. mlp_residual).
bool per_layer(const Variant& v) {
  return int(v.stages.first) >= int(kFirstLayerStage) && int(v.stages.last) <= int(kLastLayerStage);
}

// Row i of `in` [N, ...] moves to row dest[i].
HostTensor scatter_rows(const HostTensor& in, const std::vector<int32_t>& dest) {
  const Tensor& v = in.view();
  HostTensor out = HostTensor::empty(v.dtype, std::span<const int64_t>(v.shape.data(), size_t(v.ndim)));
  const size_t row_bytes = size_t(v.nbytes() / std::max<int64_t>(1, v.shape[0]));
  for (size_t i = 0; i < dest.size(); ++i)
    std::memcpy(static_cast<char*>(out.view().data) + size_t(dest[i]) * row_bytes,
                static_cast<const char*>(v.data) + i * row_bytes, row_bytes);
  return out;
}

}  // namespace

Executor::Executor(std::unique_ptr<DeviceHost> host, Plan plan, ExecutorOptions options)
    : host_(std::move(host)), plan_(std::move(plan)), options_(options) {
  TD_CHECK(host_->device() == plan_.device, "path {} runs on {}, but the model was loaded on {}", plan_.path,
           device_name(plan_.device), device_name(host_->device()));
  TD_CHECK(host_->kv_geometry().layout == plan_.kv_layout, "the {} plan expects a {} KV cache, the host has {}",
           plan_.path, kv_layout_name(plan_.kv_layout), kv_layout_name(host_->kv_geometry().layout));
  pages_ = PageTable(host_->kv_geometry().page_size, host_->kv_pages());
  graph_safe_plan_ = std::all_of(plan_.segments.begin(), plan_.segments.end(),
                                 [](const Variant* v) { return v->graph_safe; });
  bool dense = false, stored = false;
  for (const Variant* v : plan_.segments) (v->weights == WeightFormat::stored ? stored : dense) = true;
  host_->prepare_weights(dense, stored);
}


void Executor::create_sequence(int32_t seq, int64_t capacity) {
  const ModelConfig& c = config();
  TD_CHECK(!seqs_.count(seq), "sequence {} already exists", seq);
  TD_CHECK(capacity > 0 && capacity <= c.max_positions,
           "sequence {}: capacity {} tokens is outside the model's context (1..{})", seq, capacity, c.max_positions);
  pages_.add_sequence(seq);
  seqs_[seq] = Seq{0, capacity};
}

void Executor::release_sequence(int32_t seq) {
  pages_.release(seq);
  seqs_.erase(seq);
}

int64_t Executor::attach_prefix(int32_t seq, std::span<const int32_t> tokens) {
  auto it = seqs_.find(seq);
  TD_CHECK(it != seqs_.end(), "unknown sequence {}", seq);
  if (!options_.prefix_caching || tokens.size() < 2) return 0;
  TD_CHECK(it->second.length == 0, "sequence {}: a cached prefix attaches to a fresh sequence only", seq);
  const int64_t ps = pages_.page_size();
  const int64_t usable = std::min<int64_t>(int64_t(tokens.size()) - 1, it->second.capacity) / ps;
  std::vector<uint64_t> hashes;
  uint64_t h = 0;
  for (int64_t k = 0; k < usable; ++k) hashes.push_back(h = PageTable::page_hash(h, tokens.subspan(size_t(k * ps), size_t(ps))));
  const int64_t n = pages_.attach_cached(seq, hashes);
  Seq& s = it->second;
  s.length = n * ps;
  s.published = n;
  s.last_hash = n > 0 ? hashes[size_t(n - 1)] : 0;
  return s.length;
}

void Executor::publish_prefix(int32_t seq, std::span<const int32_t> tokens) {
  auto it = seqs_.find(seq);
  if (!options_.prefix_caching || it == seqs_.end()) return;
  Seq& s = it->second;
  const int64_t ps = pages_.page_size();
  const int64_t full = std::min<int64_t>(int64_t(tokens.size()), s.length) / ps;
  for (; s.published < full; ++s.published) {
    s.last_hash = PageTable::page_hash(s.last_hash, tokens.subspan(size_t(s.published * ps), size_t(ps)));
    pages_.publish(seq, s.published, s.last_hash);
  }
}

int64_t Executor::sequence_length(int32_t seq) const {
  auto it = seqs_.find(seq);
  TD_CHECK(it != seqs_.end(), "unknown sequence {}", seq);
  return it->second.length;
}

void Executor::assume_cached(int32_t seq, int64_t length) {
  auto it = seqs_.find(seq);
  TD_CHECK(it != seqs_.end(), "unknown sequence {}", seq);
  TD_CHECK(length >= 0 && length <= it->second.capacity, "sequence {}: cannot assume {} cached tokens (capacity {})",
           seq, length, it->second.capacity);
  reserve_pages({{seq, length}});
  it->second.length = length;
}

std::vector<int32_t> Executor::reserve_pages(const std::map<int32_t, int64_t>& length_after) {
  int64_t need = 0;
  for (const auto& [seq, len] : length_after) need += pages_.pages_needed(seq, len);
  if (need > pages_.free_pages() && host_->grow_kv(pages_.num_pages() + need - pages_.free_pages()))
    pages_.grow(host_->kv_pages());
  if (need > pages_.free_pages()) {
    int32_t worst = length_after.begin()->first;
    for (const auto& [seq, len] : length_after)
      if (pages_.pages_needed(seq, len) > pages_.pages_needed(worst, length_after.at(worst))) worst = seq;
    throw KvOutOfPages(fmt::format(
        "KV cache out of pages: this step needs {} more pages of {} tokens, {} of {} are free; sequence {} alone "
        "needs {} for {} tokens (raise --kv-tokens or run fewer sequences at once)",
        need, pages_.page_size(), pages_.free_pages(), pages_.num_pages(), worst,
        pages_.pages_needed(worst, length_after.at(worst)), length_after.at(worst)));
  }
  std::vector<int32_t> fresh;
  for (const auto& [seq, len] : length_after) {
    const auto got = pages_.reserve(seq, len);
    fresh.insert(fresh.end(), got.begin(), got.end());
  }
  if (options_.kv_poison && !fresh.empty()) host_->poison_pages(fresh);
  return fresh;
}

Perturbation parse_perturbation(const std::string& spec, const ModelConfig& c) {
  // LAYER.STAGE:PART:scale=F
  const size_t c1 = spec.find(':'), c2 = c1 == std::string::npos ? c1 : spec.find(':', c1 + 1);
  TD_CHECK(c2 != std::string::npos, "--perturb {}: expected TAP:PART:scale=F, e.g. L1.qkv:k:scale=0.0005", spec);
  const std::string tap = spec.substr(0, c1), part = spec.substr(c1 + 1, c2 - c1 - 1), op = spec.substr(c2 + 1);
  Perturbation p;
  p.spec = spec;
  std::string stage_text = tap;
  if (tap.size() > 1 && tap[0] == 'L' && tap.find('.') != std::string::npos) {
    const std::string l = tap.substr(1, tap.find('.') - 1);
    stage_text = tap.substr(tap.find('.') + 1);
    if (l == "*") {
      p.layer = -1;
    } else {
      char* end = nullptr;
      const long v = std::strtol(l.c_str(), &end, 10);
      TD_CHECK(!l.empty() && *end == 0 && v >= 0 && v < c.n_layers, "--perturb {}: layer '{}' is not 0..{} or *", spec,
               l, c.n_layers - 1);
      p.layer = int(v);
    }
  }
  const auto stage = stage_from_name(stage_text);
  TD_CHECK(stage.has_value() && *stage != Stage::kv_write && *stage != Stage::logits,
           "--perturb {}: '{}' is not a perturbable stage (any stage but kv_write and logits)", spec, stage_text);
  TD_CHECK(stage_is_per_layer(*stage) == (tap[0] == 'L'), "--perturb {}: {} needs {}", spec, stage_text,
           stage_is_per_layer(*stage) ? "a layer (L3.stage or L*.stage)" : "no layer");
  p.stage = *stage;
  const bool qkv_like = *stage == Stage::qkv || *stage == Stage::rope;
  const int64_t q = c.q_dim(), kv = c.kv_dim();
  const int64_t width = qkv_like ? c.qkv_dim() : *stage == Stage::attention ? q
                        : *stage == Stage::gate_up ? 2 * c.intermediate_size
                        : *stage == Stage::act ? c.intermediate_size : c.hidden_size;
  if (part == "all") p.col_begin = 0, p.col_end = width;
  else if (qkv_like && part == "q") p.col_begin = 0, p.col_end = q;
  else if (qkv_like && part == "k") p.col_begin = q, p.col_end = q + kv;
  else if (qkv_like && part == "v") p.col_begin = q + kv, p.col_end = q + 2 * kv;
  else fail("--perturb {}: part '{}' must be all{}", spec, part, qkv_like ? ", q, k or v" : " for this stage");
  TD_CHECK(op.rfind("scale=", 0) == 0, "--perturb {}: the operation must be scale=F", spec);
  char* end = nullptr;
  p.factor = std::strtof(op.c_str() + 6, &end);
  TD_CHECK(op.size() > 6 && *end == 0 && std::isfinite(p.factor), "--perturb {}: '{}' is not a number", spec,
           op.substr(6));
  return p;
}

HostTensor Executor::cached_kv(int32_t seq, int layer) {
  const int64_t len = sequence_length(seq);
  const KvGeometry& g = host_->kv_geometry();
  const std::vector<int32_t>& own = pages_.pages(seq);
  const std::vector<int32_t> used(own.begin(), own.begin() + pages_.pages_for(len));
  const HostTensor raw = host_->kv_pages(layer, used);
  const int64_t hd = g.head_dim, heads = g.n_kv_heads, ps = g.page_size, pe = g.page_elems(), kv_dim = heads * hd;
  HostTensor out = HostTensor::empty(DType::F32, {len, 2 * kv_dim});
  for (int64_t p = 0; p < len; ++p)
    for (int kv = 0; kv < 2; ++kv)
      for (int64_t h = 0; h < heads; ++h) {
        const int64_t slot = p % ps;
        const int64_t off = g.layout == KvLayout::NHD ? (slot * heads + h) * hd : (h * ps + slot) * hd;
        const float* src = raw.f32() + ((p / ps) * 2 + kv) * pe + off;
        std::memcpy(out.f32() + p * 2 * kv_dim + kv * kv_dim + h * hd, src, size_t(hd) * sizeof(float));
      }
  return out;
}

void Executor::set_perturbations(std::vector<Perturbation> p) {
  for (const Perturbation& x : p) {
    const Variant* v = plan_.by_stage[size_t(x.stage)];
    TD_CHECK(v->stages.last == x.stage, "--perturb {}: {} runs inside {} ({}) in this plan, so its output is never "
             "materialized; use a plan that runs {} alone (e.g. --path standard or --path reference)", x.spec,
             stage_name(x.stage), v->name, v->stages.str(), stage_name(x.stage));
  }
  perturb_ = std::move(p);
}

VariantArgs Executor::args_for(const Variant& v, int layer, const PagedKv* kv) {
  const ModelWeights& w = host_->weights(v.weights);
  return VariantArgs{host_->config(),
                     layer,
                     w,
                     layer >= 0 ? &w.layers[size_t(layer)] : nullptr,
                     host_->slots(),
                     host_->step_view(),
                     kv,
                     host_->context()};
}

void Executor::run_layers(TapSink* taps) {
  auto model_level = [&](bool before_layers) {
    for (const Variant* v : plan_.segments) {
      const bool embed = v->stages.last == Stage::embed;
      const bool tail = int(v->stages.first) >= int(Stage::final_norm);
      if ((before_layers && embed) || (!before_layers && tail)) run_segment(*v, -1, nullptr, taps);
    }
  };
  model_level(true);
  for (int layer = 0; layer < int(config().n_layers); ++layer) {
    const PagedKv kv = host_->kv_layer(layer);
    for (const Variant* v : plan_.segments)
      if (per_layer(*v)) run_segment(*v, layer, &kv, taps);
  }
  model_level(false);
}

void Executor::run_segment(const Variant& v, int layer, const PagedKv* kv, TapSink* taps) {
  v.run(args_for(v, layer, kv));
  if (timing_) {
    host_->timing_mark();
    timed_.push_back(&v);
  }
  if (options_.kv_poison && v.stages.contains(Stage::attention)) {
    const HostTensor out = host_->to_host(host_->slots().attn);
    int64_t nan = 0, first = -1;
    for (int64_t i = 0; i < out.numel(); ++i)
      if (std::isnan(out.f32()[i]) && nan++ == 0) first = i / out.view().shape[1];
    TD_CHECK(nan == 0,
             "{}: {} of {} values are NaN with --kv-poison (first in step row {}): attention read a KV slot that "
             "was never written; check {} (variant {})",
             tap_name(Stage::attention, layer), nan, out.numel(), first, tap_name(Stage::kv_write, layer),
             plan_.by_stage[size_t(Stage::kv_write)]->name);
  }
  const Stage last = v.stages.last;
  for (const Perturbation& p : perturb_)
    if (p.stage == last && (p.layer < 0 || p.layer == layer))
      host_->scale_columns(host_->slots().get(stage_output_slot(last)), p.col_begin, p.col_end, p.factor);
  if (options_.nan_check) {
    const Slot slot = stage_output_slot(last);
    const HostTensor out = slot == Slot::kv_rows ? host_->kv_rows(layer) : host_->to_host(host_->slots().get(slot));
    const TapStats st = tap_stats(tap_name(last, layer), 0, out.view(), host_->dtype());
    TD_CHECK(st.finite(),
             "--nan-check: {} (by {}) holds {} NaN and {} Inf of {} values, the first non-finite tap of the step; its "
             "input {}",
             st.tap, v.name, st.nan, st.inf, st.count, nan_prev_.empty() ? std::string("was the step's tokens") : nan_prev_);
    nan_prev_ = fmt::format("{} was finite: absmax {:.3e}, rms {:.3e}, headroom {:.2e}", st.tap, st.absmax, st.rms,
                            st.headroom);
  }
  if (taps && last != Stage::logits && taps->wants(last, layer)) {
    const Slot slot = stage_output_slot(last);
    HostTensor t = slot == Slot::kv_rows ? host_->kv_rows(layer) : host_->to_host(host_->slots().get(slot));
    // Tap rows are in the caller's token order, whatever order the step ran in.
    if (!order_.empty() && t.view().shape[0] == int64_t(order_.size())) t = scatter_rows(t, order_);
    taps->publish(last, layer, t);
  }
}

StepOutput Executor::forward(const Step& caller_step, TapSink* taps) {
  // Every kernel (FlashInfer's above all) takes a step whose tokens are grouped by sequence; a step that
  // interleaves sequences runs regrouped, and its logits rows and taps are put back in the caller's order.
  validate_step(caller_step, config().vocab_size, [this](int32_t seq) -> std::optional<SequenceExtent> {
    auto it = seqs_.find(seq);
    if (it == seqs_.end()) return std::nullopt;
    return SequenceExtent{it->second.length, it->second.capacity};
  });
  const bool sampled = !caller_step.sampling.empty();
  if (sampled) {
    TD_CHECK(!caller_step.greedy_only, "a step is greedy_only or sampled (Step::sampling), not both");
    const auto rows = std::count(caller_step.want_logits.begin(), caller_step.want_logits.end(), uint8_t(1));
    TD_CHECK(int64_t(caller_step.sampling.size()) == int64_t(rows),
             "step: {} rows of sampling parameters for {} tokens that want logits", caller_step.sampling.size(), rows);
    for (size_t r = 0; r < caller_step.sampling.size(); ++r)  // before any work: nothing runs for a bad step
      for (int32_t id : caller_step.sampling[r].penalized)
        TD_CHECK(id >= 0 && id < config().vocab_size, "step: sampling row {}: penalized token {} is outside the "
                 "vocabulary (size {})", r, id, config().vocab_size);
  }
  order_ = grouped_order(caller_step.seq_ids);
  Step regrouped;
  if (!order_.empty())
    for (int32_t t : order_)
      regrouped.add(caller_step.tokens[size_t(t)], caller_step.seq_ids[size_t(t)], caller_step.positions[size_t(t)],
                    caller_step.want_logits[size_t(t)] != 0);
  regrouped.greedy_only = caller_step.greedy_only;
  const Step& step = order_.empty() ? caller_step : regrouped;
  // Positions continue each cache (validated), so a sequence's length after the step is its last position + 1.
  std::map<int32_t, int64_t> length_after;
  for (int64_t t = 0; t < step.size(); ++t) length_after[step.seq_ids[size_t(t)]] = step.positions[size_t(t)] + 1;
  reserve_pages(length_after);
  const KvStepTables tables = build_kv_tables(step.seq_ids, pages_, length_after);

  StepOutput out;
  for (int64_t t = 0; t < step.size(); ++t)
    if (step.want_logits[size_t(t)]) out.logit_rows.push_back(int32_t(t));
  // A decode step (one token per sequence) with nothing that needs the host between variants may run from a
  // CUDA graph.
  const bool graphable = options_.cuda_graphs && graph_safe_plan_ && !taps && !timing_ && !options_.nan_check &&
                         !options_.kv_poison && perturb_.empty() && step.size() <= kMaxGraphTokens &&
                         step.size() == int64_t(tables.seq_ids.size());
  host_->begin_step(step, tables, out.logit_rows, graphable);
  nan_prev_.clear();
  timed_.clear();
  if (timing_) {
    host_->timing_reset();
    host_->timing_mark();
  }
  host_->context().graph_salt = 0;
  {
    const PagedKv kv0 = host_->kv_layer(0);
    for (const Variant* v : plan_.segments)
      if (v->prepare) v->prepare(per_layer(*v) ? args_for(*v, 0, &kv0) : args_for(*v, -1, nullptr));
  }
  DeviceHost::GraphRun mode = DeviceHost::GraphRun::eager;
  if (graphable) {
    uint64_t key = kFnvOffset;
    for (uint64_t v : {uint64_t(step.size()), uint64_t(out.logit_rows.size()), uint64_t(tables.seq_ids.size()),
                       host_->context().graph_salt})
      key = fnv1a_mix(key, v);
    mode = host_->graph_begin(key);
  }
  if (mode != DeviceHost::GraphRun::replayed) {
    try {
      run_layers(taps);
    } catch (...) {
      if (mode == DeviceHost::GraphRun::capturing) host_->graph_end(false);
      throw;
    }
    if (mode == DeviceHost::GraphRun::capturing) host_->graph_end(true);
  }
  // Logits rows in ascending caller token order, as an ungrouped run would give them: device row r is caller row
  // dest[r].
  std::vector<int32_t> dest(out.logit_rows.size()), by_caller;
  for (size_t r = 0; r < dest.size(); ++r) dest[r] = int32_t(r);
  if (!order_.empty()) {
    by_caller.resize(out.logit_rows.size());
    for (size_t r = 0; r < by_caller.size(); ++r) by_caller[r] = order_[size_t(out.logit_rows[r])];
    std::vector<int32_t> rank(by_caller.size());
    for (size_t r = 0; r < rank.size(); ++r) rank[r] = int32_t(r);
    std::sort(rank.begin(), rank.end(), [&](int32_t a, int32_t b) { return by_caller[size_t(a)] < by_caller[size_t(b)]; });
    for (size_t k = 0; k < rank.size(); ++k) dest[size_t(rank[k])] = int32_t(k);
  }
  // Logits stay on the device for a greedy_only or sampled step, unless a tap wants them.
  const bool logits_tap = taps && taps->wants(Stage::logits, -1);
  const bool argmax_only = step.greedy_only && !logits_tap;
  const bool sample_only = sampled && !logits_tap;
  if (sample_only) {
    std::vector<RowSampling> rows(dest.size());
    for (size_t r = 0; r < rows.size(); ++r) rows[r] = caller_step.sampling[size_t(dest[r])];
    host_->finish_step_sampled(rows, &out.sampled);
    out.logits = HostTensor::empty(DType::F32, {0, config().vocab_size});
  } else {
    out.logits = host_->finish_step(argmax_only ? &out.argmax : nullptr);
  }

  for (const auto& [seq, len] : length_after) seqs_.at(seq).length = len;
  if (timing_) {
    const std::vector<double> ms = host_->timing_intervals_ms();
    timings_.clear();
    for (size_t i = 0; i < timed_.size() && i < ms.size(); ++i) {
      auto it = std::find_if(timings_.begin(), timings_.end(), [&](const VariantTiming& t) { return t.variant == timed_[i]; });
      if (it == timings_.end()) it = timings_.insert(timings_.end(), VariantTiming{timed_[i], 0, 0});
      it->ms += ms[i];
      it->calls += 1;
    }
  }
  if (!order_.empty()) {
    if (out.logits.numel() > 0) out.logits = scatter_rows(out.logits, dest);
    for (std::vector<int32_t>* ids : {&out.argmax, &out.sampled}) {
      if (ids->empty()) continue;
      std::vector<int32_t> a(ids->size());
      for (size_t r = 0; r < a.size(); ++r) a[size_t(dest[r])] = (*ids)[r];
      *ids = std::move(a);
    }
    std::sort(by_caller.begin(), by_caller.end());
    out.logit_rows = by_caller;
  }
  const int64_t V = config().vocab_size;
  if (step.greedy_only && !argmax_only) {  // the logits came to the host for a tap: choose here, same rule
    for (size_t r = 0; r < out.logit_rows.size(); ++r)
      out.argmax.push_back(greedy_token({out.logits.f32() + int64_t(r) * V, size_t(V)}));
  }
  if (sampled && !sample_only) {  // likewise: the same function the hosts run
    for (size_t r = 0; r < out.logit_rows.size(); ++r) {
      const RowSampling& s = caller_step.sampling[r];
      out.sampled.push_back(
          sample_token({out.logits.f32() + int64_t(r) * V, size_t(V)}, s.penalized, s.params, s.u, &scratch_));
    }
  }
  if (taps && taps->wants(Stage::logits, -1)) taps->publish(Stage::logits, -1, out.logits);
  order_.clear();
  return out;
}

}  // namespace tandem
