// The tokenizer as untrusted input (issue 13; reliability checklist item 11): hostile tokenizer.json files (deep
// Sequence nesting, huge or past-int32 ids, many duplicate added tokens, huge strings on error paths), adversarial
// encode input on every tokenizer we ship against, and hostile chat templates and messages. Each case must end in
// a clear error or a correct result, quickly and in bounded memory.
#include <gtest/gtest.h>
#include <sys/resource.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <random>

#include "core/error.h"
#include "io/gguf.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/gguf_vocab.h"
#include "tokenizer/internal.h"
#include "tokenizer/tokenizer.h"

namespace tandem {
namespace {

namespace fs = std::filesystem;

const std::string kFixtures = std::string(TANDEM_FIXTURES) + "/tokenizer";
const std::string kModel = R"("model":{"type":"BPE","vocab":{"a":0,"b":1,"ab":2},"merges":["a b"]})";

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// Peak resident set of this process in MB (ctest runs each test in its own process, so growth of the peak over
// a test is what that test allocated at most).
double peak_rss_mb() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return static_cast<double>(u.ru_maxrss) / 1024.0;  // ru_maxrss is in KB on Linux
}

class TempDir {
 public:
  TempDir() {
    static std::atomic<int> counter{0};
    path_ = fs::temp_directory_path() / fmt::format("tandem_hostile_tok_{}_{}", ::getpid(), counter++);
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

struct Outcome {
  std::string error;  // empty when it loaded
  double seconds = 0, rss_growth_mb = 0;
};

// Writes `json` to a temporary tokenizer.json and loads it from there, as a model folder would.
Outcome load(const std::string& json, std::function<void(const Tokenizer&)> check = nullptr) {
  TempDir dir;
  const fs::path p = dir.path() / "tokenizer.json";
  {
    std::ofstream out(p, std::ios::binary);
    out.write(json.data(), static_cast<std::streamsize>(json.size()));
  }
  Outcome o;
  const double rss0 = peak_rss_mb();
  const auto t0 = std::chrono::steady_clock::now();
  try {
    Tokenizer tok = Tokenizer::from_hf_json(p);
    o.seconds = seconds_since(t0);
    if (check) check(tok);
  } catch (const Error& e) {
    o.seconds = seconds_since(t0);
    o.error = e.what();
  }
  o.rss_growth_mb = peak_rss_mb() - rss0;
  return o;
}

// A fast, bounded rejection whose message contains every needle and stays short.
void expect_rejected(const std::string& json, std::initializer_list<std::string_view> needles,
                     double max_seconds = 1.0) {
  Outcome o = load(json);
  ASSERT_FALSE(o.error.empty()) << "loaded: " << json.substr(0, 200);
  EXPECT_NE(o.error.find("tokenizer.json"), std::string::npos) << o.error;
  for (std::string_view n : needles) EXPECT_NE(o.error.find(n), std::string::npos) << "'" << n << "' not in: " << o.error;
  EXPECT_LT(o.error.size(), 600u) << o.error.substr(0, 600);
  EXPECT_LT(o.seconds, max_seconds) << o.error;
  EXPECT_LT(o.rss_growth_mb, 256.0) << o.error;
}

std::string repeat(std::string_view s, size_t n) {
  std::string out;
  out.reserve(s.size() * n);
  for (size_t i = 0; i < n; ++i) out += s;
  return out;
}

// {"type":"Sequence","<list>":[ ... leaf ... ]} nested `depth` times.
std::string nested_sequence(const char* list, const std::string& leaf, size_t depth) {
  return repeat(fmt::format(R"({{"type":"Sequence","{}":[)", list), depth) + leaf + repeat("]}", depth);
}

// --- hostile tokenizer.json -----------------------------------------------------------------------------------

// Was: 10k deep took 890 MB (every level formats a longer field path), 100k deep ended in std::bad_alloc.
TEST(HostileTokenizer, DeepSequenceNestingIsRejectedFast) {
  struct Field {
    const char* key;
    const char* list;
    std::string leaf;
  };
  const Field fields[] = {{"normalizer", "normalizers", R"({"type":"NFC"})"},
                          {"pre_tokenizer", "pretokenizers", R"({"type":"Digits","individual_digits":true})"},
                          {"decoder", "decoders", R"({"type":"Fuse"})"},
                          {"post_processor", "processors", R"({"type":"ByteLevel"})"}};
  for (const Field& f : fields) {
    for (size_t depth : {100000, 10000}) {
      SCOPED_TRACE(fmt::format("{} {} deep", f.key, depth));
      expect_rejected(fmt::format(R"({{{},"{}":{}}})", kModel, f.key, nested_sequence(f.list, f.leaf, depth)),
                      {"JSON nested deeper than 128"});
    }
    // Within the JSON depth limit but deeper than any real file: the Sequence builders bound their recursion.
    SCOPED_TRACE(f.key);
    expect_rejected(fmt::format(R"({{{},"{}":{}}})", kModel, f.key, nested_sequence(f.list, f.leaf, 40)),
                    {"Sequence nested deeper than 16", f.key});
    Outcome ok = load(fmt::format(R"({{{},"{}":{}}})", kModel, f.key, nested_sequence(f.list, f.leaf, 3)),
                      [](const Tokenizer& t) { EXPECT_EQ(t.encode("ab"), std::vector<int32_t>{2}); });
    EXPECT_EQ(ok.error, "");
  }
}

// Was: a 1 KB file with one id of 2^27 allocated 5.5 GB (the id-indexed vocabulary) before any check.
TEST(HostileTokenizer, HugeTokenIdIsRejectedBeforeAllocating) {
  for (std::string id : {"134217728", "1073741823", "4294967298", "18446744073709551615", "-1"}) {
    SCOPED_TRACE(id);
    expect_rejected(R"({"model":{"type":"BPE","vocab":{"a":0,"b":)" + id + R"(},"merges":[]}})",
                    {"model.vocab['b']", id});
  }
  // Ids are bounded by the entries of model.vocab plus added_tokens: holes that added tokens can fill load.
  const std::string sparse = R"({"model":{"type":"BPE","vocab":{"a":0,"c":2},"merges":[]},)";
  EXPECT_EQ(load(sparse + R"("added_tokens":[{"id":5,"content":"<x>"}]})").error, "");
  expect_rejected(sparse + R"("added_tokens":[]})", {"model.vocab['c']", "2 entries of model.vocab"});
}

// Was: 60k added tokens plus duplicates took 15 s (each duplicate rescanned every added token).
TEST(HostileTokenizer, ManyAddedTokensWithDuplicatesLoadFast) {
  constexpr int kN = 60000;
  std::string added;
  for (int pass = 0; pass < 2; ++pass)
    for (int i = 0; i < kN; ++i)
      added += fmt::format(R"({}{{"id":{},"content":"<t{}>","special":{}}})", added.empty() ? "" : ",", i,
                           i, pass == 0 ? "true" : (i % 2 ? "true" : "false"));
  Outcome o = load(fmt::format(R"({{{},"added_tokens":[{}]}})", kModel, added), [](const Tokenizer& t) {
    EXPECT_EQ(t.vocab_size(), 3 + kN);
    // First occurrence fixes the id (after the 3 model tokens); a later duplicate replaces the flags (HF).
    EXPECT_EQ(t.piece_to_id("<t0>"), 3);
    EXPECT_EQ(t.piece_to_id("<t59999>"), 3 + 59999);
    EXPECT_FALSE(t.is_special(3));
    EXPECT_TRUE(t.is_special(4));
    EXPECT_EQ(t.encode("<t7>ab<t8>"), (std::vector<int32_t>{10, 2, 11}));
  });
  std::printf("[ hostile ] %d added tokens + %d duplicates: %.2f s, peak RSS +%.0f MB\n", kN, kN, o.seconds,
              o.rss_growth_mb);
  EXPECT_EQ(o.error, "");
  EXPECT_LT(o.seconds, 6.0);
  // A token whose content is in the model vocab keeps the model id; the next new one continues after the vocab.
  load(fmt::format(R"({{{},"added_tokens":[{{"id":0,"content":"ab"}},{{"id":9,"content":"<x>"}},)"
                   R"({{"id":9,"content":"ab","special":true}}]}})",
                   kModel),
       [](const Tokenizer& t) {
         EXPECT_EQ(t.piece_to_id("ab"), 2);
         EXPECT_EQ(t.piece_to_id("<x>"), 3);
         EXPECT_TRUE(t.is_special(2));
       });
}

// Was: ids past int32 were truncated silently (4294967298 became 2, a valid id).
TEST(HostileTokenizer, IdsPastInt32AreRejectedNamingTheField) {
  const std::string tp = R"("post_processor":{"type":"TemplateProcessing","single":[{"SpecialToken":{"id":"<s>",)"
                         R"("type_id":0}},{"Sequence":{"id":"A","type_id":0}}],"special_tokens":{"<s>":{"id":"<s>",)"
                         R"("ids":[IDS],"tokens":["<s>"]}}})";
  auto with_ids = [&](const std::string& ids) {
    std::string p = tp;
    p.replace(p.find("IDS"), 3, ids);
    return fmt::format("{{{},{}}}", kModel, p);
  };
  for (std::string id : {"4294967298", "2147483648", "18446744073709551615", "-1"}) {
    SCOPED_TRACE(id);
    expect_rejected(with_ids(id), {"post_processor.special_tokens['<s>'].ids[0]", id});
    expect_rejected(fmt::format(R"({{{},"added_tokens":[{{"id":{},"content":"<x>"}}]}})", kModel, id),
                    {"added_tokens[0].id", id});
    expect_rejected(fmt::format(R"({{{},"decoder":{{"type":"Strip","content":" ","start":{},"stop":0}}}})", kModel,
                                id),
                    {"decoder.start", id});
  }
  expect_rejected(with_ids(R"("x")"), {"post_processor.special_tokens['<s>'].ids[0]"});
  expect_rejected(with_ids("7"), {"bos id", "7"});  // in int32 range but outside the vocabulary
  EXPECT_EQ(load(with_ids("2"), [](const Tokenizer& t) { EXPECT_EQ(t.bos_id(), 2); }).error, "");
}

// User-controlled strings reach error messages only through excerpt().
TEST(HostileTokenizer, ErrorMessagesDoNotDumpHugeInput) {
  const std::string big(1 << 20, 'x');
  const std::string m = R"("model":{"type":"BPE","vocab":{"a":0,"b":1,"ab":2},"merges":[)";
  expect_rejected(R"({"model":{"type":"BPE","vocab":{")" + big + R"(":"one"},"merges":[]}})", {"model.vocab['xxx"});
  expect_rejected(R"({"model":{"type":"BPE","vocab":{"a":0,")" + big + R"(":0},"merges":[]}})", {"id 0 is used by"});
  expect_rejected("{" + m + R"(")" + big + R"("]}})", {"model.merges[0]"});
  expect_rejected("{" + m + R"("a )" + big + R"("]}})", {"model.merges[0]", "is not in the vocab"});
  expect_rejected("{" + m + R"("a b"],"unk_token":")" + big + R"("}})", {"model.unk_token"});
  expect_rejected("{" + m + R"("a b"],"type":")" + big + R"("}})", {"model.type"});
  expect_rejected(R"({"model":{}, "x":")" + big + "\n\"}", {"not valid JSON"});
  expect_rejected(R"({"model":{)" + big, {"not valid JSON"});
  expect_rejected("{" + kModel + R"(,"normalizer":{"type":")" + big + R"("}})", {"normalizer.type"});
  expect_rejected("{" + kModel + R"(,"pre_tokenizer":{"type":"Split","pattern":{"Regex":"()" + big +
                      R"("},"behavior":"Isolated"}})",
                  {"cannot compile regex"});
  expect_rejected("{" + kModel + R"(,"pre_tokenizer":{"type":"Split","pattern":{"String":"x"},"behavior":")" +
                      big + R"("}})",
                  {"behavior"});
  expect_rejected("{" + kModel + R"(,"pre_tokenizer":{"type":"Metaspace","prepend_scheme":")" + big + R"("}})",
                  {"prepend_scheme"});
  expect_rejected("{" + kModel + R"(,"post_processor":{"type":"TemplateProcessing","single":[{"SpecialToken":)"
                      R"({"id":")" + big + R"("}}],"special_tokens":{}}})",
                  {"special_tokens has no entry"});
}

// A hostile file can also make encode slow: an added token that shares a long prefix with the input.
TEST(HostileTokenizer, LongAddedTokenPrefixDoesNotMakeEncodeQuadratic) {
  const std::string token = std::string(4096, 'a') + "b";
  Outcome o = load(fmt::format(R"({{{},"added_tokens":[{{"id":3,"content":"{}"}}]}})", kModel, token),
                   [&](const Tokenizer& t) {
                     const std::string text = std::string(1 << 20, 'a') + "b";
                     const auto t0 = std::chrono::steady_clock::now();
                     std::vector<int32_t> ids = t.encode(text);
                     const double s = seconds_since(t0);
                     std::printf("[ hostile ] 1 MB of 'a' against a 4 KB added token: %.2f s\n", s);
                     EXPECT_LT(s, 10.0);
                     ASSERT_FALSE(ids.empty());
                     EXPECT_EQ(ids.back(), 3);
                     EXPECT_EQ(ids.size(), (text.size() - token.size()) + 1);  // one 'a' per id, then the token
                   });
  EXPECT_EQ(o.error, "");
}

// The Aho-Corasick matcher finds exactly what a walk from every position found (leftmost, then longest), on
// random token sets over a small alphabet, where overlaps and shared prefixes are common.
TEST(HostileTokenizer, AddedTokenMatcherIsLeftmostLongest) {
  std::mt19937 rng(7);
  auto random_text = [&](size_t max_len) {
    std::string t(1 + rng() % max_len, 'a');
    for (char& c : t) c = "abc"[rng() % 3];
    return t;
  };
  for (int round = 0; round < 2000; ++round) {
    std::vector<std::string> tokens;
    tok::TokenTrie trie;
    for (int k = 0, n = 1 + static_cast<int>(rng() % 8); k < n; ++k) {
      tokens.push_back(random_text(6));
      trie.add(tokens.back(), k);
    }
    trie.finish();
    const std::string s = random_text(60);
    for (size_t pos = 0; pos <= s.size(); ++pos) {
      tok::TokenTrie::Match want;  // naive: first start with any match, longest there, first index for a content
      for (size_t p = pos; p < s.size() && !want.len; ++p)
        for (size_t k = 0; k < tokens.size(); ++k)
          if (s.compare(p, tokens[k].size(), tokens[k]) == 0 && tokens[k].size() > want.len)
            want = {p, tokens[k].size(), static_cast<int32_t>(k)};
      const tok::TokenTrie::Match got = trie.find(s, pos);
      ASSERT_EQ(got.len, want.len) << s << " at " << pos;
      if (want.len) {
        ASSERT_EQ(got.start, want.start) << s << " at " << pos;
        ASSERT_EQ(tokens[got.index], tokens[want.index]);
        ASSERT_LE(got.index, want.index);  // the first index added for a duplicated content
      }
    }
  }
}

// A Split regex with catastrophic backtracking: PCRE2's match limit turns it into a clear error, not a hang.
TEST(HostileTokenizer, BacktrackingSplitRegexFailsClearly) {
  Outcome o = load("{" + kModel + R"(,"pre_tokenizer":{"type":"Split","pattern":{"Regex":"(a+a+)+c"},)"
                       R"("behavior":"Isolated","invert":false}})",
                   [](const Tokenizer& t) {
                     const auto t0 = std::chrono::steady_clock::now();
                     try {
                       t.encode(std::string(5000, 'a') + "bc");
                       ADD_FAILURE() << "no error";
                     } catch (const Error& e) {
                       EXPECT_NE(std::string(e.what()).find("regex match failed on a 5002-byte piece: match limit"),
                                 std::string::npos)
                           << e.what();
                     }
                     EXPECT_LT(seconds_since(t0), 5.0);
                   });
  EXPECT_EQ(o.error, "");
}

// --- adversarial encode input ---------------------------------------------------------------------------------

// The fixtures' tokenizers, and the default model's as the engine builds it (from GGUF metadata).
std::unique_ptr<Tokenizer> tokenizer_named(const std::string& name) {
  if (name != "default_model")
    return std::make_unique<Tokenizer>(Tokenizer::from_hf_json(kFixtures + "/" + name + "/tokenizer.json"));
  const std::string gguf = std::string(TANDEM_FIXTURES) + "/../../models/SmolLM2-135M-Instruct.Q4_1.gguf";
  if (!fs::exists(gguf)) return nullptr;
  auto f = GgufFile::open(gguf);
  return std::make_unique<Tokenizer>(Tokenizer::from_spec(tokenizer_spec_from_gguf(*f)));
}

class HostileEncode : public ::testing::TestWithParam<std::string> {};

TEST_P(HostileEncode, AdversarialInputFinishesQuickly) {
  const std::string name = GetParam();
  std::unique_ptr<Tokenizer> tok = tokenizer_named(name);
  if (!tok) GTEST_SKIP() << "no default model (tools/fetch_default_model.sh fetches it)";
  constexpr size_t kMB = 1 << 20;
  std::string marks = "a";  // combining marks of alternating classes: NFC has to reorder one 1 MB run
  while (marks.size() < kMB) marks += "\xCC\x81\xCC\x96";  // U+0301 (ccc 230), U+0316 (ccc 220)
  struct Input {
    const char* what;
    std::string text;
    bool valid_utf8, specials;
  };
  const std::vector<Input> inputs = {
      {"1 MB of 'a' (one word)", std::string(kMB, 'a'), true, false},
      {"1 MB of '!' (one punctuation run)", std::string(kMB, '!'), true, false},
      {"1 MB of one CJK letter", repeat("\xE4\xB8\xAD", kMB / 3), true, false},
      {"1 MB of combining marks", marks, true, false},
      {"1 MB of \\r\\n", repeat("\r\n", kMB / 2), true, false},
      {"1 MB of U+3000", repeat("\xE3\x80\x80", kMB / 3), true, false},
      {"1 MB of 'a b '", repeat("a b ", kMB / 4), true, false},
      {"1 MB of lone continuation bytes", std::string(kMB, '\x80'), false, false},
      {"1 MB of truncated sequences", repeat("\xE4\xB8", kMB / 2), false, false},
      {"1 MB of surrogates and overlongs", repeat("\xED\xA0\x80\xC0\xAF\xF8", kMB / 6), false, false},
      {"100k special-token strings", repeat("<|im_end|><|endoftext|></s>", 100000 / 3), true, true},
      {"100k special-token prefixes", repeat("<|im_en<|endoftext", 100000 / 2), true, true},
  };
  for (const Input& in : inputs) {
    for (bool parse_special : {true, false}) {
      if (!parse_special && !in.specials) continue;
      SCOPED_TRACE(fmt::format("{}: {} (parse_special {})", name, in.what, parse_special));
      const auto t0 = std::chrono::steady_clock::now();
      std::vector<int32_t> ids = tok->encode(in.text, true, parse_special);
      const double enc = seconds_since(t0);
      const std::string back = tok->decode(ids);
      const double total = seconds_since(t0);
      std::printf("[ hostile ] %s, %s%s: %zu ids, encode %.2f s, +decode %.2f s\n", name.c_str(), in.what,
                  parse_special ? "" : " (not parsed)", ids.size(), enc, total);
      EXPECT_LT(total, 10.0);  // 0.1-1.5 s each on a loaded 2-core machine; quadratic would be minutes
      ASSERT_FALSE(ids.empty());
      for (int32_t id : ids) ASSERT_TRUE(id >= 0 && id < tok->vocab_size()) << id;
      EXPECT_EQ(sanitize_utf8(back), back);
      // Byte-level BPE without a normalizer is lossless on valid UTF-8 (qwen2 applies NFC; spm_bpe has unk).
      if (in.valid_utf8 && name != "spm_bpe" && name != "qwen2") {
        EXPECT_TRUE(back == in.text);
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(HostileTokenizer, HostileEncode,
                         ::testing::Values("smollm2", "qwen2", "spm_bpe", "default_model"));

// --- chat templates -------------------------------------------------------------------------------------------

TEST(HostileTokenizer, ChatTemplateBoundsMessagesAndWork) {
  const std::string big(1 << 20, 'x');
  try {
    ChatTemplate::detect(big, "llama", nullptr, nullptr);
    ADD_FAILURE() << "an unrecognized template was accepted";
  } catch (const Error& e) {
    EXPECT_LT(std::string(e.what()).size(), 400u);
  }
  const ChatTemplate t = ChatTemplate::from_name("chatml");
  const ChatMessage bad_role[] = {{big, "hi"}};
  try {
    t.render(bad_role);
    ADD_FAILURE() << "a 1 MB role was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("is not one of system, user, assistant"), std::string::npos);
    EXPECT_LT(std::string(e.what()).size(), 400u);
  }
  // Many messages and huge contents: linear work, output exactly the sum of the parts.
  for (const char* name : {"chatml", "llama3", "mistral"}) {
    const ChatTemplate f = ChatTemplate::from_name(name);
    std::vector<ChatMessage> msgs;
    for (int i = 0; i < 100000; ++i) msgs.push_back({i % 2 ? "assistant" : "user", std::string(100, 'm')});
    msgs.push_back({"user", std::string(8 << 20, 'u')});
    const auto t0 = std::chrono::steady_clock::now();
    const std::string out = f.render(msgs);
    const double s = seconds_since(t0);
    std::printf("[ hostile ] %s: 100k messages + 8 MB: %zu bytes in %.2f s\n", name, out.size(), s);
    EXPECT_LT(s, 5.0) << name;
    EXPECT_GT(out.size(), 100000u * 100 + (8u << 20)) << name;
    EXPECT_LT(out.size(), 100000u * 200 + (9u << 20)) << name;
  }
  // A hostile template that names ChatML many times and hides its default system prompt at the end.
  const std::string tpl = repeat("<|im_start|>system\\n{{ x }}", 100000) + "<|im_start|>system\\nS<|im_end|>";
  const auto t0 = std::chrono::steady_clock::now();
  const ChatTemplate d = ChatTemplate::detect(tpl, "llama", nullptr, nullptr);
  EXPECT_LT(seconds_since(t0), 1.0);
  EXPECT_EQ(d.format(), ChatFormat::ChatML);
}

}  // namespace
}  // namespace tandem
