// Byte-level BPE (GPT-2 style) and SentencePiece-style BPE (Llama 2 style) tokenizers with the behaviour of
// HF `tokenizers`: added/special tokens split out first (leftmost-longest, lstrip/rstrip/single_word),
// normalizer, pre-tokenizer regexes (PCRE2 with UTF+UCP, JIT), BPE merges by rank, decoders.
//
// Two sources fill a TokenizerSpec:
//  - HF tokenizer.json: Tokenizer::from_hf_json (fills the explicit pipeline fields: normalizers, pre_tokenizers,
//    decoders; anything not implemented is rejected with an error naming the field).
//  - GGUF metadata: the caller maps tokenizer.ggml.* into a TokenizerSpec and calls Tokenizer::from_spec, which
//    derives the pipeline from the simple fields (model, pre, nfc, add_space_prefix):
//      tokenizer.ggml.model   "gpt2" -> Model::ByteLevelBPE, "llama" -> Model::SentencePieceBPE
//      tokenizer.ggml.tokens  -> vocab            tokenizer.ggml.token_type -> token_types (GGUF numbering)
//      tokenizer.ggml.merges  -> merges ("a b")   tokenizer.ggml.scores -> scores (SPM, used when no merges)
//      tokenizer.ggml.pre     -> pre via pre_kind_from_gguf():
//        "gpt2", "gpt-2", "default", "" -> Pre::Gpt2 : 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
//            (llama.cpp's LLAMA_VOCAB_PRE_TYPE_DEFAULT uses a different 4-regex split; we follow HF's ByteLevel)
//        "llama-bpe", "llama3", "llama-v3", "smaug-bpe", "dbrx" -> Pre::Llama3 :
//            (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
//        "qwen2", "deepseek-r1-qwen", "stablelm2" -> Pre::Qwen2 (and nfc = true for qwen2):
//            (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
//        "smollm", "starcoder", "refact", "codeshell", "command-r" -> Pre::SmolLM : \p{N} then the Gpt2 regex
//      other names -> Pre::Custom is not guessed: pre_kind_from_gguf throws naming the value.
//      tokenizer.ggml.bos_token_id / eos_token_id / eot_token_id / add_bos_token / add_eos_token /
//      add_space_prefix (SPM, default true) -> bos_id, eos_ids, add_bos, add_eos, add_space_prefix.
//      Token types 3 (control) and 4 (user-defined) become added tokens (control: special; user-defined: not
//      special), matched on the raw text like HF does for tokens with normalized=false.
//
// Unicode: NFC (for tokenizers whose normalizer asks for it, e.g. Qwen2) is implemented in full with generated
// tables (unicode_tables.inc, Unicode 14). Invalid UTF-8 input is replaced with U+FFFD per maximal subpart, as
// Python's bytes.decode("utf-8", errors="replace") does, before tokenizing.
//
// Thread safety: a Tokenizer is immutable after construction except for an internal word cache guarded by a
// mutex; encode/decode may be called from several threads.
#pragma once
#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace tandem {

enum class TokenizerModel { ByteLevelBPE, SentencePieceBPE };

// GGUF numbering (llama.cpp's llama_token_type).
enum class TokenType : int32_t { Undefined = 0, Normal = 1, Unknown = 2, Control = 3, UserDefined = 4, Unused = 5, Byte = 6 };

enum class PreTokenizerKind { None, Gpt2, Llama3, Qwen2, SmolLM, Custom };

// Maps a GGUF tokenizer.ggml.pre value to a kind (see the table above); throws tandem::Error for unknown names.
PreTokenizerKind pre_kind_from_gguf(std::string_view pre);
// The split regexes (applied in sequence, matches isolated) for a kind; empty for None/Custom.
std::vector<std::string> pre_tokenizer_regexes(PreTokenizerKind kind);

struct AddedToken {
  int32_t id = -1;
  std::string content;
  bool special = true;      // control token: skipped by decode(skip_special); not split out when parse_special=false
  bool normalized = false;  // matched after normalization (content normalized too) instead of on the raw text
  bool lstrip = false, rstrip = false, single_word = false;
};

// Explicit pipeline steps (HF tokenizer.json). from_spec derives them from the simple fields when empty.
struct NormalizerStep {
  enum class Kind { NFC, Prepend, Replace } kind = Kind::NFC;
  std::string a, b;  // Prepend: a; Replace: literal a -> b
};
enum class SplitBehavior { Removed, Isolated, MergedWithPrevious, MergedWithNext, Contiguous };
enum class PrependScheme { Always, First, Never };
struct PreTokenizerStep {
  enum class Kind { Split, Digits, ByteLevel, Metaspace } kind = Kind::Split;
  std::string pattern;         // Split: PCRE-compatible regex (literal patterns are escaped by the loader)
  SplitBehavior behavior = SplitBehavior::Isolated;
  bool invert = false;         // Split
  bool individual_digits = false;  // Digits
  bool add_prefix_space = false;   // ByteLevel
  bool use_regex = true;           // ByteLevel: split with the GPT-2 regex first
  std::string replacement = "\xE2\x96\x81";  // Metaspace ("▁")
  PrependScheme prepend_scheme = PrependScheme::Always;
  bool split = true;                         // Metaspace
};
struct DecoderStep {
  enum class Kind { ByteLevel, Replace, ByteFallback, Fuse, Strip, Metaspace } kind = Kind::ByteLevel;
  std::string a, b;  // Replace: a -> b; Strip: a = content (one char); Metaspace: a = replacement
  int start = 0, stop = 0;  // Strip
  PrependScheme prepend_scheme = PrependScheme::Always;  // Metaspace
};

struct TokenizerSpec {
  TokenizerModel model = TokenizerModel::ByteLevelBPE;
  std::vector<std::string> vocab;                          // id -> token (byte-level chars for ByteLevelBPE)
  std::vector<std::pair<std::string, std::string>> merges;  // rank = index
  std::vector<float> scores;                               // SPM without merges: merge priority = score of result
  std::vector<TokenType> token_types;                      // optional, same length as vocab
  std::vector<AddedToken> added_tokens;                    // explicit added tokens (HF); GGUF: from token_types
  PreTokenizerKind pre = PreTokenizerKind::Gpt2;           // ByteLevelBPE only
  std::vector<std::string> pre_regexes;                    // Pre::Custom: split regexes in sequence
  bool nfc = false;
  bool add_space_prefix = true;  // SentencePieceBPE: prepend "▁" to each text segment, strip it when decoding
  bool byte_fallback = false;    // unknown chars -> <0xNN> tokens (SentencePieceBPE: always on)
  bool ignore_merges = false;    // a pre-token that is itself in the vocab maps to that token directly
  std::optional<std::string> unk_token;  // HF model.unk_token
  bool fuse_unk = false;
  std::string continuing_subword_prefix, end_of_word_suffix;  // HF BPE (rare; empty in byte-level models)
  bool add_bos = false, add_eos = false;
  int32_t bos_id = -1;
  std::vector<int32_t> eos_ids;  // first = eos; more end-of-generation ids (eot, im_end) may follow
  // Explicit pipeline (filled by from_hf_json). When all three are empty, from_spec derives them.
  std::vector<NormalizerStep> normalizers;
  std::vector<PreTokenizerStep> pre_tokenizers;
  std::vector<DecoderStep> decoders;
  bool pipeline_explicit = false;
  std::string source;  // for error messages, e.g. the file path
};

class StreamDecoder;

class Tokenizer {
 public:
  // Parses an HF tokenizer.json (model.type BPE). Throws tandem::Error naming the file and field at fault.
  static Tokenizer from_hf_json(const std::filesystem::path& tokenizer_json);
  static Tokenizer from_hf_json_string(std::string_view json, std::string source = "<string>");
  static Tokenizer from_spec(TokenizerSpec spec);

  Tokenizer(Tokenizer&&) noexcept;
  Tokenizer& operator=(Tokenizer&&) noexcept;
  ~Tokenizer();

  // add_special: prepend bos / append eos as the spec says. parse_special: recognize the text of special
  // (control) added tokens; non-special added tokens are always recognized (HF's encode_special_tokens).
  std::vector<int32_t> encode(std::string_view text, bool add_special = false, bool parse_special = true) const;
  // HF decode semantics (decoder pipeline, lossy UTF-8). Throws on ids out of range.
  std::string decode(std::span<const int32_t> ids, bool skip_special = false) const;
  StreamDecoder stream_decoder(bool skip_special = false) const;

  const std::string& token_to_piece(int32_t id) const;  // throws on out of range
  std::optional<int32_t> piece_to_id(std::string_view piece) const;
  int32_t vocab_size() const;
  int32_t bos_id() const;                      // -1 if none
  const std::vector<int32_t>& eos_ids() const;
  bool add_bos() const;
  bool is_special(int32_t id) const;           // special added token / control token
  const TokenizerSpec& spec() const;

  // Overrides for values that tokenizer.json does not carry (from config.json / generation_config.json).
  void set_bos(int32_t id, bool add_bos);
  void set_eos_ids(std::vector<int32_t> ids);

  struct Impl;

 private:
  explicit Tokenizer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
  friend class StreamDecoder;
};

// Incremental decoding: push() returns the text that became complete; bytes of an incomplete UTF-8 character
// are held until it completes (invalid sequences become U+FFFD). The concatenation of all push() results and
// flush() equals decode() of all ids for text that decodes to valid UTF-8.
class StreamDecoder {
 public:
  std::string push(int32_t id);
  std::string flush();

 private:
  friend class Tokenizer;
  StreamDecoder(const Tokenizer::Impl* impl, bool skip_special) : impl_(impl), skip_special_(skip_special) {}
  std::string drain(bool final);
  const Tokenizer::Impl* impl_;
  bool skip_special_;
  bool at_start_ = true;
  std::string pending_;
};

// Replaces invalid UTF-8 with U+FFFD (one per maximal subpart, like Python's errors="replace").
std::string sanitize_utf8(std::string_view bytes);

}  // namespace tandem
