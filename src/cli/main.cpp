// tandem: one binary, subcommands. Flags follow llama.cpp / vLLM conventions (-m, -p, -n, --temp, ...).
#include <CLI/CLI.hpp>
#include <unistd.h>

#include <charconv>
#include <cstdio>
#include <memory>
#include <set>

#include "core/error.h"
#include "core/parallel.h"
#include "cpu/reference_runner.h"
#include "cuda/device_query.h"
#include "model/model.h"
#include "runtime/generate.h"

namespace tandem {
namespace {

std::vector<int32_t> parse_ids(const std::string& s) {
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

void progress_bar(int64_t done, int64_t total) {
  static const bool tty = isatty(fileno(stderr));
  if (!tty) return;
  const int width = 30, filled = int(width * done / std::max<int64_t>(total, 1));
  std::fprintf(stderr, "\rloading [%s%s] %lld/%lld", std::string(size_t(filled), '#').c_str(),
               std::string(size_t(width - filled), ' ').c_str(), (long long)done, (long long)total);
  if (done == total) std::fprintf(stderr, "\r%*s\r", width + 30, "");
}

struct CommonOptions {
  std::string model;
  std::string device = "auto";
  std::string path = "auto";
  int threads = 0;
};

void add_common(CLI::App* cmd, CommonOptions& o) {
  cmd->add_option("-m,--model", o.model, "HF model folder or .safetensors file")->required();
  cmd->add_option("--device", o.device, "auto | cpu | cuda")->check(CLI::IsMember({"auto", "cpu", "cuda"}));
  cmd->add_option("--path", o.path, "execution path: auto | reference")->check(CLI::IsMember({"auto", "reference"}));
  cmd->add_option("-t,--threads", o.threads, "CPU threads (default: all cores)");
}

std::unique_ptr<ModelRunner> make_runner(const CommonOptions& o, double* load_seconds) {
  if (o.threads > 0) set_num_threads(o.threads);
  TD_CHECK(o.device != "cuda",
           "--device cuda: the CUDA paths are not built yet in this version; use --device cpu (found {} GPU(s))",
           cuda::device_count());
  const auto t0 = std::chrono::steady_clock::now();
  std::shared_ptr<const Model> model = load_reference_model(o.model, progress_bar);
  *load_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return std::make_unique<ReferenceRunner>(model);
}

struct TapOptions {
  std::string dump_file;  // safetensors file for the prefill step's taps
  std::string filter;     // comma-separated tap or stage names; empty = all
};

std::set<std::string> split_names(const std::string& s) {
  std::set<std::string> out;
  size_t start = 0;
  while (start <= s.size()) {
    const size_t comma = std::min(s.find(',', start), s.size());
    if (comma > start) out.insert(s.substr(start, comma - start));
    start = comma + 1;
  }
  return out;
}

int run_generate(const CommonOptions& common, const std::string& prompt_text, const std::string& prompt_ids,
                 GenerationRequest req, bool no_stream, const TapOptions& tap_opts) {
  TD_CHECK(prompt_text.empty() || prompt_ids.empty(), "give either -p or --prompt-ids, not both");
  TD_CHECK(prompt_text.empty(),
           "-p TEXT needs a tokenizer, which this version does not have yet; pass token ids with --prompt-ids");
  TD_CHECK(!prompt_ids.empty(), "no prompt: pass --prompt-ids 1,2,3");
  req.prompt = parse_ids(prompt_ids);
  double load_s = 0;
  auto runner = make_runner(common, &load_s);
  const ModelConfig& c = runner->config();
  std::fprintf(stderr, "model: %s (%s, %lld layers, hidden %lld, vocab %lld) loaded in %.2f s; path %s, %d threads\n",
               common.model.c_str(), c.arch.c_str(), (long long)c.n_layers, (long long)c.hidden_size,
               (long long)c.vocab_size, load_s, std::string(runner->path_name()).c_str(), num_threads());
  GenerationStats st;
  auto on_token = [&](size_t, int32_t tok) {
    if (no_stream) return;
    std::printf("%d ", tok);
    std::fflush(stdout);
  };
  std::unique_ptr<TapRecorder> taps;
  if (!tap_opts.dump_file.empty()) {
    const std::set<std::string> filter = split_names(tap_opts.filter);
    for (const std::string& name : filter) {
      const auto dot = name.find('.');
      const std::string stage = dot == std::string::npos ? name : name.substr(dot + 1);
      TD_CHECK(name == "*" || stage_from_name(stage).has_value(),
               "--taps: '{}' names no stage (stages: embed, attn_norm, qkv, rope, attention, o_proj, attn_residual, "
               "mlp_norm, gate_up, act, down, mlp_residual, final_norm, logits)",
               name);
    }
    taps = std::make_unique<TapRecorder>(filter);
  }
  auto results = generate(*runner, {req}, on_token, &st, taps.get());
  if (taps) {
    taps->save(tap_opts.dump_file);
    std::fprintf(stderr, "taps: %zu tensors of the prefill step written to %s\n", taps->taps().size(),
                 tap_opts.dump_file.c_str());
  }
  if (no_stream) {
    for (int32_t t : results[0].tokens) std::printf("%d ", t);
  }
  std::printf("\n");
  std::fprintf(stderr, "finish: %s, seed %llu\n", results[0].finish_reason.c_str(),
               (unsigned long long)results[0].seed);
  std::fprintf(stderr, "prompt: %lld tokens in %.1f ms (%.1f tok/s)\n", (long long)st.prompt_tokens,
               st.prefill_seconds * 1e3, st.prompt_tokens / std::max(st.prefill_seconds, 1e-9));
  std::fprintf(stderr, "decode: %lld tokens in %.1f ms (%.1f tok/s)\n", (long long)st.generated_tokens,
               st.decode_seconds * 1e3, st.generated_tokens / std::max(st.decode_seconds, 1e-9));
  return 0;
}

int run_info(const CommonOptions& common) {
  auto src = open_model_source(common.model);
  const ModelConfig& c = src->config();
  std::printf("source        %s\n", src->source().c_str());
  std::printf("architecture  %s (%s)\n", c.arch.c_str(), c.hf_class.c_str());
  std::printf("layers        %lld\nhidden        %lld\nintermediate  %lld\n", (long long)c.n_layers,
              (long long)c.hidden_size, (long long)c.intermediate_size);
  std::printf("heads         %lld (kv %lld, head_dim %lld)\nvocab         %lld\n", (long long)c.n_heads,
              (long long)c.n_kv_heads, (long long)c.head_dim, (long long)c.vocab_size);
  std::printf("context       %lld\nrope theta    %g%s\n", (long long)c.max_positions, c.rope.theta,
              c.rope.scaling == RopeScaling::Llama3   ? " (llama3 scaling)"
              : c.rope.scaling == RopeScaling::Linear ? " (linear scaling)"
                                                      : "");
  std::printf("sliding win.  %lld\ntied embed.   %s\nqkv bias      %s\nweights       %s\n",
              (long long)c.sliding_window, c.tie_embeddings ? "yes" : "no", c.qkv_bias ? "yes" : "no",
              src->storage_summary().c_str());
  std::printf("gpus          %d\n", cuda::device_count());
  return 0;
}

}  // namespace
}  // namespace tandem

int main(int argc, char** argv) {
  using namespace tandem;
  CLI::App app{"tandem: an LLM inference engine with a reference path to check every fast path against"};
  app.require_subcommand(1);

  CommonOptions gen_common;
  GenerationRequest req;
  float temp = req.sampling.temperature;
  uint64_t seed = 0;
  std::string prompt_text, prompt_ids;
  bool no_stream = false, ignore_eos = false;
  CLI::App* gen = app.add_subcommand("generate", "generate tokens from a prompt");
  add_common(gen, gen_common);
  gen->add_option("-p,--prompt", prompt_text, "prompt text");
  gen->add_option("--prompt-ids", prompt_ids, "prompt as comma-separated token ids");
  gen->add_option("-n,--n-predict", req.max_new_tokens, "tokens to generate")->capture_default_str();
  gen->add_option("--temp", temp, "temperature (0 = greedy)")->capture_default_str();
  gen->add_option("--top-k", req.sampling.top_k, "top-k (0 = off)")->capture_default_str();
  gen->add_option("--top-p", req.sampling.top_p, "top-p (1 = off)")->capture_default_str();
  gen->add_option("--min-p", req.sampling.min_p, "min-p (0 = off)")->capture_default_str();
  gen->add_option("--repeat-penalty", req.sampling.repeat_penalty, "repetition penalty (1 = off)")
      ->capture_default_str();
  gen->add_option("--repeat-last-n", req.sampling.repeat_last_n, "tokens the penalty looks back over")
      ->capture_default_str();
  auto* seed_opt = gen->add_option("-s,--seed", seed, "RNG seed (default: random, printed at the end)");
  gen->add_flag("--ignore-eos", ignore_eos, "keep generating past end-of-sequence tokens");
  gen->add_flag("--no-stream", no_stream, "print the tokens at the end instead of as they come");
  TapOptions tap_opts;
  gen->add_option("--dump-taps", tap_opts.dump_file, "write the prefill step's taps to this safetensors file");
  gen->add_option("--taps", tap_opts.filter, "taps to dump: names (L1.attention), stages (attention) or *");

  CommonOptions info_common;
  CLI::App* info = app.add_subcommand("info", "print a model's architecture and dimensions");
  add_common(info, info_common);

  CLI11_PARSE(app, argc, argv);
  try {
    if (*gen) {
      req.sampling.temperature = temp;
      if (seed_opt->count()) req.sampling.seed = seed;
      req.stop_at_eos = !ignore_eos;
      return run_generate(gen_common, prompt_text, prompt_ids, req, no_stream, tap_opts);
    }
    if (*info) return run_info(info_common);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
