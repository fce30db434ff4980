// Tokenizer encode/decode on arbitrary bytes with three real tokenizers (byte-level BPE: SmolLM2; with NFC:
// Qwen2; SentencePiece BPE with byte fallback: tests/fixtures/tokenizer/spm_bpe). The first byte picks the tokenizer
// and the flags; the rest is the text to encode, and is also read as token ids to decode (some out of range, which
// must throw tandem::Error).
// Properties: encode yields ids in range; decode(encode(text)) == text for valid UTF-8 on the byte-level tokenizer
// without a normalizer (made of bytes its vocabulary has); the stream decoder's output equals decode() when that
// needed no U+FFFD.
#include <cstring>
#include <string>

#include "core/error.h"
#include "tokenizer/tokenizer.h"

using namespace tandem;

namespace {
const std::vector<Tokenizer>& tokenizers() {
  static const std::vector<Tokenizer> toks = [] {
    std::vector<Tokenizer> v;
    for (const char* name : {"smollm2", "qwen2", "spm_bpe"})
      v.push_back(Tokenizer::from_hf_json(std::string(TANDEM_FIXTURES) + "/tokenizer/" + name + "/tokenizer.json"));
    return v;
  }();
  return toks;
}
// GPT-2's byte -> character map (printable bytes map to themselves, the others to U+0100 + n).
std::string byte_char(uint8_t b) {
  auto printable = [](unsigned c) { return (c >= 0x21 && c <= 0x7E) || (c >= 0xA1 && c <= 0xAC) || c >= 0xAE; };
  unsigned cp = b;
  if (!printable(b)) {
    unsigned n = 0;
    for (unsigned c = 0; c < b; ++c) n += !printable(c);
    cp = 256 + n;
  }
  std::string out;
  if (cp < 0x80) out += char(cp);
  else {
    out += char(0xC0 | (cp >> 6));
    out += char(0x80 | (cp & 0x3F));
  }
  return out;
}

// SmolLM2's vocabulary lacks 21 of the 256 byte characters (0x04, 0x06, 0xF1, ...); like HF (no unk_token, no byte
// fallback) the tokenizer drops them, so round trips are only checked on text made of the others.
bool all_bytes_in_vocab(const Tokenizer& tok, std::string_view text) {
  static const std::vector<bool> in_vocab = [&] {
    std::vector<bool> v(256);
    for (int b = 0; b < 256; ++b) v[b] = tok.piece_to_id(byte_char(uint8_t(b))).has_value();
    return v;
  }();
  for (unsigned char c : text)
    if (!in_vocab[c]) return false;
  return true;
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  const auto& toks = tokenizers();
  const uint8_t flags = data[0];
  const Tokenizer& tok = toks[(flags & 3) % toks.size()];
  const bool add_special = flags & 4, parse_special = flags & 8, skip_special = flags & 16;
  const std::string_view text(reinterpret_cast<const char*>(data + 1), size - 1);
  const int32_t n = tok.vocab_size();

  std::vector<int32_t> ids = tok.encode(text, add_special, parse_special);
  for (int32_t id : ids)
    if (id < 0 || id >= n) __builtin_trap();
  std::string dec = tok.decode(ids, skip_special);
  if ((flags & 3) == 0 && !add_special && !parse_special && !skip_special && sanitize_utf8(text) == text &&
      all_bytes_in_vocab(toks[0], text) && dec != text)
    __builtin_trap();  // byte-level BPE without a normalizer is lossless on valid UTF-8

  // The same bytes as 16-bit ids, some past the vocabulary.
  std::vector<int32_t> raw;
  for (size_t k = 1; k + 1 < size; k += 2) {
    uint16_t v;
    std::memcpy(&v, data + k, 2);
    raw.push_back(int32_t(v % uint32_t(n + 64)) - (v >> 15) * 2);  // a few negative ids too
  }
  try {
    std::string d = tok.decode(raw, skip_special);
    std::string s;
    auto sd = tok.stream_decoder(skip_special);
    for (int32_t id : raw) s += sd.push(id);
    s += sd.flush();
    // The stream decoder promises decode()'s text when the bytes are valid UTF-8 (no replacement character).
    if (d.find("\xEF\xBF\xBD") == std::string::npos && s != d) __builtin_trap();
  } catch (const Error&) {
    bool bad = false;
    for (int32_t id : raw) bad |= id < 0 || id >= n;
    if (!bad) __builtin_trap();  // decode threw on ids that are all in range
  }
  for (int32_t id : raw)
    if (id >= 0 && id < n) {
      const std::string& piece = tok.token_to_piece(id);
      (void)tok.piece_to_id(piece);
      (void)tok.is_special(id);
    }
  return 0;
}
