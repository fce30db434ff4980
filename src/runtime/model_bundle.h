// Everything a user-facing command needs from a model path: the opened model source (config + weight views),
// the tokenizer (tokenizer.json of an HF folder, or the GGUF's own vocabulary) and the model's chat template;
// and the factory that builds a runner (execution path) over it.
#pragma once
#include <filesystem>
#include <memory>
#include <optional>
#include <string>

#include "io/tensor_check.h"
#include "model/model.h"
#include "runtime/executor.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/tokenizer.h"

namespace tandem {

struct ModelBundle {
  std::shared_ptr<const ModelSource> source;
  std::optional<Tokenizer> tokenizer;  // none for an HF folder without tokenizer.json
  std::string tokenizer_source;
  std::string chat_template_text;  // the model's own Jinja template; may be empty
  const ModelConfig& config() const { return source->config(); }
};

// Opens the model (config, weight views, tokenizer, template); weights are read by make_runner.
ModelBundle open_model_bundle(const std::filesystem::path& path);

struct RunnerOptions {
  std::string device = "auto";  // auto | cpu | cuda
  std::string path = "auto";    // auto | a path preset (reference, standard)
  std::string dtype = "bf16";   // GPU paths: bf16 | f16 | f32 (the CPU reference is always fp32)
  int64_t kv_tokens = 0;        // KV pool size in tokens (0: the device's default)
  double gpu_memory_utilization = 0;  // (0, 1]: size the GPU KV pool so the process uses this share of the card
  int64_t page_size = 16;       // KV page size in tokens
  std::string kv_layout = "nhd";       // nhd | hnd
  std::vector<std::string> variants;   // --variant STAGE=NAME overrides
  bool kv_poison = false;              // fill fresh KV pages with NaN and check every attention output
  bool nan_check = false;              // stop at the first variant output holding NaN/Inf
  bool cuda_graphs = true;             // decode steps from CUDA graphs (ExecutorOptions::cuda_graphs)
  bool pdl = true;                     // programmatic dependent launch (HostOptions::programmatic_launch)
  std::string split_kv = "auto";       // FlashInfer split-KV: auto | off | on (HostOptions::split_kv; GPU only)
  bool kv_fixed = false;               // CPU: a KV pool of kv_tokens that does not grow (HostOptions::kv_fixed)
  bool prefix_caching = false;         // share cached K/V pages of common prefixes (ExecutorOptions::prefix_caching)
  bool check_tensors = false;          // make_runner scans every weight for NaN/Inf first (check_weights_finite)
};
// The preset `auto` resolves to: the fused path on a GPU when one is present (or --device cuda), else the
// reference path on the CPU.
std::string resolve_path(const RunnerOptions& options);
// The checked plan the options ask for (no weights are read); `config` enables the per-model support checks.
Plan plan_for(const RunnerOptions& options, const ModelConfig* config);
std::unique_ptr<Executor> make_runner(const ModelBundle& bundle, const RunnerOptions& options,
                                      LoadProgress progress = nullptr);
// A real-shape model with deterministic pseudo-random weights on the device (benchmarks; GPU paths).
std::unique_ptr<Executor> make_random_runner(const ModelConfig& config, const RunnerOptions& options, uint64_t seed);

// HF folders: tokenizer.json does not say which tokens are BOS/EOS; tokenizer_config.json does ("bos_token",
// "eos_token" as a string or {"content": ...}, "add_bos_token"), and config.json's eos_token_id adds more
// end-of-generation ids. Applies them to `tok`; a named token missing from the vocabulary is an error.
void apply_hf_tokenizer_config(Tokenizer& tok, const std::filesystem::path& dir,
                               const std::vector<int32_t>& config_eos_ids = {});

// Every weight the model uses (embedding, norms, head, each layer's matrices and biases) as stored, by its name
// in the file. A tied lm_head is listed once.
std::vector<CheckedTensor> model_weight_views(const ModelSource& source);
// --check-tensors: throws "<source>: N weight tensor(s) hold NaN or Inf values (--check-tensors):" with one
// line per tensor (name, dtype, file, NaN and Inf counts, first index) when any does.
void check_weights_finite(const ModelSource& source);
// What loading checks of every weight -- present, shape as the config implies, a dtype tandem can load --
// without keeping any (each weight is converted to fp32 and dropped). `tandem info` runs it so that it rejects
// what `generate` rejects.
void validate_weights(const ModelSource& source);

// The chat format: `override_name` if given, else detected from the model's template and vocabulary.
ChatTemplate chat_template_for(const ModelBundle& bundle, std::string_view override_name = {});

// -m default: $TANDEM_MODEL, else models/SmolLM2-135M-Instruct.Q4_1.gguf under the working directory or
// next to the binary's build folder. Throws with the setup command when none exists.
std::filesystem::path default_model_path();

}  // namespace tandem
