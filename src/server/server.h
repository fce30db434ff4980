// tandem's OpenAI-compatible HTTP server (cpp-httplib): /v1/completions, /v1/chat/completions (plain and SSE),
// /v1/models, /health, /metrics (Prometheus text). Requests go to one Engine (runtime/engine.h: continuous
// batching); every handler thread only parses, submits and waits for its request's tokens.
#pragma once
#include <atomic>
#include <cstdint>
#include <memory>
#include <string>

#include "runtime/engine.h"
#include "runtime/model_bundle.h"

namespace tandem::server {

struct ServerOptions {
  std::string host = "127.0.0.1";
  int port = 8000;                 // 0: any free port (port() tells which)
  std::string api_key;             // non-empty: every /v1 request needs "Authorization: Bearer <key>"
  std::string served_model_name;   // the model id clients send and /v1/models lists
  size_t max_body_bytes = 4 << 20; // larger bodies get 413
  int threads = 128;               // HTTP worker threads (each streaming request holds one)
  EngineOptions engine;
};

class Server {
 public:
  // The runner and bundle must outlive the server.
  Server(const ModelBundle& bundle, Executor& runner, ServerOptions options);
  ~Server();
  // Binds (throws tandem::Error naming the address when it cannot), then serves until stop(). Returns when stopped.
  void bind();
  int port() const { return port_; }
  void serve();
  // Graceful: new requests get 503, running ones finish (up to drain_seconds; what is left then ends with
  // finish_reason "abort"), then the listener closes.
  void shutdown(double drain_seconds);
  Engine& engine() { return *engine_; }

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  std::unique_ptr<Engine> engine_;
  int port_ = 0;
};

}  // namespace tandem::server
