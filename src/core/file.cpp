#include "core/file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <system_error>

#include "core/error.h"

namespace tandem {

namespace {

std::string errno_text(int err) { return std::system_category().message(err); }  // strerror, thread-safe

const char* file_kind(mode_t mode) {
  if (S_ISDIR(mode)) return "a directory";
  if (S_ISFIFO(mode)) return "a FIFO";
  if (S_ISCHR(mode)) return "a character device";
  if (S_ISBLK(mode)) return "a block device";
  if (S_ISSOCK(mode)) return "a socket";
  return "a special file";
}

struct Fd {
  int fd;
  ~Fd() { ::close(fd); }
};

}  // namespace

RegularFile open_regular_file(const std::filesystem::path& p) {
  const std::string name = p.string();
  // O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer forever. It changes nothing for
  // reads or mmap of a regular file.
  const int fd = ::open(name.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) fail("{}: cannot open: {}", name, errno_text(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    fail("{}: cannot stat: {}", name, errno_text(err));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    fail("{}: {} is not a regular file", name, file_kind(st.st_mode));
  }
  return {fd, uint64_t(st.st_size)};
}

std::string read_file(const std::filesystem::path& p, size_t max_bytes) {
  const std::string name = p.string();
  const RegularFile f = open_regular_file(p);
  Fd fd{f.fd};
  if (f.size > max_bytes) fail("{}: {} bytes is over the limit of {} bytes for this file", name, f.size, max_bytes);
  std::string out;
  out.reserve(size_t(f.size));
  char buf[1 << 16];
  for (;;) {
    const ssize_t n = ::read(fd.fd, buf, sizeof buf);
    if (n > 0) {
      out.append(buf, size_t(n));
      // The file may grow while it is read; the cap holds regardless.
      if (out.size() > max_bytes) fail("{}: over the limit of {} bytes for this file", name, max_bytes);
    } else if (n == 0) {
      break;
    } else if (errno != EINTR) {
      fail("{}: read failed: {}", name, errno_text(errno));
    }
  }
  return out;
}

std::string excerpt(std::string_view text, size_t max_chars) {
  if (text.size() <= max_chars) return std::string(text);
  return std::string(text.substr(0, max_chars)) + "... (" + std::to_string(text.size()) + " bytes)";
}

}  // namespace tandem
