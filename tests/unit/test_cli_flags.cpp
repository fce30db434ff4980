// The command line as llama.cpp and vLLM users expect it (issue 15), on the tiny fixtures: subcommand errors, flag
// values checked before any model is read, -ngl, -t, -c, --json; and the prefill progress callback of generate().
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <nlohmann/json.hpp>
#include <thread>

#include "cli_run.h"
#include "cuda/device_query.h"
#include "io/safetensors.h"
#include "runners.h"
#include "runtime/generate.h"
#include "runtime/model_bundle.h"

namespace tandem {
namespace {
namespace fs = std::filesystem;
using ::testing::HasSubstr;
using ::testing::Not;

std::string fixture(const std::string& name) { return (fs::path(TANDEM_FIXTURES) / name).string(); }

TEST(CliFlags, UnknownSubcommandAndVersion) {
  RunResult r = run_tandem("foo --temp 0");
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_THAT(r.output, HasSubstr("unknown subcommand 'foo' (subcommands: generate, run, chat, info"));
  EXPECT_THAT(r.output, Not(HasSubstr("A subcommand is required")));
  r = run_tandem("");
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_THAT(r.output, HasSubstr("a subcommand is required (generate, run, chat"));
  r = run_tandem("--version");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(r.output.rfind("tandem ", 0), 0u) << r.output;
  EXPECT_THAT(r.output, Not(HasSubstr("subcommand")));
  r = run_tandem("serve --help");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("--max-model-len"));
  EXPECT_THAT(r.output, HasSubstr("--ctx-size"));
}

// Every value below is wrong; the model path does not exist. The error must name the flag, not the missing model:
// the values are checked before anything is read.
TEST(CliFlags, SamplingValuesFailBeforeTheModelLoads) {
  const std::string gen = "generate -m /nonexistent/model.gguf -p hello ";
  const std::pair<std::string, std::string> cases[] = {
      {"--top-k -3", "--top-k -3: expected 0 (off) or more"},
      {"--repeat-last-n -2", "--repeat-last-n -2: expected 0 (off), a token count or -1 (the whole context)"},
      {"--top-p 1.5", "sampling: top_p must be in (0, 1]"},
      {"--temp -1", "sampling: temperature must be finite and >= 0"},
      {"--min-p 2", "sampling: min_p must be in [0, 1]"},
      {"--repeat-penalty 0", "sampling: repeat_penalty must be finite and > 0"},
      {"-n 0", "-n 0: expected a number of tokens >= 1 (-1: until the context is full)"},
      {"-c -5", "-c -5: expected a context in tokens"},
      {"--seed abc", "--seed abc: expected a number from 0 to 2^64-1, or -1 for a random seed"},
      {"--seed -2", "--seed -2: expected a number"},
      {"--stop ''", "--stop: an empty stop string"},
  };
  for (const auto& [flags, message] : cases) {
    const RunResult r = run_tandem(gen + flags);
    EXPECT_EQ(r.exit_code, 1) << flags << "\n" << r.output;
    EXPECT_THAT(r.output, HasSubstr("error: " + message)) << flags;
    EXPECT_THAT(r.output, Not(HasSubstr("nonexistent"))) << flags;
  }
  // run and chat check the same values (and the chat format's name) before loading too.
  RunResult r = run_tandem("run -m /nonexistent/model.gguf --top-k -1 hello");
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_THAT(r.output, HasSubstr("error: --top-k -1: expected 0 (off) or more"));
  r = run_tandem("run -m /nonexistent/model.gguf --chat-template foo hello");
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_THAT(r.output, HasSubstr("unknown chat template 'foo'"));
  r = run_shell("echo hi | " + std::string(TANDEM_BINARY) + " chat -m /nonexistent/model.gguf --seed x 2>&1");
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_THAT(r.output, HasSubstr("--seed x: expected a number"));
}

TEST(CliFlags, EmptyModelPathAndEmptyPrompt) {
  for (const char* cmd : {"generate -p hi", "run hi", "info", "perplexity -f x.txt"}) {
    const RunResult r = run_tandem(std::string(cmd) + " -m ''");
    EXPECT_EQ(r.exit_code, 2) << cmd << "\n" << r.output;
    EXPECT_THAT(r.output, HasSubstr("--model: the model path is empty (leave -m out for the default model)")) << cmd;
  }
  RunResult r = run_tandem("run -m /nonexistent/model.gguf ''");
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_THAT(r.output, HasSubstr("error: the prompt is empty"));
  r = run_tandem("run -m /nonexistent/model.gguf");
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_THAT(r.output, HasSubstr("error: no question: tandem run \"QUESTION\""));
  r = run_shell("printf '\\n' | " + std::string(TANDEM_BINARY) + " generate -m /nonexistent/model.gguf -p - 2>&1");
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_THAT(r.output, HasSubstr("error: the prompt is empty (stdin holds no text)"));
  r = run_tandem("generate -m /nonexistent/model.gguf -p a -f b.txt");
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_THAT(r.output, HasSubstr("give the prompt once: -p TEXT, -f FILE or as arguments"));
}

TEST(CliFlags, ThreadsAreCheckedAndCapped) {
  for (const char* t : {"0", "-2", "x"}) {
    const RunResult r = run_tandem("generate -m /nonexistent/model.gguf -p hi -t " + std::string(t));
    EXPECT_EQ(r.exit_code, 2) << t << "\n" << r.output;
    EXPECT_THAT(r.output, HasSubstr("--threads: '" + std::string(t) + "': expected a number of threads >= 1")) << t;
  }
  const int cores = int(std::max(1u, std::thread::hardware_concurrency()));
  const RunResult r = run_tandem("generate -m " + fixture("llama") + " --prompt-ids 1,2,3 -n 2 --temp 0 -t 100000");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("warning: -t 100000: this machine has " + std::to_string(cores) +
                                  " cores; using " + std::to_string(cores) + " threads"));
  EXPECT_THAT(r.output, HasSubstr("cpu, " + std::to_string(cores) + " threads"));
}

// llama.cpp's -ngl: 0 runs on the CPU, N > 0 on the GPU (every layer), and it cannot be combined with --device.
TEST(CliFlags, NglPicksTheDevice) {
  RunResult r = run_tandem("generate -m " + fixture("llama") + " --prompt-ids 1,2,3 -n 2 --temp 0 -ngl 0 --dtype f16");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr(" on cpu, "));
  EXPECT_THAT(r.output, HasSubstr("warning: --dtype f16 is ignored on the CPU, which computes in f32"));
  r = run_tandem("generate -m " + fixture("llama") + " --prompt-ids 1 -ngl 5 --device cpu");
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_THAT(r.output, HasSubstr("--device excludes --n-gpu-layers"));
  r = run_tandem("generate -m " + fixture("llama") + " --prompt-ids 1 -ngl -3");
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_THAT(r.output, HasSubstr("'-3': expected -1 (auto), 0 (CPU) or a layer count (GPU)"));
  if (cuda::device_count() == 0) {
    r = run_tandem("generate -m " + fixture("llama") + " --prompt-ids 1 -ngl 99");
    EXPECT_EQ(r.exit_code, 1) << r.output;
    EXPECT_THAT(r.output, HasSubstr("no CUDA GPU found"));
  }
}

TEST(CliFlags, ContextSize) {
  const std::string gen = "generate -m " + fixture("llama") + " --prompt-ids 1,2,3 --temp 0 --ignore-eos ";
  RunResult r = run_tandem(gen + "-n 20 -c 10");
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_THAT(r.output, HasSubstr("the prompt of 3 tokens + 20 new tokens (-n) = 23 exceeds the context (-c) of 10 tokens"));
  r = run_tandem(gen + "-n 2 --ctx-size 200000");
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_THAT(r.output, HasSubstr("-c 200000: larger than the model's context of 131072 tokens"));
  // -n -1: until the context is full (llama.cpp).
  r = run_tandem(gen + "-n -1 --max-model-len 8");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("decode: 4 tokens"));
  EXPECT_THAT(r.output, HasSubstr("finish: length"));
}

// --json: one object on stdout; its tokens are HF's greedy tokens.
TEST(CliFlags, GenerateAndInfoJson) {
  auto exp = SafetensorsFile::open(fs::path(fixture("llama")) / "expected.safetensors");
  const Tensor prompt = exp->find("p0.prompt")->view();
  const Tensor want = exp->find("p0.decode_tokens")->view();
  std::string ids;
  for (int64_t i = 0; i < prompt.numel(); ++i) ids += (i ? "," : "") + std::to_string(prompt.ptr<int32_t>()[i]);
  RunResult r = run_shell(std::string(TANDEM_BINARY) + " generate -m " + fixture("llama") + " --prompt-ids " + ids +
                          " -n 8 --temp 0 --ignore-eos --seed 5 --path reference --json 2>/dev/null");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const nlohmann::json j = nlohmann::json::parse(r.output);
  ASSERT_EQ(j.at("tokens").size(), 8u) << r.output;
  for (int i = 0; i < 8; ++i) EXPECT_EQ(j["tokens"][i].get<int>(), want.ptr<int32_t>()[i]) << i;
  EXPECT_EQ(j["finish_reason"], "length");
  EXPECT_EQ(j["seed"].get<uint64_t>(), 5u);
  EXPECT_EQ(j["prompt_tokens"].get<int64_t>(), prompt.numel());
  EXPECT_EQ(j["generated_tokens"].get<int64_t>(), 8);
  EXPECT_EQ(j["text"], "");  // no tokenizer
  EXPECT_EQ(j["path"], "reference");

  r = run_shell(std::string(TANDEM_BINARY) + " info -m " + fixture("llama") + " --json 2>/dev/null");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const nlohmann::json info = nlohmann::json::parse(r.output);
  EXPECT_EQ(info["architecture"], "llama");
  EXPECT_EQ(info["vocab"].get<int64_t>(), 320);
  EXPECT_EQ(info["context"].get<int64_t>(), 131072);
  EXPECT_TRUE(info["checked"].get<bool>());
  EXPECT_TRUE(info["tokenizer"].is_null());
  EXPECT_GT(info["resident_bytes"].get<int64_t>(), 1 << 20);
  EXPECT_GE(info["peak_resident_bytes"].get<int64_t>(), info["resident_bytes"].get<int64_t>());

  r = run_tandem("info -m " + fixture("llama"));
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("MiB resident, peak"));
}

TEST(CliFlags, InfoUnknownChatTemplateExitsNonZero) {
  RunResult r = run_tandem("info -m " + fixture("llama") + " --chat-template foo");
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_THAT(r.output, HasSubstr("error: unknown chat template 'foo' (known: chatml, llama3, mistral)"));
}

// generate() with a progress callback runs a long prefill in chunks, reports each, and gives the same greedy tokens
// as the one-step prefill.
TEST(PrefillProgress, ChunksReportAndMatchTheOneStepPrefill) {
  ModelBundle b = open_model_bundle(fixture("llama"));
  auto model = std::shared_ptr<const Model>(load_reference_model(*b.source));
  GenerationRequest q;
  for (int i = 0; i < 600; ++i) q.prompt.push_back(int32_t((i * 37 + 11) % 320));
  q.max_new_tokens = 4;
  q.sampling.temperature = 0;
  q.stop_at_eos = false;
  auto one = reference_runner(model);
  const auto want = generate(*one, {q});
  std::vector<std::pair<int64_t, int64_t>> calls;
  auto chunked = reference_runner(model);
  GenerationStats st;
  const auto got = generate(*chunked, {q}, {}, &st, nullptr, [&](int64_t d, int64_t t) { calls.emplace_back(d, t); });
  const std::vector<std::pair<int64_t, int64_t>> expected{{256, 600}, {512, 600}, {600, 600}};
  EXPECT_EQ(calls, expected);
  EXPECT_EQ(got[0].tokens, want[0].tokens);
  EXPECT_EQ(st.prompt_tokens, 600);
  // A prompt of one chunk or less is one step: no calls.
  calls.clear();
  q.prompt.resize(200);
  generate(*chunked, {q}, {}, nullptr, nullptr, [&](int64_t d, int64_t t) { calls.emplace_back(d, t); });
  EXPECT_TRUE(calls.empty());
}

}  // namespace
}  // namespace tandem
