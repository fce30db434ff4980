// Tokenizer internals shared by the tokenizer/*.cpp files.
#pragma once
#include <array>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "tokenizer/tokenizer.h"

namespace tandem::tok {

struct StringHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};
using TokenMap = std::unordered_map<std::string, int32_t, StringHash, std::equal_to<>>;

// A compiled PCRE2 pattern (UTF + UCP, JIT when available). `\s`/`\S` are rewritten to Unicode White_Space so
// that they match what Oniguruma (used by HF tokenizers) matches.
class Regex {
 public:
  Regex(const std::string& pattern, const std::string& where);
  ~Regex();
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;
  // Appends the [start, end) byte offsets of each successive non-overlapping match in s (valid UTF-8).
  void find_all(std::string_view s, std::vector<std::pair<size_t, size_t>>& out) const;

 private:
  void* code_ = nullptr;  // pcre2_code_8*
  bool jit_ = false;
  std::string where_;
};

std::string regex_escape(std::string_view literal);
const char* gpt2_regex();  // HF ByteLevel's split regex
bool is_alnum_cp(uint32_t cp);  // Unicode letter or number (for single_word)

// Leftmost-longest matcher over added-token contents (HF matches them with aho-corasick, LeftmostLongest). An
// Aho-Corasick automaton rather than a trie walk from every position: input that shares a long prefix with a
// token (1 MB of 'a' against a token "aaa...ab") is then scanned once instead of once per position.
class TokenTrie {
 public:
  void add(const std::string& content, int32_t index);  // the first index added for a content wins
  void finish();  // builds the failure links; call after the last add()
  bool empty() const { return nodes_.size() <= 1; }
  struct Match {
    size_t start = 0, len = 0;  // len 0: no match
    int32_t index = -1;
  };
  // The leftmost match that starts at or after s[pos], the longest one starting there.
  Match find(std::string_view s, size_t pos) const;

 private:
  struct Node {
    std::vector<std::pair<unsigned char, int32_t>> next;  // sorted by byte
    int32_t index = -1;                                   // the token that ends here
    int32_t fail = 0;                                     // node of the longest proper suffix
    int32_t depth = 0;
    int32_t out_len = 0, out_index = -1;  // the longest token that is a suffix of this node's string
  };
  int32_t child(int32_t node, unsigned char c) const;
  std::vector<Node> nodes_ = std::vector<Node>(1);
  std::array<int32_t, 256> root_next_{};  // the root's children by byte (-1: none), filled by finish()
  bool finished_ = false;
};

struct PreStep {
  PreTokenizerStep step;
  std::unique_ptr<Regex> regex;  // Split / Digits / ByteLevel(use_regex)
};

struct Piece {
  std::string text;
  bool at_start = false;  // begins at offset 0 of the original input (Metaspace prepend_scheme "first")
};

}  // namespace tandem::tok

namespace tandem {

struct Tokenizer::Impl {
  TokenizerSpec spec;
  tok::TokenMap token_to_id;
  std::unordered_map<uint64_t, std::pair<int32_t, int32_t>> merges;  // (left << 32 | right) -> (rank, new id)
  bool score_mode = false;  // SPM vocab without merges: merge priority = score of the merged token
  bool byte_level = false;  // a ByteLevel pre-tokenizer maps bytes to the GPT-2 alphabet
  std::array<int32_t, 256> byte_fallback_id{};  // id of "<0xNN>" or -1
  int32_t unk_id = -1;
  std::vector<AddedToken> added;        // index used by the tries
  std::vector<uint8_t> special_flag;    // by id: 1 if special (skipped by decode(skip_special))
  std::vector<uint8_t> added_flag;      // by id: 1 if an added token (decoded as its content)
  tok::TokenTrie raw_trie, norm_trie;
  std::vector<tok::PreStep> pre;

  mutable std::mutex cache_mu;
  mutable std::unordered_map<std::string, std::vector<int32_t>> cache;

  void build();  // validates spec, fills the tables above (tokenizer.cpp)
  std::string normalize(std::string s) const;
  void pre_tokenize(tok::Piece piece, std::vector<tok::Piece>& out) const;  // pretokenize.cpp
  void tokenize_word(std::string_view word, std::vector<int32_t>& out) const;  // bpe.cpp (with cache)
  void bpe_ranked(std::string_view word, std::vector<int32_t>& out) const;     // bpe.cpp
  void bpe_scored(std::string_view word, std::vector<int32_t>& out) const;     // bpe.cpp
  // Bytes that one token contributes to the decoded text (stream decoding).
  std::string token_bytes(int32_t id) const;
  void check_id(int32_t id, const char* what) const;
};

}  // namespace tandem
