// Safetensors reader on arbitrary file bytes: the u64 header length, the JSON header, dtypes, shapes, offsets.
// A file that opens must hand out views that stay inside it.
#include <cstring>

#include "core/error.h"
#include "fuzz_util.h"
#include "io/safetensors.h"

using namespace tandem;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto path = fuzz::write_scratch("model.safetensors", {reinterpret_cast<const char*>(data), size});
  try {
    auto f = SafetensorsFile::open(path);
    const size_t file_size = size;
    unsigned sum = 0;
    for (const TensorEntry& e : f->entries()) {
      if (e.offset > file_size || e.nbytes > file_size - e.offset) __builtin_trap();  // outside the file
      if (f->find(e.name) != &e) __builtin_trap();
      Tensor t = e.view();
      if (size_t(t.nbytes()) != e.nbytes) __builtin_trap();  // the view disagrees with the validated range
      const auto* p = static_cast<const unsigned char*>(t.data);
      for (size_t k = 0; k < e.nbytes; ++k) sum += p[k];  // ASan would see a view past the mapping
    }
    for (const auto& [k, v] : f->metadata()) sum += unsigned(k.size() + v.size());
    (void)sum;
    TensorStore::open(path);  // the single-file store path
  } catch (const Error&) {
  }
  return 0;
}
