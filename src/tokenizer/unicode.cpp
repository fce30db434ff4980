#include "tokenizer/unicode.h"

#include <algorithm>
#include <array>
#include <vector>

#include "tokenizer/tokenizer.h"

namespace tandem::tok {
namespace {

struct CccRange {
  uint32_t first, last, ccc;
};
struct Decomp {
  uint32_t cp, a, b;
};
struct Comp {
  uint32_t a, b, c;
};
#include "tokenizer/unicode_tables.inc"

constexpr uint32_t kSBase = 0xAC00, kLBase = 0x1100, kVBase = 0x1161, kTBase = 0x11A7;
constexpr uint32_t kLCount = 19, kVCount = 21, kTCount = 28, kNCount = kVCount * kTCount, kSCount = kLCount * kNCount;

uint32_t ccc(uint32_t cp) {
  if (cp < 0x300) return 0;
  auto it = std::upper_bound(std::begin(kCcc), std::end(kCcc), cp,
                             [](uint32_t v, const CccRange& r) { return v < r.first; });
  if (it == std::begin(kCcc)) return 0;
  --it;
  return cp <= it->last ? it->ccc : 0;
}

void decompose(uint32_t cp, std::vector<uint32_t>& out) {
  if (cp >= kSBase && cp < kSBase + kSCount) {
    uint32_t s = cp - kSBase;
    out.push_back(kLBase + s / kNCount);
    out.push_back(kVBase + (s % kNCount) / kTCount);
    if (s % kTCount) out.push_back(kTBase + s % kTCount);
    return;
  }
  if (cp >= 0xC0) {
    auto it = std::lower_bound(std::begin(kDecomp), std::end(kDecomp), cp,
                               [](const Decomp& d, uint32_t v) { return d.cp < v; });
    if (it != std::end(kDecomp) && it->cp == cp) {
      decompose(it->a, out);
      if (it->b) decompose(it->b, out);
      return;
    }
  }
  out.push_back(cp);
}

uint32_t compose(uint32_t a, uint32_t b) {
  if (a >= kLBase && a < kLBase + kLCount && b >= kVBase && b < kVBase + kVCount)
    return kSBase + ((a - kLBase) * kVCount + (b - kVBase)) * kTCount;
  if (a >= kSBase && a < kSBase + kSCount && (a - kSBase) % kTCount == 0 && b > kTBase && b < kTBase + kTCount)
    return a + (b - kTBase);
  auto it = std::lower_bound(std::begin(kComp), std::end(kComp), std::make_pair(a, b),
                             [](const Comp& c, const std::pair<uint32_t, uint32_t>& v) {
                               return c.a < v.first || (c.a == v.first && c.b < v.second);
                             });
  if (it != std::end(kComp) && it->a == a && it->b == b) return it->c;
  return 0;
}

}  // namespace

Utf8Step utf8_step(const unsigned char* p, size_t n) {
  unsigned char c = p[0];
  if (c < 0x80) return {1, c};
  int need;
  uint32_t cp;
  unsigned char lo = 0x80, hi = 0xBF;  // allowed range of the second byte
  if (c >= 0xC2 && c <= 0xDF) {
    need = 1, cp = c & 0x1F;
  } else if (c >= 0xE0 && c <= 0xEF) {
    need = 2, cp = c & 0x0F;
    if (c == 0xE0) lo = 0xA0;
    if (c == 0xED) hi = 0x9F;
  } else if (c >= 0xF0 && c <= 0xF4) {
    need = 3, cp = c & 0x07;
    if (c == 0xF0) lo = 0x90;
    if (c == 0xF4) hi = 0x8F;
  } else {
    return {-1, 0};
  }
  for (int k = 1; k <= need; ++k) {
    if (static_cast<size_t>(k) >= n) return {0, 0};
    unsigned char b = p[k];
    unsigned char l = k == 1 ? lo : 0x80, h = k == 1 ? hi : 0xBF;
    if (b < l || b > h) return {-k, 0};
    cp = (cp << 6) | (b & 0x3F);
  }
  return {need + 1, cp};
}

void append_utf8(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

std::string utf8_lossy(std::string_view bytes) {
  const auto* p = reinterpret_cast<const unsigned char*>(bytes.data());
  size_t n = bytes.size(), i = 0;
  std::string out;
  out.reserve(n);
  while (i < n) {
    size_t run = i;  // fast path over ASCII
    while (run < n && p[run] < 0x80) ++run;
    out.append(bytes.data() + i, run - i);
    i = run;
    if (i >= n) break;
    Utf8Step st = utf8_step(p + i, n - i);
    if (st.len > 0) {
      out.append(bytes.data() + i, st.len);
      i += st.len;
    } else {
      out += "\xEF\xBF\xBD";
      i += st.len < 0 ? -st.len : n - i;  // incomplete tail: one U+FFFD for all of it
    }
  }
  return out;
}

bool utf8_valid(std::string_view bytes) {
  const auto* p = reinterpret_cast<const unsigned char*>(bytes.data());
  size_t n = bytes.size(), i = 0;
  while (i < n) {
    if (p[i] < 0x80) {
      ++i;
      continue;
    }
    Utf8Step st = utf8_step(p + i, n - i);
    if (st.len <= 0) return false;
    i += st.len;
  }
  return true;
}

size_t utf8_emittable_prefix(std::string_view bytes) {
  // Only the last (up to 3) bytes can form an incomplete character.
  size_t n = bytes.size();
  const auto* p = reinterpret_cast<const unsigned char*>(bytes.data());
  for (size_t back = 1; back <= 3 && back <= n; ++back) {
    size_t i = n - back;
    if ((p[i] & 0xC0) == 0x80) continue;  // continuation byte: look further back for the lead
    if (p[i] < 0xC2 || p[i] > 0xF4) return n;
    return utf8_step(p + i, back).len == 0 ? i : n;
  }
  return n;
}

uint32_t next_cp(std::string_view s, size_t& i) {
  Utf8Step st = utf8_step(reinterpret_cast<const unsigned char*>(s.data()) + i, s.size() - i);
  if (st.len <= 0) {  // callers pass valid UTF-8; be safe anyway
    ++i;
    return 0xFFFD;
  }
  i += st.len;
  return st.cp;
}

bool is_white_space(uint32_t cp) {
  if (cp < 0x80) return cp == ' ' || (cp >= 0x09 && cp <= 0x0D);
  return cp == 0x85 || cp == 0xA0 || cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 ||
         cp == 0x2029 || cp == 0x202F || cp == 0x205F || cp == 0x3000;
}

std::string nfc(std::string_view s) {
  // Quick check: nothing below U+0300 needs work.
  bool simple = true;
  for (unsigned char c : s) {
    if (c >= 0xCC) {  // lead bytes of U+0300 and above
      simple = false;
      break;
    }
  }
  if (simple) return std::string(s);
  std::vector<uint32_t> buf;
  buf.reserve(s.size());
  for (size_t i = 0; i < s.size();) decompose(next_cp(s, i), buf);
  // Canonical ordering: stable sort each run of non-starters by combining class.
  for (size_t i = 0; i < buf.size();) {
    if (ccc(buf[i]) == 0) {
      ++i;
      continue;
    }
    size_t j = i;
    while (j < buf.size() && ccc(buf[j]) != 0) ++j;
    if (j - i > 1)
      std::stable_sort(buf.begin() + i, buf.begin() + j, [](uint32_t a, uint32_t b) { return ccc(a) < ccc(b); });
    i = j;
  }
  // Canonical composition (UAX #15 sample algorithm).
  if (!buf.empty()) {
    size_t starter = 0, out = 1;
    uint32_t last_class = ccc(buf[0]);
    if (last_class != 0) last_class = 256;
    for (size_t i = 1; i < buf.size(); ++i) {
      uint32_t ch = buf[i], cls = ccc(ch);
      uint32_t comp = compose(buf[starter], ch);
      if (comp && (last_class < cls || last_class == 0)) {
        buf[starter] = comp;
        continue;
      }
      if (cls == 0) starter = out;
      last_class = cls;
      buf[out++] = ch;
    }
    buf.resize(out);
  }
  std::string res;
  res.reserve(s.size());
  for (uint32_t cp : buf) append_utf8(res, cp);
  return res;
}

namespace {
struct ByteTables {
  std::array<std::string, 256> b2u;
  std::array<int16_t, 512> u2b;
  ByteTables() {
    u2b.fill(-1);
    std::array<bool, 256> direct{};
    for (int b = '!'; b <= '~'; ++b) direct[b] = true;
    for (int b = 0xA1; b <= 0xAC; ++b) direct[b] = true;
    for (int b = 0xAE; b <= 0xFF; ++b) direct[b] = true;
    int n = 0;
    for (int b = 0; b < 256; ++b) {
      uint32_t cp = direct[b] ? b : 256 + n++;
      append_utf8(b2u[b], cp);
      u2b[cp] = static_cast<int16_t>(b);
    }
  }
};
const ByteTables& byte_tables() {
  static const ByteTables t;
  return t;
}
}  // namespace

const std::string& byte_to_unicode(uint8_t b) { return byte_tables().b2u[b]; }
int unicode_to_byte(uint32_t cp) { return cp < 512 ? byte_tables().u2b[cp] : -1; }

}  // namespace tandem::tok

namespace tandem {
std::string sanitize_utf8(std::string_view bytes) { return tok::utf8_lossy(bytes); }
}  // namespace tandem
