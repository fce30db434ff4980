#include "cli/common.h"

#include <unistd.h>

#include <algorithm>
#include <charconv>
#include <chrono>
#include <cstdio>

#include "core/parallel.h"
#include "cuda/device_query.h"

namespace tandem::cli {

void add_model_options(CLI::App* cmd, ModelOptions& o, bool required) {
  auto* m = cmd->add_option("-m,--model", o.model, "model: HF folder, .safetensors or .gguf file");
  if (required) m->required();
  cmd->add_option("--device", o.runner.device, "auto | cpu | cuda")->check(CLI::IsMember({"auto", "cpu", "cuda"}));
  cmd->add_option("--path", o.runner.path, "execution path: auto (fused on a GPU, else reference) | reference | standard | fused (tandem info --variants)");
  cmd->add_option("--dtype", o.runner.dtype, "GPU weights/activations: bf16 | f16 | f32")
      ->check(CLI::IsMember({"bf16", "f16", "f32"}));
  cmd->add_option("--kv-tokens", o.runner.kv_tokens, "KV cache size in tokens (default: automatic)");
  cmd->add_option("--gpu-memory-utilization", o.runner.gpu_memory_utilization,
                  "GPU: fraction of the card's memory this process may use; the KV cache gets what the weights "
                  "and activations leave (default: KV for 4 contexts or 32768 tokens, at most 40% of free memory)");
  cmd->add_option("--page-size", o.runner.page_size, "KV cache page size in tokens")->capture_default_str();
  cmd->add_option("--kv-layout", o.runner.kv_layout, "KV page layout: nhd | hnd")
      ->check(CLI::IsMember({"nhd", "hnd"}))
      ->capture_default_str();
  cmd->add_option("--variant", o.runner.variants,
                  "STAGE=NAME: run stage STAGE with variant NAME instead of the path's choice (repeatable; "
                  "tandem info --variants lists them)");
  cmd->add_flag("--kv-poison", o.runner.kv_poison,
                "debug: fill fresh KV pages with NaN and stop at the first attention that reads one");
  cmd->add_flag("--nan-check", o.runner.nan_check,
                "debug: scan every variant's output and stop at the first NaN/Inf, naming it and its input's stats");
  cmd->add_flag("--kv-fixed", o.runner.kv_fixed,
                "CPU: keep the KV pool at --kv-tokens instead of growing it (the server preempts when it is full)");
  cmd->add_flag("!--no-pdl", o.runner.pdl,
                "GPU: launch every kernel plainly (no programmatic dependent launch; for comparisons)");
  cmd->add_flag("!--no-cuda-graphs", o.runner.cuda_graphs,
                "GPU: launch every decode step's kernels one by one instead of replaying a captured CUDA graph");
  cmd->add_flag("--check-tensors,!--no-check-tensors", o.runner.check_tensors,
                "scan every weight for NaN/Inf (and quantized blocks' scales) before running; fail naming the "
                "tensors (on by default in `tandem info`)");
  cmd->add_option("-t,--threads", o.threads, "CPU threads (default: all cores)");
}

void add_sampling_options(CLI::App* cmd, GenerationRequest& req, uint64_t& seed, CLI::Option*& seed_opt) {
  cmd->add_option("-n,--n-predict", req.max_new_tokens, "tokens to generate")->capture_default_str();
  cmd->add_option("--temp", req.sampling.temperature, "temperature (0 = greedy)")->capture_default_str();
  cmd->add_option("--top-k", req.sampling.top_k, "top-k (0 = off)")->capture_default_str();
  cmd->add_option("--top-p", req.sampling.top_p, "top-p (1 = off)")->capture_default_str();
  cmd->add_option("--min-p", req.sampling.min_p, "min-p (0 = off)")->capture_default_str();
  cmd->add_option("--repeat-penalty", req.sampling.repeat_penalty, "repetition penalty (1 = off)")
      ->capture_default_str();
  cmd->add_option("--repeat-last-n", req.sampling.repeat_last_n, "tokens the penalty looks back over")
      ->capture_default_str();
  seed_opt = cmd->add_option("-s,--seed", seed, "RNG seed (default: random, printed at the end)");
}

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
  std::fprintf(stderr, "model: %s (%s, %lld layers, hidden %lld, vocab %lld; %s) loaded in %.2f s; path %s on %s\n",
               path.c_str(), c.arch.c_str(), (long long)c.n_layers, (long long)c.hidden_size,
               (long long)c.vocab_size, l.bundle.source->storage_summary().c_str(), seconds,
               std::string(l.runner->path_name()).c_str(),
               gpu ? (cuda::device_name(0) + ", " + o.runner.dtype).c_str()
                   : ("cpu, " + std::to_string(num_threads()) + " threads").c_str());
  return l;
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

}  // namespace tandem::cli
