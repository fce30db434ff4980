// tandem bench: speed of a path on this GPU (or this CPU), reported against the device's own limits measured in
// the same run (GPU: copy bandwidth for decode, bf16 GEMM peak for prefill; CPU: memory read bandwidth and the
// f32 GEMM rate of the cpu path's kernels, on the -t threads). Writes the bench/results JSON schema.
#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <ctime>
#include <fstream>
#include <sstream>

#include <sys/resource.h>

#include <atomic>

#include <cmath>
#include <cstring>
#include <numeric>

#include "cli/common.h"
#include "core/parallel.h"
#include "cpu/quant_dot.h"
#include "cuda/ceilings.h"
#include "cuda/check.h"
#include "cuda/device_query.h"
#include "runtime/bench_math.h"
#include "runtime/engine.h"
#include "runtime/serve_load.h"

namespace tandem::cli {
namespace {

struct BenchArgs {
  ModelOptions model;
  std::string random_shape;
  std::string phase = "all";
  std::string batches = "1,64";
  std::string contexts = "128";
  std::string prefills = "512,4096";
  int steps = 10;
  int reps = 5;
  std::string json;
  bool logits_to_host = false;
  bool sample = false;  // decode: sample every row (SamplingParams' defaults) instead of taking its argmax
  // --phase serve: a closed-loop load through the serving engine at each concurrency.
  int64_t requests = 512, prompt_len = 128, output_len = 128;
  std::string concurrency = "1,8,64";
};

std::vector<int64_t> parse_list(const std::string& s, const char* flag) {
  std::vector<int64_t> out;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ',')) {
    try {
      size_t used = 0;
      const long long v = std::stoll(item, &used);
      TD_CHECK(used == item.size() && v > 0, "{}: '{}' is not a positive integer", flag, item);
      out.push_back(v);
    } catch (const std::logic_error&) {
      fail("{}: '{}' is not a positive integer", flag, item);
    }
  }
  TD_CHECK(!out.empty(), "{}: empty list", flag);
  return out;
}

struct Stats {
  double median = 0, min = 0, max = 0;
};
Stats stats(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return {v[v.size() / 2], v.front(), v.back()};
}

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

std::string today() {
  const std::time_t t = std::time(nullptr);
  char buf[16];
  std::strftime(buf, sizeof buf, "%Y-%m-%d", std::gmtime(&t));
  return buf;
}

std::string slug(std::string s) {
  for (char& ch : s) ch = std::isalnum(static_cast<unsigned char>(ch)) ? char(std::tolower(ch)) : '-';
  return s;
}

// Bytes a stage reads in one decode step (weights, or the KV cache for attention); 0 for the light ones.
int64_t stage_bytes(Stage s, const ModelConfig& c, DType dt, int64_t batch, int64_t context);
int64_t variant_bytes(const Variant& v, const ModelConfig& c, DType dt, int64_t batch, int64_t context) {
  int64_t sum = 0;
  for (int s = int(v.stages.first); s <= int(v.stages.last); ++s) sum += stage_bytes(Stage(s), c, dt, batch, context);
  return sum;
}
int64_t stage_bytes(Stage s, const ModelConfig& c, DType dt, int64_t batch, int64_t context) {
  const int64_t e = dtype_block_bytes(dt), H = c.hidden_size, I = c.intermediate_size, L = c.n_layers;
  switch (s) {
    case Stage::qkv: return L * H * c.qkv_dim() * e;
    case Stage::o_proj: return L * c.q_dim() * H * e;
    case Stage::gate_up: return L * 2 * I * H * e;
    case Stage::down: return L * I * H * e;
    case Stage::attention: return decode_kv_bytes(c, dt, batch, context);
    case Stage::logits: return c.vocab_size * H * e;
    default: return 0;
  }
}

// CPU ceilings, on the pool's threads: read bandwidth (a sum over 512 MB, best of 3) and the f32 GEMM rate of the
// cpu path's float kernel (256 rows x 2048 x 2048, best of 3).
double cpu_read_bandwidth_GBps() {
  const int64_t n = int64_t(1) << 27;
  std::vector<float> buf(static_cast<size_t>(n));
  parallel_for(n, [&](int64_t b, int64_t e) { std::fill(buf.begin() + b, buf.begin() + e, 1.0f); });
  double best = 0;
  for (int r = 0; r < 3; ++r) {
    std::vector<double> part(size_t(num_threads()) + 1, 0.0);
    std::atomic<int> slot{0};
    const double t0 = now_s();
    parallel_for(n, [&](int64_t b, int64_t e) {
      float acc[16] = {};
      for (int64_t i = b; i + 16 <= e; i += 16)
        for (int j = 0; j < 16; ++j) acc[j] += buf[size_t(i + j)];
      part[size_t(slot++)] = std::accumulate(acc, acc + 16, 0.0);
    });
    const double dt = now_s() - t0;
    if (std::accumulate(part.begin(), part.end(), 0.0) < 0) std::printf("?");  // keep the sum alive
    best = std::max(best, double(n) * 4 / dt / 1e9);
  }
  return best;
}
double cpu_gemm_tflops() {
  const int64_t T = 256, K = 2048, N = 2048;
  std::vector<float> x(size_t(T * K), 0.5f), w(size_t(N * K), 0.25f), y(size_t(T * N));
  double best = 0;
  for (int r = 0; r < 3; ++r) {
    const double t0 = now_s();
    cpu::linear_stored(Tensor::contiguous(x.data(), DType::F32, {T, K}), Tensor::contiguous(w.data(), DType::F32, {N, K}),
                       Tensor::contiguous(y.data(), DType::F32, {T, N}));
    best = std::max(best, 2.0 * T * K * N / (now_s() - t0) / 1e12);
  }
  return best;
}
std::string cpu_model_name() {
  std::ifstream f("/proc/cpuinfo");
  for (std::string line; std::getline(f, line);)
    if (line.rfind("model name", 0) == 0) return line.substr(line.find(':') + 2);
  return "cpu";
}
int64_t peak_rss_bytes() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return int64_t(u.ru_maxrss) * 1024;
}

// Bytes of the weights a stage reads in one step on the CPU, from the tensors the host holds (their stored format).
int64_t cpu_stage_weight_bytes(Stage s, const ModelWeights& w) {
  int64_t sum = 0;
  for (const LayerWeights& l : w.layers) {
    if (s == Stage::qkv) sum += l.wqkv.nbytes();
    if (s == Stage::o_proj) sum += l.wo.nbytes();
    if (s == Stage::gate_up) sum += l.w_gate_up.nbytes();
    if (s == Stage::down) sum += l.w_down.nbytes();
  }
  if (s == Stage::logits) sum += w.lm_head.nbytes();
  return sum;
}

void run(const BenchArgs& a) {
  RunnerOptions ropt = a.model.runner;
  const bool gpu = cuda::device_count() > 0;
  if (ropt.path == "auto") ropt.path = ropt.device == "cpu" || !gpu ? "cpu" : "fused";
  const Plan probe = plan_for(ropt, nullptr);  // fails early on a bad --path / --variant
  const bool on_cpu = probe.device == Device::CPU;
  TD_CHECK(on_cpu || gpu, "--path {}: no CUDA GPU was found (--device cpu benchmarks the cpu path)", ropt.path);
  TD_CHECK(a.phase == "all" || a.phase == "decode" || a.phase == "prefill" || a.phase == "serve",
           "--phase {}: expected prefill, decode, serve or all (all = prefill and decode)", a.phase);
  const auto concurrency = parse_list(a.concurrency, "--concurrency");
  TD_CHECK(a.random_shape.empty() || a.model.model.empty(),
           "give either -m or --random-weights, not both");
  const auto batches = parse_list(a.batches, "--batch");
  const auto contexts = parse_list(a.contexts, "--context");
  const auto prefills = parse_list(a.prefills, "--prefill-tokens");
  const auto dtype = dtype_from_name(a.model.runner.dtype);
  TD_CHECK(dtype.has_value(), "--dtype {}: unknown", a.model.runner.dtype);

  cuda::Ceilings lim;
  std::string card, driver;
  if (on_cpu) {
    if (a.model.threads > 0) set_num_threads(a.model.threads);
    std::fprintf(stderr, "measuring this CPU's limits...\n");
    lim.copy_bw_GBps = cpu_read_bandwidth_GBps();
    lim.gemm_peak_tflops = cpu_gemm_tflops();
    card = cpu_model_name() + ", " + std::to_string(num_threads()) + " threads";
    driver = std::string(cpu::isa_name(cpu::detected_isa()));
    std::printf("cpu %s, kernels %s: read %.1f GB/s, f32 GEMM %.3f TFLOP/s\n", card.c_str(), driver.c_str(),
                lim.copy_bw_GBps, lim.gemm_peak_tflops);
  } else {
    cudaStream_t stream;
    TD_CUDA_CHECK(cudaStreamCreate(&stream));
    std::fprintf(stderr, "measuring this GPU's limits...\n");
    lim.copy_bw_GBps = cuda::measure_copy_bandwidth_GBps(stream);
    lim.gemm_peak_tflops = cuda::measure_gemm_peak_tflops(stream);
    TD_CUDA_CHECK(cudaStreamDestroy(stream));
    card = cuda::card_name();
    driver = cuda::driver_version();
    std::printf("card %s, driver %s: copy %.0f GB/s (read + write), bf16 GEMM %.0f TFLOP/s\n", card.c_str(),
                driver.c_str(), lim.copy_bw_GBps, lim.gemm_peak_tflops);
  }
  auto mem_used = [&] { return on_cpu ? peak_rss_bytes() : cuda::device_memory_used(); };

  // Tokens a sequence of n tokens occupies in whole KV pages.
  const int64_t page = a.model.runner.page_size;
  auto paged_tokens = [page](int64_t n) { return (n + page - 1) / page * page; };
  // KV pool large enough for the biggest decode configuration, when it fits.
  int64_t pool = 4096;
  for (int64_t b : batches)
    for (int64_t c : contexts) pool = std::max(pool, b * paged_tokens(c + a.steps + 4));
  for (int64_t p : prefills) pool = std::max(pool, p);
  if (a.phase == "serve")
    for (int64_t c : concurrency) pool = std::max(pool, c * paged_tokens(a.prompt_len + a.output_len));

  std::unique_ptr<Executor> runner;
  std::string model_name;
  const double t0 = now_s();
  if (!a.random_shape.empty()) {
    TD_CHECK(!on_cpu, "--random-weights: random-weight models are made on the GPU only; give -m for the CPU");
    ModelConfig cfg = shape_config(a.random_shape);
    model_name = a.random_shape;
    const int64_t kv_bytes = pool * 2 * cfg.n_layers * cfg.kv_dim() * dtype_block_bytes(*dtype);
    size_t free_b = 0, total_b = 0;
    TD_CUDA_CHECK(cudaMemGetInfo(&free_b, &total_b));
    const int64_t weights = decode_weight_bytes(cfg, *dtype) + cfg.vocab_size * cfg.hidden_size * dtype_block_bytes(*dtype);
    if (kv_bytes > int64_t(0.85 * double(free_b)) - weights)
      pool = std::max<int64_t>(4096, (int64_t(0.85 * double(free_b)) - weights) /
                                         (2 * cfg.n_layers * cfg.kv_dim() * dtype_block_bytes(*dtype)));
    ropt.kv_tokens = pool;
    runner = make_random_runner(cfg, ropt, 1234);
  } else {
    const auto path = model_path(a.model);
    model_name = path.filename().string();
    ropt.kv_tokens = pool;
    runner = make_runner(open_model_bundle(path), ropt, progress_bar);
  }
  const ModelConfig& cfg = runner->config();
  const int64_t kv_pool_tokens = runner->host().kv_pages() * runner->host().kv_geometry().page_size;
  const std::string path_name(runner->path_name());
  // The CPU computes in f32 whatever --dtype says (weights stay in their stored format).
  const std::string dtype_label = on_cpu ? "f32" : a.model.runner.dtype;
  std::printf("model %s on the %s path, %s: %.2f GB of weights, KV pool %lld tokens (pages of %lld, %s), built in "
              "%.1f s\n",
              model_name.c_str(), path_name.c_str(), dtype_label.c_str(),
              double(runner->host().weight_bytes()) / 1e9, (long long)kv_pool_tokens,
              (long long)runner->host().kv_geometry().page_size,
              std::string(kv_layout_name(runner->host().kv_geometry().layout)).c_str(), now_s() - t0);

  nlohmann::ordered_json out;
  out["card"] = card;
  out["driver"] = driver;
  if (on_cpu) out["device"] = "cpu";
  out["commit"] = TANDEM_GIT_COMMIT;
  out["date"] = today();
  out["copy_bw_GBps"] = lim.copy_bw_GBps;
  out["gemm_peak_tflops"] = lim.gemm_peak_tflops;
  out["runs"] = nlohmann::json::array();
  int64_t peak_mem = mem_used();
  int32_t next_seq = 0;

  if (a.phase == "serve") {
    std::printf("\nserve: %lld requests of %lld prompt / %lld output tokens a level (closed loop, greedy)\n"
                "concurrency   out tok/s   req/s   TTFT p50/p99 ms    ITL p50/p99 ms\n",
                (long long)a.requests, (long long)a.prompt_len, (long long)a.output_len);
    for (int64_t c : concurrency) {
      EngineOptions eo;
      eo.max_num_seqs = int(c);
      eo.max_queue = 0;
      eo.max_num_batched_tokens = std::max<int64_t>(2048, c);
      Engine engine(*runner, eo);
      run_serve_load(engine, cfg.vocab_size, std::min<int64_t>(8, a.requests), a.prompt_len, a.output_len, int(c), 7);
      const ServeLoadResult r = run_serve_load(engine, cfg.vocab_size, a.requests, a.prompt_len, a.output_len, int(c));
      peak_mem = std::max(peak_mem, mem_used());
      std::printf("%-11lld %11.0f %7.2f %8.1f / %-8.1f %7.2f / %-7.2f\n", (long long)c, r.output_tok_s, r.requests_s,
                  r.ttft_p50 * 1e3, r.ttft_p99 * 1e3, r.itl_p50 * 1e3, r.itl_p99 * 1e3);
      out["runs"].push_back({{"model", model_name}, {"dtype", dtype_label}, {"path", path_name},
                             {"phase", "serve"}, {"batch", c}, {"context", a.prompt_len}, {"output_len", a.output_len},
                             {"requests", a.requests}, {"tok_s", r.output_tok_s}, {"requests_s", r.requests_s},
                             {"ttft_ms_p50", r.ttft_p50 * 1e3}, {"ttft_ms_p99", r.ttft_p99 * 1e3},
                             {"itl_ms_p50", r.itl_p50 * 1e3}, {"itl_ms_p99", r.itl_p99 * 1e3},
                             {"cuda_graphs", a.model.runner.cuda_graphs}});
    }
  }
  if (a.phase != "decode" && a.phase != "serve") {
    std::printf("\n%-10s %10s %12s %10s %8s\n", "prefill", "tok/s", "median ms", "TFLOP/s", "% peak");
    for (int64_t p : prefills) {
      if (p > cfg.max_positions || p > kv_pool_tokens) {
        std::printf("%-10lld skipped: beyond the context or the KV pool\n", (long long)p);
        continue;
      }
      std::vector<double> times;
      for (int r = 0; r < a.reps + 1; ++r) {
        const int32_t seq = next_seq++;
        runner->create_sequence(seq, p);
        Step step;
        for (int64_t i = 0; i < p; ++i) step.add(int32_t((i * 7919 + 13) % cfg.vocab_size), seq, int32_t(i), i + 1 == p);
        const double s0 = now_s();
        runner->forward(step, nullptr);
        if (r > 0) times.push_back(now_s() - s0);  // the first run warms up
        runner->release_sequence(seq);
        peak_mem = std::max(peak_mem, mem_used());
      }
      const Stats st = stats(times);
      const double tflops = prefill_flops(cfg, p) / st.median / 1e12;
      std::printf("%-10lld %10.0f %12.2f %10.1f %7.1f%%\n", (long long)p, double(p) / st.median, st.median * 1e3,
                  tflops, 100 * tflops / lim.gemm_peak_tflops);
      out["runs"].push_back({{"model", model_name}, {"dtype", dtype_label}, {"path", path_name},
                             {"phase", "prefill"}, {"batch", 1}, {"context", p}, {"tok_s", double(p) / st.median},
                             {"bytes_per_token", nullptr}, {"pct_copy_bw", nullptr}, {"tflops", tflops},
                             {"pct_gemm_peak", 100 * tflops / lim.gemm_peak_tflops},
                             {"step_ms_median", st.median * 1e3}, {"step_ms_min", st.min * 1e3},
                             {"step_ms_max", st.max * 1e3}, {"reps", a.reps}});
    }
  }

  if (a.phase != "prefill" && a.phase != "serve") {
    std::printf("\n%-6s %-8s %10s %12s %14s %10s %8s\n", "batch", "context", "tok/s", "median ms", "bytes/step",
                "GB/s", "% copy");
    bool broke_down = false;
    // Decode steps replay CUDA graphs when the plan allows (captured in the second warm-up step).
    const bool graphs = ropt.cuda_graphs && runner->plan_graph_safe();
    const bool ids_only = !a.logits_to_host;  // token ids come back, not logits rows
    for (int64_t c : contexts) {
      for (int64_t b : batches) {
        if (b * paged_tokens(c + a.steps + 4) > kv_pool_tokens || c + a.steps + 4 > cfg.max_positions) {
          std::printf("%-6lld %-8lld skipped: %lld KV tokens do not fit the pool of %lld\n", (long long)b,
                      (long long)c, (long long)(b * paged_tokens(c + a.steps + 4)), (long long)kv_pool_tokens);
          continue;
        }
        std::vector<int32_t> seqs;
        for (int64_t i = 0; i < b; ++i) {
          seqs.push_back(next_seq++);
          runner->create_sequence(seqs.back(), c + a.steps + 4);
          runner->assume_cached(seqs.back(), c);
        }
        std::vector<double> times;
        std::vector<Sampler> samplers;  // --sample: SamplingParams' defaults (top-k 40, top-p 0.95, min-p 0.05)
        if (a.sample)
          for (size_t i = 0; i < seqs.size(); ++i) {
            SamplingParams sp;
            sp.seed = i;
            samplers.emplace_back(sp);
          }
        for (int s = 0; s < a.steps + 2; ++s) {
          Step step;
          for (size_t i = 0; i < seqs.size(); ++i)
            step.add(int32_t((i * 31 + s) % cfg.vocab_size), seqs[i], int32_t(runner->sequence_length(seqs[i])), true);
          // Token ids come back, not logits rows (a server's decode): each row's argmax, or sampled on the device.
          step.greedy_only = ids_only && !a.sample;
          if (ids_only && a.sample)
            for (Sampler& sm : samplers) step.sampling.push_back(sm.peek_draw({}));
          const double s0 = now_s();
          const StepOutput out = runner->forward(step, nullptr);
          for (size_t i = 0; i < samplers.size(); ++i) {
            if (ids_only) {
              samplers[i].accept_draw();
            } else {  // --logits-to-host: the host samples the rows it was sent
              samplers[i].sample({out.logits.f32() + int64_t(i) * cfg.vocab_size, size_t(cfg.vocab_size)}, {});
            }
          }
          if (s >= 2) times.push_back(now_s() - s0);  // two warm-up steps
        }
        if (!broke_down) {  // per-op breakdown of one more step, at the first configuration
          runner->set_timing(true);
          Step step;
          for (size_t i = 0; i < seqs.size(); ++i)
            step.add(1, seqs[i], int32_t(runner->sequence_length(seqs[i])), true);
          runner->forward(step, nullptr);
          runner->set_timing(false);
          nlohmann::ordered_json rows = nlohmann::json::array();
          std::printf("  per-op breakdown of one decode step (batch %lld, context %lld):\n", (long long)b,
                      (long long)c);
          double total = 0;
          for (const auto& t : runner->timings()) total += t.ms;
          for (const auto& t : runner->timings()) {
            int64_t bytes = variant_bytes(*t.variant, cfg, *dtype, b, c);
            if (on_cpu) {
              const ModelWeights& w = runner->host().weights(t.variant->weights);
              bytes = t.variant->stages.contains(Stage::attention) ? decode_kv_bytes(cfg, DType::F32, b, c) : 0;
              for (int st = int(t.variant->stages.first); st <= int(t.variant->stages.last); ++st)
                bytes += cpu_stage_weight_bytes(Stage(st), w);
            }
            const double gbps = bytes > 0 ? double(bytes) / (t.ms * 1e-3) / 1e9 : 0;
            std::printf("    %-28s %8.3f ms %5.1f%% %4d calls %10.1f MB %8.0f GB/s\n", t.variant->name.c_str(), t.ms,
                        100 * t.ms / total, t.calls, double(bytes) / 1e6, gbps);
            rows.push_back({{"stage", t.variant->stages.str()}, {"variant", t.variant->name}, {"ms", t.ms},
                            {"calls", t.calls}, {"bytes", bytes}, {"GBps", gbps}});
          }
          out["decode_breakdown_" + path_name + "_" + model_name] = {{"path", path_name}, {"model", model_name}, {"batch", b}, {"context", c}, {"total_ms", total},
                                     {"mode", on_cpu ? "wall time per variant on the CPU (host clock between variants)"
                                                     : "GPU time per variant: kernel by kernel (no CUDA graph), every launch queued behind a gate "
                                              "before the GPU starts, events between variants (no host gaps)"},
                                     {"stages", rows}};
          broke_down = true;
        }
        peak_mem = std::max(peak_mem, mem_used());
        for (int32_t q : seqs) runner->release_sequence(q);
        const Stats st = stats(times);
        int64_t bytes = decode_step_bytes(cfg, *dtype, b, c + a.steps / 2);
        if (on_cpu) {  // the weights as held (stored format or f32), each once, plus the f32 KV read
          int64_t w = 0;
          for (int st = 0; st < kNumStages; ++st) w += cpu_stage_weight_bytes(Stage(st), runner->host().weights(probe.by_stage[size_t(st)]->weights));
          bytes = w + decode_kv_bytes(cfg, DType::F32, b, c + a.steps / 2);
        }
        const double gbps = double(bytes) / st.median / 1e9;
        std::printf("%-6lld %-8lld %10.1f %12.3f %14.3e %10.0f %7.1f%%\n", (long long)b, (long long)c,
                    double(b) / st.median, st.median * 1e3, double(bytes), gbps, 100 * gbps / lim.copy_bw_GBps);
        out["runs"].push_back({{"model", model_name}, {"dtype", dtype_label}, {"path", path_name},
                               {"phase", "decode"}, {"batch", b}, {"context", c}, {"tok_s", double(b) / st.median},
                               {"bytes_per_token", double(bytes) / double(b)},
                               {"pct_copy_bw", 100 * gbps / lim.copy_bw_GBps}, {"tflops", nullptr},
                               {"pct_gemm_peak", nullptr}, {"step_ms_median", st.median * 1e3},
                               {"step_ms_min", st.min * 1e3}, {"step_ms_max", st.max * 1e3}, {"reps", a.steps},
                               {"cuda_graphs", graphs}, {"logits_to_host", !ids_only},
                               {"sampled", a.sample}});
      }
    }
  }
  if (on_cpu) {
    out["peak_rss_GB"] = double(peak_mem) / 1e9;
    out["threads"] = num_threads();
    std::printf("\npeak resident memory: %.2f GB\n", double(peak_mem) / 1e9);
  } else {
    out["peak_gpu_mem_GB"] = double(peak_mem) / 1e9;
    std::printf("\npeak GPU memory in use: %.1f GB\n", double(peak_mem) / 1e9);
  }
  const std::string file = a.json.empty() ? "bench/results/" + today() + "-" + slug(card) + ".json" : a.json;
  // Append to an existing file from the same card (several models per run), else start it.
  std::ifstream in(file);
  if (in) {
    nlohmann::ordered_json prev = nlohmann::ordered_json::parse(in, nullptr, false);
    if (!prev.is_discarded() && prev.value("card", "") == card && prev.contains("runs")) {
      for (auto& r : out["runs"]) prev["runs"].push_back(r);
      const std::string key = "decode_breakdown_" + path_name + "_" + model_name;
      if (out.contains(key)) prev[key] = out[key];
      for (const char* k : {"peak_gpu_mem_GB", "peak_rss_GB"})
        if (out.contains(k)) prev[k] = std::max(prev.value(k, 0.0), out[k].get<double>());
      out = prev;
    }
  }
  std::ofstream f(file);
  TD_CHECK(f.good(), "{}: cannot write the result file", file);
  f << out.dump(2) << "\n";
  std::printf("results: %s\n", file.c_str());
}
}  // namespace

void register_bench(CLI::App& app) {
  auto a = std::make_shared<BenchArgs>();
  CLI::App* cmd = app.add_subcommand("bench", "measure prefill and decode speed against this GPU's (or CPU's) own limits");
  add_model_options(cmd, a->model, false);
  cmd->add_option("--random-weights", a->random_shape, "real-shape model with random weights: " + known_shapes());
  cmd->add_option("--phase", a->phase, "prefill | decode | serve | all (prefill and decode)")->capture_default_str();
  cmd->add_option("--requests", a->requests, "serve: requests per concurrency level")->capture_default_str();
  cmd->add_option("--prompt-len", a->prompt_len, "serve: prompt tokens a request")->capture_default_str();
  cmd->add_option("--output-len", a->output_len, "serve: tokens generated a request")->capture_default_str();
  cmd->add_option("--concurrency", a->concurrency, "serve: requests in flight (levels)")->capture_default_str();
  cmd->add_option("--batch", a->batches, "decode batch sizes")->capture_default_str();
  cmd->add_option("--context", a->contexts, "decode context lengths (tokens cached per sequence)")
      ->capture_default_str();
  cmd->add_option("--prefill-tokens", a->prefills, "prefill prompt lengths")->capture_default_str();
  cmd->add_option("--steps", a->steps, "timed decode steps per configuration")->capture_default_str();
  cmd->add_option("--reps", a->reps, "timed prefills per length")->capture_default_str();
  cmd->add_flag("--logits-to-host", a->logits_to_host,
                "decode steps copy every logits row to the host (default: greedy tokens chosen on the GPU, ids copied)");
  cmd->add_flag("--sample", a->sample,
                "decode steps sample every row (temperature 0.8, top-k 40, top-p 0.95, min-p 0.05): on the GPU, or on "
                "the host with --logits-to-host");
  cmd->add_option("--json", a->json, "result file (default bench/results/<date>-<card>.json; appended if it exists)");
  cmd->callback([a] { run(*a); });
}

}  // namespace tandem::cli
