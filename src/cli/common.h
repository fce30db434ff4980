// Shared pieces of the tandem subcommands.
#pragma once
#include <CLI/CLI.hpp>

#include <memory>
#include <set>
#include <string>
#include <vector>

#include "runtime/generate.h"
#include "runtime/model_bundle.h"
#include "runtime/executor.h"

namespace tandem::cli {

struct ModelOptions {
  std::string model;  // empty: the default model
  RunnerOptions runner;
  int threads = 0;
  std::string chat_template;  // override
};

// -m, --device, --path, --dtype, --kv-tokens, -t. `required`: whether -m must be given (else the default).
void add_model_options(CLI::App* cmd, ModelOptions& o, bool required);
void add_sampling_options(CLI::App* cmd, GenerationRequest& req, uint64_t& seed, CLI::Option*& seed_opt);

struct Loaded {
  ModelBundle bundle;
  std::unique_ptr<Executor> runner;
};
// Opens the model and builds the runner the options ask for; reports both on stderr.
Loaded load(const ModelOptions& o);
std::filesystem::path model_path(const ModelOptions& o);

// The end-of-turn ids: the tokenizer's eos ids plus the chat format's stop strings that are single tokens.
std::vector<int32_t> stop_ids(const Loaded& l, const ChatTemplate* chat);

// "1,2,3" (commas or spaces) -> token ids; a clear error otherwise (--prompt-ids).
std::vector<int32_t> parse_token_ids(const std::string& s);
// "a,b,c" -> {a, b, c} (--taps).
std::set<std::string> split_list(const std::string& s);

// Load-progress bar on a terminal only.
void progress_bar(int64_t done, int64_t total);

void print_stats(const GenerationStats& st);

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
