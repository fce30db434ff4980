// tandem generate: raw completion of a prompt (text or token ids), streamed.
#include <charconv>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>

#include "cli/common.h"
#include "diag/taps.h"

namespace tandem::cli {
namespace {

struct GenerateArgs {
  ModelOptions model;
  SamplingArgs sampling;
  std::string prompt, file, prompt_ids, dump_taps, taps;
  bool ignore_eos = false, no_stream = false, print_ids = false, no_bos = false, json = false;
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
  // Everything the flags can get wrong is checked before the model is read.
  check_sampling(a.sampling);
  GenerationRequest& req = a.sampling.req;
  TD_CHECK((a.prompt.empty() && a.file.empty()) || a.prompt_ids.empty(), "give either -p/-f or --prompt-ids, not both");
  const std::string text = a.prompt_ids.empty() ? read_prompt(a.prompt, a.file) : std::string();
  TD_CHECK(!text.empty() || !a.prompt_ids.empty(), "no prompt: pass -p TEXT, -f FILE, -p - (stdin) or --prompt-ids 1,2,3");
  if (!a.prompt_ids.empty()) req.prompt = parse_token_ids(a.prompt_ids);
  auto taps = make_recorder(a);
  Loaded l = load(a.model);
  const Tokenizer* tok = l.bundle.tokenizer ? &*l.bundle.tokenizer : nullptr;
  if (!text.empty()) {
    TD_CHECK(tok != nullptr, "{}: -p TEXT needs a tokenizer (tokenizer.json or a GGUF vocabulary); pass --prompt-ids",
             model_path(a.model).string());
    req.prompt = tok->encode(text, !a.no_bos, true);
  }
  fit_context(l, a.sampling.ctx_size, req);
  req.stop_at_eos = !a.ignore_eos;
  req.stop_ids = stop_ids(l, nullptr);
  const bool as_text = tok && !a.print_ids;
  TD_CHECK(as_text || a.sampling.stops.empty(), "--stop matches text: it needs a tokenizer and no --print-ids");
  const bool stream_out = !a.no_stream && !a.json;
  std::optional<StreamDecoder> stream;
  if (tok) stream.emplace(tok->stream_decoder(true));
  StopStrings stops(a.sampling.stops);
  std::string out_text;
  auto emit = [&](const std::string& piece) {
    if (stream_out) {
      std::fputs(piece.c_str(), stdout);
      std::fflush(stdout);
    } else {
      out_text += piece;
    }
  };
  GenerationStats st;
  GenerationResult res = generate_one(
      *l.runner, req,
      [&](int32_t t) {
        if (as_text) {
          emit(stops.push(stream->push(t)));
          return !stops.stopped();
        }
        if (!a.json) emit(std::to_string(t) + " ");
        return true;
      },
      st, taps.get());
  if (as_text && !stops.stopped()) emit(stops.push(stream->flush()) + stops.flush());
  if (a.json) {
    if (tok && !as_text) {  // --print-ids --json: the text too
      StreamDecoder d = tok->stream_decoder(true);
      for (int32_t t : res.tokens) out_text += d.push(t);
      out_text += d.flush();
    }
    nlohmann::json j{{"text", out_text},
                     {"tokens", res.tokens},
                     {"finish_reason", res.finish_reason},
                     {"seed", res.seed},
                     {"prompt_tokens", st.prompt_tokens},
                     {"generated_tokens", int64_t(res.tokens.size())},
                     {"prefill_seconds", st.prefill_seconds},
                     {"decode_seconds", st.decode_seconds},
                     {"model", model_path(a.model).string()},
                     {"path", std::string(l.runner->path_name())}};
    if (stops.stopped()) j["stop"] = stops.which();
    // Replace, not throw, if a sampled token sequence ends inside a UTF-8 character.
    std::printf("%s\n", j.dump(2, ' ', false, nlohmann::json::error_handler_t::replace).c_str());
  } else {
    std::fputs(out_text.c_str(), stdout);
    std::printf("\n");
  }
  std::fflush(stdout);  // the newline before the stats on stderr
  if (taps) {
    taps->save(a.dump_taps);
    std::fprintf(stderr, "taps: %zu tensors of the prefill step written to %s\n", taps->taps().size(),
                 a.dump_taps.c_str());
  }
  std::fprintf(stderr, "finish: %s%s, seed %llu\n", res.finish_reason.c_str(),
               stops.stopped() ? (" (--stop \"" + stops.which() + "\")").c_str() : "", (unsigned long long)res.seed);
  print_stats(st);
}
}  // namespace

void register_generate(CLI::App& app) {
  auto a = std::make_shared<GenerateArgs>();
  CLI::App* cmd = app.add_subcommand("generate", "complete a prompt (text or token ids), streaming the output");
  add_model_options(cmd, a->model, false);
  cmd->add_option("-p,--prompt", a->prompt, "prompt text (- reads it from stdin)");
  cmd->add_option("-f,--file", a->file, "read the prompt from this file (one trailing newline dropped)");
  cmd->add_option("--prompt-ids", a->prompt_ids, "prompt as comma-separated token ids");
  add_sampling_options(cmd, a->sampling);
  cmd->add_flag("--json", a->json,
                "print one JSON object at the end (text, tokens, finish_reason, seed, token counts, timings) instead "
                "of streaming");
  cmd->add_flag("--ignore-eos", a->ignore_eos, "keep generating past end-of-sequence tokens");
  cmd->add_flag("--no-stream", a->no_stream, "print the output at the end instead of as it comes");
  cmd->add_flag("--print-ids", a->print_ids, "print token ids instead of text");
  cmd->add_flag("--no-bos", a->no_bos, "do not add the tokenizer's BOS token to a text prompt");
  cmd->add_option("--dump-taps", a->dump_taps, "write the prefill step's taps to this safetensors file");
  cmd->add_option("--taps", a->taps, "taps to dump: names (L1.attention), stages (attention) or *");
  cmd->callback([a] { run(*a); });
}

}  // namespace tandem::cli
