// Shared pieces of the tandem subcommands.
#pragma once
#include <CLI/CLI.hpp>

#include <functional>
#include <memory>
#include <nlohmann/json_fwd.hpp>
#include <set>
#include <string>
#include <vector>

#include "runtime/generate.h"
#include "runtime/model_bundle.h"
#include "runtime/executor.h"
#include "runtime/stop_strings.h"

namespace tandem::cli {

struct ModelOptions {
  std::string model;  // empty: the default model (-m "" is an error)
  RunnerOptions runner;
  int threads = 0;            // 0: all cores (-t checks and caps it at parse time)
  int gpu_layers = -1;        // -ngl: -1 auto, 0 CPU, N > 0 every layer on the GPU
  std::string chat_template;  // override
  CLI::Option* dtype_opt = nullptr;  // given explicitly? (a warning on the CPU, which ignores them)
  CLI::Option* gmu_opt = nullptr;
};

// -m, --device, -ngl, --path, --dtype, --kv-tokens, -t, ... `required`: whether -m must be given (else the default).
void add_model_options(CLI::App* cmd, ModelOptions& o, bool required);

// The sampling flags, the context limit and the stop strings of run, chat and generate.
struct SamplingArgs {
  GenerationRequest req;
  std::string seed = "-1";  // -1: random (chosen before the model loads and printed)
  int64_t ctx_size = 0;     // -c: 0 = the model's context
  std::vector<std::string> stops;  // --stop (text)
};
void add_sampling_options(CLI::App* cmd, SamplingArgs& s, bool with_stops = true);
// The sampling values, -n, -c, --stop and the seed, checked (and the seed chosen) before any model is read: throws
// tandem::Error naming the flag.
void check_sampling(SamplingArgs& s);

struct Loaded {
  ModelBundle bundle;
  std::unique_ptr<Executor> runner;
};
// Opens the model and builds the runner the options ask for; reports both on stderr.
Loaded load(const ModelOptions& o);
std::filesystem::path model_path(const ModelOptions& o);

// The context a request may use: -c when given (checked against the model's), else the model's.
int64_t context_limit(const Loaded& l, int64_t ctx_size);
// -n -1 (until the context is full) resolved, then prompt + -n checked against context_limit: a clear error.
void fit_context(const Loaded& l, int64_t ctx_size, GenerationRequest& req);

// The end-of-turn ids: the tokenizer's eos ids plus the chat format's stop strings that are single tokens.
std::vector<int32_t> stop_ids(const Loaded& l, const ChatTemplate* chat);

// "1,2,3" (commas or spaces) -> token ids; a clear error otherwise (--prompt-ids).
std::vector<int32_t> parse_token_ids(const std::string& s);
// "a,b,c" -> {a, b, c} (--taps).
std::set<std::string> split_list(const std::string& s);

// The prompt from exactly one of: -p TEXT (- reads stdin), -f FILE, the words of a positional argument (joined by
// spaces). One trailing newline of a file or stdin is dropped (llama.cpp's -f). Empty: an error.
std::string read_prompt(const std::string& p, const std::string& file, const std::vector<std::string>& words = {});

// Load-progress bar on a terminal only.
void progress_bar(int64_t done, int64_t total);
// "prefill 2048/5900 tokens" on a terminal only (a no-op callback elsewhere).
PrefillProgress prefill_progress();

void print_stats(const GenerationStats& st);
// Resident memory of this process (VmRSS of /proc/self/status) and its peak (VmHWM), in bytes; 0 if unknown.
int64_t resident_bytes();
int64_t peak_resident_bytes();

// One request through generate(); on_token returns false to end the generation early (a stop string, Ctrl-C):
// the result then has the tokens so far and finish_reason "stop", the stats cover them.
GenerationResult generate_one(Executor& runner, const GenerationRequest& req,
                              const std::function<bool(int32_t)>& on_token, GenerationStats& st,
                              TapSink* taps = nullptr);

void register_generate(CLI::App& app);
void register_chat(CLI::App& app);  // `run` and `chat`
void register_info(CLI::App& app);
void register_perplexity(CLI::App& app);
void register_bench(CLI::App& app);
void register_trace(CLI::App& app);
void register_diff(CLI::App& app);
void register_bisect(CLI::App& app);
void register_serve(CLI::App& app);

}  // namespace tandem::cli
