// The flags shared by the subcommands (model, device, threads, sampling, prompt) and their checks, which all run
// before a model is read.
#include <unistd.h>

#include <charconv>
#include <climits>
#include <cstdio>
#include <iostream>
#include <iterator>
#include <random>
#include <thread>

#include "cli/common.h"
#include "core/file.h"

namespace tandem::cli {
namespace {

// A flag's integer value, or nullopt when `v` is not one.
template <class T>
std::optional<T> parse_int(const std::string& v) {
  T n{};
  auto [end, ec] = std::from_chars(v.data(), v.data() + v.size(), n);
  if (ec != std::errc() || end != v.data() + v.size()) return std::nullopt;
  return n;
}

int hardware_threads() { return int(std::max(1u, std::thread::hardware_concurrency())); }

}  // namespace

void add_model_options(CLI::App* cmd, ModelOptions& o, bool required) {
  auto* m = cmd->add_option("-m,--model", o.model, "model: HF folder, .safetensors or .gguf file (default: the default "
                                                   "model or $TANDEM_MODEL)");
  m->check(CLI::Validator(
      [](std::string& v) { return v.empty() ? std::string("the model path is empty (leave -m out for the default model)") : std::string(); },
      "PATH"));
  if (required) m->required();
  auto* device = cmd->add_option("--device", o.runner.device, "auto | cpu | cuda")
                     ->check(CLI::IsMember({"auto", "cpu", "cuda"}));
  // llama.cpp's -ngl (main() spells it --n-gpu-layers for CLI11): tandem runs a model on one device, so any N > 0
  // puts every layer on the GPU and 0 keeps the model on the CPU.
  cmd->add_option_function<int>(
         "--n-gpu-layers,--gpu-layers",
         [&o](const int& n) {
           o.gpu_layers = n;
           o.runner.device = n < 0 ? "auto" : n == 0 ? "cpu" : "cuda";
         },
         "-ngl N (llama.cpp): 0 = run on the CPU, N > 0 = run on the GPU (all layers: tandem does not split a "
         "model), -1 = auto")
      ->check(CLI::Validator(
          [](std::string& v) {
            const auto n = parse_int<int>(v);
            return n && *n >= -1 ? std::string() : "'" + v + "': expected -1 (auto), 0 (CPU) or a layer count (GPU)";
          },
          "N"))
      ->excludes(device);
  cmd->add_option("--path", o.runner.path, "execution path: auto (fused on a GPU, else cpu) | reference | standard | fused (tandem info --variants)");
  o.dtype_opt = cmd->add_option("--dtype", o.runner.dtype, "GPU weights/activations: bf16 | f16 | f32 (the CPU computes in f32)")
                    ->check(CLI::IsMember({"bf16", "f16", "f32"}));
  cmd->add_option("--kv-tokens", o.runner.kv_tokens,
                  "KV cache size in tokens (default: automatic; on the CPU the pool's starting size, grown on demand "
                  "unless --kv-fixed)");
  o.gmu_opt = cmd->add_option("--gpu-memory-utilization", o.runner.gpu_memory_utilization,
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
  cmd->add_option("--split-kv", o.runner.split_kv,
                  "GPU, FlashInfer attention: auto (FlashInfer decides) | off (never split the KV) | on (always split "
                  "it in small chunks and merge; for comparisons)")
      ->check(CLI::IsMember({"auto", "off", "on"}))
      ->capture_default_str();
  cmd->add_flag("--check-tensors,!--no-check-tensors", o.runner.check_tensors,
                "scan every weight for NaN/Inf (and quantized blocks' scales) before running; fail naming the "
                "tensors (on by default in `tandem info`)");
  // At least 1; more than the machine's cores only oversubscribes them (the pool spins): capped, with a warning.
  cmd->add_option("-t,--threads", o.threads, "CPU threads (default: all cores; more than that is capped)")
      ->transform(CLI::Validator(
          [](std::string& v) {
            const auto n = parse_int<int>(v);
            const int cores = hardware_threads();
            if (!n || *n < 1)
              return "'" + v + "': expected a number of threads >= 1 (leave -t out for all " + std::to_string(cores) +
                     " cores)";
            if (*n > cores) {
              std::fprintf(stderr, "warning: -t %d: this machine has %d cores; using %d threads\n", *n, cores, cores);
              v = std::to_string(cores);
            }
            return std::string();
          },
          "N"));
}

void add_sampling_options(CLI::App* cmd, SamplingArgs& s, bool with_stops) {
  GenerationRequest& req = s.req;
  cmd->add_option("-n,--n-predict", req.max_new_tokens, "tokens to generate (-1: until the context is full)")
      ->capture_default_str();
  cmd->add_option("-c,--ctx-size,--max-model-len", s.ctx_size,
                  "context in tokens: prompt + generated tokens (0: the model's; llama.cpp -c, vLLM --max-model-len)")
      ->capture_default_str();
  cmd->add_option("--temp", req.sampling.temperature, "temperature (0 = greedy)")->capture_default_str();
  cmd->add_option("--top-k", req.sampling.top_k, "top-k (0 = off)")->capture_default_str();
  cmd->add_option("--top-p", req.sampling.top_p, "top-p (1 = off)")->capture_default_str();
  cmd->add_option("--min-p", req.sampling.min_p, "min-p (0 = off)")->capture_default_str();
  cmd->add_option("--repeat-penalty", req.sampling.repeat_penalty, "repetition penalty (1 = off)")
      ->capture_default_str();
  cmd->add_option("--repeat-last-n", req.sampling.repeat_last_n,
                  "tokens the penalty looks back over (0 = none, -1 = the whole context, as in llama.cpp)")
      ->capture_default_str();
  cmd->add_option("-s,--seed", s.seed, "RNG seed (-1 = random: chosen at the start and printed)")
      ->capture_default_str();
  if (with_stops)
    cmd->add_option("--stop", s.stops, "stop before this text (repeatable); it is not printed")
        ->allow_extra_args(false)
        ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
}

void check_sampling(SamplingArgs& s) {
  GenerationRequest& req = s.req;
  TD_CHECK(req.max_new_tokens >= 1 || req.max_new_tokens == -1,
           "-n {}: expected a number of tokens >= 1 (-1: until the context is full)", req.max_new_tokens);
  TD_CHECK(s.ctx_size >= 0, "-c {}: expected a context in tokens (0: the model's)", s.ctx_size);
  TD_CHECK(req.sampling.top_k >= 0, "--top-k {}: expected 0 (off) or more", req.sampling.top_k);
  TD_CHECK(req.sampling.repeat_last_n >= -1, "--repeat-last-n {}: expected 0 (off), a token count or -1 (the whole "
           "context)", req.sampling.repeat_last_n);
  req.sampling.validate();
  for (const std::string& stop : s.stops) TD_CHECK(!stop.empty(), "--stop: an empty stop string would stop at once");
  if (s.seed == "-1") {
    std::random_device rd;
    req.sampling.seed = (uint64_t(rd()) << 32) ^ uint64_t(rd());
  } else {
    const auto seed = parse_int<uint64_t>(s.seed);
    TD_CHECK(seed.has_value(), "--seed {}: expected a number from 0 to 2^64-1, or -1 for a random seed", s.seed);
    req.sampling.seed = *seed;
  }
}

std::string read_prompt(const std::string& p, const std::string& file, const std::vector<std::string>& words) {
  const int given = int(!p.empty()) + int(!file.empty()) + int(!words.empty());
  TD_CHECK(given <= 1, "give the prompt once: -p TEXT, -f FILE or as arguments");
  std::string text, from;
  if (p == "-" || file == "-") {
    text.assign(std::istreambuf_iterator<char>(std::cin), std::istreambuf_iterator<char>());
    from = "stdin";
  } else if (!file.empty()) {
    text = read_file(file);
    from = file;
  } else if (!p.empty()) {
    return p;
  } else {
    for (const std::string& w : words) text += (text.empty() ? "" : " ") + w;
    TD_CHECK(given == 0 || !text.empty(), "the prompt is empty");
    return text;
  }
  if (!text.empty() && text.back() == '\n') text.pop_back();
  if (!text.empty() && text.back() == '\r') text.pop_back();
  TD_CHECK(!text.empty(), "the prompt is empty ({} holds no text)", from);
  return text;
}

}  // namespace tandem::cli
