#include "io/safetensors.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

namespace tandem {
namespace {
namespace fs = std::filesystem;
using testing::AllOf;
using testing::HasSubstr;

// A fresh directory under the system temp dir, removed on destruction.
class TempDir {
 public:
  TempDir() {
    static std::atomic<int> counter{0};
    const auto* info = testing::UnitTest::GetInstance()->current_test_info();
    std::string name = fmt::format("tandem_st_{}_{}_{}", ::getpid(), counter++,
                                   info ? fmt::format("{}_{}", info->test_suite_name(), info->name()) : "x");
    path_ = fs::temp_directory_path() / name;
    fs::remove_all(path_);
    fs::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  const fs::path& path() const { return path_; }
  fs::path operator/(const std::string& s) const { return path_ / s; }

 private:
  fs::path path_;
};

void write_bytes(const fs::path& p, const std::string& bytes) {
  std::ofstream out(p, std::ios::binary);
  out.write(bytes.data(), std::streamsize(bytes.size()));
  ASSERT_TRUE(out.good());
}

std::string le64(uint64_t n) {
  std::string s(8, '\0');
  for (int i = 0; i < 8; ++i) s[size_t(i)] = char((n >> (8 * i)) & 0xff);
  return s;
}

// A raw safetensors file: 8-byte length (the header's true length unless given), header text, data_size bytes.
void write_raw(const fs::path& p, const std::string& header, size_t data_size, std::optional<uint64_t> n = {}) {
  std::string bytes = le64(n.value_or(header.size())) + header;
  for (size_t i = 0; i < data_size; ++i) bytes.push_back(char(i & 0xff));
  write_bytes(p, bytes);
}

// Expects SafetensorsFile::open to throw tandem::Error whose message contains every substring.
void expect_open_error(const fs::path& p, std::vector<std::string> parts) {
  try {
    SafetensorsFile::open(p);
    ADD_FAILURE() << "expected an error opening " << p;
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_THAT(msg, HasSubstr(p.string()));
    for (const auto& part : parts) EXPECT_THAT(msg, HasSubstr(part));
  }
}

void expect_store_error(const fs::path& p, std::vector<std::string> parts) {
  try {
    TensorStore::open(p);
    ADD_FAILURE() << "expected an error opening store " << p;
  } catch (const Error& e) {
    const std::string msg = e.what();
    for (const auto& part : parts) EXPECT_THAT(msg, HasSubstr(part));
  }
}

// A one-tensor raw file with the given entry JSON for tensor "a" and data size.
void bad_entry(const fs::path& p, const std::string& entry, size_t data_size) {
  write_raw(p, R"({"a":)" + entry + "}", data_size);
}

// ---------------------------------------------------------------------------------------------------------------
// Round trip and valid files

TEST(SafetensorsRoundTrip, F32Bf16F16WithMetadata) {
  TempDir dir;
  HostTensor a = HostTensor::empty(DType::F32, {2, 3});
  for (int i = 0; i < 6; ++i) a.f32()[i] = float(i) * 1.5f - 2.f;
  HostTensor b = HostTensor::empty(DType::BF16, {5});
  for (int i = 0; i < 5; ++i) b.view().ptr<uint16_t>()[i] = f32_to_bf16(float(i) + 0.25f);
  HostTensor c = HostTensor::empty(DType::F16, {1, 2, 3, 1});
  for (int i = 0; i < 6; ++i) c.view().ptr<uint16_t>()[i] = f32_to_fp16(-float(i));

  const std::vector<NamedTensor> ts = {{"z.first", a.view()}, {"b.bf16", b.view()}, {"m.f16", c.view()}};
  const std::map<std::string, std::string> md = {{"format", "pt"}, {"note", "héllo"}};
  const fs::path p = dir / "rt.safetensors";
  write_safetensors(p, ts, md);

  // Header is padded to a multiple of 8 and the file is exactly 8 + N + data.
  std::ifstream in(p, std::ios::binary);
  char len[8];
  in.read(len, 8);
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | uint8_t(len[i]);
  EXPECT_EQ(n % 8, 0u);
  EXPECT_EQ(fs::file_size(p), 8 + n + 24 + 10 + 12);

  auto f = SafetensorsFile::open(p);
  EXPECT_EQ(f->metadata(), md);
  ASSERT_EQ(f->entries().size(), 3u);
  EXPECT_EQ(f->entries()[0].name, "b.bf16");  // sorted by name
  EXPECT_EQ(f->entries()[1].name, "m.f16");
  EXPECT_EQ(f->entries()[2].name, "z.first");
  EXPECT_EQ(f->find("nope"), nullptr);
  for (const auto& nt : ts) {
    const TensorEntry* e = f->find(nt.name);
    ASSERT_NE(e, nullptr) << nt.name;
    EXPECT_EQ(e->dtype, nt.tensor.dtype);
    EXPECT_EQ(e->nbytes, size_t(nt.tensor.nbytes()));
    const Tensor v = e->view();
    EXPECT_EQ(v.dtype, nt.tensor.dtype);
    EXPECT_EQ(v.shape_str(), nt.tensor.shape_str());
    EXPECT_TRUE(v.is_contiguous());
    EXPECT_EQ(std::memcmp(v.data, nt.tensor.data, size_t(nt.tensor.nbytes())), 0) << nt.name;
  }
  // Data written in the given order.
  EXPECT_LT(f->find("z.first")->offset, f->find("b.bf16")->offset);
  EXPECT_LT(f->find("b.bf16")->offset, f->find("m.f16")->offset);
  EXPECT_EQ(f->find("z.first")->offset, 8 + n);
}

TEST(SafetensorsRoundTrip, NoMetadataAndEmptyFileList) {
  TempDir dir;
  const fs::path p = dir / "empty.safetensors";
  write_safetensors(p, {});
  auto f = SafetensorsFile::open(p);
  EXPECT_TRUE(f->entries().empty());
  EXPECT_TRUE(f->metadata().empty());
}

TEST(SafetensorsRoundTrip, ScalarAndZeroSize) {
  TempDir dir;
  HostTensor s = HostTensor::empty(DType::F32, std::span<const int64_t>());
  s.f32()[0] = 42.f;
  HostTensor z1 = HostTensor::empty(DType::F32, {0, 4});
  HostTensor z2 = HostTensor::empty(DType::BF16, {3, 0});
  HostTensor v = HostTensor::empty(DType::I32, {2});
  v.view().ptr<int32_t>()[0] = 7;
  v.view().ptr<int32_t>()[1] = -7;
  const std::vector<NamedTensor> ts = {{"z1", z1.view()}, {"s", s.view()}, {"z2", z2.view()}, {"v", v.view()}};
  const fs::path p = dir / "sz.safetensors";
  write_safetensors(p, ts);
  auto f = SafetensorsFile::open(p);
  ASSERT_EQ(f->entries().size(), 4u);
  EXPECT_TRUE(f->find("s")->shape.empty());
  EXPECT_EQ(f->find("s")->nbytes, 4u);
  EXPECT_EQ(load_f32(f->find("s")->view(), 0), 42.f);
  EXPECT_EQ(f->find("z1")->nbytes, 0u);
  EXPECT_EQ(f->find("z2")->view().numel(), 0);
  int32_t got[2];
  std::memcpy(got, f->find("v")->view().data, 8);
  EXPECT_EQ(got[0], 7);
  EXPECT_EQ(got[1], -7);
}

TEST(SafetensorsRead, ZeroSizeTensorsMayShareOffsets) {
  TempDir dir;
  const fs::path p = dir / "z.safetensors";
  // Several empty tensors at 0, 4 (the boundary) and 8 (the end), all valid.
  write_raw(p,
            R"({"e0":{"dtype":"F32","shape":[0],"data_offsets":[0,0]},)"
            R"("e0b":{"dtype":"I8","shape":[2,0],"data_offsets":[0,0]},)"
            R"("a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
            R"("e4":{"dtype":"BF16","shape":[0],"data_offsets":[4,4]},)"
            R"("b":{"dtype":"U8","shape":[2,2],"data_offsets":[4,8]},)"
            R"("e8":{"dtype":"BOOL","shape":[0],"data_offsets":[8,8]},)"
            R"("e8b":{"dtype":"F64","shape":[0,0,0,0],"data_offsets":[8,8]}})",
            8);
  auto f = SafetensorsFile::open(p);
  EXPECT_EQ(f->entries().size(), 7u);
}

TEST(SafetensorsRead, AllDtypesAndSpacePadding) {
  TempDir dir;
  const fs::path p = dir / "dt.safetensors";
  const std::vector<std::pair<std::string, DType>> kinds = {
      {"F64", DType::F64}, {"F32", DType::F32},   {"F16", DType::F16},   {"BF16", DType::BF16},
      {"I64", DType::I64}, {"I32", DType::I32},   {"I16", DType::I16},   {"I8", DType::I8},
      {"U8", DType::U8},   {"BOOL", DType::BOOL}, {"F8_E4M3", DType::F8_E4M3}, {"F8_E5M2", DType::F8_E5M2}};
  std::string header = "{";
  size_t off = 0;
  for (size_t i = 0; i < kinds.size(); ++i) {
    const size_t sz = size_t(dtype_block_bytes(kinds[i].second)) * 3;
    header += fmt::format(R"({}"t{}":{{"dtype":"{}","shape":[3],"data_offsets":[{},{}]}})", i ? "," : "", i,
                          kinds[i].first, off, off + sz);
    off += sz;
  }
  header += "}     ";  // trailing space padding is allowed
  write_raw(p, header, off);
  auto f = SafetensorsFile::open(p);
  for (size_t i = 0; i < kinds.size(); ++i) {
    const TensorEntry* e = f->find(fmt::format("t{}", i));
    ASSERT_NE(e, nullptr);
    EXPECT_EQ(e->dtype, kinds[i].second);
    EXPECT_EQ(safetensors_dtype_name(kinds[i].second), kinds[i].first);
  }
}

TEST(SafetensorsDtype, QuantizedHasNoName) {
  EXPECT_THROW(safetensors_dtype_name(DType::Q4_K), Error);
  EXPECT_THROW(safetensors_dtype_name(DType::Q8_0), Error);
}

TEST(SafetensorsWrite, RejectsQuantizedAndUnwritablePath) {
  TempDir dir;
  HostTensor q = HostTensor::empty(DType::Q8_0, {32});
  const std::vector<NamedTensor> ts = {{"q", q.view()}};
  try {
    write_safetensors(dir / "q.safetensors", ts);
    ADD_FAILURE() << "expected an error";
  } catch (const Error& e) {
    EXPECT_THAT(std::string(e.what()), AllOf(HasSubstr("'q'"), HasSubstr("q8_0")));
  }
  HostTensor a = HostTensor::zeros(DType::F32, {2});
  const std::vector<NamedTensor> ok = {{"a", a.view()}};
  const fs::path bad = dir / "no_such_dir" / "x.safetensors";
  try {
    write_safetensors(bad, ok);
    ADD_FAILURE() << "expected an error";
  } catch (const Error& e) {
    EXPECT_THAT(std::string(e.what()), HasSubstr(bad.string()));
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Bad files, one per failure mode

TEST(SafetensorsRead, NonexistentFile) {
  TempDir dir;
  expect_open_error(dir / "missing.safetensors", {"cannot open"});
}

TEST(SafetensorsRead, EmptyFileMapsButIsRejected) {
  TempDir dir;
  const fs::path p = dir / "empty.bin";
  write_bytes(p, "");
  auto m = MappedFile::open(p);
  EXPECT_EQ(m->size(), 0u);
  EXPECT_EQ(m->data(), nullptr);
  expect_open_error(p, {"file is 0 bytes", "shorter than the 8-byte header length"});
}

TEST(SafetensorsRead, TruncatedFile) {
  TempDir dir;
  const fs::path p = dir / "t.safetensors";
  write_bytes(p, std::string("\x08\0\0", 3));
  expect_open_error(p, {"file is 3 bytes", "shorter than the 8-byte header length"});
}

TEST(SafetensorsRead, HeaderLengthPastEnd) {
  TempDir dir;
  const fs::path p = dir / "t.safetensors";
  write_raw(p, "{}", 0, 100);
  expect_open_error(p, {"header length 100 runs past end of file", "size 10"});
}

TEST(SafetensorsRead, HeaderLengthOver100MB) {
  TempDir dir;
  const fs::path p = dir / "t.safetensors";
  write_raw(p, "{}", 0, 100'000'001);
  expect_open_error(p, {"header length 100000001 exceeds 100 MB limit"});
  write_raw(p, "{}", 0, ~uint64_t(0));
  expect_open_error(p, {"exceeds 100 MB limit"});
}

TEST(SafetensorsRead, HeaderNotJson) {
  TempDir dir;
  const fs::path p = dir / "t.safetensors";
  write_raw(p, "{not json", 0);
  expect_open_error(p, {"header", "not valid UTF-8 JSON"});
  write_raw(p, "{\"a\xff\":1}", 0);  // invalid UTF-8 in a key
  expect_open_error(p, {"header", "not valid UTF-8 JSON"});
}

TEST(SafetensorsRead, HeaderNotObject) {
  TempDir dir;
  const fs::path p = dir / "t.safetensors";
  write_raw(p, "[1]", 0);
  expect_open_error(p, {"header must be a JSON object", "array"});
}

TEST(SafetensorsRead, EntryNotObject) {
  TempDir dir;
  const fs::path p = dir / "t.safetensors";
  bad_entry(p, "5", 0);
  expect_open_error(p, {"tensor 'a'", "must be a JSON object"});
}

TEST(SafetensorsRead, UnknownDtype) {
  TempDir dir;
  const fs::path p = dir / "t.safetensors";
  bad_entry(p, R"({"dtype":"F128","shape":[1],"data_offsets":[0,16]})", 16);
  expect_open_error(p, {"tensor 'a'", "unknown dtype 'F128'"});
}

TEST(SafetensorsRead, NegativeShapeDim) {
  TempDir dir;
  const fs::path p = dir / "t.safetensors";
  bad_entry(p, R"({"dtype":"F32","shape":[2,-1],"data_offsets":[0,4]})", 4);
  expect_open_error(p, {"tensor 'a'", "shape[1] is -1", "non-negative"});
  bad_entry(p, R"({"dtype":"F32","shape":[1.5],"data_offsets":[0,4]})", 4);
  expect_open_error(p, {"tensor 'a'", "shape[0]", "non-negative integer"});
}

TEST(SafetensorsRead, RankAboveFour) {
  TempDir dir;
  const fs::path p = dir / "t.safetensors";
  bad_entry(p, R"({"dtype":"F32","shape":[1,1,1,1,1],"data_offsets":[0,4]})", 4);
  expect_open_error(p, {"tensor 'a'", "rank 5", "maximum of 4"});
}

TEST(SafetensorsRead, MissingAndUnknownKeys) {
  TempDir dir;
  const fs::path p = dir / "t.safetensors";
  bad_entry(p, R"({"dtype":"F32","shape":[1]})", 4);
  expect_open_error(p, {"tensor 'a'", "missing 'data_offsets'"});
  bad_entry(p, R"({"dtype":"F32","shape":[1],"data_offsets":[0,4],"extra":1})", 4);
  expect_open_error(p, {"tensor 'a'", "unknown key 'extra'"});
}

TEST(SafetensorsRead, DataOffsetsWrongLength) {
  TempDir dir;
  const fs::path p = dir / "t.safetensors";
  bad_entry(p, R"({"dtype":"F32","shape":[1],"data_offsets":[0,4,8]})", 4);
  expect_open_error(p, {"tensor 'a'", "data_offsets must be an array of 2 integers"});
  bad_entry(p, R"({"dtype":"F32","shape":[1],"data_offsets":[4]})", 4);
  expect_open_error(p, {"tensor 'a'", "data_offsets must be an array of 2 integers"});
}

TEST(SafetensorsRead, EndBeforeBegin) {
  TempDir dir;
  const fs::path p = dir / "t.safetensors";
  bad_entry(p, R"({"dtype":"F32","shape":[1],"data_offsets":[8,4]})", 8);
  expect_open_error(p, {"tensor 'a'", "[8, 4)", "end is before begin"});
}

TEST(SafetensorsRead, SizeMismatch) {
  TempDir dir;
  const fs::path p = dir / "t.safetensors";
  bad_entry(p, R"({"dtype":"F32","shape":[2,3],"data_offsets":[0,20]})", 20);
  expect_open_error(p, {"tensor 'a'", "needs 24 bytes", "cover 20 bytes"});
}

TEST(SafetensorsRead, ShapeProductOverflow) {
  TempDir dir;
  const fs::path p = dir / "t.safetensors";
  bad_entry(p, R"({"dtype":"U8","shape":[1099511627776,1099511627776],"data_offsets":[0,0]})", 0);
  expect_open_error(p, {"tensor 'a'", "overflows"});
}

TEST(SafetensorsRead, OverlappingRanges) {
  TempDir dir;
  const fs::path p = dir / "model.safetensors";
  write_raw(p,
            R"({"a.weight":{"dtype":"F32","shape":[3],"data_offsets":[0,12]},)"
            R"("b":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}})",
            16);
  expect_open_error(p, {"tensor 'b'", "[8, 16) overlap tensor 'a.weight' [0, 12)"});
}

TEST(SafetensorsRead, ZeroSizeInsideAnotherTensorIsOverlap) {
  TempDir dir;
  const fs::path p = dir / "t.safetensors";
  write_raw(p,
            R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
            R"("z":{"dtype":"F32","shape":[0],"data_offsets":[4,4]}})",
            8);
  expect_open_error(p, {"tensor 'z'", "overlap tensor 'a'"});
}

TEST(SafetensorsRead, GapBetweenRanges) {
  TempDir dir;
  const fs::path p = dir / "t.safetensors";
  write_raw(p,
            R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
            R"("b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}})",
            12);
  expect_open_error(p, {"tensor 'b'", "gap of 4 bytes after tensor 'a'"});
  write_raw(p, R"({"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", 8);
  expect_open_error(p, {"tensor 'b'", "gap of 4 unused bytes at the start"});
}

TEST(SafetensorsRead, TrailingBytes) {
  TempDir dir;
  const fs::path p = dir / "t.safetensors";
  write_raw(p, R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})", 7);
  expect_open_error(p, {"data section has 3 trailing bytes"});
  write_raw(p, "{}", 1);
  expect_open_error(p, {"data section has 1 trailing bytes"});
}

TEST(SafetensorsRead, TensorPastEndOfFile) {
  TempDir dir;
  const fs::path p = dir / "t.safetensors";
  write_raw(p, R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", 5);
  expect_open_error(p, {"tensor 'a'", "[0, 8) runs past end of file", "5 bytes"});
}

TEST(SafetensorsRead, MetadataMustBeStrings) {
  TempDir dir;
  const fs::path p = dir / "t.safetensors";
  write_raw(p, R"({"__metadata__":{"k":1}})", 0);
  expect_open_error(p, {"__metadata__", "'k'", "string"});
  write_raw(p, R"({"__metadata__":[]})", 0);
  expect_open_error(p, {"__metadata__", "object"});
}

TEST(SafetensorsRead, DuplicateTensorName) {
  TempDir dir;
  const fs::path p = dir / "t.safetensors";
  write_raw(p,
            R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
            R"("a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
            8);
  expect_open_error(p, {"duplicate key 'a'"});
}

// ---------------------------------------------------------------------------------------------------------------
// TensorStore

// A valid shard containing F32[1] tensors with the given names.
void write_shard(const fs::path& p, const std::vector<std::string>& names) {
  std::vector<HostTensor> hs;
  std::vector<NamedTensor> ts;
  for (size_t i = 0; i < names.size(); ++i) {
    hs.push_back(HostTensor::empty(DType::F32, {1}));
    hs.back().f32()[0] = float(i);
  }
  for (size_t i = 0; i < names.size(); ++i) ts.push_back({names[i], hs[i].view()});
  write_safetensors(p, ts);
}

void write_index(const fs::path& dir, const std::string& weight_map) {
  write_bytes(dir / "model.safetensors.index.json", R"({"metadata":{"total_size":8},"weight_map":)" + weight_map + "}");
}

TEST(SafetensorsStore, SingleFileAndFolder) {
  TempDir dir;
  write_shard(dir / "model.safetensors", {"x", "y"});
  for (const fs::path& p : {dir / "model.safetensors", dir.path()}) {
    TensorStore s = TensorStore::open(p);
    EXPECT_EQ(s.names(), (std::vector<std::string>{"x", "y"}));
    EXPECT_EQ(load_f32(s.get("y").view(), 0), 1.f);
    EXPECT_EQ(s.find("z"), nullptr);
    EXPECT_EQ(s.source(), p.string());
  }
}

TEST(SafetensorsStore, ShardedIndex) {
  TempDir dir;
  write_shard(dir / "model-00001-of-00002.safetensors", {"a", "b", "extra"});
  write_shard(dir / "model-00002-of-00002.safetensors", {"c"});
  write_shard(dir / "unrelated.safetensors", {"a"});  // not referenced by the index: ignored
  write_index(dir.path(), R"({"a":"model-00001-of-00002.safetensors","b":"./model-00001-of-00002.safetensors",)"
                          R"("c":"model-00002-of-00002.safetensors"})");
  TensorStore s = TensorStore::open(dir.path());
  EXPECT_EQ(s.names(), (std::vector<std::string>{"a", "b", "c", "extra"}));  // unlisted "extra" included
  EXPECT_EQ(load_f32(s.get("b").view(), 0), 1.f);
  EXPECT_EQ(load_f32(s.get("c").view(), 0), 0.f);
  // Moving the store keeps entries valid.
  TensorStore moved = std::move(s);
  EXPECT_EQ(load_f32(moved.get("extra").view(), 0), 2.f);
}

TEST(SafetensorsStore, ShardWithParentComponent) {
  TempDir dir;
  fs::create_directories(dir / "m");
  write_shard(dir / "evil.safetensors", {"a"});
  write_index(dir / "m", R"({"a":"../evil.safetensors"})");
  expect_store_error(dir / "m", {"'../evil.safetensors'", "'..'"});
  write_shard(dir / "m" / "ok.safetensors", {"a"});
  write_index(dir / "m", R"({"a":"sub/../ok.safetensors"})");
  expect_store_error(dir / "m", {"'..'"});
}

TEST(SafetensorsStore, AbsoluteShardPath) {
  TempDir dir;
  fs::create_directories(dir / "m");
  write_shard(dir / "m" / "s.safetensors", {"a"});
  const std::string abs = (dir / "m" / "s.safetensors").string();
  write_index(dir / "m", fmt::format(R"({{"a":"{}"}})", abs));
  expect_store_error(dir / "m", {"absolute path"});
}

TEST(SafetensorsStore, SymlinkShardOutsideFolder) {
  TempDir dir;
  fs::create_directories(dir / "m");
  write_shard(dir / "outside.safetensors", {"a"});
  fs::create_symlink(dir / "outside.safetensors", dir / "m" / "link.safetensors");
  write_index(dir / "m", R"({"a":"link.safetensors"})");
  expect_store_error(dir / "m", {"'link.safetensors'", "outside"});
}

TEST(SafetensorsStore, SymlinkShardInsideFolderAllowed) {
  TempDir dir;
  write_shard(dir / "real.safetensors", {"a"});
  fs::create_symlink("real.safetensors", dir / "link.safetensors");
  write_index(dir.path(), R"({"a":"link.safetensors"})");
  EXPECT_NO_THROW(TensorStore::open(dir.path()));
}

TEST(SafetensorsStore, IndexTensorMissingFromShard) {
  TempDir dir;
  write_shard(dir / "s1.safetensors", {"a"});
  write_shard(dir / "s2.safetensors", {"b"});
  write_index(dir.path(), R"({"a":"s1.safetensors","b":"s1.safetensors"})");
  expect_store_error(dir.path(), {"index lists tensor 'b' in shard 's1.safetensors' but the shard does not contain it"});
}

TEST(SafetensorsStore, TensorInTwoShards) {
  TempDir dir;
  write_shard(dir / "s1.safetensors", {"a", "dup"});
  write_shard(dir / "s2.safetensors", {"b", "dup"});
  write_index(dir.path(), R"({"a":"s1.safetensors","b":"s2.safetensors"})");
  expect_store_error(dir.path(), {"tensor 'dup' is in two shards", "s1.safetensors", "s2.safetensors"});
}

TEST(SafetensorsStore, MissingShardFile) {
  TempDir dir;
  write_index(dir.path(), R"({"a":"gone.safetensors"})");
  expect_store_error(dir.path(), {"gone.safetensors", "cannot open"});
}

TEST(SafetensorsStore, BadIndexJson) {
  TempDir dir;
  write_bytes(dir / "model.safetensors.index.json", "{\"weight_map\": [}");
  expect_store_error(dir.path(), {"model.safetensors.index.json", "not valid UTF-8 JSON"});
  write_bytes(dir / "model.safetensors.index.json", R"({"metadata":{}})");
  expect_store_error(dir.path(), {"model.safetensors.index.json", "weight_map"});
}

TEST(SafetensorsStore, DirectoryWithoutModelFiles) {
  TempDir dir;
  expect_store_error(dir.path(), {"no model.safetensors or model.safetensors.index.json in", dir.path().string()});
  expect_store_error(dir / "nope", {"no such file or directory", "nope"});
}

TEST(SafetensorsStore, GetMissingName) {
  TempDir dir;
  write_shard(dir / "model.safetensors", {"x"});
  TensorStore s = TensorStore::open(dir.path());
  try {
    s.get("model.embed");
    ADD_FAILURE() << "expected an error";
  } catch (const Error& e) {
    EXPECT_THAT(std::string(e.what()),
                HasSubstr(fmt::format("missing tensor 'model.embed' in {}", dir.path().string())));
  }
}

}  // namespace
}  // namespace tandem
