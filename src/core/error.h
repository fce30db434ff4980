// Errors carry their context (file, tensor, field) in the message, built at the throw site.
#pragma once
#include <stdexcept>
#include <string>
#include <utility>

#ifndef __CUDACC__
#include <fmt/format.h>
#else
#include <sstream>
#include <vector>
#endif

namespace tandem {

class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

#ifndef __CUDACC__
template <typename... Args>
[[noreturn]] void fail(fmt::format_string<Args...> f, Args&&... args) {
  throw Error(fmt::format(f, std::forward<Args>(args)...));
}
#else
// nvcc's host pass cannot compile fmt 9 in C++20 mode, so CUDA files substitute "{}" fields at run time
// (format specs inside the braces are ignored).
namespace detail {
std::string substitute_fields(const char* format, const std::vector<std::string>& args);
template <typename T>
std::string to_text(const T& v) {
  std::ostringstream s;
  s << v;
  return s.str();
}
}  // namespace detail
template <typename... Args>
[[noreturn]] void fail(const char* f, const Args&... args) {
  throw Error(detail::substitute_fields(f, {detail::to_text(args)...}));
}
#endif

}  // namespace tandem

// TD_CHECK(cond, "fmt", args...): throws tandem::Error with the formatted message when cond is false.
#define TD_CHECK(cond, ...)                   \
  do {                                        \
    if (!(cond)) ::tandem::fail(__VA_ARGS__); \
  } while (0)
