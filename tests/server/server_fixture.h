// What the server test files share: the default model, a server on its own loopback port, SSE parsing.
#pragma once
#include <gtest/gtest.h>
#include <httplib.h>

#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "runtime/model_bundle.h"
#include "server/server.h"

namespace tandem::server::test_support {

inline std::optional<std::filesystem::path> default_model() {
  try {
    return default_model_path();
  } catch (const Error&) {
    return std::nullopt;
  }
}

// The runner options of tandem serve: prefix caching on.
inline RunnerOptions serve_runner() {
  RunnerOptions r;
  r.prefix_caching = true;
  return r;
}

// A server on its own port over its own runner (CPU reference path); stopped (drained) by the destructor.
struct TestServer {
  ModelBundle bundle;
  std::unique_ptr<Executor> runner;
  std::unique_ptr<Server> srv;
  std::thread th;
  explicit TestServer(ServerOptions o = {}, RunnerOptions r = serve_runner()) {
    bundle = open_model_bundle(*default_model());
    r.device = "cpu";
    r.path = "reference";
    runner = make_runner(bundle, r);
    o.port = 0;
    if (o.served_model_name.empty()) o.served_model_name = "smollm2";
    srv = std::make_unique<Server>(bundle, *runner, o);
    srv->bind();
    th = std::thread([this] { srv->serve(); });
  }
  ~TestServer() {
    srv->shutdown(10);
    th.join();
  }
  httplib::Client client() const {
    httplib::Client c("127.0.0.1", srv->port());
    c.set_read_timeout(120, 0);
    return c;
  }
  httplib::Result post(const std::string& path, const nlohmann::json& body, const httplib::Headers& h = {}) const {
    return client().Post(path.c_str(), h, body.dump(), "application/json");
  }
};

// The SSE records' JSON payloads up to "data: [DONE]" (*done: it came, and nothing after it).
inline std::vector<nlohmann::json> sse_events(const std::string& body, bool* done) {
  std::vector<nlohmann::json> out;
  *done = false;
  size_t at = 0;
  while ((at = body.find("data: ", at)) != std::string::npos) {
    const size_t end = body.find("\n\n", at);
    const std::string payload = body.substr(at + 6, end - at - 6);
    at = end;
    if (payload == "[DONE]") {
      *done = body.find("data: ", at) == std::string::npos;
      break;
    }
    out.push_back(nlohmann::json::parse(payload));
  }
  return out;
}

}  // namespace tandem::server::test_support
