// The default model (SmolLM2-135M-Instruct, Q4_1 GGUF) end to end against HF transformers loading the same
// GGUF (tools/make_default_model_fixture.py): tokenizer + chat template ids, logits, 64 greedy tokens and
// perplexity. Skips (visibly) when the model has not been fetched; `make test` fetches it first.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "cli_run.h"
#include "core/file.h"
#include "runners.h"
#include "diag/compare.h"
#include "io/safetensors.h"
#include "runtime/generate.h"
#include "runtime/model_bundle.h"
#include "runtime/perplexity.h"

namespace tandem {
namespace {
namespace fs = std::filesystem;

const fs::path kRepo = fs::path(TANDEM_FIXTURES).parent_path().parent_path();
const fs::path kModel = kRepo / "models/SmolLM2-135M-Instruct.Q4_1.gguf";

class DefaultModel : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (!fs::exists(kModel)) return;
    bundle_ = new ModelBundle(open_model_bundle(kModel));
    model_ = std::shared_ptr<const Model>(load_reference_model(*bundle_->source));
    expected_ = SafetensorsFile::open(fs::path(TANDEM_FIXTURES) / "default_model/default_model.safetensors").release();
  }
  static void TearDownTestSuite() {
    model_.reset();
    delete bundle_;
    delete expected_;
  }
  void SetUp() override {
    if (!bundle_) GTEST_SKIP() << kModel << " is missing: run tools/fetch_default_model.sh (make test does)";
  }
  static std::vector<int32_t> ints(const std::string& name) {
    const TensorEntry* e = expected_->find(name);
    EXPECT_NE(e, nullptr) << name;
    if (!e) return {};
    std::vector<int32_t> v(e->nbytes / 4);
    std::memcpy(v.data(), e->file->data() + e->offset, e->nbytes);
    return v;
  }
  static std::vector<std::string> prompts() {
    return nlohmann::json::parse(expected_->metadata().at("prompts")).get<std::vector<std::string>>();
  }
  static inline ModelBundle* bundle_ = nullptr;
  static inline std::shared_ptr<const Model> model_;
  static inline SafetensorsFile* expected_ = nullptr;
};

TEST_F(DefaultModel, TokenizerAndChatTemplateMatchHF) {
  const Tokenizer& tok = *bundle_->tokenizer;
  const auto texts = prompts();
  ASSERT_EQ(texts.size(), 4u);
  // Prompts 0 and 1 went through HF's apply_chat_template; rendering them ourselves must give the same text.
  const ChatTemplate chat = chat_template_for(*bundle_);
  EXPECT_EQ(chat.format(), ChatFormat::ChatML);
  const ChatMessage q[] = {{"user", "What is the capital of France?"}};
  EXPECT_EQ(chat.render(q), texts[0]);
  for (size_t p = 0; p < texts.size(); ++p)
    EXPECT_EQ(tok.encode(texts[p], false, true), ints("p" + std::to_string(p) + ".prompt")) << "prompt " << p;
}

// Logits at every prompt position (top-16 of HF) and the full last row, within 1e-3 relative; then 64 greedy
// tokens identical, all four prompts decoding together in one batch.
TEST_F(DefaultModel, LogitsAndGreedyMatchHF) {
  auto runner = reference_runner(model_);
  const int64_t V = model_->config.vocab_size;
  const int P = 4;
  Step prefill;
  std::vector<int64_t> offsets;
  for (int p = 0; p < P; ++p) {
    const auto ids = ints("p" + std::to_string(p) + ".prompt");
    runner->create_sequence(p, int64_t(ids.size()) + 80);
    offsets.push_back(prefill.size());
    for (size_t i = 0; i < ids.size(); ++i) prefill.add(ids[i], p, int32_t(i), true);
  }
  const StepOutput out = runner->forward(prefill, nullptr);
  double worst_rel = 0, worst_top = 0;
  std::vector<int32_t> next(static_cast<size_t>(P));
  for (int p = 0; p < P; ++p) {
    const std::string pre = "p" + std::to_string(p) + ".";
    const auto ids = ints(pre + "prompt");
    const int64_t last = offsets[size_t(p)] + int64_t(ids.size()) - 1;
    const Comparison c = compare(out.logits.view().slice_rows(last, last + 1), expected_->find(pre + "last_logits")->view());
    EXPECT_LE(c.rel_l2, 1e-3) << pre << " last row: " << c.summary();
    worst_rel = std::max(worst_rel, c.rel_l2);
    const auto top_ids = ints(pre + "topk_ids");
    const TensorEntry* tv = expected_->find(pre + "topk_logits");
    const int64_t K = tv->shape[1];
    for (size_t i = 0; i < ids.size(); ++i) {
      const float* row = out.logits.f32() + (offsets[size_t(p)] + int64_t(i)) * V;
      float hf_max = 0;
      std::memcpy(&hf_max, tv->file->data() + tv->offset + i * K * 4, 4);
      for (int64_t k = 0; k < K; ++k) {
        float hf;
        std::memcpy(&hf, tv->file->data() + tv->offset + (i * K + k) * 4, 4);
        const double err = std::abs(row[top_ids[i * K + k]] - hf) / std::max(1.0f, std::abs(hf_max));
        worst_top = std::max(worst_top, err);
      }
    }
    const float* r = out.logits.f32() + last * V;
    next[size_t(p)] = int32_t(std::max_element(r, r + V) - r);
  }
  EXPECT_LE(worst_top, 1e-3) << "top-16 logits at every prompt position, relative to the row's max";
  std::printf("[ info ] default model vs HF: last-row rel_l2 %.2e, top-16 max rel err %.2e\n", worst_rel, worst_top);

  std::vector<std::vector<int32_t>> want(static_cast<size_t>(P)), got(static_cast<size_t>(P));
  for (int p = 0; p < P; ++p) want[size_t(p)] = ints("p" + std::to_string(p) + ".greedy");
  for (size_t s = 0; s < want[0].size(); ++s) {
    Step step;
    for (int p = 0; p < P; ++p) {
      got[size_t(p)].push_back(next[size_t(p)]);
      step.add(next[size_t(p)], p, int32_t(runner->sequence_length(p)), true);
    }
    const StepOutput o = runner->forward(step, nullptr);
    for (int p = 0; p < P; ++p) {
      const float* r = o.logits.f32() + p * V;
      next[size_t(p)] = int32_t(std::max_element(r, r + V) - r);
    }
  }
  for (int p = 0; p < P; ++p) EXPECT_EQ(got[size_t(p)], want[size_t(p)]) << "greedy continuation of prompt " << p;
}

TEST_F(DefaultModel, PerplexityWithinHalfPercentOfHF) {
  const auto& meta = expected_->metadata();
  const double hf = std::stod(meta.at("perplexity"));
  const auto ids = ints("ppl.ids");
  // Same text through our tokenizer gives the same ids (the file is written by tools/setup.sh).
  const fs::path text = kRepo / ".deps/kjv-genesis.txt";
  if (fs::exists(text)) {
    auto ours = bundle_->tokenizer->encode(read_file(text), false, false);
    ours.resize(std::min(ours.size(), ids.size()));
    EXPECT_EQ(ours, ids);
  }
  auto runner = reference_runner(model_);
  const PerplexityResult r = perplexity(*runner, ids, std::stoll(meta.at("ppl_ctx")), std::stoll(meta.at("ppl_stride")));
  EXPECT_EQ(r.scored, std::stoll(meta.at("ppl_scored")));
  EXPECT_NEAR(r.perplexity, hf, 0.005 * hf) << "tandem " << r.perplexity << " vs HF " << hf;
  std::printf("[ info ] perplexity tandem %.6f vs HF %.6f (%.4f%%)\n", r.perplexity, hf,
              100.0 * (r.perplexity - hf) / hf);
}

// `tandem run` on the default model answers the question (the README's `make run`), printing load time and
// speeds.
TEST_F(DefaultModel, RunAnswersParis) {
  const std::string cmd = std::string(TANDEM_BINARY) + " run -m " + kModel.string() +
                          " --temp 0 \"What is the capital of France?\" 2>&1";
  const auto [status, out] = run_shell(cmd);
  EXPECT_EQ(status, 0) << out;
  EXPECT_NE(out.find("Paris"), std::string::npos) << out;
  EXPECT_NE(out.find("loaded in"), std::string::npos) << out;
  EXPECT_NE(out.find("decode:"), std::string::npos) << out;
}

// `tandem chat` keeps the conversation: the second turn's prompt holds the first exchange.
TEST_F(DefaultModel, ChatKeepsHistory) {
  const std::string cmd = "printf 'What is the capital of France?\\nAnd of Germany?\\n/exit\\n' | " +
                          std::string(TANDEM_BINARY) + " chat -m " + kModel.string() + " --temp 0 -n 24 2>&1";
  const auto [status, out] = run_shell(cmd);
  EXPECT_EQ(status, 0) << out;
  EXPECT_NE(out.find("Paris"), std::string::npos) << out;
  std::vector<long> prompt_tokens, cached;
  for (size_t at = out.find("[", 0); at != std::string::npos; at = out.find("[", at + 1))
    if (at + 1 < out.size() && std::isdigit(static_cast<unsigned char>(out[at + 1]))) {
      prompt_tokens.push_back(std::stol(out.substr(at + 1)));
      const size_t comma = out.find(", ", at);
      cached.push_back(std::stol(out.substr(comma + 2)));  // "[N prompt tokens, M of them cached, ..."
    }
  ASSERT_EQ(prompt_tokens.size(), 2u) << out;
  EXPECT_GT(prompt_tokens[1], prompt_tokens[0] + 10) << out;
  // Prefix caching: the second turn reuses the first turn's pages (whole pages of 16 tokens).
  EXPECT_EQ(cached[0], 0) << out;
  EXPECT_GE(cached[1], 16) << out;
  EXPECT_EQ(cached[1] % 16, 0) << out;
}

// Chat commands answer without reaching the model; an unknown one lists the commands.
TEST_F(DefaultModel, ChatCommandsAreNotSentToTheModel) {
  const std::string cmd = "printf '/help\\n/reset\\n/system Be brief.\\n/foo\\n/exit\\n' | " + std::string(TANDEM_BINARY) +
                          " chat -m " + kModel.string() + " 2>&1";
  const auto [status, out] = run_shell(cmd);
  EXPECT_EQ(status, 0) << out;
  EXPECT_NE(out.find("commands: /help"), std::string::npos) << out;
  EXPECT_NE(out.find("conversation cleared"), std::string::npos) << out;
  EXPECT_NE(out.find("system prompt set; conversation cleared"), std::string::npos) << out;
  EXPECT_NE(out.find("unknown command /foo"), std::string::npos) << out;
  EXPECT_EQ(out.find("prompt tokens"), std::string::npos) << "a command reached the model:\n" << out;
}

// A line ending in \ continues the message; /save writes the conversation as OpenAI-shaped JSON.
TEST_F(DefaultModel, ChatMultiLineMessageAndSave) {
  const fs::path file = fs::path(::testing::TempDir()) / "tandem_chat_save.json";
  fs::remove(file);
  const std::string cmd = "printf 'Say hello\\\\\\nin French\\n/save " + file.string() + "\\n/save\\n/exit\\n' | " +
                          std::string(TANDEM_BINARY) + " chat -m " + kModel.string() + " --temp 0 -n 8 2>&1";
  const auto [status, out] = run_shell(cmd);
  EXPECT_EQ(status, 0) << out;
  EXPECT_NE(out.find("saved 2 messages to"), std::string::npos) << out;
  EXPECT_NE(out.find("usage: /save FILE"), std::string::npos) << out;
  std::ifstream in(file);
  const nlohmann::json j = nlohmann::json::parse(in);
  ASSERT_EQ(j.at("messages").size(), 2u) << j.dump();
  EXPECT_EQ(j["messages"][0]["role"], "user");
  EXPECT_EQ(j["messages"][0]["content"], "Say hello\nin French");  // one message over two lines
  EXPECT_EQ(j["messages"][1]["role"], "assistant");
  EXPECT_FALSE(j["messages"][1]["content"].get<std::string>().empty());
}

// Ctrl-C during an answer stops the answer, not the program; the partial answer stays in the conversation; a
// Ctrl-C at the prompt only says how to quit.
TEST_F(DefaultModel, ChatCtrlCStopsTheAnswerNotTheProgram) {
  const fs::path dir = fs::path(::testing::TempDir()) / "tandem_chat_sigint";
  fs::remove_all(dir);
  fs::create_directories(dir);
  const std::string d = dir.string();
  const std::string script =
      "cd " + d + "\nmkfifo in\n" + std::string(TANDEM_BINARY) + " chat -m " + kModel.string() +
      " --temp 0 -n 2000 < in > out.txt 2>&1 &\nP=$!\nexec 3>in\n"
      "echo 'Write a very long story about a dragon' >&3\n"
      // Wait for the answer to start streaming (a prompt marker followed by text), then interrupt twice: once
      // during the answer, once at the next prompt.
      "for i in $(seq 1 240); do grep -q '^> .' out.txt && break; sleep 0.25; done; sleep 1\n"
      "kill -INT $P\n"
      "for i in $(seq 1 80); do grep -q 'answer stopped' out.txt && break; sleep 0.25; done; sleep 0.5\n"
      "kill -INT $P; sleep 0.5\n"
      "echo '/save " + d + "/conv.json' >&3; echo /exit >&3; exec 3>&-\n"
      "wait $P; echo exit $?; cat out.txt\n";
  std::ofstream(dir / "run.sh") << script << "\n";
  const auto [status, out] = run_shell("bash " + (dir / "run.sh").string() + " 2>&1");
  EXPECT_NE(out.find("exit 0"), std::string::npos) << out;
  EXPECT_NE(out.find("[answer stopped by Ctrl-C; the conversation is kept]"), std::string::npos) << out;
  EXPECT_NE(out.find("(Ctrl-C: /exit or Ctrl-D quits)"), std::string::npos) << out;
  std::ifstream in(dir / "conv.json");
  ASSERT_TRUE(in.good()) << out;
  const nlohmann::json j = nlohmann::json::parse(in);
  ASSERT_EQ(j.at("messages").size(), 2u) << j.dump();
  const std::string partial = j["messages"][1]["content"];
  EXPECT_FALSE(partial.empty()) << out;
  EXPECT_LT(partial.size(), 6000u) << "the answer ran to -n 2000 tokens: Ctrl-C did not stop it";
}

TEST(Cli, VersionPrintsTheCommit) {
  const auto [status, out] = run_shell(std::string(TANDEM_BINARY) + " --version 2>&1");
  EXPECT_EQ(status, 0) << out;
  EXPECT_EQ(out.rfind("tandem ", 0), 0u) << out;
  EXPECT_GT(out.size(), 8u) << out;
}

}  // namespace
}  // namespace tandem
