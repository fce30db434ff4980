// GGUF reader on arbitrary file bytes: header counts, key/value types, strings and arrays (length bombs), tensor
// infos (dims, types, offsets, size math); then what loading does with an opened file: every typed getter,
// describe(), tensor views, the tokenizer from tokenizer.ggml.* and the model config from the metadata.
#include "core/error.h"
#include "fuzz_util.h"
#include "io/gguf.h"
#include "model/config.h"
#include "model/model.h"
#include "tokenizer/gguf_vocab.h"
#include "tokenizer/tokenizer.h"

using namespace tandem;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto path = fuzz::write_scratch("model.gguf", {reinterpret_cast<const char*>(data), size});
  std::unique_ptr<GgufFile> f;
  try {
    f = GgufFile::open(path);
  } catch (const Error&) {
    return 0;
  }
  size_t sum = f->describe(true).size();
  for (const auto& [key, v] : f->metadata()) {
    if (f->find(key) == nullptr) __builtin_trap();
    sum += v.to_string().size();
    // Each getter either returns the value or throws tandem::Error naming the type.
    try { sum += f->get_int(key).has_value(); } catch (const Error&) {}
    try { sum += f->get_float(key).has_value(); } catch (const Error&) {}
    try { sum += f->get_bool(key).has_value(); } catch (const Error&) {}
    try { sum += f->get_string(key).has_value(); } catch (const Error&) {}
    try { sum += f->get_string_array(key).has_value(); } catch (const Error&) {}
    try { sum += f->get_int_array(key).has_value(); } catch (const Error&) {}
    try { sum += f->get_float_array(key).has_value(); } catch (const Error&) {}
  }
  for (const GgufTensorInfo& t : f->tensors()) {
    if (t.file_offset > f->file_size() || t.nbytes > f->file_size() - t.file_offset) __builtin_trap();
    if (!t.supported()) continue;
    try {
      Tensor v = t.view();
      const auto* p = static_cast<const unsigned char*>(v.data);
      for (size_t k = 0; k < t.nbytes; ++k) sum += p[k];
      sum += f->entry(t.name).nbytes;
    } catch (const Error&) {
    }
  }
  try {
    Tokenizer tok = Tokenizer::from_spec(tokenizer_spec_from_gguf(*f));
    sum += tok.encode("Hello world <|endoftext|> 123", true, true).size();
  } catch (const Error&) {
  }
  try {
    auto src = open_gguf_model_source(path);
    const ModelConfig& c = src->config();
    sum += size_t(c.qkv_dim()) + rope_inv_freq(c).size();  // products of validated values must not overflow
  } catch (const Error&) {
  }
  (void)sum;
  return 0;
}
