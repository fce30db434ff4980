// Helpers shared by the libFuzzer targets: a per-process scratch folder for parsers that only open paths, and a
// splitter that carves one fuzz input into several fields.
#pragma once
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <string_view>
#include <vector>

namespace tandem::fuzz {

// A folder of this process's own, removed at exit: under $TANDEM_FUZZ_TMP, else /dev/shm (tmpfs: rewriting a file
// on ext4 costs milliseconds, which would cut the file targets to ~250 executions a second), else /tmp.
inline const std::filesystem::path& scratch_dir() {
  static const std::filesystem::path dir = [] {
    const char* env = std::getenv("TANDEM_FUZZ_TMP");
    std::string base = env && *env ? env : access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";
    std::string tmpl = base + "/tandem-fuzz-XXXXXX";
    if (!mkdtemp(tmpl.data())) {
      std::perror("mkdtemp");
      std::abort();
    }
    std::atexit([] {
      std::error_code ec;
      std::filesystem::remove_all(scratch_dir(), ec);
    });
    return std::filesystem::path(tmpl);
  }();
  return dir;
}

inline std::filesystem::path write_scratch(const std::string& name, std::string_view bytes) {
  std::filesystem::path p = scratch_dir() / name;
  std::ofstream f(p, std::ios::binary | std::ios::trunc);
  f.write(bytes.data(), std::streamsize(bytes.size()));
  f.close();
  if (!f) std::abort();
  return p;
}

// Splits the input at each occurrence of `sep` (a byte string unlikely in real text), at most `max_parts` parts;
// the last part keeps any further separators.
inline std::vector<std::string_view> split(std::string_view in, std::string_view sep, size_t max_parts) {
  std::vector<std::string_view> parts;
  while (parts.size() + 1 < max_parts) {
    size_t k = in.find(sep);
    if (k == std::string_view::npos) break;
    parts.push_back(in.substr(0, k));
    in.remove_prefix(k + sep.size());
  }
  parts.push_back(in);
  return parts;
}

}  // namespace tandem::fuzz
