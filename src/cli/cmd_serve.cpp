// tandem serve: the OpenAI-compatible HTTP server (src/server) over one model and path.
#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <thread>

#include "cli/common.h"
#ifdef TANDEM_HAVE_SERVER
#include "server/server.h"
#endif

namespace tandem::cli {
#ifdef TANDEM_HAVE_SERVER
namespace {

struct ServeArgs {
  ModelOptions model;
  server::ServerOptions server;
  double drain_timeout = 30;
};

std::atomic<int> g_signal{0};
extern "C" void on_signal(int sig) { g_signal.store(sig); }

int run(ServeArgs& a) {
  Loaded l = load(a.model);
  if (a.server.served_model_name.empty()) a.server.served_model_name = model_path(a.model).filename().string();
  server::Server srv(l.bundle, *l.runner, a.server);
  srv.bind();
  // Handlers first: a supervisor that signals as soon as it reads "serving" gets the drain, not the default action.
  std::signal(SIGPIPE, SIG_IGN);
  std::signal(SIGINT, on_signal);
  std::signal(SIGTERM, on_signal);
  std::fprintf(stderr, "serving %s on http://%s:%d (path %s; max %d sequences, %lld tokens a step, context %lld)\n",
               a.server.served_model_name.c_str(), a.server.host.c_str(), srv.port(),
               std::string(l.runner->path_name()).c_str(), a.server.engine.max_num_seqs,
               (long long)a.server.engine.max_num_batched_tokens, (long long)srv.engine().max_model_len());
  // SIGTERM / Ctrl-C: refuse new requests (503), let running ones finish (--drain-timeout), then exit 0.
  std::thread watcher([&] {
    while (g_signal.load() == 0) std::this_thread::sleep_for(std::chrono::milliseconds(50));
    std::fprintf(stderr, "signal %d: draining (up to %.0f s), then exiting\n", g_signal.load(), a.drain_timeout);
    srv.shutdown(a.drain_timeout);
  });
  srv.serve();
  if (g_signal.load() == 0) g_signal.store(-1);  // the listener failed: let the watcher finish
  watcher.join();
  std::fprintf(stderr, "stopped\n");
  return 0;
}

}  // namespace

void register_serve(CLI::App& app) {
  auto a = std::make_shared<ServeArgs>();
  CLI::App* cmd = app.add_subcommand("serve", "OpenAI-compatible HTTP server (/v1/completions, /v1/chat/completions, "
                                              "/v1/models, /health, /metrics)");
  add_model_options(cmd, a->model, false);
  a->model.runner.prefix_caching = true;
  cmd->add_flag("!--no-prefix-caching", a->model.runner.prefix_caching,
                "no automatic prefix caching (full KV pages of common prompt prefixes are shared by default)");
  cmd->add_option("--host", a->server.host, "address to listen on")->capture_default_str();
  cmd->add_option("--port", a->server.port, "port (0: any free one)")->capture_default_str()->check(CLI::Range(0, 65535));
  cmd->add_option("--api-key", a->server.api_key, "require 'Authorization: Bearer KEY' on /v1 requests");
  cmd->add_option("--served-model-name", a->server.served_model_name, "the model id (default: the file or folder name)");
  cmd->add_option("--max-num-seqs", a->server.engine.max_num_seqs, "sequences running at once")
      ->capture_default_str()->check(CLI::Range(1, 4096));
  cmd->add_option("--max-queue", a->server.engine.max_queue, "requests waiting beyond those (more: 503)")
      ->capture_default_str()->check(CLI::Range(0, 1 << 20));
  cmd->add_option("--max-num-batched-tokens", a->server.engine.max_num_batched_tokens,
                  "tokens per engine step (prompt chunks + decodes)")->capture_default_str()->check(CLI::Range(1, 1 << 20));
  cmd->add_option("--max-model-len,-c,--ctx-size", a->server.engine.max_model_len,
                  "context per sequence (default: the model's; llama.cpp's -c)")
      ->check(CLI::Range(int64_t(1), int64_t(1) << 30));
  cmd->add_flag("--check-logits", a->server.engine.check_logits,
                "bring every logits row to the host and scan it for NaN/Inf, greedy ones too, so that errors count them "
                "(CI, debugging; without it a row with any NaN/Inf still fails, uncounted)");
  cmd->add_option("--drain-timeout", a->drain_timeout, "seconds SIGTERM waits for running requests (then they end with finish_reason abort)")->capture_default_str();
  cmd->callback([a] { run(*a); });
}

#else
void register_serve(CLI::App& app) {
  CLI::App* cmd = app.add_subcommand("serve", "OpenAI-compatible HTTP server (not in this build)");
  cmd->allow_extras();
  cmd->callback([] { fail("this tandem was built without cpp-httplib (libcpp-httplib-dev), so it has no server"); });
}
#endif

}  // namespace tandem::cli
