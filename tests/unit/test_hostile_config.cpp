// Hostile numbers in model configs (issue 13): config.json fields and GGUF metadata that overflow, wrap, truncate
// or underflow must fail at load, fast, with a message naming the file, the field, the value and the limit.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "cli_run.h"
#include "core/error.h"
#include "core/file.h"
#include "io/gguf.h"
#include "model/config.h"
#include "model/hf_config.h"
#include "model/model.h"

namespace tandem {
namespace {
namespace fs = std::filesystem;
using nlohmann::json;
using ::testing::AllOf;
using ::testing::HasSubstr;
using ::testing::Not;

constexpr int64_t k2p62p2 = (int64_t(1) << 62) + 2;  // x 4 wraps int64 to 8

class TempDir {
 public:
  TempDir() {
    static std::atomic<int> counter{0};
    path_ = fs::temp_directory_path() /
            ("tandem_hostile_cfg_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
    fs::remove_all(path_);
    fs::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  const fs::path& path() const { return path_; }

 private:
  fs::path path_;
};

// Runs `load`, expects a tandem::Error within a second, and returns its message.
template <typename F>
std::string error_of(F&& load) {
  const auto t0 = std::chrono::steady_clock::now();
  std::string msg = "<no error>";
  try {
    load();
  } catch (const Error& e) {
    msg = e.what();
  }
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(3)) << msg;
  EXPECT_LT(msg.size(), 2000u) << "an error message must not dump its input";
  return msg;
}

// ---------------------------------------------------------------------------------------------------------------
// config.json: the llama fixture's config with one field changed, written to a private folder.

json llama_config() { return json::parse(read_file(fs::path(TANDEM_FIXTURES) / "llama" / "config.json")); }

// The whole fixture folder with a broken config.json, for end-to-end loads.
class BrokenCopy {
 public:
  explicit BrokenCopy(const json& config) {
    fs::copy(fs::path(TANDEM_FIXTURES) / "llama", dir_.path() / "m", fs::copy_options::recursive);
    fs::remove(dir_.path() / "m" / "expected.safetensors");
    std::ofstream(dir_.path() / "m" / "config.json") << config.dump(2);
  }
  fs::path dir() const { return dir_.path() / "m"; }

 private:
  TempDir dir_;
};

// read_hf_config on `text` written as config.json; returns the error (and checks the message names the file).
std::string config_error_text(const std::string& text) {
  TempDir dir;
  const fs::path p = dir.path() / "config.json";
  std::ofstream(p) << text;
  std::string msg = error_of([&] { read_hf_config(p); });
  EXPECT_THAT(msg, HasSubstr(p.string()));
  return msg;
}
std::string config_error(const json& j) { return config_error_text(j.dump()); }
template <typename V>
std::string config_error(const char* key, const V& value) {
  json j = llama_config();
  j[key] = value;
  return config_error(j);
}

TEST(HostileConfig, FixtureConfigStillLoads) {
  TempDir dir;
  std::ofstream(dir.path() / "config.json") << llama_config().dump();
  const HfConfig hf = read_hf_config(dir.path() / "config.json");
  EXPECT_EQ(hf.config.n_heads, 4);
  EXPECT_EQ(hf.config.eos_token_ids, std::vector<int32_t>{2});
}

// The issue's reproducer: 2^62 + 2 heads of 4 wrap to 8 = a plausible q_dim; it used to reach cpu::rope.
TEST(HostileConfig, HeadCountThatWrapsWhenMultiplied) {
  json j = llama_config();
  j["num_attention_heads"] = k2p62p2;
  j["num_key_value_heads"] = k2p62p2;
  j["head_dim"] = 4;
  BrokenCopy m(j);
  const std::string msg = error_of([&] { load_reference_model(m.dir()); });
  EXPECT_THAT(msg, AllOf(HasSubstr((m.dir() / "config.json").string()), HasSubstr("num_attention_heads"),
                         HasSubstr("4611686018427387906"), HasSubstr("limit of 1024")));
  // Through the binary: a clean exit 1 with the message, no crash.
  const RunResult r = run_tandem("info -m " + m.dir().string());
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_THAT(r.output, HasSubstr("num_attention_heads = 4611686018427387906 is over the limit of 1024"));
}

TEST(HostileConfig, EverySizeHasANamedUpperBound) {
  EXPECT_THAT(config_error("num_key_value_heads", k2p62p2),
              HasSubstr("num_key_value_heads = 4611686018427387906 is over the limit of 1024"));
  EXPECT_THAT(config_error("head_dim", int64_t(1) << 40),
              HasSubstr("head_dim = 1099511627776 is over the limit of 1024"));
  EXPECT_THAT(config_error("hidden_size", 1 << 20), HasSubstr("hidden_size = 1048576 is over the limit of 65536"));
  EXPECT_THAT(config_error("intermediate_size", int64_t(1) << 50),
              HasSubstr("intermediate_size = 1125899906842624 is over the limit of 1048576"));
  EXPECT_THAT(config_error("num_hidden_layers", 5000), HasSubstr("num_hidden_layers = 5000 is over the limit of 1024"));
  EXPECT_THAT(config_error("vocab_size", int64_t(1) << 32),
              HasSubstr("vocab_size = 4294967296 is over the limit of 16777216"));
  EXPECT_THAT(config_error("max_position_embeddings", int64_t(1) << 40),
              HasSubstr("max_position_embeddings = 1099511627776 is over the limit of 16777216"));
}

TEST(HostileConfig, ContextLengthZeroOrNegative) {
  EXPECT_THAT(config_error("max_position_embeddings", 0), HasSubstr("max_position_embeddings must be positive, got 0"));
  EXPECT_THAT(config_error("max_position_embeddings", -1),
              HasSubstr("max_position_embeddings must be positive, got -1"));
}

// nlohmann keeps integers above INT64_MAX as unsigned; reading them as int64 used to wrap them negative.
TEST(HostileConfig, IntegersPastInt64) {
  EXPECT_THAT(config_error_text(R"({"architectures": ["LlamaForCausalLM"], "vocab_size": 18446744073709551615})"),
              HasSubstr("field 'vocab_size' = 18446744073709551615 does not fit in int64"));
}

TEST(HostileConfig, TokenIdsPastInt32AreNotTruncated) {
  // 4294967298 = 2^32 + 2 used to become eos id 2 silently.
  EXPECT_THAT(config_error("eos_token_id", int64_t(4294967298)),
              HasSubstr("eos_token_id = 4294967298 is not a valid token id (must be 0..2147483647)"));
  EXPECT_THAT(config_error("eos_token_id", json::array({2, int64_t(4294967298)})),
              HasSubstr("eos_token_id[1] = 4294967298 is not a valid token id"));
  EXPECT_THAT(config_error("eos_token_id", -3), HasSubstr("eos_token_id = -3 is not a valid token id"));
  EXPECT_THAT(config_error("bos_token_id", int64_t(4294967297)),
              HasSubstr("bos_token_id = 4294967297 is not a valid token id"));
  EXPECT_THAT(config_error("bos_token_id", -1), HasSubstr("bos_token_id = -1 is not a valid token id"));
  EXPECT_THAT(config_error("pad_token_id", int64_t(1) << 40), HasSubstr("pad_token_id = 1099511627776 is not a valid"));
  EXPECT_THAT(config_error("eos_token_id", json::array({2, "x"})),
              HasSubstr("field 'eos_token_id[1]' must be an integer, got \"x\""));
  EXPECT_THAT(config_error("eos_token_id", json(std::vector<int>(5000, 2))),
              HasSubstr("eos_token_id lists 5000 ids, over the limit of 1024"));
}

TEST(HostileConfig, TokenIdsOutsideTheVocabulary) {
  EXPECT_THAT(config_error("bos_token_id", 320), HasSubstr("bos_token_id 320 is outside the vocabulary (size 320)"));
  EXPECT_THAT(config_error("eos_token_id", json::array({2, 100000})),
              HasSubstr("eos_token_id 100000 is outside the vocabulary (size 320)"));
  // -1 is an old "no padding" marker and pad is unused: it still loads.
  json j = llama_config();
  j["pad_token_id"] = -1;
  TempDir dir;
  std::ofstream(dir.path() / "config.json") << j.dump();
  EXPECT_NO_THROW(read_hf_config(dir.path() / "config.json"));
}

TEST(HostileConfig, RopeFactorsAndThetaMustBeNormalPositiveFinite) {
  json j = llama_config();
  // 1e-320 is a subnormal double and 0 as a float: the frequencies would divide by zero.
  j["rope_scaling"]["factor"] = 1e-320;
  EXPECT_THAT(config_error(j), AllOf(HasSubstr("rope_scaling.factor = "), HasSubstr("outside the supported range")));
  for (double bad : {0.0, -2.0, 1e300}) {
    j["rope_scaling"]["factor"] = bad;
    EXPECT_THAT(config_error(j), HasSubstr("rope_scaling.factor = ")) << bad;
  }
  j = llama_config();
  j["rope_scaling"]["low_freq_factor"] = 1e-320;
  EXPECT_THAT(config_error(j), HasSubstr("rope_scaling.low_freq_factor = "));
  j = llama_config();
  j["rope_scaling"]["original_max_position_embeddings"] = -1;
  EXPECT_THAT(config_error(j), HasSubstr("rope_scaling.original_max_position_embeddings must be positive, got -1"));
  for (double bad : {0.0, -1.0, 1e-320, 1e300}) {
    EXPECT_THAT(config_error("rope_theta", bad),
                AllOf(HasSubstr("rope_theta = "), HasSubstr("outside the supported range")))
        << bad;
  }
  // transformers 5's rope_parameters is named as such.
  j = llama_config();
  j.erase("rope_scaling");
  j["rope_parameters"] = {{"rope_type", "linear"}, {"factor", 1e-320}, {"rope_theta", 10000.0}};
  EXPECT_THAT(config_error(j), HasSubstr("rope_parameters.factor = "));
  // A number too large for a double parses as infinity (or fails to parse); either way it does not load.
  EXPECT_THAT(config_error_text(R"({"architectures": ["LlamaForCausalLM"], "vocab_size": 320, "hidden_size": 64,
      "intermediate_size": 160, "num_hidden_layers": 2, "num_attention_heads": 4, "rope_theta": 1e400})"),
              AllOf(Not(HasSubstr("<no error>"))));
}

TEST(HostileConfig, RmsEpsMustBeNormalPositiveFinite) {
  EXPECT_THAT(config_error("rms_norm_eps", 1e-320),
              AllOf(HasSubstr("rms_norm_eps = "), HasSubstr("outside the supported range")));
  EXPECT_THAT(config_error("rms_norm_eps", -1e-5), HasSubstr("rms_norm_eps = "));
}

TEST(HostileConfig, SlidingWindowIsBounded) {
  json j = json::parse(read_file(fs::path(TANDEM_FIXTURES) / "mistral" / "config.json"));
  j["sliding_window"] = int64_t(1) << 40;
  EXPECT_THAT(config_error(j), HasSubstr("sliding_window = 1099511627776 is outside 0..16777216"));
  j["sliding_window"] = uint64_t(1) << 63;  // wraps negative when read as int64
  EXPECT_THAT(config_error(j), HasSubstr("sliding_window must be null or a positive integer, got 9223372036854775808"));
}

TEST(HostileConfig, HugeValuesAreExcerptedInMessages) {
  const std::string big(1 << 20, 'x');
  EXPECT_THAT(config_error("hidden_act", big), HasSubstr("(1048576 bytes)"));
  EXPECT_THAT(config_error("hidden_size", json(std::vector<int>(100000, 1))),
              HasSubstr("field 'hidden_size' must be an integer, got a list of 100000 items"));
  json j = llama_config();
  j["architectures"] = {big};
  EXPECT_THAT(config_error(j), AllOf(HasSubstr("is not supported"), HasSubstr("(1048576 bytes)")));
  j = llama_config();
  j["rope_scaling"] = {{"rope_type", big}};
  EXPECT_THAT(config_error(j), AllOf(HasSubstr("is not supported"), HasSubstr("(1048576 bytes)")));
}

TEST(HostileConfig, CheckedHelpers) {
  EXPECT_EQ(checked_mul(1024, 1024, "f", "a x b"), 1 << 20);
  EXPECT_THAT(error_of([] { checked_mul(k2p62p2, 4, "cfg.json", "heads x head_dim"); }),
              HasSubstr("cfg.json: heads x head_dim = 4611686018427387906 x 4 overflows int64"));
  EXPECT_EQ(checked_token_id(2147483647, "f", "id"), 2147483647);
  EXPECT_THAT(error_of([] { checked_token_id(int64_t(1) << 31, "f", "eos"); }), HasSubstr("eos = 2147483648 is not"));
}

// ---------------------------------------------------------------------------------------------------------------
// GGUF: a tiny complete llama model built in memory (F32, one layer), then one metadata value or tensor broken.

template <typename T>
std::string le(T v) {
  std::string s(sizeof(T), '\0');
  std::memcpy(s.data(), &v, sizeof(T));
  return s;
}
std::string gstr(std::string_view s) { return le<uint64_t>(s.size()) + std::string(s); }
using VT = GgufValueType;

struct GgufModel {
  // key -> (type, encoded payload), in insertion order; set() replaces.
  std::vector<std::pair<std::string, std::pair<VT, std::string>>> kvs;
  struct T {
    std::string name;
    std::vector<uint64_t> ne;  // fastest-first
    std::vector<float> data;   // empty: filled with small values
  };
  std::vector<T> tensors;

  GgufModel() {
    set("general.architecture", VT::STRING, gstr("llama"));
    set("llama.block_count", VT::U32, le<uint32_t>(1));
    set("llama.embedding_length", VT::U32, le<uint32_t>(8));
    set("llama.feed_forward_length", VT::U32, le<uint32_t>(16));
    set("llama.attention.head_count", VT::U32, le<uint32_t>(2));
    set("llama.attention.head_count_kv", VT::U32, le<uint32_t>(1));
    set("llama.context_length", VT::U32, le<uint32_t>(64));
    set("llama.attention.layer_norm_rms_epsilon", VT::F32, le<float>(1e-5f));
    set("tokenizer.ggml.eos_token_id", VT::U32, le<uint32_t>(2));
    // H = 8, 2 heads of 4 (one kv head), I = 16, V = 16; tied embeddings.
    tensors = {{"token_embd.weight", {8, 16}, {}},       {"output_norm.weight", {8}, {}},
               {"blk.0.attn_norm.weight", {8}, {}},      {"blk.0.attn_q.weight", {8, 8}, {}},
               {"blk.0.attn_k.weight", {8, 4}, {}},      {"blk.0.attn_v.weight", {8, 4}, {}},
               {"blk.0.attn_output.weight", {8, 8}, {}}, {"blk.0.ffn_norm.weight", {8}, {}},
               {"blk.0.ffn_gate.weight", {8, 16}, {}},   {"blk.0.ffn_up.weight", {8, 16}, {}},
               {"blk.0.ffn_down.weight", {16, 8}, {}}};
  }
  void set(const std::string& key, VT type, std::string payload) {
    for (auto& kv : kvs)
      if (kv.first == key) {
        kv.second = {type, std::move(payload)};
        return;
      }
    kvs.push_back({key, {type, std::move(payload)}});
  }
  T& tensor(const std::string& name) {
    for (T& t : tensors)
      if (t.name == name) return t;
    ADD_FAILURE() << "no tensor " << name;
    return tensors[0];
  }

  std::string build() const {
    std::string s = "GGUF" + le<uint32_t>(3) + le<uint64_t>(tensors.size()) + le<uint64_t>(kvs.size());
    for (const auto& [k, v] : kvs) s += gstr(k) + le<uint32_t>(uint32_t(v.first)) + v.second;
    std::string data;
    for (const T& t : tensors) {
      s += gstr(t.name) + le<uint32_t>(uint32_t(t.ne.size()));
      for (uint64_t d : t.ne) s += le<uint64_t>(d);
      s += le<uint32_t>(0) + le<uint64_t>(data.size());  // F32 at the current data offset
      uint64_t n = 1;
      for (uint64_t d : t.ne) n *= d;
      for (uint64_t i = 0; i < n; ++i) data += le<float>(t.data.empty() ? 0.01f * float(i % 13) : t.data[i]);
      while (data.size() % 32) data.push_back('\0');
    }
    while (s.size() % 32) s.push_back('\0');
    return s + data;
  }
};

// Writes the model to a .gguf file; the Error (or "<no error>") of loading it, checked to name the file.
std::string gguf_error(const GgufModel& m) {
  TempDir dir;
  const fs::path p = dir.path() / "m.gguf";
  const std::string bytes = m.build();
  std::ofstream(p, std::ios::binary).write(bytes.data(), std::streamsize(bytes.size()));
  std::string msg = error_of([&] { load_reference_model(p); });
  if (msg != "<no error>") {
    EXPECT_THAT(msg, HasSubstr(p.string()));
  }
  return msg;
}

TEST(HostileConfig, GgufFixtureLoads) {
  GgufModel m;
  EXPECT_EQ(gguf_error(m), "<no error>");
}

TEST(HostileConfig, GgufHeadCountThatWrapsWhenMultiplied) {
  GgufModel m;
  m.set("llama.attention.head_count", VT::U64, le<uint64_t>(uint64_t(k2p62p2)));
  m.set("llama.attention.head_count_kv", VT::U64, le<uint64_t>(uint64_t(k2p62p2)));
  m.set("llama.attention.key_length", VT::U32, le<uint32_t>(4));
  EXPECT_THAT(gguf_error(m), HasSubstr("llama.attention.head_count = 4611686018427387906 is over the limit of 1024"));
  m = GgufModel();
  m.set("llama.attention.head_count_kv", VT::I64, le<int64_t>(k2p62p2));
  EXPECT_THAT(gguf_error(m),
              HasSubstr("llama.attention.head_count_kv = 4611686018427387906 is over the limit of 1024"));
}

TEST(HostileConfig, GgufHeadsNotDividingEmbeddingLength) {
  GgufModel m;
  m.set("llama.attention.head_count", VT::U32, le<uint32_t>(3));
  m.set("llama.attention.head_count_kv", VT::U32, le<uint32_t>(3));
  EXPECT_THAT(gguf_error(m),
              HasSubstr("llama.embedding_length (8) is not divisible by llama.attention.head_count (3)"));
  m = GgufModel();
  m.set("llama.attention.head_count_kv", VT::U32, le<uint32_t>(0));
  EXPECT_THAT(gguf_error(m), HasSubstr("llama.attention.head_count_kv must be positive, got 0"));
}

TEST(HostileConfig, GgufBlockCountOverTheEngineMax) {
  GgufModel m;
  m.set("llama.block_count", VT::U32, le<uint32_t>(5000));
  EXPECT_THAT(gguf_error(m), HasSubstr("llama.block_count = 5000 is over the limit of 1024"));
  m.set("llama.block_count", VT::I32, le<int32_t>(-1));
  EXPECT_THAT(gguf_error(m), HasSubstr("llama.block_count must be positive, got -1"));
}

TEST(HostileConfig, GgufContextLength) {
  GgufModel m;
  m.set("llama.context_length", VT::U32, le<uint32_t>(0));
  EXPECT_THAT(gguf_error(m), HasSubstr("llama.context_length must be positive, got 0"));
  m.set("llama.context_length", VT::I64, le<int64_t>(-1));
  EXPECT_THAT(gguf_error(m), HasSubstr("llama.context_length must be positive, got -1"));
  m.set("llama.context_length", VT::U64, le<uint64_t>(uint64_t(1) << 40));
  EXPECT_THAT(gguf_error(m), HasSubstr("llama.context_length = 1099511627776 is over the limit of 16777216"));
}

TEST(HostileConfig, GgufTokenIds) {
  GgufModel m;
  m.set("tokenizer.ggml.eos_token_id", VT::U64, le<uint64_t>(4294967298ull));
  EXPECT_THAT(gguf_error(m), HasSubstr("tokenizer.ggml.eos_token_id = 4294967298 is not a valid token id"));
  m = GgufModel();
  m.set("tokenizer.ggml.bos_token_id", VT::I32, le<int32_t>(-7));
  EXPECT_THAT(gguf_error(m), HasSubstr("tokenizer.ggml.bos_token_id = -7 is not a valid token id"));
  m = GgufModel();
  m.set("tokenizer.ggml.bos_token_id", VT::U32, le<uint32_t>(16));
  EXPECT_THAT(gguf_error(m), HasSubstr("tokenizer.ggml.bos_token_id 16 is outside the vocabulary (size 16)"));
}

TEST(HostileConfig, GgufFloats) {
  GgufModel m;
  m.set("llama.rope.freq_base", VT::F32, le<float>(std::numeric_limits<float>::quiet_NaN()));
  EXPECT_THAT(gguf_error(m), AllOf(HasSubstr("llama.rope.freq_base = nan"), HasSubstr("outside the supported range")));
  m = GgufModel();
  m.set("llama.rope.scaling.type", VT::STRING, gstr("linear"));
  m.set("llama.rope.scaling.factor", VT::F64, le<double>(1e-320));
  EXPECT_THAT(gguf_error(m), HasSubstr("llama.rope.scaling.factor = "));
  m = GgufModel();
  m.set("llama.attention.layer_norm_rms_epsilon", VT::F32, le<float>(-1.0f));
  EXPECT_THAT(gguf_error(m), HasSubstr("llama.attention.layer_norm_rms_epsilon = -1 is outside"));
}

TEST(HostileConfig, GgufRopeFreqFactors) {
  GgufModel m;
  m.tensors.push_back({"rope_freqs.weight", {2}, {1.0f, 0.0f}});  // head_dim 4: two divisors, one of them zero
  EXPECT_THAT(gguf_error(m), HasSubstr("rope_freqs.weight[1] = 0 must be a positive, finite divisor"));
  m.tensors.back() = {"rope_freqs.weight", {3}, {1.0f, 1.0f, 1.0f}};
  EXPECT_THAT(gguf_error(m), HasSubstr("rope_freqs.weight has 3 values for llama.embedding_length / "
                                       "llama.attention.head_count 4 (need head_dim / 2)"));
  m.tensors.back() = {"rope_freqs.weight", {4096}, {}};
  EXPECT_THAT(gguf_error(m), HasSubstr("rope_freqs.weight must be 1-D with at most 512 values"));
}

TEST(HostileConfig, GgufTensorShapeDisagreesWithTheArch) {
  GgufModel m;
  m.tensor("blk.0.attn_q.weight").ne = {8, 6};
  EXPECT_THAT(gguf_error(m), HasSubstr("tensor 'blk.0.attn_q.weight' has shape [6, 8], but the config implies [8, 8]"));
  m = GgufModel();
  m.tensor("blk.0.ffn_down.weight").ne = {8, 16};
  EXPECT_THAT(gguf_error(m),
              HasSubstr("tensor 'blk.0.ffn_down.weight' has shape [16, 8], but the config implies [8, 16]"));
  m = GgufModel();
  m.tensor("token_embd.weight").ne = {8, 16, 1};
  EXPECT_THAT(gguf_error(m), HasSubstr("token_embd.weight must be 2-D, got 3 dims"));
}

TEST(HostileConfig, GgufVocabularyArrays) {
  GgufModel m;
  std::string items;
  for (int i = 0; i < 15; ++i) items += gstr("t" + std::to_string(i));
  m.set("tokenizer.ggml.tokens", VT::ARRAY, le<uint32_t>(uint32_t(VT::STRING)) + le<uint64_t>(15) + items);
  EXPECT_THAT(gguf_error(m), HasSubstr("tokenizer.ggml.tokens has 15 entries but token_embd.weight has 16 rows"));
  std::string ints;
  for (int i = 0; i < 16; ++i) ints += le<int32_t>(i);
  m.set("tokenizer.ggml.tokens", VT::ARRAY, le<uint32_t>(uint32_t(VT::I32)) + le<uint64_t>(16) + ints);
  EXPECT_THAT(gguf_error(m), AllOf(HasSubstr("tokenizer.ggml.tokens"), HasSubstr("expected an array of string")));
}

}  // namespace
}  // namespace tandem
