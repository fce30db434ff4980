// Whole-file reads of untrusted side files (config.json, tokenizer.json, ...) with errors that name the file and
// the OS reason, and with the limits a hostile model folder needs: regular files only (a FIFO cannot block the
// open: it is opened non-blocking and rejected by fstat), and a size cap named in the error.
#pragma once
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>

#include "core/json_limits.h"  // side files are mostly JSON: check_json_depth before parsing them

namespace tandem {

// Side files larger than this are rejected (the largest real tokenizer.json files are ~20 MB).
inline constexpr size_t kMaxSideFileBytes = size_t(256) << 20;

// Opens `p` read-only and non-blocking (so that a FIFO cannot hang the open) and checks with fstat that it is
// a regular file. The caller owns (closes) `fd`. Throws "<path>: cannot open: <reason>" or
// "<path>: a FIFO is not a regular file" (a directory, a character device, ...).
struct RegularFile {
  int fd;
  uint64_t size;
};
RegularFile open_regular_file(const std::filesystem::path& p);

// The file's bytes. Throws tandem::Error as open_regular_file does,
// "<path>: N bytes is over the limit of M bytes" or "<path>: read failed: <reason>".
std::string read_file(const std::filesystem::path& p, size_t max_bytes = kMaxSideFileBytes);

// At most `max_chars` bytes of `text` for an error message, with "... (N bytes)" appended when cut, so that an
// unbounded input is never dumped into a message.
std::string excerpt(std::string_view text, size_t max_chars = 80);

}  // namespace tandem
