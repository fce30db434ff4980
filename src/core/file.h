// Whole-file reads of untrusted side files (config.json, tokenizer.json, ...) with errors that name the file and
// the OS reason, and with the limits a hostile model folder needs: regular files only (a FIFO cannot block the
// open: it is opened non-blocking and rejected by fstat), and a size cap named in the error.
#pragma once
#include <cstddef>
#include <filesystem>
#include <string>
#include <string_view>

namespace tandem {

// Side files larger than this are rejected (the largest real tokenizer.json files are ~20 MB).
inline constexpr size_t kMaxSideFileBytes = size_t(256) << 20;

// The file's bytes. Throws tandem::Error "<path>: cannot open: <reason>", "<path>: not a regular file (...)",
// "<path>: N bytes is over the limit of M bytes" or "<path>: read failed: <reason>".
std::string read_file(const std::filesystem::path& p, size_t max_bytes = kMaxSideFileBytes);

// At most `max_chars` bytes of `text` for an error message, with "... (N bytes)" appended when cut, so that an
// unbounded input is never dumped into a message.
std::string excerpt(std::string_view text, size_t max_chars = 80);

}  // namespace tandem
