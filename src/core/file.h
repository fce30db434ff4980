// Whole-file reads with errors that name the file and the OS reason.
#pragma once
#include <filesystem>
#include <string>

namespace tandem {

// The file's bytes. Throws tandem::Error "<path>: cannot open: <reason>" or "<path>: read failed: <reason>"
// (reason from errno, e.g. "No such file or directory", "Is a directory").
std::string read_file(const std::filesystem::path& p);

}  // namespace tandem
