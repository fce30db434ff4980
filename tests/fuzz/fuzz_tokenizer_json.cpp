// HF tokenizer.json loading on arbitrary text: model (vocab, merges, ids), added tokens, normalizer, pre-tokenizer
// (user regexes), post-processor and decoder steps. A tokenizer that loads must encode and decode a sample.
#include <string>

#include "core/error.h"
#include "tokenizer/tokenizer.h"

using namespace tandem;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  try {
    Tokenizer tok = Tokenizer::from_hf_json_string(text, "tokenizer.json");
    const int32_t n = tok.vocab_size();
    if (n <= 0) __builtin_trap();
    for (int32_t id : tok.eos_ids())
      if (id < 0 || id >= n) __builtin_trap();
    if (tok.bos_id() >= n) __builtin_trap();
    const char* sample = "Hello, world! <s> 12345 \xC3\xA9t\xC3\xA9 \xF0\x9F\x98\x80\n\t x";
    std::vector<int32_t> ids = tok.encode(sample, true, true);
    for (int32_t id : ids)
      if (id < 0 || id >= n) __builtin_trap();
    std::string back = tok.decode(ids, false);
    auto sd = tok.stream_decoder(true);
    for (int32_t id : ids) back += sd.push(id);
    back += sd.flush();
  } catch (const Error&) {
  }
  return 0;
}
