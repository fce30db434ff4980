#include "io/safetensors.h"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <limits>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <utility>

#include "core/file.h"
#include "core/json_limits.h"

namespace tandem {
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

constexpr uint64_t kMaxHeaderBytes = 100'000'000;

struct StDType {
  std::string_view name;
  DType type;
};
constexpr std::array<StDType, 12> kStDTypes{{
    {"F64", DType::F64},
    {"F32", DType::F32},
    {"F16", DType::F16},
    {"BF16", DType::BF16},
    {"I64", DType::I64},
    {"I32", DType::I32},
    {"I16", DType::I16},
    {"I8", DType::I8},
    {"U8", DType::U8},
    {"BOOL", DType::BOOL},
    {"F8_E4M3", DType::F8_E4M3},
    {"F8_E5M2", DType::F8_E5M2},
}};

std::optional<DType> st_dtype_from_name(std::string_view name) {
  for (const auto& d : kStDTypes)
    if (d.name == name) return d.type;
  return std::nullopt;
}

std::string errno_text(int err) { return std::system_category().message(err); }

// Header values and names are untrusted and may be megabytes long: messages show a bounded excerpt.
std::string brief_json(const json& v) { return excerpt(v.dump(), 80); }
std::string brief(std::string_view s) { return excerpt(s, 200); }

// One entry of the header, validated field by field; offsets are relative to the data section.
struct RawEntry {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  uint64_t begin;
  uint64_t end;
};

// A JSON value that must be a non-negative integer fitting in int64 (shape dims, offsets).
// `shown` is the tensor name as messages show it.
uint64_t nonneg_int(const json& v, const std::string& path, const std::string& shown, const std::string& field) {
  if (v.is_number_unsigned()) {
    const uint64_t u = v.get<uint64_t>();
    TD_CHECK(u <= uint64_t(std::numeric_limits<int64_t>::max()), "{}: tensor '{}': {} is {}, larger than 2^63-1", path,
             shown, field, u);
    return u;
  }
  if (v.is_number_integer())
    fail("{}: tensor '{}': {} is {}, must be non-negative", path, shown, field, v.get<int64_t>());
  fail("{}: tensor '{}': {} is {}, must be a non-negative integer", path, shown, field, brief_json(v));
}

RawEntry parse_entry(const std::string& path, const std::string& name, const json& v) {
  const std::string shown = brief(name);
  TD_CHECK(v.is_object(), "{}: tensor '{}': entry must be a JSON object, got {}", path, shown, v.type_name());
  for (const auto& [key, _] : v.items())
    TD_CHECK(key == "dtype" || key == "shape" || key == "data_offsets",
             "{}: tensor '{}': unknown key '{}' (allowed: dtype, shape, data_offsets)", path, shown, brief(key));
  for (const char* key : {"dtype", "shape", "data_offsets"})
    TD_CHECK(v.contains(key), "{}: tensor '{}': missing '{}'", path, shown, key);

  RawEntry e;
  e.name = name;
  const json& dt = v.at("dtype");
  TD_CHECK(dt.is_string(), "{}: tensor '{}': dtype must be a string, got {}", path, shown, brief_json(dt));
  const auto dtype = st_dtype_from_name(dt.get_ref<const std::string&>());
  TD_CHECK(dtype.has_value(), "{}: tensor '{}': unknown dtype '{}'", path, shown,
           brief(dt.get_ref<const std::string&>()));
  e.dtype = *dtype;

  const json& shape = v.at("shape");
  TD_CHECK(shape.is_array(), "{}: tensor '{}': shape must be an array, got {}", path, shown, brief_json(shape));
  TD_CHECK(shape.size() <= size_t(kMaxDims), "{}: tensor '{}': shape {} has rank {}, more than the maximum of {}", path,
           shown, brief_json(shape), shape.size(), kMaxDims);
  for (size_t i = 0; i < shape.size(); ++i)
    e.shape.push_back(int64_t(nonneg_int(shape[i], path, shown, fmt::format("shape[{}]", i))));

  const json& off = v.at("data_offsets");
  TD_CHECK(off.is_array() && off.size() == 2, "{}: tensor '{}': data_offsets must be an array of 2 integers, got {}",
           path, shown, brief_json(off));
  e.begin = nonneg_int(off[0], path, shown, "data_offsets[0]");
  e.end = nonneg_int(off[1], path, shown, "data_offsets[1]");
  TD_CHECK(e.begin <= e.end, "{}: tensor '{}': data_offsets [{}, {}) end is before begin", path, shown, e.begin, e.end);

  // product(shape) * element size must equal the byte range, overflow-checked.
  uint64_t bytes = uint64_t(dtype_block_bytes(e.dtype));
  for (int64_t d : e.shape)
    TD_CHECK(!__builtin_mul_overflow(bytes, uint64_t(d), &bytes),
             "{}: tensor '{}': shape {} x {} bytes overflows 64 bits", path, shown, brief_json(shape),
             dtype_block_bytes(e.dtype));
  TD_CHECK(bytes == e.end - e.begin,
           "{}: tensor '{}': dtype {} shape {} needs {} bytes but data_offsets [{}, {}) cover {} bytes", path, shown,
           dt.get_ref<const std::string&>(), brief_json(shape), bytes, e.begin, e.end, e.end - e.begin);
  return e;
}

// Builds the DOM from nlohmann's SAX events and rejects duplicate keys as each key arrives (the object being
// filled is a std::map, so the check is one lookup). Replaces json::parse with a callback, whose DOM builder
// rescans the whole parent object for a discarded member after every nested object ends: O(n^2) for a header
// of n tensor entries (50k entries took minutes). nlohmann's SAX driver is iterative, so depth costs no stack.
class StrictDomBuilder final : public nlohmann::json_sax<json> {
 public:
  explicit StrictDomBuilder(json& root) : root_(root) {}

  bool null() override { return add(nullptr); }
  bool boolean(bool v) override { return add(v); }
  bool number_integer(number_integer_t v) override { return add(v); }
  bool number_unsigned(number_unsigned_t v) override { return add(v); }
  bool number_float(number_float_t v, const string_t& /*text*/) override { return add(v); }
  bool string(string_t& v) override { return add(std::move(v)); }
  bool binary(binary_t& v) override { return add(json::binary(std::move(v))); }
  bool start_object(std::size_t /*n*/) override { return open(json::value_t::object); }
  bool start_array(std::size_t /*n*/) override { return open(json::value_t::array); }
  bool end_object() override { return close(); }
  bool end_array() override { return close(); }
  bool key(string_t& k) override {
    auto& obj = *stack_.back()->get_ptr<json::object_t*>();
    auto [it, added] = obj.emplace(k, nullptr);
    if (!added) {
      duplicate_ = k;
      return false;  // stops the parse; sax_parse returns false
    }
    slot_ = &it->second;
    return true;
  }
  bool parse_error(std::size_t /*pos*/, const std::string& /*token*/, const nlohmann::detail::exception& ex) override {
    error_ = ex.what();
    return false;
  }

  const std::optional<std::string>& duplicate() const { return duplicate_; }
  const std::string& error() const { return error_; }

 private:
  // Places a value where the grammar says it goes: the root, the end of the open array, or the slot of the
  // open object's last key. Returns the placed value.
  template <class V>
  json* place(V&& v) {
    if (stack_.empty()) {
      root_ = json(std::forward<V>(v));
      return &root_;
    }
    json& top = *stack_.back();
    if (top.is_array()) {
      auto& arr = *top.get_ptr<json::array_t*>();
      arr.emplace_back(std::forward<V>(v));
      return &arr.back();  // only the innermost open containers are held, so growth cannot dangle them
    }
    *slot_ = json(std::forward<V>(v));
    return slot_;
  }
  template <class V>
  bool add(V&& v) {
    place(std::forward<V>(v));
    return true;
  }
  bool open(json::value_t t) {
    stack_.push_back(place(t));
    return true;
  }
  bool close() {
    stack_.pop_back();
    return true;
  }

  json& root_;
  std::vector<json*> stack_;
  json* slot_ = nullptr;
  std::optional<std::string> duplicate_;
  std::string error_;
};

// Parses JSON, rejecting duplicate keys within any object and nesting deeper than kMaxJsonDepth.
json parse_json_strict(const char* begin, const char* end, const std::string& path, std::string_view what) {
  check_json_depth(std::string_view(begin, size_t(end - begin)), fmt::format("{}: {}", path, what));
  json out;
  StrictDomBuilder builder(out);
  bool ok = false;
  try {
    ok = json::sax_parse(begin, end, &builder, nlohmann::detail::input_format_t::json, /*strict=*/true);
  } catch (const json::exception& ex) {  // e.g. invalid UTF-8 found while building a value
    fail("{}: {} is not valid UTF-8 JSON: {}", path, what, excerpt(ex.what(), 300));
  }
  if (builder.duplicate()) fail("{}: {} has duplicate key '{}'", path, what, excerpt(*builder.duplicate(), 200));
  if (!ok) fail("{}: {} is not valid UTF-8 JSON: {}", path, what, excerpt(builder.error(), 300));
  return out;
}

// Folder containment: `p` (already weakly canonical) lies inside `dir` (canonical).
bool inside(const fs::path& p, const fs::path& dir) {
  auto pi = p.begin();
  for (auto di = dir.begin(); di != dir.end(); ++di, ++pi) {
    if (di->empty()) continue;  // trailing separator
    if (pi == p.end() || *pi != *di) return false;
  }
  return true;
}

// Where the shards of the model folder `dir` (canonical) may lie once their symlinks are resolved.
// Shard *names* come from the index, which travels with the download and is untrusted, so they must stay in
// the folder lexically (no absolute path, no '..'; checked in open_shard). Symlinks are the user's filesystem
// speaking, but a model folder unpacked from an archive can carry symlinks too, so a resolved shard must
// still lie inside the folder -- except in a Hugging Face hub cache, where `<repo>/snapshots/<rev>/` holds
// only symlinks to `../../blobs/<hash>` (how huggingface_hub stores every download): there the whole cache
// repository `<repo>` (the parent of snapshots/ and blobs/) is the boundary.
fs::path shard_root(const fs::path& dir) {
  const fs::path snapshots = dir.parent_path();
  const fs::path repo = snapshots.parent_path();
  std::error_code ec;
  if (snapshots.filename() == "snapshots" && fs::is_directory(repo / "blobs", ec)) return repo;
  return dir;
}

// The index in `files` of the shard that weight_map['shown'] names `shard`, opened on first use. `path` is the
// folder as given, `dir` its canonical form, `root` what shard_root allows.
size_t open_shard(std::vector<std::unique_ptr<SafetensorsFile>>& files, const fs::path& path, const fs::path& dir,
                  const fs::path& root, const std::string& ipath, const std::string& shown, const std::string& shard,
                  std::map<std::string, size_t>& shard_of_path) {
  const fs::path sp(shard);
  const std::string name = brief(shard);
  TD_CHECK(!shard.empty(), "{}: weight_map['{}'] has an empty shard name", ipath, shown);
  TD_CHECK(!sp.is_absolute() && !sp.has_root_path(),
           "{}: weight_map['{}'] shard '{}' is an absolute path; shards must be inside {}", ipath, shown, name,
           path.string());
  for (const auto& part : sp)
    TD_CHECK(part != "..", "{}: weight_map['{}'] shard '{}' has a '..' component; shards must be inside {}", ipath,
             shown, name, path.string());
  std::error_code ec;
  const fs::path resolved = fs::weakly_canonical(dir / sp, ec);
  TD_CHECK(!ec, "{}: weight_map['{}'] shard '{}' cannot be resolved: {}", ipath, shown, name, ec.message());
  TD_CHECK(inside(resolved, root), "{}: weight_map['{}'] shard '{}' resolves to {}, outside {}", ipath, shown, name,
           resolved.string(), root.string());
  auto [it, added] = shard_of_path.emplace(resolved.string(), files.size());
  if (added) files.push_back(SafetensorsFile::open(path / sp));
  return it->second;
}

}  // namespace

// ---------------------------------------------------------------------------------------------------------------
// MappedFile

std::shared_ptr<MappedFile> MappedFile::open(const fs::path& path) {
  std::shared_ptr<MappedFile> m(new MappedFile());
  m->path_ = path.string();
  const auto [fd, size] = open_regular_file(path);  // never blocks on a FIFO; rejects devices and folders
  m->size_ = size_t(size);
  if (m->size_ > 0) {
    void* p = ::mmap(nullptr, m->size_, PROT_READ, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) {
      const int err = errno;
      ::close(fd);
      m->size_ = 0;
      fail("{}: cannot mmap {} bytes: {}", m->path_, size, errno_text(err));
    }
    m->data_ = static_cast<const std::byte*>(p);
  }
  ::close(fd);
  return m;
}

MappedFile::~MappedFile() {
  if (data_ != nullptr) ::munmap(const_cast<std::byte*>(data_), size_);
}

// ---------------------------------------------------------------------------------------------------------------
// TensorEntry / SafetensorsFile

Tensor TensorEntry::view() const {
  TD_CHECK(file != nullptr, "tensor '{}': no backing file", name);
  return Tensor::contiguous(const_cast<std::byte*>(file->data() + offset), dtype, shape);
}

std::unique_ptr<SafetensorsFile> SafetensorsFile::open(const fs::path& fpath) {
  auto sf = std::unique_ptr<SafetensorsFile>(new SafetensorsFile());
  sf->file_ = MappedFile::open(fpath);
  const MappedFile& f = *sf->file_;
  const std::string& path = f.path();
  const uint64_t size = f.size();

  TD_CHECK(size >= 8, "{}: file is {} bytes, shorter than the 8-byte header length", path, size);
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | uint64_t(std::to_integer<uint8_t>(f.data()[i]));
  TD_CHECK(n <= kMaxHeaderBytes, "{}: header length {} exceeds 100 MB limit", path, n);
  TD_CHECK(n <= size - 8, "{}: header length {} runs past end of file (size {})", path, n, size);

  const char* hbegin = reinterpret_cast<const char*>(f.data() + 8);
  const json header = parse_json_strict(hbegin, hbegin + n, path, "header");
  TD_CHECK(header.is_object(), "{}: header must be a JSON object, got {}", path, header.type_name());

  const uint64_t data_start = 8 + n;
  const uint64_t data_size = size - data_start;
  std::vector<RawEntry> raw;
  for (const auto& [name, v] : header.items()) {
    if (name == "__metadata__") {
      TD_CHECK(v.is_object(), "{}: __metadata__ must be an object of strings, got {}", path, v.type_name());
      for (const auto& [k, mv] : v.items()) {
        TD_CHECK(mv.is_string(), "{}: __metadata__ key '{}' must map to a string, got {}", path, brief(k),
                 brief_json(mv));
        sf->metadata_.emplace(k, mv.get<std::string>());
      }
      continue;
    }
    raw.push_back(parse_entry(path, name, v));
  }

  for (const auto& e : raw)
    TD_CHECK(e.end <= data_size,
             "{}: tensor '{}': data_offsets [{}, {}) runs past end of file (data section is {} bytes)", path,
             brief(e.name), e.begin, e.end, data_size);

  // The ranges must tile [0, data_size) exactly. Sorting by (begin, end) puts zero-size tensors before a
  // non-empty one at the same offset, so they never look like overlaps.
  std::vector<const RawEntry*> order;
  order.reserve(raw.size());
  for (const auto& e : raw) order.push_back(&e);
  std::sort(order.begin(), order.end(), [](const RawEntry* a, const RawEntry* b) {
    return std::tie(a->begin, a->end, a->name) < std::tie(b->begin, b->end, b->name);
  });
  uint64_t cursor = 0;
  const RawEntry* prev = nullptr;  // the entry that ended at `cursor` (last non-empty one, if any)
  for (const RawEntry* e : order) {
    if (e->begin > cursor) {
      if (cursor == 0)
        fail("{}: tensor '{}': data_offsets [{}, {}) leave a gap of {} unused bytes at the start of the data section",
             path, brief(e->name), e->begin, e->end, e->begin);
      fail("{}: tensor '{}': data_offsets [{}, {}) leave a gap of {} bytes after tensor '{}' [{}, {})", path,
           brief(e->name), e->begin, e->end, e->begin - cursor, brief(prev->name), prev->begin, prev->end);
    }
    if (e->begin < cursor)
      fail("{}: tensor '{}': data_offsets [{}, {}) overlap tensor '{}' [{}, {})", path, brief(e->name), e->begin,
           e->end, brief(prev->name), prev->begin, prev->end);
    if (e->end > e->begin || prev == nullptr || prev->end == prev->begin) prev = e;
    cursor = e->end;
  }
  TD_CHECK(cursor == data_size, "{}: data section has {} trailing bytes after the last tensor (tensors end at {}, "
           "data section is {} bytes)", path, data_size - cursor, cursor, data_size);

  sf->entries_.reserve(raw.size());
  for (auto& e : raw) {
    TensorEntry t;
    t.name = std::move(e.name);
    t.dtype = e.dtype;
    t.shape = std::move(e.shape);
    t.offset = size_t(data_start + e.begin);
    t.nbytes = size_t(e.end - e.begin);
    t.file = sf->file_;
    sf->entries_.push_back(std::move(t));
  }
  std::sort(sf->entries_.begin(), sf->entries_.end(),
            [](const TensorEntry& a, const TensorEntry& b) { return a.name < b.name; });
  for (size_t i = 1; i < sf->entries_.size(); ++i)  // unreachable after the duplicate-key check; kept as a guard
    TD_CHECK(sf->entries_[i].name != sf->entries_[i - 1].name, "{}: tensor '{}' appears twice in the header", path,
             brief(sf->entries_[i].name));
  return sf;
}

const TensorEntry* SafetensorsFile::find(std::string_view name) const {
  auto it = std::lower_bound(entries_.begin(), entries_.end(), name,
                             [](const TensorEntry& e, std::string_view n) { return e.name < n; });
  return (it != entries_.end() && it->name == name) ? &*it : nullptr;
}

// ---------------------------------------------------------------------------------------------------------------
// TensorStore

TensorStore TensorStore::open(const fs::path& path) {
  TensorStore store;
  store.source_ = path.string();
  std::error_code ec;
  const auto st = fs::status(path, ec);
  if (fs::is_regular_file(st)) {
    store.files_.push_back(SafetensorsFile::open(path));
  } else if (fs::is_directory(st)) {
    const fs::path index_path = path / "model.safetensors.index.json";
    const fs::path single = path / "model.safetensors";
    if (fs::exists(index_path)) {
      const std::string ipath = index_path.string();
      const std::string text = read_file(index_path);
      const json index = parse_json_strict(text.data(), text.data() + text.size(), ipath, "index");
      TD_CHECK(index.is_object(), "{}: index must be a JSON object, got {}", ipath, index.type_name());
      TD_CHECK(index.contains("weight_map") && index.at("weight_map").is_object(),
               "{}: index needs a 'weight_map' object of tensor name -> shard file", ipath);

      const fs::path dir = fs::canonical(path, ec);
      TD_CHECK(!ec, "{}: cannot resolve folder: {}", path.string(), ec.message());
      const fs::path root = shard_root(dir);
      // Shards keyed by their resolved path, so "a.safetensors" and "./a.safetensors" open one file; each
      // distinct name is checked and resolved once (an index lists every tensor, shards are few).
      std::map<std::string, size_t> shard_of_path;
      std::map<std::string, size_t, std::less<>> shard_of_name;
      std::vector<std::pair<std::string, size_t>> listed;  // (tensor, file index) from weight_map
      std::vector<std::string> listed_shard;
      for (const auto& [tensor, v] : index.at("weight_map").items()) {
        const std::string shown = brief(tensor);
        TD_CHECK(v.is_string(), "{}: weight_map['{}'] must be a shard file name, got {}", ipath, shown, brief_json(v));
        const std::string& shard = v.get_ref<const std::string&>();
        auto known = shard_of_name.find(shard);
        if (known == shard_of_name.end()) {
          const size_t file = open_shard(store.files_, path, dir, root, ipath, shown, shard, shard_of_path);
          known = shard_of_name.emplace(shard, file).first;
        }
        listed.emplace_back(tensor, known->second);
        listed_shard.push_back(shard);
      }
      for (size_t i = 0; i < listed.size(); ++i)
        TD_CHECK(store.files_[listed[i].second]->find(listed[i].first) != nullptr,
                 "{}: index lists tensor '{}' in shard '{}' but the shard does not contain it", ipath,
                 brief(listed[i].first), brief(listed_shard[i]));
    } else if (fs::exists(single)) {
      store.files_.push_back(SafetensorsFile::open(single));
    } else {
      fail("no model.safetensors or model.safetensors.index.json in {}", path.string());
    }
  } else if (ec || !fs::exists(st)) {
    fail("{}: no such file or directory", path.string());
  } else {
    fail("{}: not a regular file or directory", path.string());
  }

  for (const auto& f : store.files_) {
    for (const auto& e : f->entries()) {
      auto [it, added] = store.index_.emplace(e.name, &e);
      TD_CHECK(added, "{}: tensor '{}' is in two shards: {} and {}", store.source_, brief(e.name),
               it->second->file->path(), f->path());
    }
  }
  return store;
}

const TensorEntry* TensorStore::find(std::string_view name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : it->second;
}

const TensorEntry& TensorStore::get(std::string_view name) const {
  const TensorEntry* e = find(name);
  if (e == nullptr) fail("missing tensor '{}' in {}", name, source_);
  return *e;
}

std::vector<std::string> TensorStore::names() const {
  std::vector<std::string> out;
  out.reserve(index_.size());
  for (const auto& [name, _] : index_) out.push_back(name);
  return out;
}

// ---------------------------------------------------------------------------------------------------------------
// dtype names and writer

std::string_view safetensors_dtype_name(DType t) {
  for (const auto& d : kStDTypes)
    if (d.type == t) return d.name;
  fail("dtype {} has no safetensors equivalent", dtype_name(t));
}

void write_safetensors(const fs::path& path, std::span<const NamedTensor> tensors,
                       const std::map<std::string, std::string>& metadata) {
  const std::string p = path.string();
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) {
    auto& md = header["__metadata__"] = nlohmann::ordered_json::object();
    for (const auto& [k, v] : metadata) md[k] = v;
  }
  std::set<std::string_view> seen;
  uint64_t offset = 0;
  for (const auto& nt : tensors) {
    const Tensor& t = nt.tensor;
    TD_CHECK(nt.name != "__metadata__", "{}: tensor name '__metadata__' is reserved", p);
    TD_CHECK(seen.insert(nt.name).second, "{}: tensor '{}' given twice", p, nt.name);
    TD_CHECK(t.device == Device::CPU, "{}: tensor '{}' must be on the CPU, got {}", p, nt.name, t.describe());
    TD_CHECK(t.is_contiguous(), "{}: tensor '{}' must be contiguous, got {}", p, nt.name, t.describe());
    TD_CHECK(t.ndim >= 0 && t.ndim <= kMaxDims, "{}: tensor '{}' has bad rank {}", p, nt.name, t.ndim);
    std::vector<int64_t> shape(t.shape.begin(), t.shape.begin() + t.ndim);
    for (int64_t d : shape) TD_CHECK(d >= 0, "{}: tensor '{}' has a negative dimension {}", p, nt.name, t.shape_str());
    const std::string_view dt = [&]() -> std::string_view {
      try {
        return safetensors_dtype_name(t.dtype);
      } catch (const Error& e) {
        fail("{}: tensor '{}': {}", p, nt.name, e.what());
      }
    }();
    const uint64_t bytes = uint64_t(t.nbytes());
    TD_CHECK(bytes == 0 || t.data != nullptr, "{}: tensor '{}' has no data", p, nt.name);
    header[nt.name] = {{"dtype", dt}, {"shape", shape}, {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
  }
  std::string text;
  try {
    text = header.dump();
  } catch (const nlohmann::json::exception& ex) {
    fail("{}: cannot encode header: {}", p, ex.what());
  }
  text.append((8 - text.size() % 8) % 8, ' ');
  std::array<char, 8> len{};
  for (int i = 0; i < 8; ++i) len[size_t(i)] = char((uint64_t(text.size()) >> (8 * i)) & 0xff);

  std::FILE* f = std::fopen(path.c_str(), "wb");
  if (f == nullptr) fail("{}: cannot open for writing: {}", p, errno_text(errno));
  bool ok = std::fwrite(len.data(), 1, len.size(), f) == len.size() &&
            std::fwrite(text.data(), 1, text.size(), f) == text.size();
  for (size_t i = 0; ok && i < tensors.size(); ++i) {
    const size_t bytes = size_t(tensors[i].tensor.nbytes());
    if (bytes) ok = std::fwrite(tensors[i].tensor.data, 1, bytes, f) == bytes;
  }
  const int err = ok ? 0 : errno;
  if (std::fclose(f) != 0 && ok) fail("{}: write failed: {}", p, errno_text(errno));
  if (!ok) fail("{}: write failed: {}", p, errno_text(err));
}

}  // namespace tandem
