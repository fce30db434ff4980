// tandem generate: raw completion of a prompt (text or token ids), streamed.
#include <charconv>
#include <cstdio>
#include <set>

#include "cli/common.h"
#include "diag/taps.h"

namespace tandem::cli {
namespace {

struct GenerateArgs {
  ModelOptions model;
  GenerationRequest req;
  uint64_t seed = 0;
  CLI::Option* seed_opt = nullptr;
  std::string prompt, prompt_ids, dump_taps, taps;
  bool ignore_eos = false, no_stream = false, print_ids = false, no_bos = false;
};

std::unique_ptr<TapRecorder> make_recorder(const GenerateArgs& a) {
  if (a.dump_taps.empty()) return nullptr;
  const std::set<std::string> filter = split_list(a.taps);
  for (const std::string& name : filter) {
    const auto dot = name.find('.');
    const std::string stage = dot == std::string::npos ? name : name.substr(dot + 1);
    TD_CHECK(name == "*" || stage_from_name(stage).has_value(),
             "--taps: '{}' names no stage (stages: embed, attn_norm, qkv, rope, attention, o_proj, attn_residual, "
             "mlp_norm, gate_up, act, down, mlp_residual, final_norm, logits)",
             name);
  }
  return std::make_unique<TapRecorder>(filter);
}

void run(GenerateArgs& a) {
  TD_CHECK(a.prompt.empty() || a.prompt_ids.empty(), "give either -p or --prompt-ids, not both");
  TD_CHECK(!a.prompt.empty() || !a.prompt_ids.empty(), "no prompt: pass -p TEXT or --prompt-ids 1,2,3");
  auto taps = make_recorder(a);
  Loaded l = load(a.model);
  const Tokenizer* tok = l.bundle.tokenizer ? &*l.bundle.tokenizer : nullptr;
  if (!a.prompt.empty()) {
    TD_CHECK(tok != nullptr, "{}: -p TEXT needs a tokenizer (tokenizer.json or a GGUF vocabulary); pass --prompt-ids",
             model_path(a.model).string());
    a.req.prompt = tok->encode(a.prompt, !a.no_bos, true);
  } else {
    a.req.prompt = parse_token_ids(a.prompt_ids);
  }
  if (a.seed_opt->count()) a.req.sampling.seed = a.seed;
  a.req.stop_at_eos = !a.ignore_eos;
  a.req.stop_ids = stop_ids(l, nullptr);

  const bool as_text = tok && !a.print_ids;
  std::optional<StreamDecoder> stream;
  if (as_text) stream.emplace(tok->stream_decoder(true));
  std::vector<int32_t> produced;
  auto emit = [&](int32_t t) {
    if (as_text) {
      std::fputs(stream->push(t).c_str(), stdout);
    } else {
      std::printf("%d ", t);
    }
    std::fflush(stdout);
  };
  GenerationStats st;
  auto results = generate(*l.runner, {a.req}, [&](size_t, int32_t t) { a.no_stream ? produced.push_back(t) : emit(t); },
                          &st, taps.get());
  for (int32_t t : produced) emit(t);
  if (as_text) std::fputs(stream->flush().c_str(), stdout);
  std::printf("\n");
  if (taps) {
    taps->save(a.dump_taps);
    std::fprintf(stderr, "taps: %zu tensors of the prefill step written to %s\n", taps->taps().size(),
                 a.dump_taps.c_str());
  }
  std::fprintf(stderr, "finish: %s, seed %llu\n", results[0].finish_reason.c_str(),
               (unsigned long long)results[0].seed);
  print_stats(st);
}
}  // namespace

void register_generate(CLI::App& app) {
  auto a = std::make_shared<GenerateArgs>();
  CLI::App* cmd = app.add_subcommand("generate", "complete a prompt (text or token ids), streaming the output");
  add_model_options(cmd, a->model, false);
  cmd->add_option("-p,--prompt", a->prompt, "prompt text");
  cmd->add_option("--prompt-ids", a->prompt_ids, "prompt as comma-separated token ids");
  add_sampling_options(cmd, a->req, a->seed, a->seed_opt);
  cmd->add_flag("--ignore-eos", a->ignore_eos, "keep generating past end-of-sequence tokens");
  cmd->add_flag("--no-stream", a->no_stream, "print the output at the end instead of as it comes");
  cmd->add_flag("--print-ids", a->print_ids, "print token ids instead of text");
  cmd->add_flag("--no-bos", a->no_bos, "do not add the tokenizer's BOS token to a text prompt");
  cmd->add_option("--dump-taps", a->dump_taps, "write the prefill step's taps to this safetensors file");
  cmd->add_option("--taps", a->taps, "taps to dump: names (L1.attention), stages (attention) or *");
  cmd->callback([a] { run(*a); });
}

}  // namespace tandem::cli
