#include "io/gguf.h"

#include <algorithm>
#include <array>
#include <bit>
#include <cstring>
#include <limits>
#include <numeric>

#include <fmt/ranges.h>

namespace tandem {
namespace fs = std::filesystem;
static_assert(std::endian::native == std::endian::little, "the GGUF reader assumes a little-endian host");

namespace {

constexpr uint64_t kInt64Max = uint64_t(std::numeric_limits<int64_t>::max());
constexpr int kMaxArrayDepth = 8;  // nested arrays; guards the recursion against crafted files
constexpr uint64_t kDefaultAlignment = 32;
// Counts are bounded by the bytes left before anything is reserved, but one parsed entry can take more memory
// than its smallest encoding; reserving at most this many up front keeps a lying count from amplifying.
constexpr uint64_t kMaxReserve = 4096;

template <typename V>
void reserve_capped(V& v, uint64_t count) {
  v.reserve(size_t(std::min(count, kMaxReserve)));
}
// Smallest possible encodings, used to bound counts by the bytes left before reserving anything.
constexpr uint64_t kMinKvBytes = 8 + 1 + 4 + 1;                  // key length, 1-byte key, type, u8 value
constexpr uint64_t kMinTensorInfoBytes = 8 + 1 + 4 + 8 + 4 + 8;  // name length, 1-byte name, n_dims, ne[0], type, offset

struct GgmlTypeInfo {
  uint32_t id;
  std::string_view name;
  int64_t block_elems;
  int64_t block_bytes;
  std::optional<DType> dtype;
};
// ggml.h enum ggml_type with ggml-common.h block sizes (as gguf-py 0.19.0 GGML_QUANT_SIZES).
constexpr GgmlTypeInfo kGgmlTypes[] = {
    {0, "F32", 1, 4, DType::F32},       {1, "F16", 1, 2, DType::F16},
    {2, "Q4_0", 32, 18, DType::Q4_0},   {3, "Q4_1", 32, 20, DType::Q4_1},
    {6, "Q5_0", 32, 22, DType::Q5_0},   {7, "Q5_1", 32, 24, DType::Q5_1},
    {8, "Q8_0", 32, 34, DType::Q8_0},   {9, "Q8_1", 32, 40, std::nullopt},
    {10, "Q2_K", 256, 84, std::nullopt}, {11, "Q3_K", 256, 110, std::nullopt},
    {12, "Q4_K", 256, 144, DType::Q4_K}, {13, "Q5_K", 256, 176, DType::Q5_K},
    {14, "Q6_K", 256, 210, DType::Q6_K}, {15, "Q8_K", 256, 292, std::nullopt},
    {16, "IQ2_XXS", 256, 66, std::nullopt}, {17, "IQ2_XS", 256, 74, std::nullopt},
    {18, "IQ3_XXS", 256, 98, std::nullopt}, {19, "IQ1_S", 256, 50, std::nullopt},
    {20, "IQ4_NL", 32, 18, std::nullopt},   {21, "IQ3_S", 256, 110, std::nullopt},
    {22, "IQ2_S", 256, 82, std::nullopt},   {23, "IQ4_XS", 256, 136, std::nullopt},
    {24, "I8", 1, 1, DType::I8},         {25, "I16", 1, 2, DType::I16},
    {26, "I32", 1, 4, DType::I32},       {27, "I64", 1, 8, DType::I64},
    {28, "F64", 1, 8, DType::F64},       {29, "IQ1_M", 256, 56, std::nullopt},
    {30, "BF16", 1, 2, DType::BF16},     {34, "TQ1_0", 256, 54, std::nullopt},
    {35, "TQ2_0", 256, 66, std::nullopt}, {39, "MXFP4", 32, 17, std::nullopt},
    {40, "NVFP4", 64, 36, std::nullopt},  {41, "Q1_0", 128, 18, std::nullopt},
};

const GgmlTypeInfo* ggml_info(uint32_t id) {
  for (const auto& t : kGgmlTypes)
    if (t.id == id) return &t;
  return nullptr;
}

// Bytes of one element of a fixed-size value type; 0 for STRING/ARRAY.
uint64_t fixed_size(GgufValueType t) {
  switch (t) {
    case GgufValueType::U8: case GgufValueType::I8: case GgufValueType::BOOL: return 1;
    case GgufValueType::U16: case GgufValueType::I16: return 2;
    case GgufValueType::U32: case GgufValueType::I32: case GgufValueType::F32: return 4;
    case GgufValueType::U64: case GgufValueType::I64: case GgufValueType::F64: return 8;
    default: return 0;
  }
}
// Smallest encoding of one array element of this type.
uint64_t min_elem_size(GgufValueType t) {
  if (t == GgufValueType::STRING) return 8;        // u64 length
  if (t == GgufValueType::ARRAY) return 4 + 8;     // element type + count
  return fixed_size(t);
}
bool is_unsigned(GgufValueType t) {
  return t == GgufValueType::U8 || t == GgufValueType::U16 || t == GgufValueType::U32 || t == GgufValueType::U64;
}
bool is_signed(GgufValueType t) {
  return t == GgufValueType::I8 || t == GgufValueType::I16 || t == GgufValueType::I32 || t == GgufValueType::I64;
}
bool is_floating(GgufValueType t) { return t == GgufValueType::F32 || t == GgufValueType::F64; }

template <typename T>
T load(const std::byte* p) {
  T v;
  std::memcpy(&v, p, sizeof(T));
  return v;
}

// Decode one fixed-size scalar at p into the matching field of v.
void decode_scalar(GgufValueType t, const std::byte* p, GgufValue& v) {
  switch (t) {
    case GgufValueType::U8: v.u = load<uint8_t>(p); break;
    case GgufValueType::U16: v.u = load<uint16_t>(p); break;
    case GgufValueType::U32: v.u = load<uint32_t>(p); break;
    case GgufValueType::U64: v.u = load<uint64_t>(p); break;
    case GgufValueType::I8: v.i = load<int8_t>(p); break;
    case GgufValueType::I16: v.i = load<int16_t>(p); break;
    case GgufValueType::I32: v.i = load<int32_t>(p); break;
    case GgufValueType::I64: v.i = load<int64_t>(p); break;
    case GgufValueType::F32: v.f = load<float>(p); break;
    case GgufValueType::F64: v.f = load<double>(p); break;
    case GgufValueType::BOOL: v.b = load<uint8_t>(p) != 0; break;
    default: break;
  }
}

// Printable, shortened form of a string value.
std::string quote(std::string_view s, size_t max_chars = 60) {
  std::string out = "\"";
  for (size_t k = 0; k < s.size() && k < max_chars; ++k) {
    const unsigned char c = static_cast<unsigned char>(s[k]);
    if (c == '"' || c == '\\') out += fmt::format("\\{}", char(c));
    else if (c == '\n') out += "\\n";
    else if (c < 0x20 || c == 0x7f) out += fmt::format("\\x{:02x}", c);
    else out += char(c);
  }
  out += "\"";
  if (s.size() > max_chars) out += fmt::format("...({} bytes)", s.size());
  return out;
}

std::string type_desc(const GgufValue& v) {
  if (v.type != GgufValueType::ARRAY) return std::string(gguf_value_type_name(v.type));
  return fmt::format("array[{}]", gguf_value_type_name(v.elem_type));
}

}  // namespace

std::string_view gguf_value_type_name(GgufValueType t) {
  static constexpr std::array<std::string_view, 13> kNames{"u8",  "i8",   "u16",    "i16",   "u32", "i32", "f32",
                                                           "bool", "string", "array", "u64", "i64", "f64"};
  const auto k = static_cast<uint32_t>(t);
  return k < kNames.size() ? kNames[k] : std::string_view("unknown");
}

std::optional<std::string_view> ggml_type_name(uint32_t id) {
  const auto* t = ggml_info(id);
  return t ? std::optional(t->name) : std::nullopt;
}
std::optional<DType> dtype_from_ggml_type(uint32_t id) {
  const auto* t = ggml_info(id);
  return t ? t->dtype : std::nullopt;
}

// ---------------------------------------------------------------------------------------------------------------
// GgufValue

bool GgufValue::is_integer() const { return is_signed(type) || is_unsigned(type); }
bool GgufValue::is_float() const { return is_floating(type); }

uint64_t GgufValue::array_u64(uint64_t k) const {
  TD_CHECK(type == GgufValueType::ARRAY && elems != nullptr && k < count &&
               (is_unsigned(elem_type) || elem_type == GgufValueType::BOOL),
           "GgufValue::array_u64({}) on {} of {} elements", k, type_desc(*this), count);
  GgufValue v;
  decode_scalar(elem_type, elems + k * fixed_size(elem_type), v);
  return elem_type == GgufValueType::BOOL ? uint64_t(v.b) : v.u;
}
int64_t GgufValue::array_i64(uint64_t k) const {
  TD_CHECK(type == GgufValueType::ARRAY && elems != nullptr && k < count && is_signed(elem_type),
           "GgufValue::array_i64({}) on {} of {} elements", k, type_desc(*this), count);
  GgufValue v;
  decode_scalar(elem_type, elems + k * fixed_size(elem_type), v);
  return v.i;
}
double GgufValue::array_f64(uint64_t k) const {
  TD_CHECK(type == GgufValueType::ARRAY && elems != nullptr && k < count && is_floating(elem_type),
           "GgufValue::array_f64({}) on {} of {} elements", k, type_desc(*this), count);
  GgufValue v;
  decode_scalar(elem_type, elems + k * fixed_size(elem_type), v);
  return v.f;
}

std::string GgufValue::to_string(size_t max_items) const {
  if (is_unsigned(type)) return std::to_string(u);
  if (is_signed(type)) return std::to_string(i);
  if (type == GgufValueType::F32) return fmt::format("{}", float(f));  // shortest form that round-trips the f32
  if (type == GgufValueType::F64) return fmt::format("{}", f);
  if (type == GgufValueType::BOOL) return b ? "true" : "false";
  if (type == GgufValueType::STRING) return quote(str);
  std::string s = fmt::format("[{} x {}] [", gguf_value_type_name(elem_type), count);
  const uint64_t shown = std::min<uint64_t>(count, max_items);
  for (uint64_t k = 0; k < shown; ++k) {
    if (k) s += ", ";
    if (elem_type == GgufValueType::STRING) s += quote(strings[k], 24);
    else if (elem_type == GgufValueType::ARRAY) s += arrays[k].to_string(max_items);
    else if (is_signed(elem_type)) s += std::to_string(array_i64(k));
    else if (elem_type == GgufValueType::F32) s += fmt::format("{}", float(array_f64(k)));
    else if (elem_type == GgufValueType::F64) s += fmt::format("{}", array_f64(k));
    else if (elem_type == GgufValueType::BOOL) s += array_u64(k) ? "true" : "false";
    else s += std::to_string(array_u64(k));
  }
  if (count > shown) s += ", ...";
  return s + "]";
}

// ---------------------------------------------------------------------------------------------------------------
// GgufTensorInfo

std::string_view GgufTensorInfo::type_name() const { return ggml_type_name(ggml_type).value_or("?"); }
bool GgufTensorInfo::supported() const { return dtype_from_ggml_type(ggml_type).has_value(); }
DType GgufTensorInfo::dtype() const {
  const auto d = dtype_from_ggml_type(ggml_type);
  TD_CHECK(d.has_value(), "{}: tensor '{}' has type {}, which tandem does not support", path, name, type_name());
  return *d;
}
int64_t GgufTensorInfo::numel() const {
  return std::accumulate(ne.begin(), ne.end(), int64_t(1), [](int64_t a, int64_t b) { return a * b; });
}
Tensor GgufTensorInfo::view() const {
  return Tensor::contiguous(const_cast<std::byte*>(data), dtype(), shape);
}

// ---------------------------------------------------------------------------------------------------------------
// Parser: a bounds-checked cursor over the mapped bytes. `ctx_` names what is being parsed for messages.

class GgufParser {
 public:
  GgufParser(GgufFile& out) : f_(out), p_(out.file_->data()), size_(out.file_->size()), path_(out.path()) {}

  void parse() {
    ctx_ = "header";
    need(4, "magic");
    if (std::memcmp(p_, "GGUF", 4) != 0) {
      fail("{}: bad magic {} at offset 0: not a GGUF file (expected \"GGUF\")", path_,
           quote(std::string_view(reinterpret_cast<const char*>(p_), 4)));
    }
    pos_ = 4;
    const auto version = read<uint32_t>("version");
    if (version != 2 && version != 3) {
      if (__builtin_bswap32(version) == 2 || __builtin_bswap32(version) == 3)
        fail("{}: unsupported GGUF version {} (a big-endian file?); tandem reads little-endian GGUF v2 and v3",
             path_, version);
      fail("{}: unsupported GGUF version {}; tandem reads GGUF v2 and v3", path_, version);
    }
    f_.version_ = version;
    const auto n_tensors = read<uint64_t>("n_tensors");
    const auto n_kv = read<uint64_t>("n_kv");
    TD_CHECK(n_kv <= left() / kMinKvBytes,
             "{}: header: n_kv is {} but only {} bytes remain after the header (each key-value pair needs at "
             "least {} bytes)",
             path_, n_kv, left(), kMinKvBytes);
    TD_CHECK(n_tensors <= left() / kMinTensorInfoBytes,
             "{}: header: n_tensors is {} but only {} bytes remain after the header (each tensor info needs at "
             "least {} bytes)",
             path_, n_tensors, left(), kMinTensorInfoBytes);

    parse_metadata(n_kv);
    parse_alignment();
    TD_CHECK(n_tensors <= left() / kMinTensorInfoBytes,
             "{}: header: n_tensors is {} but only {} bytes remain after the metadata (each tensor info needs "
             "at least {} bytes)",
             path_, n_tensors, left(), kMinTensorInfoBytes);
    parse_tensor_infos(n_tensors);
    place_tensors();
  }

 private:
  uint64_t left() const { return size_ - pos_; }

  void need(uint64_t n, std::string_view what) {
    if (n > left())
      fail("{}: {}: {} needs {} bytes at offset {} but only {} remain (truncated file?)", path_, ctx_, what, n,
           pos_, left());
  }
  template <typename T>
  T read(std::string_view what) {
    need(sizeof(T), what);
    const T v = load<T>(p_ + pos_);
    pos_ += sizeof(T);
    return v;
  }
  std::string_view read_string(std::string_view what) {
    const size_t at = pos_;
    if (left() < 8)
      fail("{}: {}: {} length needs 8 bytes at offset {} but only {} remain (truncated file?)", path_, ctx_, what,
           pos_, left());
    const auto len = load<uint64_t>(p_ + pos_);
    pos_ += 8;
    if (len > left())
      fail("{}: {}: {} length {} at offset {} exceeds the {} bytes left in the file", path_, ctx_, what, len, at,
           left());
    std::string_view s(reinterpret_cast<const char*>(p_ + pos_), size_t(len));
    pos_ += len;
    return s;
  }
  GgufValueType read_type(std::string_view what) {
    const size_t at = pos_;
    const auto t = read<uint32_t>(what);
    if (t > uint32_t(GgufValueType::F64))
      fail("{}: {}: unknown {} {} at offset {} (valid: 0..12)", path_, ctx_, what, t, at);
    return GgufValueType(t);
  }

  GgufValue parse_value(GgufValueType t, int depth) {
    GgufValue v;
    v.type = t;
    if (t == GgufValueType::STRING) {
      v.str = read_string("string");
      return v;
    }
    if (t != GgufValueType::ARRAY) {
      const size_t at = pos_;
      need(fixed_size(t), gguf_value_type_name(t));
      decode_scalar(t, p_ + pos_, v);
      if (t == GgufValueType::BOOL && uint8_t(p_[pos_]) > 1)
        fail("{}: {}: bool value {} at offset {} (must be 0 or 1)", path_, ctx_, uint8_t(p_[pos_]), at);
      pos_ += fixed_size(t);
      return v;
    }
    v.elem_type = read_type("array element type");
    const size_t at = pos_;
    v.count = read<uint64_t>("array count");
    if (v.elem_type == GgufValueType::ARRAY && depth >= kMaxArrayDepth)
      fail("{}: {}: arrays nested deeper than {} levels at offset {}", path_, ctx_, kMaxArrayDepth, at);
    const uint64_t min = min_elem_size(v.elem_type);
    if (v.count > left() / min)
      fail("{}: {}: array count {} at offset {} of {} elements (at least {} bytes each) exceeds the {} bytes left "
           "in the file",
           path_, ctx_, v.count, at, gguf_value_type_name(v.elem_type), min, left());
    if (v.elem_type == GgufValueType::STRING) {
      reserve_capped(v.strings, v.count);
      for (uint64_t k = 0; k < v.count; ++k) v.strings.push_back(read_string("array string"));
    } else if (v.elem_type == GgufValueType::ARRAY) {
      reserve_capped(v.arrays, v.count);
      for (uint64_t k = 0; k < v.count; ++k) v.arrays.push_back(parse_value(GgufValueType::ARRAY, depth + 1));
    } else {
      v.elems = p_ + pos_;
      if (v.elem_type == GgufValueType::BOOL) {
        for (uint64_t k = 0; k < v.count; ++k)
          if (uint8_t(v.elems[k]) > 1)
            fail("{}: {}: bool array element {} is {} at offset {} (must be 0 or 1)", path_, ctx_, k,
                 uint8_t(v.elems[k]), pos_ + k);
      }
      pos_ += v.count * min;
    }
    return v;
  }

  void parse_metadata(uint64_t n_kv) {
    reserve_capped(f_.kv_, n_kv);
    for (uint64_t k = 0; k < n_kv; ++k) {
      ctx_ = fmt::format("metadata entry {} of {}", k, n_kv);
      const size_t at = pos_;
      const std::string_view key = read_string("key");
      TD_CHECK(!key.empty(), "{}: {}: empty key at offset {}", path_, ctx_, at);
      ctx_ = fmt::format("metadata key '{}'", key);
      TD_CHECK(!f_.kv_index_.contains(key), "{}: duplicate metadata key '{}' at offset {}", path_, key, at);
      const GgufValueType t = read_type("value type");
      f_.kv_index_.emplace(std::string(key), f_.kv_.size());
      f_.kv_.emplace_back(std::string(key), parse_value(t, 0));
    }
  }

  void parse_alignment() {
    f_.alignment_ = kDefaultAlignment;
    const GgufValue* a = f_.find("general.alignment");
    if (a == nullptr) return;
    TD_CHECK(a->type == GgufValueType::U32, "{}: metadata key 'general.alignment' must be u32, got {}", path_,
             type_desc(*a));
    TD_CHECK(a->u != 0 && std::has_single_bit(a->u),
             "{}: metadata key 'general.alignment' is {}, must be a nonzero power of two", path_, a->u);
    f_.alignment_ = a->u;
  }

  void parse_tensor_infos(uint64_t n_tensors) {
    reserve_capped(f_.tensors_, n_tensors);
    for (uint64_t k = 0; k < n_tensors; ++k) {
      ctx_ = fmt::format("tensor info {} of {}", k, n_tensors);
      GgufTensorInfo ti;
      ti.path = path_;
      const size_t at = pos_;
      const std::string_view name = read_string("name");
      TD_CHECK(!name.empty(), "{}: {}: empty tensor name at offset {}", path_, ctx_, at);
      ti.name = std::string(name);
      ctx_ = fmt::format("tensor '{}'", ti.name);
      TD_CHECK(!f_.tensor_index_.contains(name), "{}: duplicate tensor name '{}' at offset {}", path_, ti.name, at);

      const size_t dims_at = pos_;
      const auto n_dims = read<uint32_t>("n_dims");
      TD_CHECK(n_dims >= 1 && n_dims <= uint32_t(kMaxDims), "{}: {}: n_dims is {} at offset {}, must be 1..{}",
               path_, ctx_, n_dims, dims_at, kMaxDims);
      int64_t numel = 1;
      for (uint32_t j = 0; j < n_dims; ++j) {
        const size_t ne_at = pos_;
        const auto d = read<uint64_t>("ne");
        TD_CHECK(d != 0, "{}: {}: dimension ne[{}] is 0 at offset {}, must be positive", path_, ctx_, j, ne_at);
        TD_CHECK(d <= kInt64Max, "{}: {}: dimension ne[{}] is {} at offset {} (negative as int64), must be positive",
                 path_, ctx_, j, d, ne_at);
        ti.ne.push_back(int64_t(d));
        TD_CHECK(!__builtin_mul_overflow(numel, int64_t(d), &numel),
                 "{}: {}: dims product ne = {} overflows int64", path_, ctx_, fmt::join(ti.ne, " x "));
      }
      ti.shape.assign(ti.ne.rbegin(), ti.ne.rend());

      const size_t type_at = pos_;
      ti.ggml_type = read<uint32_t>("type");
      const GgmlTypeInfo* info = ggml_info(ti.ggml_type);
      TD_CHECK(info != nullptr, "{}: {}: unknown ggml type id {} at offset {}", path_, ctx_, ti.ggml_type, type_at);
      TD_CHECK(ti.ne[0] % info->block_elems == 0,
               "{}: {}: ne[0] = {} (row length) is not a multiple of the {} block size {}", path_, ctx_, ti.ne[0],
               info->name, info->block_elems);
      uint64_t nbytes = uint64_t(ti.ne[0] / info->block_elems);
      bool overflow = __builtin_mul_overflow(nbytes, uint64_t(info->block_bytes), &nbytes);
      for (size_t j = 1; j < ti.ne.size(); ++j) overflow |= __builtin_mul_overflow(nbytes, uint64_t(ti.ne[j]), &nbytes);
      TD_CHECK(!overflow, "{}: {}: byte size of {} x {} overflows 64 bits", path_, ctx_, info->name,
               fmt::join(ti.ne, " x "));
      ti.nbytes = nbytes;

      const size_t off_at = pos_;
      ti.offset = read<uint64_t>("offset");
      TD_CHECK(ti.offset % f_.alignment_ == 0, "{}: {}: data offset {} at offset {} is not a multiple of the alignment {}",
               path_, ctx_, ti.offset, off_at, f_.alignment_);
      f_.tensor_index_.emplace(ti.name, f_.tensors_.size());
      f_.tensors_.push_back(std::move(ti));
    }
  }

  void place_tensors() {
    ctx_ = "data section";
    const uint64_t align = f_.alignment_;
    const uint64_t data_offset = (uint64_t(pos_) + align - 1) / align * align;  // pos_ <= size_, no overflow
    if (!f_.tensors_.empty())
      TD_CHECK(data_offset <= size_, "{}: data section would start at offset {}, past the end of the file ({} bytes)",
               path_, data_offset, size_);
    f_.data_offset_ = size_t(data_offset);
    uint64_t total_padded = 0;  // what a ggml loader allocates for the data blob (CVE-2025-53630: must not wrap)
    for (auto& ti : f_.tensors_) {
      uint64_t padded;
      TD_CHECK(!__builtin_add_overflow(uint64_t(ti.nbytes), align - 1, &padded),
               "{}: tensor '{}': size {} bytes padded to alignment {} overflows 64 bits", path_, ti.name, ti.nbytes,
               align);
      padded &= ~(align - 1);
      TD_CHECK(!__builtin_add_overflow(total_padded, padded, &total_padded),
               "{}: tensor '{}': total padded data size overflows 64 bits", path_, ti.name);
      uint64_t begin, end;
      TD_CHECK(!__builtin_add_overflow(data_offset, ti.offset, &begin) &&
                   !__builtin_add_overflow(begin, uint64_t(ti.nbytes), &end) && end <= size_,
               "{}: tensor '{}': data [{}, +{}) at data offset {} extends past the end of the file ({} bytes)", path_,
               ti.name, ti.offset, ti.nbytes, data_offset, size_);
      ti.file_offset = size_t(begin);
      ti.data = p_ + begin;
    }
    std::vector<const GgufTensorInfo*> order;
    order.reserve(f_.tensors_.size());
    for (const auto& ti : f_.tensors_) order.push_back(&ti);
    std::sort(order.begin(), order.end(), [](auto* a, auto* b) { return a->offset < b->offset; });
    for (size_t k = 1; k < order.size(); ++k) {
      const auto* a = order[k - 1];
      const auto* b = order[k];
      TD_CHECK(b->offset >= a->offset + a->nbytes,
               "{}: tensors '{}' (data [{}, {})) and '{}' (data [{}, {})) overlap", path_, a->name, a->offset,
               a->offset + a->nbytes, b->name, b->offset, b->offset + b->nbytes);
    }
  }

  GgufFile& f_;
  const std::byte* p_;
  size_t size_;
  std::string path_;
  size_t pos_ = 0;
  std::string ctx_;
};

// ---------------------------------------------------------------------------------------------------------------
// GgufFile

std::unique_ptr<GgufFile> GgufFile::open(const fs::path& path) {
  std::unique_ptr<GgufFile> f(new GgufFile());
  f->file_ = MappedFile::open(path);
  GgufParser(*f).parse();
  return f;
}

const GgufValue* GgufFile::find(std::string_view key) const {
  const auto it = kv_index_.find(key);
  return it == kv_index_.end() ? nullptr : &kv_[it->second].second;
}

namespace {
int64_t as_int(const GgufValue& v, const std::string& path, std::string_view key) {
  if (is_signed(v.type)) return v.i;
  TD_CHECK(is_unsigned(v.type), "{}: metadata key '{}' is {}, expected an integer", path, key, type_desc(v));
  TD_CHECK(v.u <= kInt64Max, "{}: metadata key '{}' is {} ({}), which does not fit in int64", path, key, v.u,
           type_desc(v));
  return int64_t(v.u);
}
const GgufValue* array_of(const GgufValue* v, const std::string& path, std::string_view key, std::string_view want,
                          bool (*ok)(GgufValueType)) {
  if (v == nullptr) return nullptr;
  TD_CHECK(v->type == GgufValueType::ARRAY && ok(v->elem_type), "{}: metadata key '{}' is {}, expected an array of {}",
           path, key, type_desc(*v), want);
  return v;
}
}  // namespace

std::optional<int64_t> GgufFile::get_int(std::string_view key) const {
  const GgufValue* v = find(key);
  if (v == nullptr) return std::nullopt;
  return as_int(*v, path(), key);
}

std::optional<double> GgufFile::get_float(std::string_view key) const {
  const GgufValue* v = find(key);
  if (v == nullptr) return std::nullopt;
  if (v->is_float()) return v->f;
  TD_CHECK(v->is_integer(), "{}: metadata key '{}' is {}, expected a number", path(), key, type_desc(*v));
  return is_signed(v->type) ? double(v->i) : double(v->u);
}

std::optional<bool> GgufFile::get_bool(std::string_view key) const {
  const GgufValue* v = find(key);
  if (v == nullptr) return std::nullopt;
  TD_CHECK(v->type == GgufValueType::BOOL, "{}: metadata key '{}' is {}, expected bool", path(), key, type_desc(*v));
  return v->b;
}

std::optional<std::string> GgufFile::get_string(std::string_view key) const {
  const GgufValue* v = find(key);
  if (v == nullptr) return std::nullopt;
  TD_CHECK(v->type == GgufValueType::STRING, "{}: metadata key '{}' is {}, expected string", path(), key,
           type_desc(*v));
  return std::string(v->str);
}

std::optional<std::vector<std::string>> GgufFile::get_string_array(std::string_view key) const {
  const GgufValue* v = array_of(find(key), path(), key, "string", [](GgufValueType t) {
    return t == GgufValueType::STRING;
  });
  if (v == nullptr) return std::nullopt;
  return std::vector<std::string>(v->strings.begin(), v->strings.end());
}

std::optional<std::vector<int64_t>> GgufFile::get_int_array(std::string_view key) const {
  const GgufValue* v = array_of(find(key), path(), key, "integers", [](GgufValueType t) {
    return is_signed(t) || is_unsigned(t);
  });
  if (v == nullptr) return std::nullopt;
  std::vector<int64_t> out(size_t(v->count));
  for (uint64_t k = 0; k < v->count; ++k) {
    if (is_signed(v->elem_type)) {
      out[k] = v->array_i64(k);
    } else {
      const uint64_t u = v->array_u64(k);
      TD_CHECK(u <= kInt64Max, "{}: metadata key '{}' element {} is {}, which does not fit in int64", path(), key, k, u);
      out[k] = int64_t(u);
    }
  }
  return out;
}

std::optional<std::vector<double>> GgufFile::get_float_array(std::string_view key) const {
  const GgufValue* v = array_of(find(key), path(), key, "numbers", [](GgufValueType t) {
    return is_floating(t) || is_signed(t) || is_unsigned(t);
  });
  if (v == nullptr) return std::nullopt;
  std::vector<double> out(size_t(v->count));
  for (uint64_t k = 0; k < v->count; ++k) {
    if (is_floating(v->elem_type)) out[k] = v->array_f64(k);
    else if (is_signed(v->elem_type)) out[k] = double(v->array_i64(k));
    else out[k] = double(v->array_u64(k));
  }
  return out;
}

int64_t GgufFile::require_int(std::string_view key) const {
  const auto v = get_int(key);
  TD_CHECK(v.has_value(), "{}: missing metadata key '{}'", path(), key);
  return *v;
}

std::string GgufFile::require_string(std::string_view key) const {
  auto v = get_string(key);
  TD_CHECK(v.has_value(), "{}: missing metadata key '{}'", path(), key);
  return std::move(*v);
}

const GgufTensorInfo* GgufFile::find_tensor(std::string_view name) const {
  const auto it = tensor_index_.find(name);
  return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

const GgufTensorInfo& GgufFile::tensor(std::string_view name) const {
  const GgufTensorInfo* t = find_tensor(name);
  TD_CHECK(t != nullptr, "missing tensor '{}' in {}", name, path());
  return *t;
}

TensorEntry GgufFile::entry(std::string_view name) const {
  const GgufTensorInfo& t = tensor(name);
  TensorEntry e;
  e.name = t.name;
  e.dtype = t.dtype();
  e.shape = t.shape;
  e.offset = t.file_offset;
  e.nbytes = t.nbytes;
  e.file = file_;
  return e;
}

std::string GgufFile::describe(bool with_tensors) const {
  std::string s = fmt::format("{}\n  GGUF v{}, {} bytes, {} metadata keys, {} tensors, alignment {}, data at offset {}\n",
                              path(), version_, file_size(), kv_.size(), tensors_.size(), alignment_, data_offset_);
  size_t key_w = 0;
  for (const auto& [k, v] : kv_) key_w = std::max(key_w, k.size());
  s += "metadata:\n";
  for (const auto& [k, v] : kv_) s += fmt::format("  {:<{}}  {:<14} {}\n", k, key_w, type_desc(v), v.to_string());

  std::map<std::string_view, std::pair<size_t, uint64_t>> hist;  // type -> (count, bytes)
  uint64_t total_bytes = 0;
  int64_t total_params = 0;
  for (const auto& t : tensors_) {
    auto& h = hist[t.type_name()];
    ++h.first;
    h.second += t.nbytes;
    total_bytes += t.nbytes;
    total_params += t.numel();
  }
  s += fmt::format("tensors: {} ({} parameters, {} bytes):", tensors_.size(), total_params, total_bytes);
  for (const auto& [name, h] : hist) s += fmt::format(" {} x {} ({} bytes);", h.first, name, h.second);
  s += "\n";
  if (with_tensors) {
    size_t name_w = 0;
    for (const auto& t : tensors_) name_w = std::max(name_w, t.name.size());
    for (const auto& t : tensors_) {
      const std::string shape = fmt::format("[{}]", fmt::join(t.shape, ", "));
      s += fmt::format("  {:<{}}  {:<7} {:<16} offset {:>12}  {:>10} bytes{}\n", t.name, name_w, t.type_name(), shape,
                       t.offset, t.nbytes, t.supported() ? "" : "  (unsupported by tandem)");
    }
  }
  return s;
}

}  // namespace tandem
