// Errors carry their context (file, tensor, field) in the message, built at the throw site.
#pragma once
#include <fmt/format.h>

#include <stdexcept>
#include <string>

namespace tandem {

class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

template <typename... Args>
[[noreturn]] void fail(fmt::format_string<Args...> f, Args&&... args) {
  throw Error(fmt::format(f, std::forward<Args>(args)...));
}

}  // namespace tandem

// TD_CHECK(cond, "fmt", args...): throws tandem::Error with the formatted message when cond is false.
#define TD_CHECK(cond, ...)                \
  do {                                     \
    if (!(cond)) ::tandem::fail(__VA_ARGS__); \
  } while (0)
