// Hostile model folders (issue 13): each finding is a test that the loader answers with a clear error, fast and
// in bounded memory, instead of a stack overflow, a hang or a multi-gigabyte read; plus what must keep working
// (a Hugging Face hub cache snapshot of symlinks) and --check-tensors (NaN/Inf weights named per tensor).
#include <fcntl.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <functional>
#include <future>
#include <nlohmann/json.hpp>

#include "cli_run.h"
#include "core/file.h"
#include "io/gguf.h"
#include "io/safetensors.h"
#include "io/tensor_check.h"
#include "model/model.h"
#include "runtime/model_bundle.h"

namespace tandem {
namespace {
namespace fs = std::filesystem;
using ::testing::AllOf;
using ::testing::HasSubstr;
using ::testing::Not;
using Clock = std::chrono::steady_clock;

fs::path fixture(const std::string& name) { return fs::path(TANDEM_FIXTURES) / name; }

class TempDir {
 public:
  TempDir() {
    static int counter = 0;
    const auto* info = testing::UnitTest::GetInstance()->current_test_info();
    path_ = fs::temp_directory_path() /
            fmt::format("tandem_hostile_{}_{}_{}", ::getpid(), counter++, info ? info->name() : "x");
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

// A private copy of the (sharded) llama fixture inside `parent`.
fs::path copy_llama(const fs::path& parent) {
  const fs::path dir = parent / "llama";
  fs::copy(fixture("llama"), dir, fs::copy_options::recursive);
  fs::remove(dir / "expected.safetensors");
  return dir;
}

void write_text(const fs::path& p, const std::string& text) {
  std::ofstream f(p, std::ios::binary | std::ios::trunc);
  f << text;
}

std::string deep_json(size_t depth) { return std::string(depth, '[') + std::string(depth, ']'); }

// CPU time of the calling thread, in seconds: what the parse costs, not what the other processes of a loaded
// machine take from it (the quadratic parse this guards against took minutes, so the margin is wide).
double thread_cpu_seconds() {
  timespec ts{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return double(ts.tv_sec) + 1e-9 * double(ts.tv_nsec);
}

// Peak resident memory of this process so far, in bytes.
int64_t peak_rss() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return int64_t(u.ru_maxrss) * 1024;
}

// Runs `fn`, which must throw tandem::Error; returns the message and checks that it came fast, without a
// large allocation, and that the message is short (no dump of the hostile input).
std::string fast_error(const std::function<void()>& fn, double max_seconds = 1.5) {
  const int64_t rss0 = peak_rss();
  const auto t0 = Clock::now();
  std::string msg = "<no error>";
  try {
    fn();
  } catch (const Error& e) {
    msg = e.what();
  }
  const double s = std::chrono::duration<double>(Clock::now() - t0).count();
  EXPECT_LT(s, max_seconds) << msg;
  EXPECT_LT(peak_rss() - rss0, int64_t(64) << 20) << msg;
  EXPECT_LT(msg.size(), 2000u) << msg.substr(0, 2000);
  return msg;
}

// Like fast_error for an operation that may block on a FIFO: it runs on another thread, and if it has not
// finished after `seconds` a writer opens the FIFO so that a regression fails the test instead of hanging it.
std::string error_without_hanging(const std::function<void()>& fn, const fs::path& fifo, double seconds = 2) {
  auto fut = std::async(std::launch::async, [&] {
    try {
      fn();
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("<no error>");
  });
  if (fut.wait_for(std::chrono::duration<double>(seconds)) != std::future_status::ready) {
    ADD_FAILURE() << "blocked on the FIFO " << fifo;
    const int fd = ::open(fifo.c_str(), O_WRONLY | O_NONBLOCK);  // releases a reader blocked in open()
    if (fd >= 0) ::close(fd);
  }
  return fut.get();
}

std::string load_error(const fs::path& p) {
  return fast_error([&] { load_reference_model(p); });
}

// ------------------------------------------------------------------------------------------------------------
// JSON nested 100k+ deep: a clear error naming the file, not a stack overflow, and no dump of the value.

TEST(HostileFiles, DeepJsonInConfig) {
  TempDir t;
  const fs::path dir = copy_llama(t.path());
  write_text(dir / "config.json", R"({"architectures": ["LlamaForCausalLM"], "x": )" + deep_json(300000) + "}");
  EXPECT_THAT(load_error(dir), AllOf(HasSubstr("config.json"), HasSubstr("nested deeper than 128 levels")));
}

TEST(HostileFiles, DeepJsonInSafetensorsHeader) {
  TempDir t;
  std::string header = R"({"__metadata__": )" + deep_json(500000) + "}";
  header.append((8 - header.size() % 8) % 8, ' ');
  std::string bytes(8, '\0');
  for (int i = 0; i < 8; ++i) bytes[size_t(i)] = char((uint64_t(header.size()) >> (8 * i)) & 0xff);
  write_text(t / "m.safetensors", bytes + header);
  const std::string msg = fast_error([&] { SafetensorsFile::open(t / "m.safetensors"); });
  EXPECT_THAT(msg, AllOf(HasSubstr("m.safetensors"), HasSubstr("header"), HasSubstr("nested deeper than 128")));
}

TEST(HostileFiles, DeepJsonInShardIndex) {
  TempDir t;
  const fs::path dir = copy_llama(t.path());
  auto index = nlohmann::json::parse(read_file(dir / "model.safetensors.index.json"));
  std::string text = index.dump();
  text.insert(text.size() - 1, R"(, "metadata2": )" + deep_json(200000));
  write_text(dir / "model.safetensors.index.json", text);
  EXPECT_THAT(load_error(dir),
              AllOf(HasSubstr("model.safetensors.index.json"), HasSubstr("nested deeper than 128 levels")));
}

TEST(HostileFiles, DeepJsonInTokenizerConfig) {
  TempDir t;
  const fs::path dir = copy_llama(t.path());
  write_text(dir / "tokenizer_config.json", R"({"chat_template": )" + deep_json(1000000) + "}");
  const std::string msg = fast_error([&] { open_model_bundle(dir); });
  EXPECT_THAT(msg, AllOf(HasSubstr("tokenizer_config.json"), HasSubstr("nested deeper than 128 levels")));
}

// A value of the wrong type in a header is shown as a bounded excerpt, not dumped whole.
TEST(HostileFiles, HugeHeaderValueIsNotDumped) {
  TempDir t;
  std::string header =
      R"({"w": {"dtype": "F32", "shape": ")" + std::string(2 << 20, 'x') + R"(", "data_offsets": [0, 4]}})";
  header.append((8 - header.size() % 8) % 8, ' ');
  std::string bytes(8, '\0');
  for (int i = 0; i < 8; ++i) bytes[size_t(i)] = char((uint64_t(header.size()) >> (8 * i)) & 0xff);
  write_text(t / "m.safetensors", bytes + header + std::string(4, '\0'));
  const std::string msg = fast_error([&] { SafetensorsFile::open(t / "m.safetensors"); });
  EXPECT_THAT(msg, AllOf(HasSubstr("tensor 'w': shape must be an array"), HasSubstr("bytes)")));
}

// ------------------------------------------------------------------------------------------------------------
// FIFOs and devices in place of model files: refused at once (opened non-blocking, then fstat), never read.

TEST(HostileFiles, FifoAsModelSafetensors) {
  TempDir t;
  const fs::path dir = copy_llama(t.path());
  for (const auto& e : fs::directory_iterator(dir))
    if (e.path().extension() == ".safetensors" || e.path().extension() == ".json") fs::remove(e.path());
  fs::copy(fixture("llama") / "config.json", dir / "config.json");
  ASSERT_EQ(::mkfifo((dir / "model.safetensors").c_str(), 0600), 0);
  const std::string msg = error_without_hanging([&] { load_reference_model(dir); }, dir / "model.safetensors");
  EXPECT_THAT(msg, AllOf(HasSubstr("model.safetensors"), HasSubstr("a FIFO is not a regular file")));
}

TEST(HostileFiles, FifoAsShard) {
  TempDir t;
  const fs::path dir = copy_llama(t.path());
  const fs::path shard = dir / "model-00003-of-00006.safetensors";
  fs::remove(shard);
  ASSERT_EQ(::mkfifo(shard.c_str(), 0600), 0);
  const std::string msg = error_without_hanging([&] { load_reference_model(dir); }, shard);
  EXPECT_THAT(msg, AllOf(HasSubstr("model-00003-of-00006.safetensors"), HasSubstr("a FIFO is not a regular file")));
}

TEST(HostileFiles, FifoAsConfigJson) {
  TempDir t;
  const fs::path dir = copy_llama(t.path());
  fs::remove(dir / "config.json");
  ASSERT_EQ(::mkfifo((dir / "config.json").c_str(), 0600), 0);
  const std::string msg = error_without_hanging([&] { load_reference_model(dir); }, dir / "config.json");
  EXPECT_THAT(msg, AllOf(HasSubstr("config.json"), HasSubstr("a FIFO is not a regular file")));
}

TEST(HostileFiles, SideFilesSymlinkedToDevZero) {
  TempDir t;
  const fs::path dir = copy_llama(t.path());
  fs::remove(dir / "config.json");
  fs::create_symlink("/dev/zero", dir / "config.json");
  EXPECT_THAT(load_error(dir), AllOf(HasSubstr("config.json"), HasSubstr("a character device is not a regular file")));

  fs::remove(dir / "config.json");
  fs::copy(fixture("llama") / "config.json", dir / "config.json");
  fs::create_symlink("/dev/zero", dir / "tokenizer_config.json");
  EXPECT_THAT(fast_error([&] { open_model_bundle(dir); }),
              AllOf(HasSubstr("tokenizer_config.json"), HasSubstr("a character device is not a regular file")));

  // (A shard symlinked out of the folder is refused before it is opened: "resolves to /dev/zero, outside".)
  for (const auto& e : fs::directory_iterator(dir))
    if (e.path().extension() == ".safetensors") fs::remove(e.path());
  fs::remove(dir / "model.safetensors.index.json");
  fs::create_symlink("/dev/zero", dir / "model.safetensors");
  EXPECT_THAT(load_error(dir), AllOf(HasSubstr("model.safetensors"), HasSubstr("a character device is not")));
}

// ------------------------------------------------------------------------------------------------------------
// A 50k-entry header (3 MB) parses in well under a second; duplicate keys are still rejected.

std::string header_with_entries(int n, bool duplicate_last) {
  std::string h = "{";
  for (int i = 0; i < n; ++i) {
    const int name = duplicate_last && i == n - 1 ? 0 : i;
    h += fmt::format(R"({}"model.layers.{}.some_long_tensor_name.weight": {{"dtype": "F32", "shape": [1], )"
                     R"("data_offsets": [{}, {}]}})",
                     i ? "," : "", name, 4 * i, 4 * i + 4);
  }
  h += "}";
  h.append((8 - h.size() % 8) % 8, ' ');
  return h;
}

void write_raw_safetensors(const fs::path& p, const std::string& header, size_t data_bytes) {
  std::string bytes(8, '\0');
  for (int i = 0; i < 8; ++i) bytes[size_t(i)] = char((uint64_t(header.size()) >> (8 * i)) & 0xff);
  write_text(p, bytes + header + std::string(data_bytes, '\0'));
}

TEST(HostileFiles, FiftyThousandEntryHeaderIsFast) {
  TempDir t;
  constexpr int kN = 50000;
  const std::string header = header_with_entries(kN, false);
  ASSERT_GT(header.size(), size_t(3) << 20);
  write_raw_safetensors(t / "big.safetensors", header, 4 * kN);
  const double t0 = thread_cpu_seconds();
  auto f = SafetensorsFile::open(t / "big.safetensors");
  const double s = thread_cpu_seconds() - t0;
  EXPECT_EQ(f->entries().size(), size_t(kN));
  EXPECT_LT(s, 1.0) << "50k-entry header took " << s << " s of CPU";

  write_raw_safetensors(t / "dup.safetensors", header_with_entries(kN, true), 4 * kN);
  EXPECT_THAT(fast_error([&] { SafetensorsFile::open(t / "dup.safetensors"); }),
              HasSubstr("header has duplicate key 'model.layers.0.some_long_tensor_name.weight'"));
}

TEST(HostileFiles, FiftyThousandEntryShardIndexIsFast) {
  TempDir t;
  constexpr int kN = 50000;
  write_raw_safetensors(t / "s.safetensors", header_with_entries(kN, false), 4 * kN);
  std::string index = R"({"weight_map": {)";
  for (int i = 0; i < kN; ++i)
    index += fmt::format(R"({}"model.layers.{}.some_long_tensor_name.weight": "s.safetensors")", i ? "," : "", i);
  write_text(t / "model.safetensors.index.json", index + "}}");
  const double t0 = thread_cpu_seconds();
  const TensorStore store = TensorStore::open(t.path());
  const double s = thread_cpu_seconds() - t0;
  EXPECT_EQ(store.names().size(), size_t(kN));
  EXPECT_LT(s, 1.5) << "50k-entry index took " << s << " s of CPU";
}

// ------------------------------------------------------------------------------------------------------------
// Hugging Face hub cache: snapshots/<rev>/* are symlinks to ../../blobs/<hash>.

// models--org--name/{blobs/<hash>, refs/main, snapshots/<rev>/<file> -> ../../blobs/<hash>} from the llama
// fixture; returns the snapshot folder.
fs::path make_hub_cache(const fs::path& parent) {
  const fs::path repo = parent / "hub" / "models--tandem--llama";
  const std::string rev = "0123456789abcdef0123456789abcdef01234567";
  fs::create_directories(repo / "blobs");
  fs::create_directories(repo / "refs");
  fs::create_directories(repo / "snapshots" / rev);
  write_text(repo / "refs" / "main", rev);
  int k = 0;
  for (const auto& e : fs::directory_iterator(fixture("llama"))) {
    const std::string name = e.path().filename().string();
    if (name == "expected.safetensors") continue;
    const std::string hash = fmt::format("{:064x}", 0xabc000 + k++);
    fs::copy_file(e.path(), repo / "blobs" / hash);
    fs::create_symlink(fs::path("../../blobs") / hash, repo / "snapshots" / rev / name);
  }
  return repo / "snapshots" / rev;
}

TEST(HubCache, SnapshotOfSymlinksToBlobsLoads) {
  TempDir t;
  const fs::path snap = make_hub_cache(t.path());
  const auto from_cache = load_reference_model(snap);
  const auto direct = load_reference_model(fixture("llama"));
  ASSERT_EQ(from_cache->weights.layers.size(), direct->weights.layers.size());
  const Tensor& a = from_cache->weights.layers[1].w_down;
  const Tensor& b = direct->weights.layers[1].w_down;
  ASSERT_EQ(a.numel(), b.numel());
  EXPECT_EQ(std::memcmp(a.data, b.data, size_t(a.numel()) * 4), 0);
}

TEST(HubCache, EscapesStillFail) {
  TempDir t;
  const fs::path snap = make_hub_cache(t.path());
  const fs::path index = snap / "model.safetensors.index.json";
  const auto original = nlohmann::json::parse(read_file(index));

  // A '..' in a shard name fails even when it would land in the cache repository's blobs.
  auto j = original;
  const std::string blob = fs::read_symlink(snap / "model-00001-of-00006.safetensors").filename().string();
  j["weight_map"]["model.embed_tokens.weight"] = "../../blobs/" + blob;
  fs::remove(index);
  write_text(index, j.dump());
  EXPECT_THAT(load_error(snap), AllOf(HasSubstr("model.safetensors.index.json"), HasSubstr("'..' component")));

  // A symlink that leaves the cache repository fails.
  write_text(t / "outside.safetensors", read_file(fixture("llama") / "model-00001-of-00006.safetensors"));
  fs::create_symlink(t / "outside.safetensors", snap / "elsewhere.safetensors");
  j = original;
  for (auto& [name, shard] : j["weight_map"].items())
    if (shard == "model-00001-of-00006.safetensors") shard = "elsewhere.safetensors";
  write_text(index, j.dump());
  EXPECT_THAT(load_error(snap), AllOf(HasSubstr("'elsewhere.safetensors'"), HasSubstr("outside")));
}

// ------------------------------------------------------------------------------------------------------------
// --check-tensors: NaN/Inf in float weights and in quantized blocks' f16 scales, named per tensor.

// Absolute file offset of element `index` of tensor `name` (f32) in safetensors file `p`.
size_t f32_offset(const fs::path& p, const std::string& name, size_t index) {
  const std::string bytes = read_file(p);
  uint64_t n = 0;
  std::memcpy(&n, bytes.data(), 8);
  const auto h = nlohmann::json::parse(bytes.substr(8, n));
  return 8 + n + h.at(name).at("data_offsets")[0].get<size_t>() + 4 * index;
}

void patch(const fs::path& p, size_t offset, const void* data, size_t n) {
  std::fstream f(p, std::ios::in | std::ios::out | std::ios::binary);
  f.seekp(std::streamoff(offset));
  f.write(static_cast<const char*>(data), std::streamsize(n));
}

void plant_f32(const fs::path& p, const std::string& name, size_t index, float v) {
  patch(p, f32_offset(p, name, index), &v, 4);
}

TEST(CheckTensors, CountsEveryFloatFormat) {
  const float f32[] = {1.f, NAN, INFINITY, -INFINITY, 0.f, NAN};
  const NonFiniteCount a = count_non_finite(Tensor::contiguous(const_cast<float*>(f32), DType::F32, {6}));
  EXPECT_EQ(a.nan, 2);
  EXPECT_EQ(a.inf, 2);
  EXPECT_EQ(a.first, 1);
  const uint16_t f16[] = {0x3c00, 0x3c00, 0xfc00, 0x7e01};  // 1, 1, -inf, nan
  const NonFiniteCount b = count_non_finite(Tensor::contiguous(const_cast<uint16_t*>(f16), DType::F16, {2, 2}));
  EXPECT_EQ(b.nan, 1);
  EXPECT_EQ(b.inf, 1);
  EXPECT_EQ(b.first, 2);
  const uint16_t bf16[] = {0x3f80, 0x7fc0, 0x3f80, 0x7f80};  // 1, nan, 1, inf
  const NonFiniteCount c = count_non_finite(Tensor::contiguous(const_cast<uint16_t*>(bf16), DType::BF16, {4}));
  EXPECT_EQ(c.nan, 1);
  EXPECT_EQ(c.inf, 1);
  EXPECT_EQ(c.first, 1);
  // Large enough to be split over several chunks: the first index is still the lowest one.
  std::vector<float> big(size_t(3) << 20, 0.5f);
  big[big.size() - 1] = NAN;
  big[(size_t(1) << 20) + 7] = INFINITY;
  const NonFiniteCount d = count_non_finite(Tensor::contiguous(big.data(), DType::F32, {int64_t(big.size())}));
  EXPECT_EQ(d.nan, 1);
  EXPECT_EQ(d.inf, 1);
  EXPECT_EQ(d.first, (int64_t(1) << 20) + 7);
}

TEST(CheckTensors, PlantedNanAndInfAreNamed) {
  TempDir t;
  const fs::path dir = copy_llama(t.path());
  plant_f32(dir / "model-00001-of-00006.safetensors", "model.layers.0.self_attn.q_proj.weight", 5, NAN);
  plant_f32(dir / "model-00001-of-00006.safetensors", "model.layers.0.self_attn.q_proj.weight", 9, NAN);
  plant_f32(dir / "model-00005-of-00006.safetensors", "model.norm.weight", 3, -INFINITY);
  const auto src = open_model_source(dir);
  const std::string msg = fast_error([&] { check_weights_finite(*src); });
  EXPECT_THAT(msg, AllOf(HasSubstr("2 weight tensors hold NaN or Inf values (--check-tensors)"),
                         HasSubstr("model.layers.0.self_attn.q_proj.weight (f32, in "),
                         HasSubstr("model-00001-of-00006.safetensors): 2 NaN, 0 Inf, first at element 5"),
                         HasSubstr("model.norm.weight (f32, in "), HasSubstr("0 NaN, 1 Inf, first at element 3")));
  EXPECT_NO_THROW(check_weights_finite(*open_model_source(fixture("llama"))));

  // Through the CLI: --check-tensors fails the load naming the tensor; without it the model loads.
  const std::string gen = "generate --device cpu --prompt-ids 1,2 -n 1 -m " + dir.string();
  RunResult r = run_tandem(gen + " --check-tensors");
  EXPECT_NE(r.exit_code, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("model.layers.0.self_attn.q_proj.weight (f32"));
  r = run_tandem(gen);
  EXPECT_THAT(r.output, Not(HasSubstr("--check-tensors")));
  // tandem info checks by default; --no-check-tensors skips it.
  r = run_tandem("info -m " + dir.string());
  EXPECT_NE(r.exit_code, 0) << r.output;
  EXPECT_THAT(r.output, AllOf(HasSubstr("architecture  llama"), HasSubstr("model.norm.weight (f32")));
  r = run_tandem("info --no-check-tensors -m " + dir.string());
  EXPECT_EQ(r.exit_code, 0) << r.output;
}

TEST(CheckTensors, QuantizedBlockScales) {
  TempDir t;
  const fs::path p = t / "dequant.gguf";
  fs::copy_file(fixture("gguf") / "dequant.gguf", p);
  size_t q8_offset = 0, q4k_offset = 0;
  {
    auto g = GgufFile::open(p);
    q8_offset = g->tensor("q8_0").file_offset;
    q4k_offset = g->tensor("q4_k").file_offset;
    ASSERT_GE(g->tensor("q8_0").nbytes, 2 * 34u);
  }
  const uint16_t nan16 = 0x7e00, inf16 = 0x7c00;
  patch(p, q8_offset + 34 + 0, &nan16, 2);  // block 1's d
  patch(p, q4k_offset + 2, &inf16, 2);      // block 0's dmin
  auto g = GgufFile::open(p);
  std::vector<CheckedTensor> views;
  for (const auto& ti : g->tensors())
    if (ti.supported()) views.push_back({ti.name, p.string(), ti.view()});
  const auto bad = check_tensors(views);
  ASSERT_EQ(bad.size(), 2u) << describe_findings(bad);
  const auto& q8 = bad[0].name == "q8_0" ? bad[0] : bad[1];
  const auto& q4k = bad[0].name == "q8_0" ? bad[1] : bad[0];
  EXPECT_EQ(q8.name, "q8_0");
  EXPECT_TRUE(q8.counts.in_scales);
  EXPECT_EQ(q8.counts.nan, 1);
  EXPECT_EQ(q8.counts.first, 32);
  EXPECT_EQ(q4k.name, "q4_k");
  EXPECT_EQ(q4k.counts.inf, 1);
  EXPECT_EQ(q4k.counts.first, 0);
  EXPECT_THAT(describe_findings(bad), AllOf(HasSubstr("q8_0 (q8_0, in "), HasSubstr("1 NaN block scale, 0 Inf"),
                                            HasSubstr("first in the block starting at element 32")));
}

// ------------------------------------------------------------------------------------------------------------
// tandem info rejects what generate rejects.

TEST(InfoCheck, WrongShapedTensorIsAnError) {
  TempDir t;
  const fs::path dir = copy_llama(t.path());
  auto cfg = nlohmann::json::parse(read_file(dir / "config.json"));
  cfg["intermediate_size"] = 128;  // the fixture's MLP weights are 160 wide
  write_text(dir / "config.json", cfg.dump());
  const RunResult r = run_tandem("info -m " + dir.string());
  EXPECT_NE(r.exit_code, 0) << r.output;
  EXPECT_THAT(r.output, AllOf(HasSubstr("intermediate  128"), HasSubstr("has shape [160, 64]"),
                              HasSubstr("but the config implies [128, 64]")));

  const RunResult good = run_tandem("info -m " + fixture("llama").string());
  EXPECT_EQ(good.exit_code, 0) << good.output;
  EXPECT_THAT(good.output, HasSubstr("no NaN/Inf"));
}

}  // namespace
}  // namespace tandem
