#include "cli/common.h"

#include <unistd.h>

#include <algorithm>
#include <charconv>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>

#include "core/parallel.h"
#include "cuda/device_query.h"

namespace tandem::cli {

std::vector<int32_t> parse_token_ids(const std::string& s) {
  std::vector<int32_t> ids;
  const char* p = s.data();
  const char* end = s.data() + s.size();
  while (p < end) {
    while (p < end && (*p == ',' || *p == ' ')) ++p;
    if (p == end) break;
    int32_t v = 0;
    auto [q, ec] = std::from_chars(p, end, v);
    TD_CHECK(ec == std::errc() && (q == end || *q == ',' || *q == ' '),
             "--prompt-ids: '{}' is not a comma-separated list of token ids", s);
    ids.push_back(v);
    p = q;
  }
  TD_CHECK(!ids.empty(), "--prompt-ids: no token ids given");
  return ids;
}

std::set<std::string> split_list(const std::string& s) {
  std::set<std::string> out;
  size_t start = 0;
  while (start <= s.size()) {
    const size_t comma = std::min(s.find(',', start), s.size());
    if (comma > start) out.insert(s.substr(start, comma - start));
    start = comma + 1;
  }
  return out;
}

void progress_bar(int64_t done, int64_t total) {
  static const bool tty = isatty(fileno(stderr));
  if (!tty) return;
  const int width = 30, filled = int(width * done / std::max<int64_t>(total, 1));
  std::fprintf(stderr, "\rloading [%s%s] %lld/%lld", std::string(size_t(filled), '#').c_str(),
               std::string(size_t(width - filled), ' ').c_str(), (long long)done, (long long)total);
  if (done == total) std::fprintf(stderr, "\r%*s\r", width + 30, "");
}

std::filesystem::path model_path(const ModelOptions& o) {
  return o.model.empty() ? default_model_path() : std::filesystem::path(o.model);
}

Loaded load(const ModelOptions& o) {
  if (o.threads > 0) set_num_threads(o.threads);
  Loaded l;
  const auto path = model_path(o);
  const auto t0 = std::chrono::steady_clock::now();
  l.bundle = open_model_bundle(path);
  l.runner = make_runner(l.bundle, o.runner, progress_bar);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  for (const std::string& n : l.runner->plan().notices) std::fprintf(stderr, "note: %s\n", n.c_str());
  const ModelConfig& c = l.bundle.config();
  const bool gpu = l.runner->plan().device == Device::CUDA;
  if (!gpu && o.dtype_opt && o.dtype_opt->count())
    std::fprintf(stderr, "warning: --dtype %s is ignored on the CPU, which computes in f32\n", o.runner.dtype.c_str());
  if (!gpu && o.gmu_opt && o.gmu_opt->count())
    std::fprintf(stderr, "warning: --gpu-memory-utilization is ignored on the CPU (its KV pool grows as needed)\n");
  if (o.runner.split_kv != "auto") {
    const std::string att = l.runner->plan().by_stage[size_t(Stage::attention)]->name;
    if (!gpu)
      std::fprintf(stderr, "warning: --split-kv %s is ignored on the CPU (it is FlashInfer's, on the GPU)\n",
                   o.runner.split_kv.c_str());
    else if (att != "attention.fused" && att.find("flashinfer") == std::string::npos)
      std::fprintf(stderr, "warning: --split-kv %s is ignored: the plan's attention is %s, not FlashInfer\n",
                   o.runner.split_kv.c_str(), att.c_str());
  }
  if (gpu && o.gpu_layers > 0 && o.gpu_layers < c.n_layers)
    std::fprintf(stderr, "note: -ngl %d: tandem does not split a model between devices; all %lld layers run on the GPU\n",
                 o.gpu_layers, (long long)c.n_layers);
  std::fprintf(stderr,
               "model: %s (%s, %lld layers, hidden %lld, vocab %lld, context %lld; %s) loaded in %.2f s, %.0f MiB "
               "resident; path %s on %s\n",
               path.c_str(), c.arch.c_str(), (long long)c.n_layers, (long long)c.hidden_size, (long long)c.vocab_size,
               (long long)c.max_positions, l.bundle.source->storage_summary().c_str(), seconds,
               double(resident_bytes()) / (1 << 20), std::string(l.runner->path_name()).c_str(),
               gpu ? (cuda::device_name(0) + ", " + o.runner.dtype).c_str()
                   : ("cpu, " + std::to_string(num_threads()) + " threads").c_str());
  return l;
}

int64_t context_limit(const Loaded& l, int64_t ctx_size) {
  const int64_t model_ctx = l.bundle.config().max_positions;
  TD_CHECK(ctx_size <= model_ctx, "-c {}: larger than the model's context of {} tokens", ctx_size, model_ctx);
  return ctx_size > 0 ? ctx_size : model_ctx;
}

void fit_context(const Loaded& l, int64_t ctx_size, GenerationRequest& req) {
  const int64_t ctx = context_limit(l, ctx_size), prompt = int64_t(req.prompt.size());
  const char* which = ctx_size > 0 ? "the context (-c)" : "the model's context";
  TD_CHECK(prompt < ctx, "the prompt of {} tokens leaves no room in {} of {} tokens", prompt, which, ctx);
  if (req.max_new_tokens == -1) req.max_new_tokens = ctx - prompt;
  TD_CHECK(prompt + req.max_new_tokens <= ctx,
           "the prompt of {} tokens + {} new tokens (-n) = {} exceeds {} of {} tokens", prompt, req.max_new_tokens,
           prompt + req.max_new_tokens, which, ctx);
}

std::vector<int32_t> stop_ids(const Loaded& l, const ChatTemplate* chat) {
  std::vector<int32_t> ids;
  if (!l.bundle.tokenizer) return ids;
  const Tokenizer& tok = *l.bundle.tokenizer;
  ids = tok.eos_ids();
  if (chat) {
    for (const std::string& s : chat->stop_strings())
      if (auto id = tok.piece_to_id(s); id && std::find(ids.begin(), ids.end(), *id) == ids.end()) ids.push_back(*id);
  }
  return ids;
}

void print_stats(const GenerationStats& st) {
  std::fflush(stdout);
  std::fprintf(stderr, "prompt: %lld tokens in %.1f ms (%.1f tok/s)\n", (long long)st.prompt_tokens,
               st.prefill_seconds * 1e3, st.prompt_tokens / std::max(st.prefill_seconds, 1e-9));
  std::fprintf(stderr, "decode: %lld tokens in %.1f ms (%.1f tok/s)\n", (long long)st.generated_tokens,
               st.decode_seconds * 1e3, st.generated_tokens / std::max(st.decode_seconds, 1e-9));
}

namespace {
// A "Vm...:  1234 kB" line of /proc/self/status, in bytes.
int64_t proc_status_kb(const char* key) {
  std::ifstream in("/proc/self/status");
  for (std::string line; std::getline(in, line);)
    if (line.rfind(key, 0) == 0) return std::atoll(line.c_str() + std::strlen(key)) * 1024;
  return 0;
}
}  // namespace

int64_t resident_bytes() { return proc_status_kb("VmRSS:"); }
int64_t peak_resident_bytes() { return proc_status_kb("VmHWM:"); }

}  // namespace tandem::cli
