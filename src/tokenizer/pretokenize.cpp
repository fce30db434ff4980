// Pre-tokenization: PCRE2 regex splitting with HF's split behaviours, Digits, ByteLevel, Metaspace; the
// added-token trie; GGUF pre-tokenizer names.
#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <algorithm>

#include "core/error.h"
#include "core/file.h"
#include "tokenizer/internal.h"
#include "tokenizer/unicode.h"

namespace tandem {
namespace tok {
namespace {

constexpr const char* kGpt2Regex =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";
constexpr const char* kLlama3Regex =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
constexpr const char* kQwen2Regex =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

// Unicode White_Space, as Oniguruma's \s matches it (PCRE2's \s with UCP also matches U+180E).
constexpr const char* kWhiteSpace = R"(\t-\r\x{20}\x{85}\x{A0}\x{1680}\x{2000}-\x{200A}\x{2028}\x{2029}\x{202F}\x{205F}\x{3000})";

std::string onig_compat(const std::string& p) {
  std::string out;
  bool in_class = false;
  for (size_t i = 0; i < p.size(); ++i) {
    char c = p[i];
    if (c == '\\' && i + 1 < p.size()) {
      char e = p[i + 1];
      if (e == 's') {
        out += in_class ? std::string(kWhiteSpace) : "[" + std::string(kWhiteSpace) + "]";
      } else if (e == 'S' && !in_class) {
        out += "[^" + std::string(kWhiteSpace) + "]";
      } else {
        out += c;
        out += e;
      }
      ++i;
      continue;
    }
    if (!in_class && c == '[') {
      in_class = true;
      out += c;
      if (i + 1 < p.size() && p[i + 1] == '^') out += p[++i];
      if (i + 1 < p.size() && p[i + 1] == ']') out += p[++i];  // a leading ']' is literal
      continue;
    }
    if (in_class && c == '[' && i + 1 < p.size() && p[i + 1] == ':') {  // POSIX class [:name:]
      size_t end = p.find(":]", i + 2);
      if (end != std::string::npos) {
        out.append(p, i, end + 2 - i);
        i = end + 1;
        continue;
      }
    }
    if (in_class && c == ']') in_class = false;
    out += c;
  }
  return out;
}

}  // namespace

Regex::Regex(const std::string& pattern, const std::string& where) : where_(where) {
  std::string p = onig_compat(pattern);
  int err = 0;
  PCRE2_SIZE off = 0;
  pcre2_code* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(p.data()), p.size(), PCRE2_UTF | PCRE2_UCP, &err,
                                   &off, nullptr);
  if (!code) {
    PCRE2_UCHAR msg[256];
    pcre2_get_error_message(err, msg, sizeof msg);
    fail("{}: cannot compile regex '{}' at offset {}: {}", where, excerpt(pattern), off, reinterpret_cast<char*>(msg));
  }
  code_ = code;
  jit_ = pcre2_jit_compile(code, PCRE2_JIT_COMPLETE) == 0;
}

Regex::~Regex() { pcre2_code_free(static_cast<pcre2_code*>(code_)); }

void Regex::find_all(std::string_view s, std::vector<std::pair<size_t, size_t>>& out) const {
  auto* code = static_cast<pcre2_code*>(code_);
  struct Ctx {  // per thread: match data, and a JIT stack large enough for long pieces
    pcre2_match_context* mctx = nullptr;
    pcre2_jit_stack* stack = nullptr;
    Ctx() {
      mctx = pcre2_match_context_create(nullptr);
      stack = pcre2_jit_stack_create(32 * 1024, 8 * 1024 * 1024, nullptr);
      if (mctx && stack) pcre2_jit_stack_assign(mctx, nullptr, stack);
    }
    ~Ctx() {
      pcre2_jit_stack_free(stack);
      pcre2_match_context_free(mctx);
    }
  };
  thread_local Ctx ctx;
  std::unique_ptr<pcre2_match_data, void (*)(pcre2_match_data*)> md(pcre2_match_data_create_from_pattern(code, nullptr),
                                                                      pcre2_match_data_free);
  TD_CHECK(md, "{}: out of memory for regex match data", where_);
  size_t pos = 0;
  while (pos <= s.size()) {
    int rc = jit_ ? pcre2_jit_match(code, reinterpret_cast<PCRE2_SPTR>(s.data()), s.size(), pos, 0, md.get(), ctx.mctx)
                  : pcre2_match(code, reinterpret_cast<PCRE2_SPTR>(s.data()), s.size(), pos, PCRE2_NO_UTF_CHECK,
                                md.get(), ctx.mctx);
    if (rc == PCRE2_ERROR_NOMATCH) break;
    if (rc < 0) {
      PCRE2_UCHAR msg[256];
      pcre2_get_error_message(rc, msg, sizeof msg);
      fail("{}: regex match failed on a {}-byte piece: {}", where_, s.size(), reinterpret_cast<char*>(msg));
    }
    PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md.get());
    size_t b = ov[0], e = ov[1];
    out.emplace_back(b, e);
    if (e > b) {
      pos = e;
    } else {  // empty match: step over one character
      if (b >= s.size()) break;
      pos = b + 1;
      while (pos < s.size() && (static_cast<unsigned char>(s[pos]) & 0xC0) == 0x80) ++pos;
    }
  }
}

std::string regex_escape(std::string_view literal) {
  std::string out;
  for (char c : literal) {
    if (std::string_view("\\^$.|?*+()[]{}-/#&~ \t\n\r").find(c) != std::string_view::npos) {
      if (c == '\t') out += "\\t";
      else if (c == '\n') out += "\\n";
      else if (c == '\r') out += "\\r";
      else if (c == ' ') out += "\\x{20}";
      else {
        out += '\\';
        out += c;
      }
    } else {
      out += c;
    }
  }
  return out;
}

bool is_alnum_cp(uint32_t cp) {
  if (cp < 0x80) return (cp >= '0' && cp <= '9') || ((cp | 0x20) >= 'a' && (cp | 0x20) <= 'z');
  static const Regex re(R"(^[\p{L}\p{N}])", "word-character class");
  std::string s;
  append_utf8(s, cp);
  std::vector<std::pair<size_t, size_t>> m;
  re.find_all(s, m);
  return !m.empty();
}

void TokenTrie::add(const std::string& content, int32_t index) {
  if (content.empty()) return;
  finished_ = false;
  int32_t node = 0;
  for (unsigned char c : content) {
    auto& next = nodes_[node].next;
    auto it = std::lower_bound(next.begin(), next.end(), std::make_pair(c, int32_t{-1}));
    if (it != next.end() && it->first == c) {
      node = it->second;
    } else {
      int32_t child = static_cast<int32_t>(nodes_.size());
      next.insert(it, {c, child});
      nodes_.emplace_back();
      nodes_.back().depth = nodes_[node].depth + 1;
      node = child;
    }
  }
  if (nodes_[node].index < 0) nodes_[node].index = index;
}

int32_t TokenTrie::child(int32_t node, unsigned char c) const {
  if (node == 0) return root_next_[c];
  const auto& next = nodes_[node].next;
  auto it = std::lower_bound(next.begin(), next.end(), std::make_pair(c, int32_t{-1}));
  return it != next.end() && it->first == c ? it->second : -1;
}

void TokenTrie::finish() {
  root_next_.fill(-1);
  for (auto [c, n] : nodes_[0].next) root_next_[c] = n;
  // Breadth first, so that a node's failure target (shallower) is complete before the node.
  std::vector<int32_t> queue;
  queue.reserve(nodes_.size());
  queue.push_back(0);
  for (size_t q = 0; q < queue.size(); ++q) {
    const int32_t u = queue[q];
    for (auto [c, v] : nodes_[u].next) {
      int32_t f = u == 0 ? -1 : nodes_[u].fail;
      while (f > 0 && child(f, c) < 0) f = nodes_[f].fail;
      const int32_t w = f < 0 ? -1 : child(f, c);
      Node& n = nodes_[v];
      n.fail = w < 0 ? 0 : w;
      if (n.index >= 0) n.out_len = n.depth, n.out_index = n.index;
      else n.out_len = nodes_[n.fail].out_len, n.out_index = nodes_[n.fail].out_index;
      queue.push_back(v);
    }
  }
  finished_ = true;
}

TokenTrie::Match TokenTrie::find(std::string_view s, size_t pos) const {
  TD_CHECK(finished_, "internal error: TokenTrie::find before finish()");
  Match best;
  int32_t state = 0;
  for (size_t i = pos; i < s.size(); ++i) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    int32_t nx = child(state, c);
    while (nx < 0 && state != 0) {
      state = nodes_[state].fail;
      nx = child(state, c);
    }
    state = nx < 0 ? 0 : nx;
    const Node& n = nodes_[state];
    // Every prefix still alive starts at or after i + 1 - depth; once that is past the best match's start, no
    // later match can start earlier or be longer at the same start.
    if (best.len && best.start + n.depth < i + 1) return best;
    if (n.out_len > 0) {
      const size_t start = i + 1 - static_cast<size_t>(n.out_len);
      // Ending later, a match with the same start is longer.
      if (!best.len || start <= best.start) best = {start, static_cast<size_t>(n.out_len), n.out_index};
    }
  }
  return best;
}

}  // namespace tok

namespace {

using tok::Piece;

// HF NormalizedString::split for a list of regex matches covering `s`.
void split_piece(const Piece& piece, const tok::Regex& re, SplitBehavior behavior, bool invert,
                 std::vector<Piece>& out) {
  const std::string& s = piece.text;
  std::vector<std::pair<size_t, size_t>> found;
  re.find_all(s, found);
  struct Part {
    size_t b, e;
    bool match;
  };
  std::vector<Part> parts;
  size_t prev = 0;
  for (auto [b, e] : found) {
    if (b > prev) parts.push_back({prev, b, invert});
    parts.push_back({b, e, !invert});
    prev = e;
  }
  if (prev < s.size()) parts.push_back({prev, s.size(), invert});
  std::vector<std::pair<size_t, size_t>> keep;
  switch (behavior) {
    case SplitBehavior::Isolated:
      for (auto& p : parts) keep.emplace_back(p.b, p.e);
      break;
    case SplitBehavior::Removed:
      for (auto& p : parts)
        if (!p.match) keep.emplace_back(p.b, p.e);
      break;
    case SplitBehavior::Contiguous: {
      bool have = false, last_match = false;
      for (auto& p : parts) {
        if (have && p.match == last_match) keep.back().second = p.e;
        else keep.emplace_back(p.b, p.e);
        have = true, last_match = p.match;
      }
      break;
    }
    case SplitBehavior::MergedWithPrevious: {
      bool prev_match = false;
      for (auto& p : parts) {
        if (p.match && !prev_match && !keep.empty()) keep.back().second = p.e;
        else keep.emplace_back(p.b, p.e);
        prev_match = p.match;
      }
      break;
    }
    case SplitBehavior::MergedWithNext: {
      bool prev_match = false;
      for (auto it = parts.rbegin(); it != parts.rend(); ++it) {
        if (it->match && !prev_match && !keep.empty()) keep.back().first = it->b;
        else keep.emplace_back(it->b, it->e);
        prev_match = it->match;
      }
      std::reverse(keep.begin(), keep.end());
      break;
    }
  }
  for (auto [b, e] : keep)
    if (e > b) out.push_back({s.substr(b, e - b), piece.at_start && b == 0});
}

}  // namespace

void Tokenizer::Impl::pre_tokenize(Piece piece, std::vector<Piece>& out) const {
  std::vector<Piece> cur, next;
  cur.push_back(std::move(piece));
  for (const auto& ps : pre) {
    const auto& st = ps.step;
    next.clear();
    for (auto& p : cur) {
      switch (st.kind) {
        case PreTokenizerStep::Kind::Split:
          split_piece(p, *ps.regex, st.behavior, st.invert, next);
          break;
        case PreTokenizerStep::Kind::Digits:
          split_piece(p, *ps.regex, SplitBehavior::Isolated, false, next);
          break;
        case PreTokenizerStep::Kind::ByteLevel: {
          if (st.add_prefix_space && p.text.rfind(' ', 0) != 0) p.text.insert(0, 1, ' ');
          size_t first = next.size();
          if (ps.regex) split_piece(p, *ps.regex, SplitBehavior::Isolated, false, next);
          else next.push_back(std::move(p));
          for (size_t k = first; k < next.size(); ++k) {
            std::string mapped;
            mapped.reserve(next[k].text.size() * 2);
            for (unsigned char c : next[k].text) mapped += tok::byte_to_unicode(c);
            next[k].text = std::move(mapped);
          }
          break;
        }
        case PreTokenizerStep::Kind::Metaspace: {
          std::string s;
          s.reserve(p.text.size() + 3);
          for (char c : p.text) {
            if (c == ' ') s += st.replacement;
            else s += c;
          }
          bool starts = s.rfind(st.replacement, 0) == 0;
          if (!starts && (st.prepend_scheme == PrependScheme::Always ||
                          (st.prepend_scheme == PrependScheme::First && p.at_start)))
            s.insert(0, st.replacement);
          Piece q{std::move(s), p.at_start};
          if (st.split) split_piece(q, *ps.regex, SplitBehavior::MergedWithNext, false, next);
          else if (!q.text.empty()) next.push_back(std::move(q));
          break;
        }
      }
    }
    std::swap(cur, next);
  }
  for (auto& p : cur) out.push_back(std::move(p));
}

PreTokenizerKind pre_kind_from_gguf(std::string_view pre) {
  for (auto n : {"gpt2", "gpt-2", "default", ""})
    if (pre == n) return PreTokenizerKind::Gpt2;
  for (auto n : {"llama-bpe", "llama3", "llama-v3", "smaug-bpe", "dbrx"})
    if (pre == n) return PreTokenizerKind::Llama3;
  for (auto n : {"qwen2", "deepseek-r1-qwen", "stablelm2"})
    if (pre == n) return PreTokenizerKind::Qwen2;
  for (auto n : {"smollm", "starcoder", "refact", "codeshell", "command-r"})
    if (pre == n) return PreTokenizerKind::SmolLM;
  fail("tokenizer.ggml.pre: unsupported pre-tokenizer '{}' (supported: gpt2, default, llama-bpe, llama3, smaug-bpe, "
       "dbrx, qwen2, deepseek-r1-qwen, stablelm2, smollm, starcoder, refact, codeshell, command-r)",
       excerpt(pre));
}

std::vector<std::string> pre_tokenizer_regexes(PreTokenizerKind kind) {
  switch (kind) {
    case PreTokenizerKind::Gpt2: return {tok::kGpt2Regex};
    case PreTokenizerKind::Llama3: return {tok::kLlama3Regex};
    case PreTokenizerKind::Qwen2: return {tok::kQwen2Regex};
    case PreTokenizerKind::SmolLM: return {R"(\p{N})", tok::kGpt2Regex};
    default: return {};
  }
}

namespace tok {
const char* gpt2_regex() { return kGpt2Regex; }
}  // namespace tok

}  // namespace tandem
