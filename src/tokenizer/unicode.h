// UTF-8 and Unicode helpers for the tokenizer (internal).
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace tandem::tok {

// Result of looking at the bytes at p[0..n): len > 0: a valid character of len bytes (cp set);
// len < 0: an invalid maximal subpart of -len bytes; len == 0: a valid but incomplete prefix (n too short).
struct Utf8Step {
  int len;
  uint32_t cp;
};
Utf8Step utf8_step(const unsigned char* p, size_t n);

void append_utf8(std::string& out, uint32_t cp);
// Lossy conversion: each invalid maximal subpart (and an incomplete tail) becomes U+FFFD.
std::string utf8_lossy(std::string_view bytes);
bool utf8_valid(std::string_view bytes);
// Length of the longest prefix of `bytes` that can be emitted now: everything except a trailing valid-but-
// incomplete character (which is held back). Invalid subparts count as emittable.
size_t utf8_emittable_prefix(std::string_view bytes);
// Decodes one code point of valid UTF-8 at s[i], advancing i.
uint32_t next_cp(std::string_view s, size_t& i);

// Unicode White_Space (Rust's char::is_whitespace).
bool is_white_space(uint32_t cp);

// NFC normalization of valid UTF-8.
std::string nfc(std::string_view s);

// GPT-2 bytes_to_unicode: the UTF-8 string each byte maps to, and the reverse (-1 if cp is not in the map).
const std::string& byte_to_unicode(uint8_t b);
int unicode_to_byte(uint32_t cp);

}  // namespace tandem::tok
