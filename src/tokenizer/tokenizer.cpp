// Tokenizer construction from a TokenizerSpec, encode (added tokens, normalizers), decode and streaming decode.
#include "tokenizer/tokenizer.h"

#include <algorithm>

#include "core/error.h"
#include "core/file.h"
#include "tokenizer/internal.h"
#include "tokenizer/unicode.h"

namespace tandem {

using tok::Piece;

namespace {

const std::string kMetaspace = "\xE2\x96\x81";  // ▁

void replace_all(std::string& s, std::string_view from, std::string_view to) {
  if (from.empty() || s.find(from) == std::string::npos) return;
  std::string out;
  out.reserve(s.size());
  size_t pos = 0;
  for (size_t hit; (hit = s.find(from, pos)) != std::string::npos; pos = hit + from.size()) {
    out.append(s, pos, hit - pos);
    out += to;
  }
  out.append(s, pos);
  s = std::move(out);
}

// "<0xNN>" -> NN, else -1.
int byte_token_value(std::string_view t) {
  if (t.size() != 6 || t.substr(0, 3) != "<0x" || t[5] != '>') return -1;
  int v = 0;
  for (char c : t.substr(3, 2)) {
    int d = (c >= '0' && c <= '9') ? c - '0' : (c >= 'A' && c <= 'F') ? c - 'A' + 10 : (c >= 'a' && c <= 'f') ? c - 'a' + 10 : -1;
    if (d < 0) return -1;
    v = v * 16 + d;
  }
  return v;
}

// GPT-2 byte-level token -> bytes; a token with a char outside the byte alphabet is kept as its UTF-8 (HF).
std::string byte_level_bytes(std::string_view t) {
  std::string out;
  for (size_t i = 0; i < t.size();) {
    int b = tok::unicode_to_byte(tok::next_cp(t, i));
    if (b < 0) return std::string(t);
    out += static_cast<char>(b);
  }
  return out;
}

bool is_word_char(uint32_t cp) { return cp == '_' || tok::is_alnum_cp(cp); }

uint32_t last_cp(std::string_view s) {
  size_t i = s.size();
  while (i > 0 && (static_cast<unsigned char>(s[i - 1]) & 0xC0) == 0x80) --i;
  if (i > 0) --i;
  return tok::next_cp(s, i);
}

}  // namespace

void Tokenizer::Impl::check_id(int32_t id, const char* what) const {
  if (id < 0 || static_cast<size_t>(id) >= spec.vocab.size())
    fail("{}: token id {} out of range [0, {}) ({})", spec.source, id, spec.vocab.size(), what);
}

void Tokenizer::Impl::build() {
  const std::string& src = spec.source;
  TD_CHECK(!spec.vocab.empty(), "{}: empty vocabulary", src);
  TD_CHECK(spec.vocab.size() < (1u << 31), "{}: vocabulary too large", src);
  TD_CHECK(spec.token_types.empty() || spec.token_types.size() == spec.vocab.size(),
           "{}: token_types has {} entries for {} tokens", src, spec.token_types.size(), spec.vocab.size());
  TD_CHECK(spec.scores.empty() || spec.scores.size() == spec.vocab.size(), "{}: scores has {} entries for {} tokens",
           src, spec.scores.size(), spec.vocab.size());
  TD_CHECK(spec.continuing_subword_prefix.empty() && spec.end_of_word_suffix.empty(),
           "{}: model.continuing_subword_prefix / end_of_word_suffix are not supported", src);
  const int32_t n = static_cast<int32_t>(spec.vocab.size());
  token_to_id.reserve(spec.vocab.size());
  for (int32_t i = 0; i < n; ++i)
    if (!spec.vocab[i].empty()) token_to_id.emplace(spec.vocab[i], i);  // first id wins on duplicates

  if (spec.model == TokenizerModel::SentencePieceBPE && !spec.pipeline_explicit) spec.byte_fallback = true;
  for (int b = 0; b < 256; ++b) {
    auto it = token_to_id.find(fmt::format("<0x{:02X}>", b));
    byte_fallback_id[b] = spec.byte_fallback && it != token_to_id.end() ? it->second : -1;
  }
  if (spec.unk_token) {
    auto it = token_to_id.find(*spec.unk_token);
    TD_CHECK(it != token_to_id.end(), "{}: model.unk_token '{}' is not in the vocab", src, excerpt(*spec.unk_token));
    unk_id = it->second;
  } else if (!spec.token_types.empty()) {
    for (int32_t i = 0; i < n && unk_id < 0; ++i)
      if (spec.token_types[i] == TokenType::Unknown) unk_id = i;
  }

  for (size_t r = 0; r < spec.merges.size(); ++r) {
    const auto& [a, b] = spec.merges[r];
    auto ia = token_to_id.find(a), ib = token_to_id.find(b), ic = token_to_id.find(a + b);
    for (auto [it, what] : {std::pair{ia, &a}, std::pair{ib, &b}})
      TD_CHECK(it != token_to_id.end(), "{}: model.merges[{}] ('{} {}'): token '{}' is not in the vocab", src, r,
               excerpt(a), excerpt(b), excerpt(*what));
    TD_CHECK(ic != token_to_id.end(), "{}: model.merges[{}] ('{} {}'): merged token '{}' is not in the vocab", src, r,
             excerpt(a), excerpt(b), excerpt(a + b));
    uint64_t key = (static_cast<uint64_t>(ia->second) << 32) | static_cast<uint32_t>(ib->second);
    merges[key] = {static_cast<int32_t>(r), ic->second};  // later duplicates win, as in HF
  }
  score_mode = spec.model == TokenizerModel::SentencePieceBPE && spec.merges.empty() && !spec.pipeline_explicit;
  TD_CHECK(!score_mode || !spec.scores.empty(), "{}: a SentencePiece BPE vocab needs merges or scores", src);

  // Derived pipeline (GGUF).
  if (!spec.pipeline_explicit) {
    spec.normalizers.clear(), spec.pre_tokenizers.clear(), spec.decoders.clear();
    if (spec.model == TokenizerModel::ByteLevelBPE) {
      if (spec.nfc) spec.normalizers.push_back({NormalizerStep::Kind::NFC, {}, {}});
      std::vector<std::string> res =
          spec.pre == PreTokenizerKind::Custom ? spec.pre_regexes : pre_tokenizer_regexes(spec.pre);
      for (auto& r : res) {
        PreTokenizerStep st;
        st.kind = PreTokenizerStep::Kind::Split, st.pattern = r, st.behavior = SplitBehavior::Isolated;
        spec.pre_tokenizers.push_back(st);
      }
      PreTokenizerStep bl;
      bl.kind = PreTokenizerStep::Kind::ByteLevel, bl.use_regex = false;
      spec.pre_tokenizers.push_back(bl);
      spec.decoders.push_back({DecoderStep::Kind::ByteLevel, {}, {}});
    } else {
      if (spec.nfc) spec.normalizers.push_back({NormalizerStep::Kind::NFC, {}, {}});
      if (spec.add_space_prefix) spec.normalizers.push_back({NormalizerStep::Kind::Prepend, kMetaspace, {}});
      spec.normalizers.push_back({NormalizerStep::Kind::Replace, " ", kMetaspace});
      spec.decoders.push_back({DecoderStep::Kind::Replace, kMetaspace, " "});
      spec.decoders.push_back({DecoderStep::Kind::ByteFallback, {}, {}});
      spec.decoders.push_back({DecoderStep::Kind::Fuse, {}, {}});
      if (spec.add_space_prefix) spec.decoders.push_back({DecoderStep::Kind::Strip, " ", {}, 1, 0});
    }
    if (spec.added_tokens.empty() && !spec.token_types.empty()) {
      for (int32_t i = 0; i < n; ++i) {
        TokenType t = spec.token_types[i];
        if ((t == TokenType::Control || t == TokenType::UserDefined) && !spec.vocab[i].empty()) {
          AddedToken a;
          a.id = i, a.content = spec.vocab[i], a.special = t == TokenType::Control;
          spec.added_tokens.push_back(a);
        }
      }
    }
  }
  for (const auto& st : spec.pre_tokenizers) {
    tok::PreStep ps{st, nullptr};
    std::string where = src + ": pre_tokenizer";
    switch (st.kind) {
      case PreTokenizerStep::Kind::Split: ps.regex = std::make_unique<tok::Regex>(st.pattern, where); break;
      case PreTokenizerStep::Kind::Digits:
        ps.regex = std::make_unique<tok::Regex>(st.individual_digits ? R"(\p{N})" : R"(\p{N}+)", where);
        break;
      case PreTokenizerStep::Kind::ByteLevel:
        if (st.use_regex) ps.regex = std::make_unique<tok::Regex>(tok::gpt2_regex(), where);
        byte_level = true;
        break;
      case PreTokenizerStep::Kind::Metaspace:
        TD_CHECK(!st.replacement.empty(), "{}: pre_tokenizer Metaspace: empty replacement", src);
        ps.regex = std::make_unique<tok::Regex>(tok::regex_escape(st.replacement), where);
        break;
    }
    pre.push_back(std::move(ps));
  }

  special_flag.assign(n, 0);
  added_flag.assign(n, 0);
  if (!spec.token_types.empty())
    for (int32_t i = 0; i < n; ++i) special_flag[i] = spec.token_types[i] == TokenType::Control;
  for (const auto& a : spec.added_tokens) {
    TD_CHECK(a.id >= 0 && a.id < n, "{}: added token '{}' has id {} outside the vocab [0, {})", src, excerpt(a.content),
             a.id, n);
    TD_CHECK(!a.content.empty(), "{}: added token {} has empty content", src, a.id);
    auto idx = static_cast<int32_t>(added.size());
    added.push_back(a);
    special_flag[a.id] = a.special;
    added_flag[a.id] = 1;
    token_to_id[a.content] = a.id;  // added tokens take precedence, as in HF
    if (a.normalized) {
      std::string normed = normalize(a.content);
      norm_trie.add(normed, idx);
      spec.vocab[a.id] = normed;  // HF decodes (and shows) a normalized added token as its normalized content
      token_to_id.emplace(normed, a.id);
    } else {
      raw_trie.add(a.content, idx);
      spec.vocab[a.id] = a.content;
    }
  }
  raw_trie.finish();
  norm_trie.finish();
  for (int32_t id : spec.eos_ids) check_id(id, "eos id");
  if (spec.bos_id >= 0) check_id(spec.bos_id, "bos id");
}

std::string Tokenizer::Impl::normalize(std::string s) const {
  for (const auto& st : spec.normalizers) {
    switch (st.kind) {
      case NormalizerStep::Kind::NFC: s = tok::nfc(s); break;
      case NormalizerStep::Kind::Prepend:
        if (!s.empty()) s.insert(0, st.a);
        break;
      case NormalizerStep::Kind::Replace: replace_all(s, st.a, st.b); break;
    }
  }
  return s;
}

namespace {

struct Segment {
  int32_t token = -1;  // added-token id, or -1 for text
  std::string text;
  bool at_start = false;
};

// HF AddedVocabulary::find_matches: leftmost-longest matches, single_word / lstrip / rstrip.
void split_added(const Tokenizer::Impl& im, const tok::TokenTrie& trie, std::string_view s, bool at_start,
                 bool parse_special, std::vector<Segment>& out) {
  if (s.empty()) return;
  if (trie.empty()) {
    out.push_back({-1, std::string(s), at_start});
    return;
  }
  size_t start_offset = 0;
  for (size_t pos = 0; pos < s.size();) {
    const tok::TokenTrie::Match m = trie.find(s, pos);
    if (m.len == 0) break;
    size_t start = m.start, stop = m.start + m.len;
    pos = stop;
    const AddedToken& t = im.added[m.index];
    if (t.special && !parse_special) continue;
    if (t.single_word) {
      bool start_ok = start == 0 || !is_word_char(last_cp(s.substr(0, start)));
      size_t k = stop;
      bool stop_ok = stop == s.size() || !is_word_char(tok::next_cp(s, k));
      if (!start_ok || !stop_ok) continue;
    }
    if (t.lstrip) {
      size_t b = start;
      while (b > start_offset) {
        size_t c = b - 1;
        while (c > 0 && (static_cast<unsigned char>(s[c]) & 0xC0) == 0x80) --c;
        size_t k = c;
        if (!tok::is_white_space(tok::next_cp(s, k))) break;
        b = c;
      }
      start = b;
    }
    if (t.rstrip) {
      for (size_t k = stop; k < s.size();) {
        size_t c = k;
        if (!tok::is_white_space(tok::next_cp(s, k))) break;
        stop = k;
        (void)c;
      }
      pos = stop;  // (HF resumes matching at the unstripped end; we never overlap the stripped whitespace)
    }
    if (start > start_offset) out.push_back({-1, std::string(s.substr(start_offset, start - start_offset)),
                                             at_start && start_offset == 0});
    out.push_back({t.id, {}, false});
    start_offset = stop;
  }
  if (start_offset < s.size())
    out.push_back({-1, std::string(s.substr(start_offset)), at_start && start_offset == 0});
}

}  // namespace

std::string Tokenizer::Impl::token_bytes(int32_t id) const {
  std::string t = spec.vocab[id];
  for (const auto& st : spec.decoders) {
    switch (st.kind) {
      case DecoderStep::Kind::ByteLevel: t = byte_level_bytes(t); break;
      case DecoderStep::Kind::Replace: replace_all(t, st.a, st.b); break;
      case DecoderStep::Kind::ByteFallback: {
        int v = byte_token_value(t);
        if (v >= 0) t = std::string(1, static_cast<char>(v));
        break;
      }
      case DecoderStep::Kind::Metaspace: replace_all(t, st.a, " "); break;
      case DecoderStep::Kind::Fuse:
      case DecoderStep::Kind::Strip: break;  // applied once at the start of the stream
    }
  }
  return t;
}

Tokenizer::Tokenizer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;
Tokenizer::~Tokenizer() = default;

Tokenizer Tokenizer::from_spec(TokenizerSpec spec) {
  auto impl = std::make_unique<Impl>();
  if (spec.source.empty()) spec.source = "tokenizer spec";
  impl->spec = std::move(spec);
  impl->build();
  return Tokenizer(std::move(impl));
}

std::vector<int32_t> Tokenizer::encode(std::string_view input, bool add_special, bool parse_special) const {
  const Impl& im = *impl_;
  std::string text = tok::utf8_valid(input) ? std::string(input) : tok::utf8_lossy(input);
  std::vector<int32_t> ids;
  if (add_special && im.spec.add_bos && im.spec.bos_id >= 0) ids.push_back(im.spec.bos_id);
  std::vector<Segment> raw, normed;
  std::vector<Piece> pieces;
  split_added(im, im.raw_trie, text, true, parse_special, raw);
  for (auto& seg : raw) {
    if (seg.token >= 0) {
      ids.push_back(seg.token);
      continue;
    }
    normed.clear();
    split_added(im, im.norm_trie, im.normalize(std::move(seg.text)), seg.at_start, parse_special, normed);
    for (auto& sub : normed) {
      if (sub.token >= 0) {
        ids.push_back(sub.token);
        continue;
      }
      pieces.clear();
      im.pre_tokenize(Piece{std::move(sub.text), sub.at_start}, pieces);
      for (const auto& p : pieces) im.tokenize_word(p.text, ids);
    }
  }
  if (add_special && im.spec.add_eos && !im.spec.eos_ids.empty()) ids.push_back(im.spec.eos_ids.front());
  return ids;
}

std::string Tokenizer::decode(std::span<const int32_t> ids, bool skip_special) const {
  const Impl& im = *impl_;
  std::vector<std::string> toks;
  toks.reserve(ids.size());
  for (int32_t id : ids) {
    im.check_id(id, "decode");
    if (skip_special && im.special_flag[id]) continue;
    toks.push_back(im.spec.vocab[id]);
  }
  for (const auto& st : im.spec.decoders) {
    switch (st.kind) {
      case DecoderStep::Kind::ByteLevel: {
        std::string bytes;
        for (const auto& t : toks) bytes += byte_level_bytes(t);
        toks.assign(1, tok::utf8_lossy(bytes));
        break;
      }
      case DecoderStep::Kind::Replace:
        for (auto& t : toks) replace_all(t, st.a, st.b);
        break;
      case DecoderStep::Kind::ByteFallback: {
        std::vector<std::string> out;
        std::string run;
        size_t run_len = 0;
        auto flush = [&] {
          if (!run_len) return;
          if (tok::utf8_valid(run)) out.push_back(run);
          else
            for (size_t k = 0; k < run_len; ++k) out.push_back("\xEF\xBF\xBD");
          run.clear(), run_len = 0;
        };
        for (auto& t : toks) {
          int v = byte_token_value(t);
          if (v >= 0) {
            run += static_cast<char>(v), ++run_len;
          } else {
            flush();
            out.push_back(std::move(t));
          }
        }
        flush();
        toks = std::move(out);
        break;
      }
      case DecoderStep::Kind::Fuse: {
        std::string all;
        for (auto& t : toks) all += t;
        toks.assign(1, std::move(all));
        break;
      }
      case DecoderStep::Kind::Strip:
        for (auto& t : toks) {
          for (int k = 0; k < st.start && t.rfind(st.a, 0) == 0 && !st.a.empty(); ++k) t.erase(0, st.a.size());
          for (int k = 0; k < st.stop && !st.a.empty() && t.size() >= st.a.size() &&
                          t.compare(t.size() - st.a.size(), st.a.size(), st.a) == 0;
               ++k)
            t.resize(t.size() - st.a.size());
        }
        break;
      case DecoderStep::Kind::Metaspace:
        for (size_t i = 0; i < toks.size(); ++i) {
          replace_all(toks[i], st.a, " ");
          if (i == 0 && st.prepend_scheme != PrependScheme::Never && !toks[i].empty() && toks[i][0] == ' ')
            toks[i].erase(0, 1);
        }
        break;
    }
  }
  std::string out;
  for (auto& t : toks) out += t;
  // Tokens without a byte-level decoder may still hold invalid UTF-8 (e.g. a raw vocab entry).
  return tok::utf8_valid(out) ? out : tok::utf8_lossy(out);
}

StreamDecoder Tokenizer::stream_decoder(bool skip_special) const { return StreamDecoder(impl_.get(), skip_special); }

std::string StreamDecoder::push(int32_t id) {
  impl_->check_id(id, "stream decode");
  if (skip_special_ && impl_->special_flag[id]) return {};
  pending_ += impl_->token_bytes(id);
  return drain(false);
}

std::string StreamDecoder::flush() { return drain(true); }

std::string StreamDecoder::drain(bool final) {
  size_t n = final ? pending_.size() : tok::utf8_emittable_prefix(pending_);
  if (n == 0) return {};
  std::string out = tok::utf8_lossy(std::string_view(pending_).substr(0, n));
  pending_.erase(0, n);
  if (at_start_ && !out.empty()) {
    at_start_ = false;
    for (const auto& st : impl_->spec.decoders) {
      if (st.kind == DecoderStep::Kind::Strip && st.start > 0 && !st.a.empty())
        for (int k = 0; k < st.start && out.rfind(st.a, 0) == 0; ++k) out.erase(0, st.a.size());
      if (st.kind == DecoderStep::Kind::Metaspace && st.prepend_scheme != PrependScheme::Never && out[0] == ' ')
        out.erase(0, 1);
    }
  }
  return out;
}

const std::string& Tokenizer::token_to_piece(int32_t id) const {
  impl_->check_id(id, "token_to_piece");
  return impl_->spec.vocab[id];
}
std::optional<int32_t> Tokenizer::piece_to_id(std::string_view piece) const {
  auto it = impl_->token_to_id.find(piece);
  if (it == impl_->token_to_id.end()) return std::nullopt;
  return it->second;
}
int32_t Tokenizer::vocab_size() const { return static_cast<int32_t>(impl_->spec.vocab.size()); }
int32_t Tokenizer::bos_id() const { return impl_->spec.bos_id; }
const std::vector<int32_t>& Tokenizer::eos_ids() const { return impl_->spec.eos_ids; }
bool Tokenizer::add_bos() const { return impl_->spec.add_bos; }
bool Tokenizer::is_special(int32_t id) const {
  return id >= 0 && id < vocab_size() && impl_->special_flag[id];
}
const TokenizerSpec& Tokenizer::spec() const { return impl_->spec; }

void Tokenizer::set_bos(int32_t id, bool add_bos) {
  if (id >= 0) impl_->check_id(id, "bos id");
  impl_->spec.bos_id = id;
  impl_->spec.add_bos = add_bos && id >= 0;
}
void Tokenizer::set_eos_ids(std::vector<int32_t> ids) {
  for (int32_t id : ids) impl_->check_id(id, "eos id");
  impl_->spec.eos_ids = std::move(ids);
}

}  // namespace tandem
