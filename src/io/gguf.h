// GGUF (v2/v3, little-endian) reader: mmap, validate every field before trusting or allocating anything,
// expose metadata through typed getters and tensors as zero-copy views of the mapped file.
//
// Layout: "GGUF" | u32 version | u64 n_tensors | u64 n_kv | n_kv x (string key, u32 type, value)
//         | n_tensors x (string name, u32 n_dims, u64 ne[n_dims], u32 ggml_type, u64 offset)
//         | padding to general.alignment (default 32) | data section (tensor offsets are relative to it).
// Strings are u64 length + bytes (no NUL). Arrays are u32 element type + u64 count + elements.
// GGUF lists dims fastest-first (ne[0] is the row length); tandem shapes are row-major, i.e. reversed.
#pragma once
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "core/tensor.h"
#include "io/safetensors.h"

namespace tandem {

enum class GgufValueType : uint32_t {
  U8 = 0, I8 = 1, U16 = 2, I16 = 3, U32 = 4, I32 = 5, F32 = 6, BOOL = 7,
  STRING = 8, ARRAY = 9, U64 = 10, I64 = 11, F64 = 12,
};
std::string_view gguf_value_type_name(GgufValueType t);  // "u32", "string", "array", ...

// ggml tensor type ids (ggml.h enum ggml_type). Ids 4, 5, 31-33 and 36-38 were removed from ggml.
// Known ids outside tandem's DType set parse fine (their sizes are validated) but cannot be viewed.
std::optional<std::string_view> ggml_type_name(uint32_t id);  // "Q4_K"; nullopt for unknown ids
std::optional<DType> dtype_from_ggml_type(uint32_t id);      // nullopt when tandem has no DType for it

// One metadata value. Strings and arrays of fixed-size scalars point into the mapped file (unaligned,
// little-endian); they stay valid while the GgufFile (or anything holding its MappedFile) lives.
struct GgufValue {
  GgufValueType type = GgufValueType::U8;
  uint64_t u = 0;         // U8/U16/U32/U64
  int64_t i = 0;          // I8/I16/I32/I64
  double f = 0;           // F32/F64
  bool b = false;         // BOOL
  std::string_view str;   // STRING
  // ARRAY
  GgufValueType elem_type = GgufValueType::U8;
  uint64_t count = 0;
  const std::byte* elems = nullptr;        // fixed-size scalar elements, packed
  std::vector<std::string_view> strings;   // elem_type STRING
  std::vector<GgufValue> arrays;           // elem_type ARRAY (nested)

  bool is_integer() const;  // U8..I64 scalar (not BOOL)
  bool is_float() const;    // F32/F64 scalar
  // Element k of a scalar array, decoded. `k < count` and the element type must match the accessor's family.
  uint64_t array_u64(uint64_t k) const;  // unsigned element types and BOOL
  int64_t array_i64(uint64_t k) const;   // signed element types
  double array_f64(uint64_t k) const;    // F32/F64
  // Short human-readable form: `42`, `"llama"`, `[string x 49152] ["<unk>", "<s>", ...]`.
  std::string to_string(size_t max_items = 4) const;
};

struct GgufTensorInfo {
  std::string name;
  uint32_t ggml_type = 0;
  std::vector<int64_t> ne;     // GGUF order: ne[0] is the fastest-varying (row length)
  std::vector<int64_t> shape;  // tandem order: row-major, shape.back() == ne[0]
  uint64_t offset = 0;         // relative to the data section, as stored in the file
  size_t file_offset = 0;      // absolute byte offset in the file
  size_t nbytes = 0;
  const std::byte* data = nullptr;
  std::string path;  // of the file, for error messages

  std::string_view type_name() const;  // "Q4_1", "F32", ...
  bool supported() const;              // tandem has a DType for ggml_type
  // The tandem DType; throws "<path>: tensor 'X' has type Q3_K, which tandem does not support".
  DType dtype() const;
  int64_t numel() const;
  // Contiguous CPU view of the mapped bytes, shape row-major (may be unaligned). Throws if unsupported.
  Tensor view() const;
};

class GgufFile {
 public:
  // Opens and validates the whole header (see the file comment); throws tandem::Error naming the file,
  // the field and its byte offset. Nothing is allocated for a count or length that does not fit in the
  // bytes left in the file.
  static std::unique_ptr<GgufFile> open(const std::filesystem::path& path);

  const std::string& path() const { return file_->path(); }
  uint32_t version() const { return version_; }
  uint64_t alignment() const { return alignment_; }
  size_t data_offset() const { return data_offset_; }  // absolute start of the data section
  size_t file_size() const { return file_->size(); }
  const std::shared_ptr<MappedFile>& mapped() const { return file_; }

  // Metadata in file order, and lookup by key.
  const std::vector<std::pair<std::string, GgufValue>>& metadata() const { return kv_; }
  const GgufValue* find(std::string_view key) const;
  bool has(std::string_view key) const { return find(key) != nullptr; }

  // Typed getters: nullopt when the key is absent; throw naming the file, key and actual type when the key
  // exists with another type. get_int accepts every integer type (u64 above 2^63-1 throws); get_float
  // accepts f32/f64 and integers; arrays follow the same rules per element.
  std::optional<int64_t> get_int(std::string_view key) const;
  std::optional<double> get_float(std::string_view key) const;
  std::optional<bool> get_bool(std::string_view key) const;
  std::optional<std::string> get_string(std::string_view key) const;
  std::optional<std::vector<std::string>> get_string_array(std::string_view key) const;
  std::optional<std::vector<int64_t>> get_int_array(std::string_view key) const;
  std::optional<std::vector<double>> get_float_array(std::string_view key) const;
  // Absent key -> throws "<path>: missing metadata key 'X'".
  int64_t require_int(std::string_view key) const;
  std::string require_string(std::string_view key) const;

  // Tensors in file order.
  const std::vector<GgufTensorInfo>& tensors() const { return tensors_; }
  const GgufTensorInfo* find_tensor(std::string_view name) const;
  const GgufTensorInfo& tensor(std::string_view name) const;  // throws "missing tensor 'X' in <path>"
  // A TensorEntry sharing the mapping, for code written against safetensors. Throws if unsupported.
  TensorEntry entry(std::string_view name) const;

  // Multi-line dump: header, every metadata key (arrays abbreviated), tensor type histogram and, when
  // `with_tensors`, one line per tensor. For `tandem info`.
  std::string describe(bool with_tensors = true) const;

 private:
  GgufFile() = default;
  friend class GgufParser;
  std::shared_ptr<MappedFile> file_;
  uint32_t version_ = 0;
  uint64_t alignment_ = 32;
  size_t data_offset_ = 0;
  std::vector<std::pair<std::string, GgufValue>> kv_;
  std::map<std::string, size_t, std::less<>> kv_index_;
  std::vector<GgufTensorInfo> tensors_;
  std::map<std::string, size_t, std::less<>> tensor_index_;
};

}  // namespace tandem
