#include "tokenizer/gguf_vocab.h"

#include <algorithm>

#include "core/error.h"
#include "core/file.h"
#include "io/gguf.h"

namespace tandem {

TokenizerSpec tokenizer_spec_from_gguf(const GgufFile& f) {
  const std::string& src = f.path();
  TokenizerSpec spec;
  spec.source = src + " (tokenizer.ggml.*)";
  const std::string model = f.get_string("tokenizer.ggml.model").value_or("");
  TD_CHECK(!model.empty(), "{}: no tokenizer in this file (tokenizer.ggml.model is missing)", src);
  if (model == "gpt2") {
    spec.model = TokenizerModel::ByteLevelBPE;
    const std::string pre = f.get_string("tokenizer.ggml.pre").value_or("default");
    spec.pre = pre_kind_from_gguf(pre);
    spec.nfc = spec.pre == PreTokenizerKind::Qwen2;
  } else if (model == "llama") {
    spec.model = TokenizerModel::SentencePieceBPE;
    spec.byte_fallback = true;
    spec.add_space_prefix = f.get_bool("tokenizer.ggml.add_space_prefix").value_or(true);
  } else {
    fail("{}: tokenizer.ggml.model '{}' is not supported (supported: gpt2, llama)", src, excerpt(model));
  }
  auto tokens = f.get_string_array("tokenizer.ggml.tokens");
  TD_CHECK(tokens.has_value() && !tokens->empty(), "{}: tokenizer.ggml.tokens is missing or empty", src);
  spec.vocab = std::move(*tokens);
  const size_t n = spec.vocab.size();
  if (auto types = f.get_int_array("tokenizer.ggml.token_type")) {
    TD_CHECK(types->size() == n, "{}: tokenizer.ggml.token_type has {} entries for {} tokens", src, types->size(), n);
    spec.token_types.reserve(n);
    for (size_t i = 0; i < n; ++i) {
      TD_CHECK((*types)[i] >= 0 && (*types)[i] <= 6, "{}: tokenizer.ggml.token_type[{}] = {} is not a token type",
               src, i, (*types)[i]);
      spec.token_types.push_back(TokenType(int32_t((*types)[i])));
    }
  }
  if (auto merges = f.get_string_array("tokenizer.ggml.merges")) {
    spec.merges.reserve(merges->size());
    for (size_t i = 0; i < merges->size(); ++i) {
      const std::string& m = (*merges)[i];
      const size_t sp = m.find(' ', 1);
      TD_CHECK(sp != std::string::npos && sp + 1 < m.size(), "{}: tokenizer.ggml.merges[{}] = '{}' is not 'a b'", src,
               i, excerpt(m));
      spec.merges.emplace_back(m.substr(0, sp), m.substr(sp + 1));
    }
  }
  if (auto scores = f.get_float_array("tokenizer.ggml.scores")) {
    TD_CHECK(scores->size() == n, "{}: tokenizer.ggml.scores has {} entries for {} tokens", src, scores->size(), n);
    spec.scores.assign(scores->begin(), scores->end());
  }
  TD_CHECK(spec.model != TokenizerModel::ByteLevelBPE || !spec.merges.empty(),
           "{}: a gpt2 tokenizer needs tokenizer.ggml.merges", src);
  auto id = [&](const char* key) -> int32_t {
    auto v = f.get_int(key);
    if (!v) return -1;
    TD_CHECK(*v >= 0 && size_t(*v) < n, "{}: {} = {} is outside the vocabulary ({} tokens)", src, key, *v, n);
    return int32_t(*v);
  };
  spec.bos_id = id("tokenizer.ggml.bos_token_id");
  for (const char* key : {"tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id"}) {
    const int32_t e = id(key);
    if (e >= 0 && std::find(spec.eos_ids.begin(), spec.eos_ids.end(), e) == spec.eos_ids.end())
      spec.eos_ids.push_back(e);
  }
  // llama.cpp's default: SPM vocabularies add BOS, byte-level ones only when the file says so.
  spec.add_bos = f.get_bool("tokenizer.ggml.add_bos_token").value_or(spec.model == TokenizerModel::SentencePieceBPE);
  spec.add_eos = f.get_bool("tokenizer.ggml.add_eos_token").value_or(false);
  return spec;
}

}  // namespace tandem
