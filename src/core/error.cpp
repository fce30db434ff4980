#include <cstring>
#include <string>
#include <vector>

namespace tandem::detail {

// Used by the CUDA-side fail(): "{}" (or "{:spec}") fields are replaced by the arguments in order.
std::string substitute_fields(const char* format, const std::vector<std::string>& args) {
  std::string out;
  size_t next = 0;
  for (const char* p = format; *p; ++p) {
    if (p[0] == '{' && p[1] == '{') {
      out += '{';
      ++p;
    } else if (p[0] == '}' && p[1] == '}') {
      out += '}';
      ++p;
    } else if (*p == '{') {
      const char* close = std::strchr(p, '}');
      if (!close) {
        out += p;
        break;
      }
      out += next < args.size() ? args[next] : "{?}";
      ++next;
      p = close;
    } else {
      out += *p;
    }
  }
  return out;
}

}  // namespace tandem::detail
