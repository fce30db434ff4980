// Sharded safetensors index (model.safetensors.index.json) on arbitrary bytes, next to the six valid shards of the
// llama fixture: file names that leave the folder, unknown shards, tensors missing from or duplicated across shards.
#include <filesystem>

#include "core/error.h"
#include "fuzz_util.h"
#include "io/safetensors.h"

using namespace tandem;
namespace fs = std::filesystem;

static const fs::path& model_dir() {
  static const fs::path dir = [] {
    fs::path d = fuzz::scratch_dir() / "model";
    fs::create_directories(d);
    for (const auto& e : fs::directory_iterator(fs::path(TANDEM_FIXTURES) / "llama"))
      if (e.path().filename().string().starts_with("model-")) fs::copy_file(e.path(), d / e.path().filename());
    return d;
  }();
  return dir;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const fs::path& dir = model_dir();
  fuzz::write_scratch("model/model.safetensors.index.json", {reinterpret_cast<const char*>(data), size});
  try {
    TensorStore store = TensorStore::open(dir);
    for (const std::string& name : store.names()) {
      const TensorEntry& e = store.get(name);
      if (e.name != name || !e.file || e.offset > e.file->size() || e.nbytes > e.file->size() - e.offset)
        __builtin_trap();
      // A shard outside the folder must never have been opened.
      static const fs::path canon_dir = fs::weakly_canonical(dir);
      if (fs::weakly_canonical(fs::path(e.file->path()).parent_path()) != canon_dir) __builtin_trap();
    }
  } catch (const Error&) {
  }
  return 0;
}
