// Loading HF model folders: good ones load, bad ones fail with a message naming the file and the field,
// through the library and through the `tandem` binary (non-zero exit, no crash).
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "cli_run.h"
#include "core/file.h"
#include "model/hf_config.h"
#include "io/safetensors.h"
#include "model/model.h"
#include "cuda/device_query.h"
#include "runtime/model_bundle.h"
#include "tokenizer/tokenizer.h"

namespace tandem {
namespace {
namespace fs = std::filesystem;
using ::testing::AllOf;
using ::testing::HasSubstr;

fs::path fixture(const std::string& name) { return fs::path(TANDEM_FIXTURES) / name; }

// A private copy of a fixture model to break.
class ModelCopy {
 public:
  explicit ModelCopy(const std::string& name) {
    dir_ = fs::temp_directory_path() /
           ("tandem_model_" + name + "_" + std::to_string(::getpid()) + "_" + std::to_string(counter_++));
    fs::remove_all(dir_);
    fs::copy(fixture(name), dir_, fs::copy_options::recursive);
    fs::remove(dir_ / "expected.safetensors");
  }
  ~ModelCopy() { fs::remove_all(dir_); }
  const fs::path& dir() const { return dir_; }
  nlohmann::json config() const { return nlohmann::json::parse(read_file(dir_ / "config.json")); }
  void set_config(const nlohmann::json& j) const { std::ofstream(dir_ / "config.json") << j.dump(2); }

 private:
  fs::path dir_;
  static inline int counter_ = 0;
};

std::string load_error(const fs::path& p) {
  try {
    load_reference_model(p);
  } catch (const Error& e) {
    return e.what();
  }
  return "<no error>";
}

TEST(ModelLoad, FixturesLoadWithTheirQuirks) {
  auto llama = load_reference_model(fixture("llama"));
  EXPECT_EQ(llama->config.rope.scaling, RopeScaling::Llama3);
  EXPECT_EQ(llama->config.n_layers, 2);
  auto qwen = load_reference_model(fixture("qwen2"));
  EXPECT_TRUE(qwen->config.qkv_bias);
  EXPECT_TRUE(qwen->config.tie_embeddings);
  EXPECT_EQ(qwen->weights.lm_head.data, qwen->weights.embed.data);
  auto mistral = load_reference_model(fixture("mistral"));
  EXPECT_EQ(mistral->config.sliding_window, 8);
  EXPECT_EQ(mistral->config.head_dim, 32);
  EXPECT_EQ(mistral->weights.layers[0].wqkv.shape[0], 8 * 32 + 2 * 2 * 32);
}

TEST(ModelLoad, UnknownArchitecture) {
  ModelCopy m("llama");
  auto j = m.config();
  j["architectures"] = {"GPTNeoXForCausalLM"};
  m.set_config(j);
  EXPECT_THAT(load_error(m.dir()), AllOf(HasSubstr("config.json"), HasSubstr("GPTNeoXForCausalLM"),
                                         HasSubstr("not supported"), HasSubstr("LlamaForCausalLM")));
}

TEST(ModelLoad, HeadsNotDividingHiddenSize) {
  ModelCopy m("llama");
  auto j = m.config();
  j.erase("head_dim");
  j["num_attention_heads"] = 5;
  j["num_key_value_heads"] = 5;
  m.set_config(j);
  EXPECT_THAT(load_error(m.dir()), AllOf(HasSubstr("config.json"), HasSubstr("hidden_size (64)"),
                                         HasSubstr("not divisible by num_attention_heads (5)")));
}

TEST(ModelLoad, KvHeadsNotDividingHeads) {
  ModelCopy m("llama");
  auto j = m.config();
  j["num_key_value_heads"] = 3;
  m.set_config(j);
  EXPECT_THAT(load_error(m.dir()), AllOf(HasSubstr("num_attention_heads (4)"), HasSubstr("num_key_value_heads (3)")));
}

TEST(ModelLoad, MissingAndMistypedFields) {
  ModelCopy m("llama");
  auto j = m.config();
  j.erase("num_hidden_layers");
  m.set_config(j);
  EXPECT_THAT(load_error(m.dir()), HasSubstr("required field 'num_hidden_layers' is missing"));
  j = m.config();
  j["num_hidden_layers"] = 2;
  j["hidden_size"] = "64";
  m.set_config(j);
  EXPECT_THAT(load_error(m.dir()), HasSubstr("field 'hidden_size' must be an integer, got \"64\""));
}

TEST(ModelLoad, UnsupportedFeaturesAreNamed) {
  ModelCopy m("llama");
  auto j = m.config();
  j["rope_scaling"] = {{"rope_type", "yarn"}, {"factor", 4.0}};
  m.set_config(j);
  EXPECT_THAT(load_error(m.dir()), HasSubstr("rope type 'yarn' is not supported"));
  j["rope_scaling"] = nullptr;
  j["hidden_act"] = "gelu";
  m.set_config(j);
  EXPECT_THAT(load_error(m.dir()), HasSubstr("hidden_act \"gelu\" is not supported"));

  ModelCopy q("qwen2");
  auto qj = q.config();
  qj["use_sliding_window"] = true;
  qj["sliding_window"] = 4096;
  q.set_config(qj);
  EXPECT_THAT(load_error(q.dir()), HasSubstr("use_sliding_window=true"));
}

TEST(ModelLoad, ShapeDisagreesWithConfig) {
  ModelCopy m("mistral");
  auto j = m.config();
  j["intermediate_size"] = 200;
  m.set_config(j);
  EXPECT_THAT(load_error(m.dir()), AllOf(HasSubstr("model.safetensors"), HasSubstr("mlp.gate_proj.weight"),
                                         HasSubstr("[192, 128]"), HasSubstr("[200, 128]")));
}

TEST(ModelLoad, MissingTensorIsNamed) {
  ModelCopy m("mistral");
  {
    auto file = SafetensorsFile::open(m.dir() / "model.safetensors");
    std::vector<NamedTensor> keep;
    for (const TensorEntry& e : file->entries())
      if (e.name != "model.layers.1.self_attn.k_proj.weight") keep.push_back({e.name, e.view()});
    write_safetensors(m.dir() / "rewritten.safetensors", keep);
  }
  fs::rename(m.dir() / "rewritten.safetensors", m.dir() / "model.safetensors");
  EXPECT_THAT(load_error(m.dir()), AllOf(HasSubstr("missing tensor 'model.layers.1.self_attn.k_proj.weight'"),
                                         HasSubstr("L1.wk")));
}

TEST(ModelLoad, MissingUntiedLmHead) {
  ModelCopy m("qwen2");
  auto j = m.config();
  j["tie_word_embeddings"] = false;
  m.set_config(j);
  EXPECT_THAT(load_error(m.dir()), HasSubstr("missing tensor 'lm_head.weight'"));
}

TEST(ModelLoad, TruncatedWeightsAndMissingConfig) {
  ModelCopy m("mistral");
  fs::resize_file(m.dir() / "model.safetensors", 1000);
  EXPECT_THAT(load_error(m.dir()), HasSubstr("model.safetensors"));
  fs::remove(m.dir() / "config.json");
  EXPECT_THAT(load_error(m.dir()), HasSubstr("no config.json"));
  EXPECT_THAT(load_error(m.dir() / "nonexistent"), HasSubstr("no such file or folder"));
}

TEST(ModelLoad, ShardEscapingTheFolder) {
  ModelCopy m("llama");
  const fs::path index = m.dir() / "model.safetensors.index.json";
  auto j = nlohmann::json::parse(read_file(index));
  j["weight_map"]["model.norm.weight"] = "../../etc/passwd";
  std::ofstream(index) << j.dump();
  EXPECT_THAT(load_error(m.dir()), AllOf(HasSubstr("model.safetensors.index.json"), HasSubstr("../../etc/passwd")));
}

TEST(ConfigParse, ClassicAndTransformers5RopeFormsAgree) {
  const std::string base =
      R"("architectures": ["LlamaForCausalLM"], "vocab_size": 10, "hidden_size": 8, "intermediate_size": 16,
         "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1,)";
  const auto classic = parse_hf_config(
      "{" + base + R"("rope_theta": 500000.0, "rope_scaling": {"type": "llama3", "factor": 32.0,
         "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}})",
      "classic");
  const auto v5 = parse_hf_config(
      "{" + base + R"("rope_parameters": {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0,
         "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}})",
      "v5");
  for (const auto* c : {&classic.config, &v5.config}) {
    EXPECT_EQ(c->rope.scaling, RopeScaling::Llama3);
    EXPECT_EQ(c->rope.theta, 500000.0);
    EXPECT_EQ(c->rope.factor, 32.0);
    EXPECT_EQ(c->rope.original_max_positions, 8192);
    EXPECT_EQ(c->head_dim, 4);
    EXPECT_EQ(c->n_kv_heads, 1);
  }
  EXPECT_THAT([&] { try { parse_hf_config("{", "bad.json"); } catch (const Error& e) { return std::string(e.what()); } return std::string(); }(),
              HasSubstr("bad.json: not valid JSON"));
}

TEST(RopeFrequencies, Llama3ScalingBands) {
  ModelConfig c;
  c.head_dim = 16;
  c.rope.theta = 500000.0;
  const auto plain = rope_inv_freq(c);
  c.rope.scaling = RopeScaling::Llama3;
  c.rope.factor = 32.0;
  c.rope.original_max_positions = 8192;
  const auto scaled = rope_inv_freq(c);
  ASSERT_EQ(plain.size(), 8u);
  // wavelength 2*pi/f: < 2048 (high-freq band) unchanged; > 8192 divided by the factor; in between, smoothed.
  EXPECT_FLOAT_EQ(scaled[0], 1.0f);
  EXPECT_FLOAT_EQ(scaled[7], plain[7] / 32.0f);
  const float f4 = plain[4], wavelen = 2.0f * 3.14159265f / f4;  // ~4443: medium band
  const float smooth = (8192.0f / wavelen - 1.0f) / 3.0f;
  EXPECT_NEAR(scaled[4], (1 - smooth) * f4 / 32.0f + smooth * f4, 1e-9);
}

TEST(Cli, GenerateStreamsHFGreedyTokens) {
  // Greedy from prompt p0 of the llama fixture must reproduce HF's 16 tokens.
  auto exp = SafetensorsFile::open(fixture("llama") / "expected.safetensors");
  const Tensor prompt = exp->find("p0.prompt")->view();
  const Tensor want = exp->find("p0.decode_tokens")->view();
  std::string ids, want_text;
  for (int64_t i = 0; i < prompt.numel(); ++i) ids += (i ? "," : "") + std::to_string(prompt.ptr<int32_t>()[i]);
  for (int64_t i = 0; i < want.numel(); ++i) want_text += std::to_string(want.ptr<int32_t>()[i]) + " ";
  const RunResult r = run_tandem("generate -m " + fixture("llama").string() + " --prompt-ids " + ids +
                                 " -n 16 --temp 0 --ignore-eos");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr(want_text));
  EXPECT_THAT(r.output, HasSubstr("decode: 15 tokens"));
}

TEST(Cli, BadInputExitsNonZeroWithMessage) {
  ModelCopy m("llama");
  auto j = m.config();
  j["architectures"] = {"FalconForCausalLM"};
  m.set_config(j);
  RunResult r = run_tandem("generate -m " + m.dir().string() + " --prompt-ids 1,2,3 -n 4");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.output, AllOf(HasSubstr("error:"), HasSubstr("FalconForCausalLM")));

  r = run_tandem("generate -m " + fixture("llama").string() + " --prompt-ids 1,2,x -n 4");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.output, HasSubstr("not a comma-separated list"));

  r = run_tandem("generate -m " + fixture("llama").string() + " --prompt-ids 1,2,99999 -n 4");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.output, HasSubstr("id 99999, outside the vocabulary (size 320)"));

  r = run_tandem("generate -m " + fixture("mistral").string() + " --prompt-ids 1,2,3 -n 600");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.output, HasSubstr("exceeds the model's context of 512 tokens"));

  r = run_tandem("generate -m " + fixture("llama").string() + " --prompt-ids 1,2 -n 4 --top-p 1.5");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.output, HasSubstr("top_p"));
}

TEST(Cli, DumpTapsWritesTheNamedTaps) {
  const fs::path out = fs::temp_directory_path() / ("tandem_taps_" + std::to_string(::getpid()) + ".safetensors");
  const RunResult r = run_tandem("generate -m " + fixture("llama").string() +
                                 " --prompt-ids 3,4,5 -n 2 --temp 0 --dump-taps " + out.string() +
                                 " --taps L1.attention,logits,embed");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  auto f = SafetensorsFile::open(out);
  ASSERT_EQ(f->entries().size(), 3u);
  EXPECT_EQ(f->find("L1.attention")->shape, (std::vector<int64_t>{3, 64}));
  EXPECT_EQ(f->find("logits")->shape, (std::vector<int64_t>{1, 320}));  // only the last prompt row asks
  EXPECT_EQ(f->find("embed")->shape, (std::vector<int64_t>{3, 64}));
  fs::remove(out);
  const RunResult bad = run_tandem("generate -m " + fixture("llama").string() +
                                   " --prompt-ids 3 -n 1 --dump-taps " + out.string() + " --taps L1.atention");
  EXPECT_EQ(bad.exit_code, 1);
  EXPECT_THAT(bad.output, HasSubstr("'L1.atention' names no stage"));
}

TEST(Cli, SameSeedSameOutput) {
  const std::string cmd = "generate -m " + fixture("qwen2").string() +
                          " --prompt-ids 5,6,7 -n 12 --temp 1.0 --top-k 0 --top-p 1 --min-p 0 --seed 42 --ignore-eos";
  const RunResult a = run_tandem(cmd), b = run_tandem(cmd);
  ASSERT_EQ(a.exit_code, 0) << a.output;
  auto first_line = [](const std::string& s) { return s.substr(0, s.find('\n')); };
  // stderr (model line) comes first when merged; compare the token line.
  auto tokens = [&](const std::string& s) {
    size_t p = s.find('\n');
    return first_line(s.substr(p + 1));
  };
  EXPECT_EQ(tokens(a.output), tokens(b.output));
  EXPECT_FALSE(tokens(a.output).empty());
}

}  // namespace
}  // namespace tandem

namespace tandem {
namespace {
// Path dispatch on a machine without a GPU (CI): auto picks the cpu path (--device cpu too), the reference path stays
// available by name; asking for CUDA explicitly is a clear error, not a crash.
TEST(RunnerDispatch, CpuOnlyMachine) {
  if (cuda::device_count() > 0) GTEST_SKIP() << "this machine has a GPU; the dispatch case covered is CPU-only";
  ModelBundle b = open_model_bundle(fixture("llama"));
  auto r = make_runner(b, RunnerOptions{});
  EXPECT_EQ(r->path_name(), "cpu");
  RunnerOptions cpu_opts, ref_opts;
  cpu_opts.device = "cpu";
  EXPECT_EQ(make_runner(b, cpu_opts)->path_name(), "cpu");
  ref_opts.path = "reference";
  EXPECT_EQ(make_runner(b, ref_opts)->path_name(), "reference");
  RunnerOptions cuda_opts;
  cuda_opts.device = "cuda";
  EXPECT_THAT([&] { try { make_runner(b, cuda_opts); } catch (const Error& e) { return std::string(e.what()); } return std::string(); }(),
              HasSubstr("no CUDA GPU found"));
  RunnerOptions std_opts;
  std_opts.path = "standard";
  EXPECT_THROW(make_runner(b, std_opts), Error);
  RunnerOptions bad;
  bad.device = "cpu";
  bad.path = "standard";
  EXPECT_THAT([&] { try { make_runner(b, bad); } catch (const Error& e) { return std::string(e.what()); } return std::string(); }(),
              HasSubstr("--path standard runs on CUDA"));
}
}  // namespace
}  // namespace tandem

namespace tandem {
namespace {
TEST(HfTokenizerConfig, BosEosFromTokenizerConfigAndConfig) {
  const fs::path dir = fs::temp_directory_path() / ("tandem_tokcfg_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  std::ofstream(dir / "tokenizer_config.json")
      << R"({"bos_token": {"content": "<|im_start|>"}, "eos_token": "<|im_end|>", "add_bos_token": true})";
  Tokenizer tok = Tokenizer::from_hf_json(fixture("tokenizer/smollm2/tokenizer.json"));
  const int32_t im_start = *tok.piece_to_id("<|im_start|>"), im_end = *tok.piece_to_id("<|im_end|>");
  apply_hf_tokenizer_config(tok, dir, {0, im_end});
  EXPECT_EQ(tok.bos_id(), im_start);
  EXPECT_TRUE(tok.add_bos());
  EXPECT_EQ(tok.eos_ids(), (std::vector<int32_t>{im_end, 0}));
  EXPECT_EQ(tok.encode("hi", true, true).front(), im_start);

  std::ofstream(dir / "tokenizer_config.json") << R"({"eos_token": "<|no_such_token|>"})";
  try {
    apply_hf_tokenizer_config(tok, dir);
    ADD_FAILURE() << "unknown eos token accepted";
  } catch (const Error& e) {
    EXPECT_THAT(e.what(), AllOf(HasSubstr("tokenizer_config.json"), HasSubstr("<|no_such_token|>")));
  }
  fs::remove_all(dir);
}
}  // namespace
}  // namespace tandem
