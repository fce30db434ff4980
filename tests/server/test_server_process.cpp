// tandem serve as a child process (checklist 19): SIGTERM and SIGINT go through the CLI's own signal handler,
// watcher thread and exit path (src/cli/cmd_serve.cpp), which the in-process shutdown tests (Server::shutdown)
// skip. Documented behaviour: on either signal the server refuses new requests (503, /health 503), lets the
// running ones finish for up to --drain-timeout seconds (what is left then ends with finish_reason "abort"), closes
// its listener (connections refused) and exits 0. The model is the tiny fixture (tests/fixtures/llama, 2 layers,
// vocabulary 320, no tokenizer: prompts are token ids, texts are empty) on the CPU, so a test takes a few seconds.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <httplib.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <future>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "server_fixture.h"

extern char** environ;

namespace tandem::server {
namespace {
using nlohmann::json;
using test_support::sse_events;
namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

// The CLI: TANDEM_BINARY when the build defines it, else $TANDEM_BINARY, else `tandem` beside this test binary
// (both are built into the build folder's root).
fs::path tandem_binary() {
#ifdef TANDEM_BINARY
  return TANDEM_BINARY;
#else
  if (const char* e = std::getenv("TANDEM_BINARY")) return e;
  std::error_code ec;
  return fs::read_symlink("/proc/self/exe", ec).parent_path() / "tandem";
#endif
}

fs::path fixture_model() { return fs::path(__FILE__).parent_path().parent_path() / "fixtures" / "llama"; }

// `tandem serve ARGS` with stdout and stderr on a pipe this side reads (the log); killed (SIGKILL) by the
// destructor if it is still running.
class ServeProcess {
 public:
  explicit ServeProcess(const std::vector<std::string>& args) {
    std::vector<std::string> argv = {tandem_binary().string(), "serve"};
    argv.insert(argv.end(), args.begin(), args.end());
    std::vector<char*> cargv;
    for (std::string& a : argv) cargv.push_back(a.data());
    cargv.push_back(nullptr);
    int fds[2];
    if (pipe2(fds, O_CLOEXEC) != 0) return;
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_adddup2(&fa, fds[1], 1);
    posix_spawn_file_actions_adddup2(&fa, fds[1], 2);
    if (posix_spawn(&pid_, cargv[0], &fa, nullptr, cargv.data(), environ) != 0) pid_ = -1;
    posix_spawn_file_actions_destroy(&fa);
    close(fds[1]);
    fd_ = fds[0];
    reader_ = std::thread([this] {  // until the child (and anything it started) closes its end
      char buf[4096];
      for (ssize_t n; (n = read(fd_, buf, sizeof buf)) != 0;) {
        if (n < 0) {
          if (errno == EINTR) continue;
          break;
        }
        std::lock_guard<std::mutex> lock(mu_);
        log_.append(buf, size_t(n));
      }
    });
  }
  ~ServeProcess() {
    if (pid_ > 0 && !status_) {
      kill(pid_, SIGKILL);
      int st = 0;
      waitpid(pid_, &st, 0);
    }
    if (reader_.joinable()) reader_.join();
    if (fd_ >= 0) close(fd_);
  }
  bool started() const { return pid_ > 0; }
  pid_t pid() const { return pid_; }
  std::string log() const {
    std::lock_guard<std::mutex> lock(mu_);
    return log_;
  }

  // The port of its "serving ... on http://HOST:PORT" line (it was given --port 0), once /health answers 200;
  // 0 when that does not happen within `seconds` or the process ends first.
  int wait_ready(double seconds) {
    const auto t0 = Clock::now();
    int port = 0;
    while (seconds_since(t0) < seconds && !exited()) {
      const std::string l = log();
      const size_t at = l.find(" on http://127.0.0.1:");
      if (port == 0 && at != std::string::npos && l.find('\n', at) != std::string::npos)
        port = std::atoi(l.c_str() + at + 21);
      if (port > 0) {
        httplib::Client c("127.0.0.1", port);
        c.set_connection_timeout(1, 0);
        if (auto r = c.Get("/health"); r && r->status == 200) return port;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return 0;
  }
  // Whether it has ended (reaped: status() tells how).
  bool exited() {
    if (status_) return true;
    int st = 0;
    if (pid_ > 0 && waitpid(pid_, &st, WNOHANG) == pid_) status_ = st;
    return status_.has_value();
  }
  // Waits up to `seconds` for it to end; its wait status, or nullopt if it still runs.
  std::optional<int> wait_exit(double seconds) {
    const auto t0 = Clock::now();
    while (!exited() && seconds_since(t0) < seconds) std::this_thread::sleep_for(std::chrono::milliseconds(10));
    return status_;
  }

 private:
  pid_t pid_ = -1;
  int fd_ = -1;
  std::thread reader_;
  mutable std::mutex mu_;
  std::string log_;
  std::optional<int> status_;
};

httplib::Client client(int port, int read_timeout_s = 60) {
  httplib::Client c("127.0.0.1", port);
  c.set_connection_timeout(2, 0);
  c.set_read_timeout(read_timeout_s, 0);
  return c;
}

// A metric's value from /metrics (-1 when absent or unreachable).
double metric(int port, const std::string& name) {
  auto r = client(port, 5).Get("/metrics");
  if (!r || r->status != 200) return -1;
  const size_t at = r->body.find("\n" + name + " ");
  return at == std::string::npos ? -1 : std::atof(r->body.c_str() + at + name.size() + 2);
}

// A streamed greedy completion of max_tokens tokens from token ids (end of text banned, so only max_tokens or the
// drain ends it), with the usage chunk.
json long_stream(int max_tokens) {
  return {{"prompt", {1, 5, 7}},
          {"max_tokens", max_tokens},
          {"temperature", 0},
          {"stream", true},
          {"stream_options", {{"include_usage", true}}},
          {"logit_bias", {{"2", -100}}}};
}

struct StreamEnd {
  bool done = false;          // data: [DONE] came last
  std::string finish_reason;  // of the last choice chunk
  int64_t completion_tokens = -1;
  std::string error;  // an error chunk's message
};
StreamEnd parse_stream(const std::string& body) {
  StreamEnd e;
  for (const json& ev : sse_events(body, &e.done)) {
    if (ev.contains("error")) e.error = ev["error"].value("message", "?");
    if (ev.contains("choices") && !ev["choices"].empty() && ev["choices"][0]["finish_reason"].is_string())
      e.finish_reason = ev["choices"][0]["finish_reason"];
    if (ev.contains("usage") && ev["usage"].is_object()) e.completion_tokens = ev["usage"]["completion_tokens"];
  }
  return e;
}

// Starts `tandem serve` on the fixture, a long streamed request on it, and signals the process once that request
// is generating. Then: /health turns 503, a new request gets 503 ("shutting down") while the drain runs (or, when
// `refusal_may_miss`, finds the listener already closed), the streamed request ends with [DONE] as `expect_finish`
// says, the process exits 0 within 30 s, and its port refuses connections.
void signal_while_streaming(int sig, const std::string& drain_timeout, int max_tokens, const std::string& expect_finish,
                            bool refusal_may_miss) {
  if (!fs::exists(tandem_binary())) GTEST_SKIP() << "no tandem binary at " << tandem_binary();
  if (!fs::exists(fixture_model() / "config.json")) GTEST_SKIP() << "no fixture model at " << fixture_model();
  ServeProcess p({"-m", fixture_model().string(), "--device", "cpu", "--port", "0", "--threads", "1", "--drain-timeout",
                  drain_timeout});
  ASSERT_TRUE(p.started()) << "cannot start " << tandem_binary();
  const int port = p.wait_ready(30);
  ASSERT_GT(port, 0) << "tandem serve did not come up; it printed:\n" << p.log();

  auto streamed = std::async(std::launch::async, [&] {
    return client(port).Post("/v1/completions", long_stream(max_tokens).dump(), "application/json");
  });
  const auto t_wait = Clock::now();
  while (seconds_since(t_wait) < 20 &&
         !(metric(port, "tandem_num_requests_running") == 1 && metric(port, "tandem_generation_tokens_total") >= 10))
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  ASSERT_EQ(metric(port, "tandem_num_requests_running"), 1) << "the streamed request never ran; log:\n" << p.log();

  const auto t0 = Clock::now();
  ASSERT_EQ(kill(p.pid(), sig), 0);
  // Draining: /health says 503 once the server closes (its watcher polls the signal every 50 ms).
  int health = 200;
  while (seconds_since(t0) < 10) {
    auto h = client(port, 5).Get("/health");
    health = h ? h->status : -1;
    if (health != 200) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  if (!refusal_may_miss) {
    EXPECT_EQ(health, 503) << "log:\n" << p.log();
  }
  auto refused =
      client(port, 5).Post("/v1/completions", json({{"prompt", {1, 2}}, {"max_tokens", 2}}).dump(), "application/json");
  if (refused) {
    EXPECT_EQ(refused->status, 503) << refused->body;
    EXPECT_NE(refused->body.find("shutting down"), std::string::npos) << refused->body;
  } else {
    EXPECT_TRUE(refusal_may_miss) << "a new request during the drain found no listener; it should get 503";
  }

  auto r = streamed.get();
  ASSERT_TRUE(r) << "the streamed request got no answer: " << httplib::to_string(r.error()) << "; log:\n" << p.log();
  EXPECT_EQ(r->status, 200);
  const StreamEnd e = parse_stream(r->body);
  EXPECT_TRUE(e.done) << "no final [DONE]: " << r->body.substr(r->body.size() > 2000 ? r->body.size() - 2000 : 0);
  EXPECT_EQ(e.error, "");
  EXPECT_EQ(e.finish_reason, expect_finish);
  if (expect_finish == "length") {
    EXPECT_EQ(e.completion_tokens, max_tokens);
  } else {
    EXPECT_GT(e.completion_tokens, 0);
    EXPECT_LT(e.completion_tokens, max_tokens);
  }

  const std::optional<int> status = p.wait_exit(30);
  ASSERT_TRUE(status.has_value()) << "still running 30 s after the signal (a hang); log:\n" << p.log();
  EXPECT_TRUE(WIFEXITED(*status) && WEXITSTATUS(*status) == 0)
      << (WIFEXITED(*status) ? "exit status " + std::to_string(WEXITSTATUS(*status))
                             : "killed by signal " + std::to_string(WTERMSIG(*status)))
      << "; log:\n"
      << p.log();
  EXPECT_LT(seconds_since(t0), 30.0);
  // Closed: a new connection is refused.
  auto after = client(port, 2).Get("/health");
  EXPECT_FALSE(after) << "port " << port << " still answers " << after->status << " after the process exited";
  if (!after) {
    EXPECT_EQ(after.error(), httplib::Error::Connection) << httplib::to_string(after.error());
  }
  const std::string log = p.log();
  EXPECT_NE(log.find("signal " + std::to_string(sig) + ": draining"), std::string::npos) << log;
  EXPECT_NE(log.find("stopped"), std::string::npos) << log;
}

// SIGTERM with the drain long enough: the running request gets all its tokens (finish_reason "length"). 6000
// tokens take the fixture 1.5 s on one idle core (attention grows with the context): time enough to see the 503s.
TEST(ServerProcess, SigtermDrainsTheRunningStreamThenExitsZero) {
  signal_while_streaming(SIGTERM, "60", 6000, "length", false);
}

// SIGINT (Ctrl-C) is the same handler; with a drain of 0.3 s a request of 100000 tokens cannot finish, so it ends
// with what it has and finish_reason "abort" (then [DONE]), and the process still exits 0.
TEST(ServerProcess, SigintWithAShortDrainAbortsTheRunningStreamThenExitsZero) {
  signal_while_streaming(SIGINT, "0.3", 100000, "abort", true);
}

}  // namespace
}  // namespace tandem::server
