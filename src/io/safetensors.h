// Safetensors reader (mmap, full validation as the format promises) and writer.
// Format: u64 little-endian header length N, N bytes of JSON object header, then the data section.
// Each header entry: {"dtype": "F32", "shape": [..], "data_offsets": [begin, end)} relative to the data
// section; optional "__metadata__": {string: string}.
#pragma once
#include <cstddef>
#include <filesystem>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "core/tensor.h"

namespace tandem {

// A read-only memory-mapped file. Empty files map to size 0 with a null data pointer.
class MappedFile {
 public:
  static std::shared_ptr<MappedFile> open(const std::filesystem::path& path);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const std::byte* data() const { return data_; }
  size_t size() const { return size_; }
  const std::string& path() const { return path_; }

 private:
  MappedFile() = default;
  const std::byte* data_ = nullptr;
  size_t size_ = 0;
  std::string path_;
};

struct TensorEntry {
  std::string name;
  DType dtype = DType::F32;
  std::vector<int64_t> shape;
  size_t offset = 0;  // absolute byte offset in the file
  size_t nbytes = 0;
  std::shared_ptr<MappedFile> file;

  // Contiguous CPU view of the mapped bytes (may be unaligned; read with memcpy-safe accessors).
  Tensor view() const;
};

class SafetensorsFile {
 public:
  // Opens and validates: header length sane (<= 100 MB, fits in the file), header is a JSON object,
  // known dtypes, shape x dtype size == byte range (overflow-checked), ranges tile the data section
  // exactly (no overlap, gap, out-of-file or trailing bytes). Throws tandem::Error naming file and field.
  static std::unique_ptr<SafetensorsFile> open(const std::filesystem::path& path);

  const std::string& path() const { return file_->path(); }
  const std::vector<TensorEntry>& entries() const { return entries_; }  // sorted by name
  const TensorEntry* find(std::string_view name) const;
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

 private:
  std::shared_ptr<MappedFile> file_;
  std::vector<TensorEntry> entries_;
  std::map<std::string, std::string> metadata_;
};

// All tensors of a model: a folder with model.safetensors, or a folder with model.safetensors.index.json
// (sharded; shard names may not leave the folder, every listed tensor must be in its shard and no tensor
// may be in two shards), or a single .safetensors file.
class TensorStore {
 public:
  static TensorStore open(const std::filesystem::path& path);

  const TensorEntry* find(std::string_view name) const;
  const TensorEntry& get(std::string_view name) const;  // throws "missing tensor 'X' in <source>"
  std::vector<std::string> names() const;
  const std::string& source() const { return source_; }

 private:
  std::string source_;
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::map<std::string, const TensorEntry*, std::less<>> index_;
};

// Safetensors dtype strings ("F32", "BF16", ...) to DType and back.
std::string_view safetensors_dtype_name(DType t);

struct NamedTensor {
  std::string name;
  Tensor tensor;  // CPU, contiguous
};
// Writes a valid safetensors file (entries in the given order, 8-byte aligned header).
void write_safetensors(const std::filesystem::path& path, std::span<const NamedTensor> tensors,
                       const std::map<std::string, std::string>& metadata = {});

}  // namespace tandem
