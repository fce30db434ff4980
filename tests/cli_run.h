// Runs a shell command or the tandem binary and captures what it prints (stdout and stderr together).
#pragma once
#include <sys/wait.h>

#include <array>
#include <cstddef>
#include <cstdio>
#include <string>

namespace tandem {

struct RunResult {
  int exit_code;
  std::string output;
};

inline RunResult run_shell(const std::string& cmd) {
  FILE* p = popen(cmd.c_str(), "r");
  std::string out;
  std::array<char, 4096> buf;
  while (size_t n = fread(buf.data(), 1, buf.size(), p)) out.append(buf.data(), n);
  const int status = pclose(p);
  return {WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status), out};
}

// How many times `what` occurs in `text` (overlapping occurrences counted): for the tests that count table rows or
// report elements in what a command printed or wrote.
inline size_t occurrences(const std::string& text, const std::string& what) {
  size_t n = 0;
  for (size_t at = text.find(what); at != std::string::npos; at = text.find(what, at + 1)) ++n;
  return n;
}

// `tandem ARGS 2>&1`.
inline RunResult run_tandem(const std::string& args) { return run_shell(std::string(TANDEM_BINARY) + " " + args + " 2>&1"); }

}  // namespace tandem
