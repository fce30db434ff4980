// HF tokenizer.json -> TokenizerSpec. Implemented: model BPE (vocab, merges as "a b" or [a, b], unk_token,
// fuse_unk, byte_fallback, ignore_merges), added_tokens, normalizer {NFC, Prepend, Replace(String), Sequence},
// pre_tokenizer {ByteLevel, Split, Digits, Metaspace, Sequence}, post_processor {ByteLevel, TemplateProcessing
// (single: at most one special token before and after $A), Sequence}, decoder {ByteLevel, Replace(String),
// ByteFallback, Fuse, Strip, Metaspace, Sequence}. Anything else is rejected naming the field.
//
// The file is untrusted: JSON depth is checked before parsing, Sequence nesting is bounded, every id is checked
// against int32 and against the number of entries before anything is sized by it, and file strings reach error
// messages only through excerpt().
#include <algorithm>
#include <limits>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/file.h"
#include "core/json_limits.h"
#include "tokenizer/internal.h"
#include "tokenizer/tokenizer.h"

namespace tandem {
namespace {

using nlohmann::json;

// Real files nest a Sequence in a Sequence at most once or twice. The bound keeps the recursion and the field
// paths it formats ("normalizer.normalizers[0].normalizers[0]...", quadratic in the depth) small.
constexpr int kMaxSequenceDepth = 16;
// Largest vocabulary accepted (real ones are below 2^18); ids index tables, so they are checked before use.
constexpr int64_t kMaxVocab = int64_t{1} << 24;

struct Ctx {
  std::string src;
  TokenizerSpec& spec;
};

const json* get(const json& j, const char* key) {
  auto it = j.find(key);
  return it == j.end() || it->is_null() ? nullptr : &*it;
}

std::string str_field(const Ctx& c, const json& j, const char* key, const std::string& where) {
  const json* v = get(j, key);
  TD_CHECK(v && v->is_string(), "{}: {}.{} must be a string", c.src, where, key);
  return v->get<std::string>();
}

bool bool_field(const Ctx& c, const json& j, const char* key, bool def, const std::string& where) {
  const json* v = get(j, key);
  if (!v) return def;
  TD_CHECK(v->is_boolean(), "{}: {}.{} must be a boolean", c.src, where, key);
  return v->get<bool>();
}

// A JSON integer as a non-negative int32 (nlohmann's get<int32_t> would truncate 2^32 + 2 to 2 silently).
int32_t int32_of(const Ctx& c, const json& v, const std::string& where) {
  TD_CHECK(v.is_number_integer(), "{}: {} must be an integer, not {}", c.src, where, excerpt(v.dump(), 40));
  constexpr int64_t kMax = std::numeric_limits<int32_t>::max();
  const bool ok = v.is_number_unsigned() ? v.get<uint64_t>() <= uint64_t(kMax)
                                         : v.get<int64_t>() >= 0 && v.get<int64_t>() <= kMax;
  TD_CHECK(ok, "{}: {} = {} is outside [0, 2^31) (token ids and counts are non-negative int32)", c.src, where,
           v.dump());
  return static_cast<int32_t>(v.get<int64_t>());
}

void check_nesting(const Ctx& c, int depth, const std::string& where) {
  TD_CHECK(depth <= kMaxSequenceDepth, "{}: {}: Sequence nested deeper than {} levels", c.src, excerpt(where, 120),
           kMaxSequenceDepth);
}

std::string type_of(const Ctx& c, const json& j, const std::string& where) {
  TD_CHECK(j.is_object(), "{}: {} must be an object", c.src, where);
  return str_field(c, j, "type", where);
}

// {"String": s} -> literal, {"Regex": r} -> regex (only where allowed).
std::string pattern_of(const Ctx& c, const json& j, const std::string& where, bool allow_regex, bool* is_regex) {
  const json* p = get(j, "pattern");
  TD_CHECK(p && p->is_object(), "{}: {}.pattern must be an object", c.src, where);
  if (const json* s = get(*p, "String")) {
    TD_CHECK(s->is_string(), "{}: {}.pattern.String must be a string", c.src, where);
    if (is_regex) *is_regex = false;
    return s->get<std::string>();
  }
  if (const json* r = get(*p, "Regex")) {
    TD_CHECK(allow_regex, "{}: {}.pattern.Regex is not supported here (only String)", c.src, where);
    TD_CHECK(r->is_string(), "{}: {}.pattern.Regex must be a string", c.src, where);
    if (is_regex) *is_regex = true;
    return r->get<std::string>();
  }
  fail("{}: {}.pattern must have a String or Regex member", c.src, where);
}

PrependScheme scheme_of(const Ctx& c, const json& j, const std::string& where) {
  if (const json* s = get(j, "prepend_scheme")) {
    TD_CHECK(s->is_string(), "{}: {}.prepend_scheme must be a string", c.src, where);
    std::string v = s->get<std::string>();
    if (v == "always") return PrependScheme::Always;
    if (v == "first") return PrependScheme::First;
    if (v == "never") return PrependScheme::Never;
    fail("{}: {}.prepend_scheme '{}' is not one of always/first/never", c.src, where, excerpt(v));
  }
  return bool_field(c, j, "add_prefix_space", true, where) ? PrependScheme::Always : PrependScheme::Never;
}

std::string replacement_of(const Ctx& c, const json& j, const std::string& where) {
  const json* r = get(j, "replacement");
  if (!r) return "\xE2\x96\x81";
  TD_CHECK(r->is_string(), "{}: {}.replacement must be a string", c.src, where);
  return r->get<std::string>();
}

void parse_normalizer(const Ctx& c, const json& j, const std::string& where, int depth = 0) {
  std::string t = type_of(c, j, where);
  auto& out = c.spec.normalizers;
  if (t == "Sequence") {
    check_nesting(c, depth, where);
    const json* list = get(j, "normalizers");
    TD_CHECK(list && list->is_array(), "{}: {}.normalizers must be an array", c.src, where);
    for (size_t i = 0; i < list->size(); ++i)
      parse_normalizer(c, (*list)[i], fmt::format("{}.normalizers[{}]", where, i), depth + 1);
  } else if (t == "NFC") {
    out.push_back({NormalizerStep::Kind::NFC, {}, {}});
  } else if (t == "Prepend") {
    out.push_back({NormalizerStep::Kind::Prepend, str_field(c, j, "prepend", where), {}});
  } else if (t == "Replace") {
    std::string from = pattern_of(c, j, where, false, nullptr);
    out.push_back({NormalizerStep::Kind::Replace, from, str_field(c, j, "content", where)});
  } else {
    fail("{}: {}.type '{}' is not supported (supported: NFC, Prepend, Replace, Sequence)", c.src, where, excerpt(t));
  }
}

SplitBehavior behavior_of(const Ctx& c, const json& j, const std::string& where) {
  std::string b = str_field(c, j, "behavior", where);
  if (b == "Isolated") return SplitBehavior::Isolated;
  if (b == "Removed") return SplitBehavior::Removed;
  if (b == "MergedWithPrevious") return SplitBehavior::MergedWithPrevious;
  if (b == "MergedWithNext") return SplitBehavior::MergedWithNext;
  if (b == "Contiguous") return SplitBehavior::Contiguous;
  fail("{}: {}.behavior '{}' is not a known split behavior", c.src, where, excerpt(b));
}

void parse_pre_tokenizer(const Ctx& c, const json& j, const std::string& where, int depth = 0) {
  std::string t = type_of(c, j, where);
  PreTokenizerStep st;
  if (t == "Sequence") {
    check_nesting(c, depth, where);
    const json* list = get(j, "pretokenizers");
    TD_CHECK(list && list->is_array(), "{}: {}.pretokenizers must be an array", c.src, where);
    for (size_t i = 0; i < list->size(); ++i)
      parse_pre_tokenizer(c, (*list)[i], fmt::format("{}.pretokenizers[{}]", where, i), depth + 1);
    return;
  } else if (t == "ByteLevel") {
    st.kind = PreTokenizerStep::Kind::ByteLevel;
    st.add_prefix_space = bool_field(c, j, "add_prefix_space", false, where);
    st.use_regex = bool_field(c, j, "use_regex", true, where);
  } else if (t == "Split") {
    st.kind = PreTokenizerStep::Kind::Split;
    bool is_regex = false;
    std::string p = pattern_of(c, j, where, true, &is_regex);
    st.pattern = is_regex ? p : tok::regex_escape(p);
    st.behavior = behavior_of(c, j, where);
    st.invert = bool_field(c, j, "invert", false, where);
  } else if (t == "Digits") {
    st.kind = PreTokenizerStep::Kind::Digits;
    st.individual_digits = bool_field(c, j, "individual_digits", false, where);
  } else if (t == "Metaspace") {
    st.kind = PreTokenizerStep::Kind::Metaspace;
    st.replacement = replacement_of(c, j, where);
    st.prepend_scheme = scheme_of(c, j, where);
    st.split = bool_field(c, j, "split", true, where);
  } else {
    fail("{}: {}.type '{}' is not supported (supported: ByteLevel, Split, Digits, Metaspace, Sequence)", c.src, where,
         excerpt(t));
  }
  c.spec.pre_tokenizers.push_back(st);
}

void parse_decoder(const Ctx& c, const json& j, const std::string& where, int depth = 0) {
  std::string t = type_of(c, j, where);
  DecoderStep st;
  if (t == "Sequence") {
    check_nesting(c, depth, where);
    const json* list = get(j, "decoders");
    TD_CHECK(list && list->is_array(), "{}: {}.decoders must be an array", c.src, where);
    for (size_t i = 0; i < list->size(); ++i)
      parse_decoder(c, (*list)[i], fmt::format("{}.decoders[{}]", where, i), depth + 1);
    return;
  } else if (t == "ByteLevel") {
    st.kind = DecoderStep::Kind::ByteLevel;
  } else if (t == "Replace") {
    st.kind = DecoderStep::Kind::Replace;
    st.a = pattern_of(c, j, where, false, nullptr);
    st.b = str_field(c, j, "content", where);
  } else if (t == "ByteFallback") {
    st.kind = DecoderStep::Kind::ByteFallback;
  } else if (t == "Fuse") {
    st.kind = DecoderStep::Kind::Fuse;
  } else if (t == "Strip") {
    st.kind = DecoderStep::Kind::Strip;
    st.a = str_field(c, j, "content", where);
    const json* s = get(j, "start");
    const json* e = get(j, "stop");
    TD_CHECK(s && e, "{}: {}.start/stop must be integers", c.src, where);
    st.start = int32_of(c, *s, where + ".start"), st.stop = int32_of(c, *e, where + ".stop");
  } else if (t == "Metaspace") {
    st.kind = DecoderStep::Kind::Metaspace;
    st.a = replacement_of(c, j, where);
    st.prepend_scheme = scheme_of(c, j, where);
  } else {
    fail("{}: {}.type '{}' is not supported (supported: ByteLevel, Replace, ByteFallback, Fuse, Strip, Metaspace, "
         "Sequence)",
         c.src, where, excerpt(t));
  }
  c.spec.decoders.push_back(st);
}

// Returns the ids a TemplateProcessing special token stands for.
std::vector<int32_t> template_ids(const Ctx& c, const json& tp, const std::string& name, const std::string& where) {
  const json* sp = get(tp, "special_tokens");
  TD_CHECK(sp && sp->is_object() && sp->contains(name), "{}: {}.special_tokens has no entry '{}'", c.src, where,
           excerpt(name));
  const std::string field = fmt::format("{}.special_tokens['{}'].ids", where, excerpt(name));
  const json* ids = get((*sp)[name], "ids");
  TD_CHECK(ids && ids->is_array(), "{}: {} must be an array", c.src, field);
  std::vector<int32_t> out;
  for (size_t i = 0; i < ids->size(); ++i) out.push_back(int32_of(c, (*ids)[i], fmt::format("{}[{}]", field, i)));
  return out;
}

void parse_post_processor(const Ctx& c, const json& j, const std::string& where, int depth = 0) {
  std::string t = type_of(c, j, where);
  if (t == "ByteLevel") return;  // offsets only
  if (t == "Sequence") {
    check_nesting(c, depth, where);
    const json* list = get(j, "processors");
    TD_CHECK(list && list->is_array(), "{}: {}.processors must be an array", c.src, where);
    for (size_t i = 0; i < list->size(); ++i)
      parse_post_processor(c, (*list)[i], fmt::format("{}.processors[{}]", where, i), depth + 1);
    return;
  }
  TD_CHECK(t == "TemplateProcessing", "{}: {}.type '{}' is not supported (supported: ByteLevel, TemplateProcessing, "
           "Sequence)", c.src, where, excerpt(t));
  const json* single = get(j, "single");
  TD_CHECK(single && single->is_array(), "{}: {}.single must be an array", c.src, where);
  std::vector<int32_t> before, after;
  bool seen_a = false;
  for (const auto& item : *single) {
    if (const json* s = get(item, "Sequence")) {
      TD_CHECK(!seen_a, "{}: {}.single has more than one sequence", c.src, where);
      seen_a = true;
      (void)s;
    } else if (const json* s = get(item, "SpecialToken")) {
      auto ids = template_ids(c, j, str_field(c, *s, "id", where + ".single[]"), where);
      (seen_a ? after : before).insert((seen_a ? after : before).end(), ids.begin(), ids.end());
    } else {
      fail("{}: {}.single has an item that is neither Sequence nor SpecialToken", c.src, where);
    }
  }
  TD_CHECK(before.size() <= 1 && after.size() <= 1,
           "{}: {}.single adds more than one token before or after the text (not supported)", c.src, where);
  if (!before.empty()) c.spec.bos_id = before[0], c.spec.add_bos = true;
  if (!after.empty()) c.spec.eos_ids.insert(c.spec.eos_ids.begin(), after[0]), c.spec.add_eos = true;
}

// n_added: the length of the added_tokens list, which may fill holes in the model's ids.
void parse_model(const Ctx& c, const json& m, size_t n_added) {
  TD_CHECK(m.is_object(), "{}: model must be an object", c.src);
  if (const json* t = get(m, "type")) {
    TD_CHECK(t->is_string(), "{}: model.type must be a string", c.src);
    TD_CHECK(*t == "BPE", "{}: model.type '{}' is not supported (only BPE)", c.src, excerpt(t->get<std::string>()));
  } else {
    TD_CHECK(m.contains("merges"), "{}: model.type is missing and the model has no merges (only BPE is supported)",
             c.src);
  }
  if (const json* d = get(m, "dropout"))
    TD_CHECK(d->is_number() && d->get<double>() == 0.0, "{}: model.dropout must be null or 0 (dropout is not "
             "supported)", c.src);
  const json* vocab = get(m, "vocab");
  TD_CHECK(vocab && vocab->is_object(), "{}: model.vocab must be an object of token -> id", c.src);
  auto& v = c.spec.vocab;
  // The vocabulary is a table indexed by id: bound every id by the entries there are before sizing it by one,
  // so that a 1 KB file cannot ask for gigabytes.
  const int64_t bound = std::min<int64_t>(int64_t(vocab->size() + n_added), kMaxVocab);
  int64_t max_id = -1;
  for (auto it = vocab->begin(); it != vocab->end(); ++it) {
    const std::string where = fmt::format("model.vocab['{}']", excerpt(it.key()));
    const int64_t id = int32_of(c, it.value(), where);
    TD_CHECK(id < bound, "{}: {} = {} is outside [0, {}) (the {} entries of model.vocab plus {} added_tokens, at most "
             "{})", c.src, where, id, bound, vocab->size(), n_added, kMaxVocab);
    max_id = std::max(max_id, id);
  }
  v.assign(static_cast<size_t>(max_id + 1), std::string());
  std::vector<uint8_t> seen(v.size(), 0);
  for (auto it = vocab->begin(); it != vocab->end(); ++it) {
    auto id = it.value().get<size_t>();
    TD_CHECK(!seen[id], "{}: model.vocab: id {} is used by '{}' and '{}'", c.src, id, excerpt(v[id]),
             excerpt(it.key()));
    seen[id] = 1;
    v[id] = it.key();
  }
  const json* merges = get(m, "merges");
  TD_CHECK(merges && merges->is_array(), "{}: model.merges must be an array", c.src);
  c.spec.merges.reserve(merges->size());
  for (size_t i = 0; i < merges->size(); ++i) {
    const json& e = (*merges)[i];
    if (e.is_string()) {
      const std::string& s = e.get_ref<const std::string&>();
      size_t sp = s.find(' ');
      TD_CHECK(sp != std::string::npos && s.find(' ', sp + 1) == std::string::npos,
               "{}: model.merges[{}] '{}' is not two tokens separated by one space", c.src, i, excerpt(s));
      c.spec.merges.emplace_back(s.substr(0, sp), s.substr(sp + 1));
    } else {
      TD_CHECK(e.is_array() && e.size() == 2 && e[0].is_string() && e[1].is_string(),
               "{}: model.merges[{}] must be a string \"a b\" or a pair [a, b]", c.src, i);
      c.spec.merges.emplace_back(e[0].get<std::string>(), e[1].get<std::string>());
    }
  }
  if (const json* u = get(m, "unk_token")) {
    TD_CHECK(u->is_string(), "{}: model.unk_token must be a string", c.src);
    c.spec.unk_token = u->get<std::string>();
  }
  for (const char* k : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    if (const json* p = get(m, k)) {
      TD_CHECK(p->is_string(), "{}: model.{} must be a string", c.src, k);
      TD_CHECK(p->get<std::string>().empty(), "{}: model.{} '{}' is not supported", c.src, k,
               excerpt(p->get<std::string>()));
    }
  }
  c.spec.fuse_unk = bool_field(c, m, "fuse_unk", false, "model");
  c.spec.byte_fallback = bool_field(c, m, "byte_fallback", false, "model");
  c.spec.ignore_merges = bool_field(c, m, "ignore_merges", false, "model");
}

// Ids follow HF's AddedVocabulary::add_tokens, not the "id" fields: a token whose content is in the model vocab
// takes that id; others get the next id after the model vocab / the largest added id.
void parse_added(const Ctx& c, const json& list) {
  TD_CHECK(list.is_array(), "{}: added_tokens must be an array", c.src);
  auto& v = c.spec.vocab;
  tok::TokenMap model_ids;
  tok::TokenMap added_at;  // content -> index in spec.added_tokens (duplicates replace in O(1), not by a scan)
  int32_t model_size = 0;
  for (size_t i = 0; i < v.size(); ++i) {
    if (v[i].empty()) continue;
    model_ids.emplace(v[i], static_cast<int32_t>(i));
    ++model_size;
  }
  int32_t max_added = -1;
  for (size_t i = 0; i < list.size(); ++i) {
    std::string where = fmt::format("added_tokens[{}]", i);
    const json& a = list[i];
    TD_CHECK(a.is_object(), "{}: {} must be an object", c.src, where);
    AddedToken t;
    const json* id = get(a, "id");
    TD_CHECK(id, "{}: {}.id is missing", c.src, where);
    int32_of(c, *id, where + ".id");  // checked only: ids are assigned as HF does (see above)
    t.content = str_field(c, a, "content", where);
    t.special = bool_field(c, a, "special", false, where);
    t.normalized = bool_field(c, a, "normalized", !t.special, where);
    t.lstrip = bool_field(c, a, "lstrip", false, where);
    t.rstrip = bool_field(c, a, "rstrip", false, where);
    t.single_word = bool_field(c, a, "single_word", false, where);
    if (t.content.empty()) continue;
    if (auto it = added_at.find(t.content); it != added_at.end()) {
      AddedToken& prev = c.spec.added_tokens[it->second];
      t.id = prev.id;  // a later entry with the same content replaces the earlier one
      prev = std::move(t);
      continue;
    }
    if (auto it = model_ids.find(t.content); it != model_ids.end()) {
      t.id = it->second;
    } else {
      t.id = max_added < 0 ? model_size : (max_added >= model_size ? max_added + 1 : model_size);
    }
    max_added = std::max(max_added, t.id);
    added_at.emplace(t.content, static_cast<int32_t>(c.spec.added_tokens.size()));
    if (static_cast<size_t>(t.id) >= v.size()) v.resize(t.id + 1);
    v[t.id] = t.content;
    c.spec.added_tokens.push_back(std::move(t));
  }
}

}  // namespace

Tokenizer Tokenizer::from_hf_json_string(std::string_view text, std::string source) {
  check_json_depth(text, source);
  json j;
  try {
    j = json::parse(text);
  } catch (const json::exception& e) {
    fail("{}: not valid JSON: {}", source, excerpt(e.what(), 200));  // nlohmann quotes the whole bad token
  }
  TokenizerSpec spec;
  spec.source = source;
  spec.pipeline_explicit = true;
  Ctx c{source, spec};
  try {
    TD_CHECK(j.is_object(), "{}: the top level must be a JSON object", source);
    const json* model = get(j, "model");
    TD_CHECK(model, "{}: missing field 'model'", source);
    const json* added = get(j, "added_tokens");
    parse_model(c, *model, added && added->is_array() ? added->size() : 0);
    if (added) parse_added(c, *added);
    if (const json* n = get(j, "normalizer")) parse_normalizer(c, *n, "normalizer");
    if (const json* p = get(j, "pre_tokenizer")) parse_pre_tokenizer(c, *p, "pre_tokenizer");
    if (const json* p = get(j, "post_processor")) parse_post_processor(c, *p, "post_processor");
    if (const json* d = get(j, "decoder")) parse_decoder(c, *d, "decoder");
  } catch (const json::exception& e) {
    fail("{}: unexpected JSON structure: {}", source, excerpt(e.what(), 200));
  }
  bool byte_level = false;
  for (const auto& st : spec.pre_tokenizers) byte_level |= st.kind == PreTokenizerStep::Kind::ByteLevel;
  spec.model = byte_level ? TokenizerModel::ByteLevelBPE : TokenizerModel::SentencePieceBPE;
  spec.pre = PreTokenizerKind::Custom;
  for (const auto& st : spec.normalizers) spec.nfc |= st.kind == NormalizerStep::Kind::NFC;
  // tokenizer.json does not say which tokens end generation or start a sequence; guess from well-known special
  // tokens (callers should override with config.json / generation_config.json via set_bos / set_eos_ids).
  auto find_special = [&](std::string_view content) -> int32_t {
    for (const auto& a : spec.added_tokens)
      if (a.special && a.content == content) return a.id;
    return -1;
  };
  for (const char* name : {"</s>", "<|endoftext|>", "<|im_end|>", "<|eot_id|>", "<|end_of_text|>", "<|end|>",
                           "<end_of_turn>", "<eos>"}) {
    int32_t id = find_special(name);
    if (id >= 0 && std::find(spec.eos_ids.begin(), spec.eos_ids.end(), id) == spec.eos_ids.end())
      spec.eos_ids.push_back(id);
  }
  if (spec.bos_id < 0)
    for (const char* name : {"<s>", "<|begin_of_text|>", "<bos>"})
      if (int32_t id = find_special(name); id >= 0 && spec.bos_id < 0) spec.bos_id = id;
  return from_spec(std::move(spec));
}

Tokenizer Tokenizer::from_hf_json(const std::filesystem::path& path) {
  return from_hf_json_string(read_file(path), path.string());
}

}  // namespace tandem
