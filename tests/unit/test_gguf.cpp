#include "io/gguf.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace tandem {
namespace {
namespace fs = std::filesystem;
using testing::HasSubstr;
using VT = GgufValueType;

// ---------------------------------------------------------------------------------------------------------------
// A minimal GGUF writer: little-endian encoders plus a file spec whose every field can be overridden.

template <typename T>
std::string le(T v) {
  std::string s(sizeof(T), '\0');
  std::memcpy(s.data(), &v, sizeof(T));
  return s;
}
std::string u8(uint8_t v) { return le(v); }
std::string u32(uint32_t v) { return le(v); }
std::string u64(uint64_t v) { return le(v); }
std::string str(std::string_view s) { return u64(s.size()) + std::string(s); }
// One encoded key-value pair; `payload` is the already-encoded value.
std::string kv(std::string_view key, VT type, const std::string& payload) {
  return str(key) + u32(uint32_t(type)) + payload;
}
std::string kv_raw_type(std::string_view key, uint32_t type, const std::string& payload) {
  return str(key) + u32(type) + payload;
}
// An encoded array value (element type, count, elements).
std::string arr(VT elem, uint64_t count, const std::string& items) { return u32(uint32_t(elem)) + u64(count) + items; }

constexpr uint32_t kF32 = 0, kF16 = 1, kQ4_0 = 2, kQ8_0 = 8, kQ3_K = 11, kF64 = 28;

uint64_t type_nbytes(uint32_t type, const std::vector<uint64_t>& ne) {
  const std::map<uint32_t, std::pair<uint64_t, uint64_t>> sizes = {
      {kF32, {1, 4}}, {kF16, {1, 2}}, {kQ4_0, {32, 18}}, {kQ8_0, {32, 34}}, {kQ3_K, {256, 110}}, {kF64, {1, 8}}};
  const auto it = sizes.find(type);
  if (ne.empty() || it == sizes.end()) return 0;
  const auto [blk, bytes] = it->second;
  uint64_t n = ne[0] / blk * bytes;  // saturates: only used to size the auto-filled data section
  for (size_t i = 1; i < ne.size(); ++i)
    if (__builtin_mul_overflow(n, ne[i], &n)) return ~0ull;
  return n;
}

struct TensorSpec {
  std::string name;
  std::vector<uint64_t> ne;
  uint32_t type = kF32;
  uint64_t offset = 0;
};
std::string tensor_info(const TensorSpec& t) {
  std::string s = str(t.name) + u32(uint32_t(t.ne.size()));
  for (uint64_t d : t.ne) s += u64(d);
  return s + u32(t.type) + u64(t.offset);
}

struct Spec {
  std::string magic = "GGUF";
  uint32_t version = 3;
  std::optional<uint64_t> n_tensors, n_kv;  // default: the real counts
  std::vector<std::string> kvs;             // encoded key-value pairs
  std::vector<TensorSpec> tensors;
  std::string tensor_infos_raw;  // appended after the encoded tensors (for malformed infos)
  uint64_t alignment = 32;       // padding before the data section
  std::optional<std::string> data;  // default: enough deterministic bytes for every tensor

  std::string build() const {
    std::string s = magic + u32(version) + u64(n_tensors.value_or(tensors.size())) + u64(n_kv.value_or(kvs.size()));
    for (const auto& k : kvs) s += k;
    for (const auto& t : tensors) s += tensor_info(t);
    s += tensor_infos_raw;
    if (tensors.empty() && tensor_infos_raw.empty() && !data) return s;
    while (s.size() % alignment) s.push_back('\0');
    if (data) return s + *data;
    uint64_t end = 0;
    for (const auto& t : tensors) {
      uint64_t e;
      if (!__builtin_add_overflow(t.offset, type_nbytes(t.type, t.ne), &e)) end = std::max(end, e);
    }
    end = std::min<uint64_t>(end, 1 << 16);  // malformed specs describe huge tensors; the file stays small
    for (uint64_t i = 0; i < end; ++i) s.push_back(char(i * 7 + 3));
    return s;
  }
};

class TempDir {
 public:
  TempDir() {
    static std::atomic<int> counter{0};
    path_ = fs::temp_directory_path() / fmt::format("tandem_gguf_{}_{}", ::getpid(), counter++);
    fs::remove_all(path_);
    fs::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  fs::path operator/(const std::string& s) const { return path_ / s; }

 private:
  fs::path path_;
};

fs::path write_file(const TempDir& dir, const std::string& bytes, const std::string& name = "t.gguf") {
  const fs::path p = dir / name;
  std::ofstream out(p, std::ios::binary);
  out.write(bytes.data(), std::streamsize(bytes.size()));
  EXPECT_TRUE(out.good());
  return p;
}

std::unique_ptr<GgufFile> open_bytes(const TempDir& dir, const std::string& bytes) {
  return GgufFile::open(write_file(dir, bytes));
}

// Expects GgufFile::open to throw tandem::Error whose message names the file and contains every part.
void expect_open_error(const std::string& bytes, const std::vector<std::string>& parts) {
  TempDir dir;
  const fs::path p = write_file(dir, bytes);
  try {
    GgufFile::open(p);
    ADD_FAILURE() << "expected an error opening a file with parts " << testing::PrintToString(parts);
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_THAT(msg, HasSubstr(p.string()));
    for (const auto& part : parts) EXPECT_THAT(msg, HasSubstr(part));
  }
}

Spec with_kv(std::string kv_bytes) {
  Spec s;
  s.kvs.push_back(std::move(kv_bytes));
  return s;
}
Spec with_tensor(TensorSpec t) {
  Spec s;
  s.tensors.push_back(std::move(t));
  return s;
}

// ---------------------------------------------------------------------------------------------------------------
// Round trip

TEST(GgufRoundTrip, AllMetadataTypes) {
  Spec s;
  s.version = 2;
  s.kvs = {
      kv("t.u8", VT::U8, u8(200)),
      kv("t.i8", VT::I8, le<int8_t>(-5)),
      kv("t.u16", VT::U16, le<uint16_t>(60000)),
      kv("t.i16", VT::I16, le<int16_t>(-30000)),
      kv("t.u32", VT::U32, u32(4000000000u)),
      kv("t.i32", VT::I32, le<int32_t>(-2000000000)),
      kv("t.f32", VT::F32, le<float>(1.5f)),
      kv("t.bool_t", VT::BOOL, u8(1)),
      kv("t.bool_f", VT::BOOL, u8(0)),
      kv("t.string", VT::STRING, str("héllo\nworld")),
      kv("t.empty_string", VT::STRING, str("")),
      kv("t.u64", VT::U64, u64(1234567890123ull)),
      kv("t.u64_big", VT::U64, u64((1ull << 63) + 5)),
      kv("t.i64", VT::I64, le<int64_t>(-(int64_t(1) << 62))),
      kv("t.f64", VT::F64, le<double>(3.141592653589793)),
      kv("t.arr_u16", VT::ARRAY, arr(VT::U16, 3, le<uint16_t>(1) + le<uint16_t>(65535) + le<uint16_t>(7))),
      kv("t.arr_i32", VT::ARRAY, arr(VT::I32, 2, le<int32_t>(-1) + le<int32_t>(5))),
      kv("t.arr_f32", VT::ARRAY, arr(VT::F32, 2, le<float>(0.25f) + le<float>(-2.f))),
      kv("t.arr_f64", VT::ARRAY, arr(VT::F64, 1, le<double>(1e300))),
      kv("t.arr_bool", VT::ARRAY, arr(VT::BOOL, 3, u8(1) + u8(0) + u8(1))),
      kv("t.arr_str", VT::ARRAY, arr(VT::STRING, 3, str("<unk>") + str("") + str("hello"))),
      kv("t.arr_empty", VT::ARRAY, arr(VT::I64, 0, "")),
      kv("t.nested", VT::ARRAY,
         arr(VT::ARRAY, 2, arr(VT::U8, 2, u8(1) + u8(2)) + arr(VT::STRING, 1, str("x")))),
  };
  s.tensors = {{"w", {3, 2}, kF32, 0}, {"q", {64, 2}, kQ8_0, 32}};
  TempDir dir;
  auto f = open_bytes(dir, s.build());
  EXPECT_EQ(f->version(), 2u);
  EXPECT_EQ(f->alignment(), 32u);
  ASSERT_EQ(f->metadata().size(), s.kvs.size());
  EXPECT_EQ(f->metadata()[0].first, "t.u8");  // file order

  EXPECT_EQ(f->get_int("t.u8"), 200);
  EXPECT_EQ(f->get_int("t.i8"), -5);
  EXPECT_EQ(f->get_int("t.u16"), 60000);
  EXPECT_EQ(f->get_int("t.i16"), -30000);
  EXPECT_EQ(f->get_int("t.u32"), 4000000000ll);
  EXPECT_EQ(f->get_int("t.i32"), -2000000000);
  EXPECT_EQ(f->get_int("t.u64"), 1234567890123ll);
  EXPECT_EQ(f->get_int("t.i64"), -(int64_t(1) << 62));
  EXPECT_EQ(f->find("t.u64_big")->u, (1ull << 63) + 5);
  EXPECT_EQ(f->get_float("t.f32"), 1.5);
  EXPECT_EQ(f->get_float("t.f64"), 3.141592653589793);
  EXPECT_EQ(f->get_float("t.i32"), -2e9);  // integers widen to float
  EXPECT_EQ(f->get_bool("t.bool_t"), true);
  EXPECT_EQ(f->get_bool("t.bool_f"), false);
  EXPECT_EQ(f->get_string("t.string"), "héllo\nworld");
  EXPECT_EQ(f->get_string("t.empty_string"), "");
  EXPECT_EQ(f->require_string("t.string"), "héllo\nworld");
  EXPECT_EQ(f->require_int("t.u8"), 200);
  EXPECT_EQ(f->get_int_array("t.arr_u16"), (std::vector<int64_t>{1, 65535, 7}));
  EXPECT_EQ(f->get_int_array("t.arr_i32"), (std::vector<int64_t>{-1, 5}));
  EXPECT_EQ(f->get_int_array("t.arr_empty"), std::vector<int64_t>{});
  EXPECT_EQ(f->get_float_array("t.arr_f32"), (std::vector<double>{0.25, -2.0}));
  EXPECT_EQ(f->get_float_array("t.arr_f64"), (std::vector<double>{1e300}));
  EXPECT_EQ(f->get_float_array("t.arr_i32"), (std::vector<double>{-1.0, 5.0}));
  EXPECT_EQ(f->get_string_array("t.arr_str"), (std::vector<std::string>{"<unk>", "", "hello"}));
  const GgufValue* b = f->find("t.arr_bool");
  ASSERT_NE(b, nullptr);
  EXPECT_EQ(b->elem_type, VT::BOOL);
  EXPECT_EQ(b->count, 3u);
  EXPECT_EQ(b->array_u64(0), 1u);
  EXPECT_EQ(b->array_u64(1), 0u);
  const GgufValue* n = f->find("t.nested");
  ASSERT_NE(n, nullptr);
  ASSERT_EQ(n->elem_type, VT::ARRAY);
  ASSERT_EQ(n->arrays.size(), 2u);
  EXPECT_EQ(n->arrays[0].elem_type, VT::U8);
  EXPECT_EQ(n->arrays[0].array_u64(1), 2u);
  ASSERT_EQ(n->arrays[1].strings.size(), 1u);
  EXPECT_EQ(n->arrays[1].strings[0], "x");
  EXPECT_EQ(n->to_string(), "[array x 2] [[u8 x 2] [1, 2], [string x 1] [\"x\"]]");

  // Absent keys: nullopt; require_* throws naming the key.
  EXPECT_EQ(f->get_int("nope"), std::nullopt);
  EXPECT_EQ(f->get_string_array("nope"), std::nullopt);
  EXPECT_THAT([&] { f->require_int("nope"); }, testing::ThrowsMessage<Error>(HasSubstr("missing metadata key 'nope'")));

  // Tensors: GGUF ne [3, 2] is tandem shape [2, 3].
  ASSERT_EQ(f->tensors().size(), 2u);
  const GgufTensorInfo& w = f->tensor("w");
  EXPECT_EQ(w.ne, (std::vector<int64_t>{3, 2}));
  EXPECT_EQ(w.shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(w.dtype(), DType::F32);
  EXPECT_EQ(w.nbytes, 24u);
  EXPECT_EQ(w.file_offset, f->data_offset());
  EXPECT_EQ(f->data_offset() % 32, 0u);
  const Tensor v = w.view();
  EXPECT_EQ(v.shape_str(), "[2, 3]");
  EXPECT_EQ(static_cast<const std::byte*>(v.data), f->mapped()->data() + f->data_offset());
  const GgufTensorInfo& q = f->tensor("q");
  EXPECT_EQ(q.dtype(), DType::Q8_0);
  EXPECT_EQ(q.shape, (std::vector<int64_t>{2, 64}));
  EXPECT_EQ(q.nbytes, 2u * 2 * 34);
  EXPECT_EQ(q.view().nbytes(), int64_t(q.nbytes));
  const TensorEntry e = f->entry("q");
  EXPECT_EQ(e.offset, f->data_offset() + 32);
  EXPECT_EQ(e.view().data, q.view().data);
  EXPECT_EQ(f->find_tensor("nope"), nullptr);
  EXPECT_THAT([&] { f->tensor("nope"); }, testing::ThrowsMessage<Error>(HasSubstr("missing tensor 'nope'")));

  const std::string d = f->describe();
  EXPECT_THAT(d, HasSubstr("GGUF v2"));
  EXPECT_THAT(d, HasSubstr("t.arr_str"));
  EXPECT_THAT(d, HasSubstr("[string x 3]"));
  EXPECT_THAT(d, HasSubstr("1 x Q8_0"));
}

TEST(GgufRoundTrip, WrongTypeGettersNameKeyAndType) {
  Spec s;
  s.kvs = {kv("a.str", VT::STRING, str("x")), kv("a.int", VT::I32, le<int32_t>(3)),
           kv("a.big", VT::U64, u64(~0ull)), kv("a.arr", VT::ARRAY, arr(VT::STRING, 1, str("y"))),
           kv("a.uarr", VT::ARRAY, arr(VT::U64, 1, u64(~0ull)))};
  TempDir dir;
  auto f = open_bytes(dir, s.build());
  using testing::ThrowsMessage;
  EXPECT_THAT([&] { f->get_int("a.str"); }, ThrowsMessage<Error>(HasSubstr("'a.str' is string, expected an integer")));
  EXPECT_THAT([&] { f->get_string("a.int"); }, ThrowsMessage<Error>(HasSubstr("'a.int' is i32, expected string")));
  EXPECT_THAT([&] { f->get_bool("a.int"); }, ThrowsMessage<Error>(HasSubstr("'a.int' is i32, expected bool")));
  EXPECT_THAT([&] { f->get_float("a.str"); }, ThrowsMessage<Error>(HasSubstr("expected a number")));
  EXPECT_THAT([&] { f->get_int("a.big"); }, ThrowsMessage<Error>(HasSubstr("does not fit in int64")));
  EXPECT_THAT([&] { f->get_int("a.arr"); }, ThrowsMessage<Error>(HasSubstr("is array[string], expected an integer")));
  EXPECT_THAT([&] { f->get_int_array("a.arr"); },
              ThrowsMessage<Error>(HasSubstr("'a.arr' is array[string], expected an array of integers")));
  EXPECT_THAT([&] { f->get_string_array("a.int"); }, ThrowsMessage<Error>(HasSubstr("expected an array of string")));
  EXPECT_THAT([&] { f->get_int_array("a.uarr"); }, ThrowsMessage<Error>(HasSubstr("element 0")));
}

TEST(GgufRoundTrip, AlignmentAndEmptyFile) {
  Spec s;
  s.kvs = {kv("general.alignment", VT::U32, u32(64))};
  s.alignment = 64;
  s.tensors = {{"a", {4}, kF32, 0}, {"b", {8}, kF16, 64}};
  TempDir dir;
  auto f = open_bytes(dir, s.build());
  EXPECT_EQ(f->alignment(), 64u);
  EXPECT_EQ(f->data_offset() % 64, 0u);
  EXPECT_EQ(f->tensor("b").file_offset, f->data_offset() + 64);

  // No tensors and no keys: a 24-byte file is valid.
  auto g = open_bytes(dir, Spec{}.build());
  EXPECT_EQ(g->tensors().size(), 0u);
  EXPECT_EQ(g->metadata().size(), 0u);
}

TEST(GgufRoundTrip, KnownButUnsupportedTypeFailsAtUse) {
  TempDir dir;
  auto f = open_bytes(dir, with_tensor({"w3", {256, 2}, kQ3_K, 0}).build());
  const GgufTensorInfo& t = f->tensor("w3");
  EXPECT_FALSE(t.supported());
  EXPECT_EQ(t.type_name(), "Q3_K");
  EXPECT_EQ(t.nbytes, 220u);
  EXPECT_THAT([&] { t.view(); },
              testing::ThrowsMessage<Error>(HasSubstr("tensor 'w3' has type Q3_K, which tandem does not support")));
  EXPECT_THAT([&] { f->entry("w3"); }, testing::ThrowsMessage<Error>(HasSubstr("which tandem does not support")));
  EXPECT_THAT(f->describe(), HasSubstr("unsupported by tandem"));
}

// ---------------------------------------------------------------------------------------------------------------
// Corrupt files: one case per field, each naming the problem.

constexpr uint64_t k2p63 = 1ull << 63;

TEST(GgufCorrupt, Header) {
  Spec s;
  s.magic = "GGUX";
  expect_open_error(s.build(), {"bad magic", "\"GGUX\""});
  expect_open_error("GG", {"magic needs 4 bytes", "truncated"});
  for (uint32_t v : {1u, 4u}) {
    s = Spec{};
    s.version = v;
    expect_open_error(s.build(), {fmt::format("unsupported GGUF version {}", v)});
  }
  s = Spec{};
  s.version = 0x03000000u;
  expect_open_error(s.build(), {"unsupported GGUF version 50331648", "big-endian"});
  expect_open_error(std::string("GGUF") + u32(3) + u64(0), {"n_kv needs 8 bytes", "truncated"});
  s = Spec{};
  s.n_tensors = 1ull << 40;
  expect_open_error(s.build(), {"n_tensors is 1099511627776"});
  s = Spec{};
  s.n_kv = k2p63;
  expect_open_error(s.build(), {"n_kv is 9223372036854775808"});
  // n_tensors fits in the whole file but not in what is left after the metadata.
  s = Spec{};
  s.kvs = {kv("k", VT::STRING, str(std::string(100, 'x')))};
  s.n_tensors = 3;
  expect_open_error(s.build(), {"n_tensors is 3", "after the metadata"});
}

TEST(GgufCorrupt, Keys) {
  Spec s;
  s.n_kv = 1;
  s.kvs = {u64(100) + std::string(20, 'k')};
  expect_open_error(s.build(), {"metadata entry 0 of 1", "key length 100", "exceeds"});
  s.kvs = {u64(k2p63) + "abcdefghijklmn"};
  expect_open_error(s.build(), {"key length 9223372036854775808", "exceeds"});
  expect_open_error(with_kv(kv("", VT::U64, u64(1))).build(), {"metadata entry 0 of 1", "empty key"});
  s = Spec{};
  s.kvs = {kv("a.b", VT::U8, u8(1)), kv("a.b", VT::U8, u8(2))};
  expect_open_error(s.build(), {"duplicate metadata key 'a.b'"});
}

TEST(GgufCorrupt, Values) {
  expect_open_error(with_kv(kv_raw_type("k.t", 13, u8(0))).build(), {"'k.t'", "unknown value type 13"});
  expect_open_error(with_kv(kv("k.b", VT::BOOL, u8(2))).build(), {"'k.b'", "bool value 2"});
  expect_open_error(with_kv(kv("k.s", VT::STRING, u64(k2p63) + "abc")).build(),
                    {"'k.s'", "string length 9223372036854775808", "exceeds"});
  expect_open_error(with_kv(kv("k.u", VT::U32, u8(1))).build(), {"'k.u'", "u32 needs 4 bytes"});
  expect_open_error(with_kv(kv("k.a", VT::ARRAY, arr(VT::U32, 1ull << 62, ""))).build(),
                    {"'k.a'", "array count 4611686018427387904", "exceeds"});
  expect_open_error(with_kv(kv("k.as", VT::ARRAY, arr(VT::STRING, 1ull << 62, u64(0)))).build(),
                    {"array count 4611686018427387904", "of string elements"});
  expect_open_error(with_kv(kv("k.a", VT::ARRAY, u32(99) + u64(1) + u8(0))).build(),
                    {"'k.a'", "unknown array element type 99"});
  expect_open_error(with_kv(kv("k.ab", VT::ARRAY, arr(VT::BOOL, 3, u8(0) + u8(1) + u8(7)))).build(),
                    {"'k.ab'", "bool array element 2 is 7"});
  expect_open_error(with_kv(kv("k.as", VT::ARRAY, arr(VT::STRING, 2, str("ok") + u64(1000)))).build(),
                    {"'k.as'", "array string length 1000"});
  std::string deep = arr(VT::U8, 0, "");
  for (int i = 0; i < 12; ++i) deep = arr(VT::ARRAY, 1, deep);
  expect_open_error(with_kv(kv("k.deep", VT::ARRAY, deep)).build(), {"nested deeper than 8"});
}

TEST(GgufCorrupt, Alignment) {
  expect_open_error(with_kv(kv("general.alignment", VT::U32, u32(0))).build(),
                    {"'general.alignment' is 0", "nonzero power of two"});
  expect_open_error(with_kv(kv("general.alignment", VT::U32, u32(48))).build(),
                    {"'general.alignment' is 48", "nonzero power of two"});
  expect_open_error(with_kv(kv("general.alignment", VT::I32, le<int32_t>(32))).build(),
                    {"'general.alignment' must be u32, got i32"});
}

TEST(GgufCorrupt, TensorNamesAndDims) {
  expect_open_error(with_tensor({"", {4}, kF32, 0}).build(), {"tensor info 0 of 1", "empty tensor name"});
  Spec s;
  s.tensors = {{"w", {4}, kF32, 0}, {"w", {4}, kF32, 32}};
  expect_open_error(s.build(), {"duplicate tensor name 'w'"});
  expect_open_error(with_tensor({"w", {}, kF32, 0}).build(), {"tensor 'w'", "n_dims is 0"});
  expect_open_error(with_tensor({"w", {1, 1, 1, 1, 1}, kF32, 0}).build(), {"tensor 'w'", "n_dims is 5", "1..4"});
  expect_open_error(with_tensor({"w", {4, 0}, kF32, 0}).build(), {"tensor 'w'", "ne[1] is 0"});
  expect_open_error(with_tensor({"w", {~0ull}, kF32, 0}).build(), {"ne[0] is 18446744073709551615", "negative"});
  expect_open_error(with_tensor({"w", {1ull << 32, 1ull << 32}, kF32, 0}).build(),
                    {"tensor 'w'", "dims product", "overflows int64"});
  // Element count fits int64 but the byte size does not (4 bytes x 2^62).
  expect_open_error(with_tensor({"w", {1ull << 62}, kF32, 0}).build(), {"tensor 'w'", "byte size", "overflows"});
  // Truncated in the middle of the dims.
  const std::string head = std::string("GGUF") + u32(3) + u64(1) + u64(0);
  expect_open_error(head + str("w") + u32(4) + u64(4) + u64(4) + u64(4),
                    {"tensor 'w'", "ne needs 8 bytes at offset 61 but only 0 remain"});
}

TEST(GgufCorrupt, TensorTypes) {
  expect_open_error(with_tensor({"w", {32}, 42, 0}).build(), {"tensor 'w'", "unknown ggml type id 42"});
  expect_open_error(with_tensor({"w", {32}, 4, 0}).build(), {"unknown ggml type id 4"});  // removed Q4_2
  expect_open_error(with_tensor({"w", {48, 2}, kQ4_0, 0}).build(),
                    {"tensor 'w'", "ne[0] = 48", "not a multiple of the Q4_0 block size 32"});
}

TEST(GgufCorrupt, TensorPlacement) {
  expect_open_error(with_tensor({"w", {4}, kF32, 8}).build(),
                    {"tensor 'w'", "data offset 8", "not a multiple of the alignment 32"});
  Spec s = with_tensor({"w", {64}, kF32, 0});
  s.data = std::string(100, 'x');
  expect_open_error(s.build(), {"tensor 'w'", "extends past the end of the file"});
  // Offset + size wrap around 2^64 to a small value.
  s = with_tensor({"w", {16}, kF32, ~0ull - 31});
  s.data = std::string(64, 'x');
  expect_open_error(s.build(), {"tensor 'w'", "extends past the end of the file"});
  // CVE-2025-53630 style: the size itself fits in 64 bits but padding it to the alignment wraps to 0.
  s = with_tensor({"w", {(1ull << 61) - 1}, kF64, 0});
  s.data = std::string(64, 'x');
  expect_open_error(s.build(), {"tensor 'w'", "size 18446744073709551608 bytes padded to alignment 32 overflows"});
  // Two tensors sharing bytes.
  s = Spec{};
  s.tensors = {{"a", {16}, kF32, 0}, {"b", {16}, kF32, 32}};
  expect_open_error(s.build(), {"tensors 'a'", "'b'", "overlap"});
  // The data section start itself past EOF (infos end exactly at EOF, nothing after).
  const std::string infos_only = std::string("GGUF") + u32(3) + u64(1) + u64(0) + tensor_info({"w", {4}, kF32, 0});
  ASSERT_EQ(infos_only.size(), 57u);
  expect_open_error(infos_only, {"data section would start at offset 64, past the end of the file (57 bytes)"});
}

// Every truncation of a valid file fails cleanly; every single-byte corruption either opens or throws
// tandem::Error (under ASan/UBSan this also proves no out-of-bounds read or overflow on those paths).
TEST(GgufCorrupt, TruncationsAndByteFlipsNeverCrash) {
  Spec s;
  s.kvs = {kv("general.alignment", VT::U32, u32(32)), kv("a.s", VT::STRING, str("hello")),
           kv("a.arr", VT::ARRAY, arr(VT::STRING, 2, str("x") + str("yz"))),
           kv("a.nested", VT::ARRAY, arr(VT::ARRAY, 1, arr(VT::I16, 2, le<int16_t>(1) + le<int16_t>(2)))),
           kv("a.b", VT::BOOL, u8(1))};
  s.tensors = {{"a", {32, 2}, kQ4_0, 0}, {"b", {4}, kF32, 96}};
  const std::string good = s.build();
  TempDir dir;
  ASSERT_NO_THROW(open_bytes(dir, good));
  for (size_t n = 0; n < good.size(); ++n) {
    try {
      open_bytes(dir, good.substr(0, n));
      ADD_FAILURE() << "truncation to " << n << " bytes opened";
    } catch (const Error&) {
    }
  }
  int opened = 0, rejected = 0;
  for (size_t i = 0; i < good.size(); ++i) {
    for (uint8_t x : {uint8_t(0x01), uint8_t(0x80), uint8_t(0xff)}) {
      std::string bad = good;
      bad[i] = char(uint8_t(bad[i]) ^ x);
      try {
        auto f = open_bytes(dir, bad);
        (void)f->describe();
        ++opened;
      } catch (const Error&) {
        ++rejected;
      }
    }
  }
  EXPECT_GT(opened, 0);
  EXPECT_GT(rejected, 0);
}

// ---------------------------------------------------------------------------------------------------------------
// The real default model.

fs::path default_model() {
  return fs::path(TANDEM_FIXTURES).parent_path().parent_path() / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf";
}

TEST(GgufRealModel, SmolLM2Q4_1) {
  const fs::path p = default_model();
  if (!fs::exists(p)) GTEST_SKIP() << p << " not found; run tools/setup.sh to fetch the default model";
  auto f = GgufFile::open(p);
  std::cout << f->describe(false);
  EXPECT_EQ(f->version(), 3u);
  EXPECT_EQ(f->alignment(), 32u);
  EXPECT_EQ(f->get_string("general.architecture"), "llama");
  EXPECT_EQ(f->get_int("llama.block_count"), 30);
  EXPECT_EQ(f->get_int("llama.embedding_length"), 576);
  EXPECT_EQ(f->get_int("llama.feed_forward_length"), 1536);
  EXPECT_EQ(f->get_int("llama.attention.head_count"), 9);
  EXPECT_EQ(f->get_int("llama.attention.head_count_kv"), 3);
  EXPECT_EQ(f->get_int("llama.context_length"), 8192);
  EXPECT_EQ(f->get_int("llama.vocab_size"), 49152);
  EXPECT_EQ(f->get_int("llama.rope.dimension_count"), 64);
  EXPECT_EQ(f->get_float("llama.rope.freq_base"), 100000.0);
  EXPECT_FLOAT_EQ(float(*f->get_float("llama.attention.layer_norm_rms_epsilon")), 1e-5f);
  EXPECT_EQ(f->get_int("general.file_type"), 3);  // MOSTLY_Q4_1
  EXPECT_EQ(f->metadata().size(), 33u);

  EXPECT_EQ(f->get_string("tokenizer.ggml.model"), "gpt2");
  EXPECT_EQ(f->get_string("tokenizer.ggml.pre"), "smollm");
  const auto tokens = f->get_string_array("tokenizer.ggml.tokens");
  ASSERT_TRUE(tokens.has_value());
  EXPECT_EQ(tokens->size(), 49152u);
  EXPECT_EQ(f->get_string_array("tokenizer.ggml.merges")->size(), 48900u);
  EXPECT_EQ(f->get_int_array("tokenizer.ggml.token_type")->size(), 49152u);
  EXPECT_EQ(f->get_int("tokenizer.ggml.bos_token_id"), 1);
  EXPECT_EQ(f->get_int("tokenizer.ggml.eos_token_id"), 2);
  EXPECT_EQ(f->get_bool("tokenizer.ggml.add_bos_token"), false);
  EXPECT_THAT(*f->get_string("tokenizer.chat_template"), HasSubstr("im_start"));

  std::cout << "real model tensors: " << f->tensors().size() << "\n";
  EXPECT_EQ(f->tensors().size(), 272u);  // 30 x 9 + token_embd + output_norm (output is tied)
  std::map<std::string, int> types;
  for (const auto& t : f->tensors()) {
    ++types[std::string(t.type_name())];
    EXPECT_TRUE(t.supported()) << t.name;
  }
  EXPECT_EQ(types, (std::map<std::string, int>{{"F32", 61}, {"Q4_1", 210}, {"Q8_0", 1}}));
  EXPECT_EQ(f->find_tensor("output.weight"), nullptr);
  const GgufTensorInfo& emb = f->tensor("token_embd.weight");
  EXPECT_EQ(emb.dtype(), DType::Q8_0);
  EXPECT_EQ(emb.shape, (std::vector<int64_t>{49152, 576}));
  EXPECT_EQ(emb.nbytes, 49152u * 576 / 32 * 34);
  const GgufTensorInfo& down = f->tensor("blk.29.ffn_down.weight");
  EXPECT_EQ(down.dtype(), DType::Q4_1);
  EXPECT_EQ(down.shape, (std::vector<int64_t>{576, 1536}));
  EXPECT_EQ(f->tensor("blk.0.attn_k.weight").shape, (std::vector<int64_t>{192, 576}));
  EXPECT_EQ(f->tensor("output_norm.weight").shape, (std::vector<int64_t>{576}));
}

}  // namespace
}  // namespace tandem
