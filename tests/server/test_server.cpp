// tandem serve on the default model (CPU reference path), in process, on a loopback port: the OpenAI schema,
// streaming, stop strings, seeds, logprobs, the validation matrix, API keys, metrics, concurrency (every greedy
// output equal to the request alone), client disconnects, preemption on a tiny KV pool, graceful shutdown.
#include <gtest/gtest.h>
#include <httplib.h>
#include <malloc.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <future>
#include <set>
#include <thread>

#include "runtime/model_bundle.h"
#include "runtime/serve_load.h"
#include "server/openai.h"
#include "server/server.h"
#include "server_fixture.h"

namespace tandem::server {
namespace {
using nlohmann::json;

using test_support::default_model;
using test_support::serve_runner;
using test_support::sse_events;
using test_support::TestServer;

class ServerTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (default_model()) server_ = new TestServer();
  }
  static void TearDownTestSuite() {
    delete server_;
    server_ = nullptr;
  }
  void SetUp() override {
    if (!server_) GTEST_SKIP() << "the default model is missing (make setup fetches it)";
  }
  static TestServer* server_;
};
TestServer* ServerTest::server_ = nullptr;

json chat(const std::string& question, int max_tokens = 12) {
  return {{"messages", {{{"role", "user"}, {"content", question}}}}, {"max_tokens", max_tokens}, {"temperature", 0}};
}

TEST_F(ServerTest, ChatCompletionAnswersLikeTandemRun) {
  auto r = server_->post("/v1/chat/completions", chat("What is the capital of France?", 20));
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200) << r->body;
  const json j = json::parse(r->body);
  EXPECT_EQ(j["object"], "chat.completion");
  EXPECT_EQ(j["model"], "smollm2");
  EXPECT_EQ(j["choices"][0]["message"]["role"], "assistant");
  EXPECT_EQ(j["choices"][0]["message"]["content"], "The capital of France is Paris.");
  EXPECT_EQ(j["choices"][0]["finish_reason"], "stop");
  EXPECT_EQ(j["usage"]["completion_tokens"].get<int>() + j["usage"]["prompt_tokens"].get<int>(),
            j["usage"]["total_tokens"].get<int>());
  EXPECT_GT(j["usage"]["prompt_tokens"].get<int>(), 10);
}

TEST_F(ServerTest, StreamedChatEqualsThePlainAnswerAndEndsWithDone) {
  json body = chat("What is the capital of France?", 20);
  const std::string plain =
      json::parse(server_->post("/v1/chat/completions", body)->body)["choices"][0]["message"]["content"];
  body["stream"] = true;
  body["stream_options"] = {{"include_usage", true}};
  auto r = server_->post("/v1/chat/completions", body);
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200);
  EXPECT_EQ(r->get_header_value("Content-Type"), "text/event-stream");
  bool done = false;
  const std::vector<json> ev = sse_events(r->body, &done);
  EXPECT_TRUE(done) << "no final data: [DONE]";
  ASSERT_GE(ev.size(), 3u);
  EXPECT_EQ(ev.front()["choices"][0]["delta"]["role"], "assistant");
  std::string text;
  std::string finish;
  for (const json& e : ev) {
    EXPECT_EQ(e["object"], "chat.completion.chunk");
    if (e["choices"].empty()) continue;
    const json& d = e["choices"][0]["delta"];
    if (d.contains("content")) text += d["content"].get<std::string>();
    if (!e["choices"][0]["finish_reason"].is_null()) finish = e["choices"][0]["finish_reason"];
  }
  EXPECT_EQ(text, plain);
  EXPECT_EQ(finish, "stop");
  EXPECT_TRUE(ev.back()["choices"].empty());  // the usage chunk
  EXPECT_GT(ev.back()["usage"]["completion_tokens"].get<int>(), 0);
}

// "The capital of France is Paris." is several tokens; the stop string "of Fr" spans two of them.
TEST_F(ServerTest, StopStringsMatchAcrossTokens) {
  json body = chat("What is the capital of France?", 20);
  body["stop"] = {"of Fr", "zzz"};
  auto r = server_->post("/v1/chat/completions", body);
  ASSERT_EQ(r->status, 200) << r->body;
  json j = json::parse(r->body);
  EXPECT_EQ(j["choices"][0]["message"]["content"], "The capital ");
  EXPECT_EQ(j["choices"][0]["finish_reason"], "stop");
  body["stream"] = true;  // the same text streamed: nothing of the stop string leaks before the match
  r = server_->post("/v1/chat/completions", body);
  bool done = false;
  std::string text;
  for (const json& e : sse_events(r->body, &done))
    if (!e["choices"].empty() && e["choices"][0]["delta"].contains("content"))
      text += e["choices"][0]["delta"]["content"].get<std::string>();
  EXPECT_TRUE(done);
  EXPECT_EQ(text, "The capital ");
}

TEST_F(ServerTest, SeededSamplingRepeatsAndNGivesSeveralChoices) {
  const json body = {{"prompt", "Once upon a time"}, {"max_tokens", 10}, {"temperature", 1.0}, {"seed", 1234}, {"n", 3}};
  const json a = json::parse(server_->post("/v1/completions", body)->body);
  const json b = json::parse(server_->post("/v1/completions", body)->body);
  ASSERT_EQ(a["choices"].size(), 3u) << a.dump();
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(a["choices"][i]["index"], i);
    EXPECT_EQ(a["choices"][i]["text"], b["choices"][i]["text"]) << "choice " << i;
  }
  EXPECT_EQ(a["object"], "text_completion");
  EXPECT_EQ(a["usage"]["completion_tokens"], 30);
}

TEST_F(ServerTest, LogprobsAreNormalizedAndNameTheChosenToken) {
  json body = chat("What is the capital of France?", 6);
  body["logprobs"] = true;
  body["top_logprobs"] = 3;
  const json j = json::parse(server_->post("/v1/chat/completions", body)->body);
  const json& content = j["choices"][0]["logprobs"]["content"];
  ASSERT_EQ(content.size(), 6u) << j.dump();
  std::string joined;
  for (const json& t : content) {
    EXPECT_LE(t["logprob"].get<double>(), 0.0);
    ASSERT_EQ(t["top_logprobs"].size(), 3u);
    // Greedy: the chosen token is the most likely one.
    EXPECT_EQ(t["top_logprobs"][0]["token"], t["token"]);
    EXPECT_NEAR(t["top_logprobs"][0]["logprob"].get<double>(), t["logprob"].get<double>(), 1e-6);
    EXPECT_GE(t["top_logprobs"][0]["logprob"].get<double>(), t["top_logprobs"][1]["logprob"].get<double>());
    joined += t["token"].get<std::string>();
  }
  EXPECT_EQ(joined, j["choices"][0]["message"]["content"].get<std::string>().substr(0, joined.size()));
  // Streamed: each token's logprobs ride on its chunk, the same values as in the plain response.
  body["stream"] = true;
  bool done = false;
  std::vector<double> streamed;
  for (const json& e : sse_events(server_->post("/v1/chat/completions", body)->body, &done))
    if (!e["choices"].empty() && e["choices"][0]["logprobs"].is_object())
      for (const json& t : e["choices"][0]["logprobs"]["content"]) streamed.push_back(t["logprob"].get<double>());
  EXPECT_TRUE(done);
  ASSERT_EQ(streamed.size(), content.size());
  for (size_t i = 0; i < streamed.size(); ++i) EXPECT_NEAR(streamed[i], content[i]["logprob"].get<double>(), 1e-6);
}

// A frequency penalty stops greedy decoding from repeating itself: "1, 2, 3, ..." keeps its commas and spaces
// without it; with a strong one the same tokens cannot come back (OpenAI's formula, over generated tokens).
TEST_F(ServerTest, PresenceAndFrequencyPenaltiesChangeGreedyRepetition) {
  const json base = {{"prompt", "1, 2, 3, 4,"}, {"max_tokens", 12}, {"temperature", 0}, {"logprobs", 0}};
  const json plain = json::parse(server_->post("/v1/completions", base)->body);
  json pen = base;
  pen["frequency_penalty"] = 2.0;
  pen["presence_penalty"] = 2.0;
  const json penalized = json::parse(server_->post("/v1/completions", pen)->body);
  const auto tokens = [](const json& j) { return j["choices"][0]["logprobs"]["tokens"].get<std::vector<std::string>>(); };
  const std::vector<std::string> a = tokens(plain), b = tokens(penalized);
  ASSERT_EQ(a.size(), 12u);
  ASSERT_EQ(b.size(), 12u);
  EXPECT_NE(a, b);
  const auto repeats = [](const std::vector<std::string>& t) {
    return t.size() - std::set<std::string>(t.begin(), t.end()).size();
  };
  EXPECT_GT(repeats(a), 3u) << plain.dump();  // counting repeats ", " tokens
  EXPECT_LT(repeats(b), repeats(a)) << penalized.dump();
}

TEST_F(ServerTest, ModelsHealthAndMetrics) {
  auto c = server_->client();
  auto m = c.Get("/v1/models");
  ASSERT_EQ(m->status, 200);
  const json j = json::parse(m->body);
  EXPECT_EQ(j["object"], "list");
  EXPECT_EQ(j["data"][0]["id"], "smollm2");
  EXPECT_EQ(c.Get("/health")->status, 200);
  server_->post("/v1/completions", {{"prompt", "Hello"}, {"max_tokens", 3}, {"temperature", 0}});
  EXPECT_TRUE(server_->srv->engine().drain(10));
  const std::string metrics = c.Get("/metrics")->body;
  for (const char* series : {"tandem_requests_total{status=\"200\"}", "tandem_generation_tokens_total",
                             "tandem_num_requests_running 0", "tandem_num_requests_waiting 0", "tandem_kv_pages_free",
                             "tandem_time_to_first_token_seconds_bucket{le=\"+Inf\"}",
                             "tandem_inter_token_latency_seconds_count"})
    EXPECT_NE(metrics.find(series), std::string::npos) << series << " missing from\n" << metrics;
  // Every page back once nothing runs.
  const auto value = [&](const std::string& name) {
    const size_t at = metrics.find("\n" + name + " ");
    return at == std::string::npos ? -1 : std::stoll(metrics.substr(at + name.size() + 2));
  };
  EXPECT_EQ(value("tandem_kv_pages_used"), 0);
  EXPECT_GT(value("tandem_kv_pages_total"), 0);
}

struct BadCase {
  const char* path;
  std::string body;
  int status;
  const char* param;    // "" when none is named
  const char* message;  // a fragment of error.message
};

TEST_F(ServerTest, BadRequestsGetOpenAIErrorsNamingTheField) {
  const std::string msgs = R"("messages":[{"role":"user","content":"hi"}])";
  const BadCase cases[] = {
      {"/v1/chat/completions", "{not json", 400, "", "not valid JSON"},
      {"/v1/chat/completions", "[1,2]", 400, "", "must be a JSON object"},
      {"/v1/chat/completions", R"({"messages":[]})", 400, "messages", "at least one message"},
      {"/v1/chat/completions", R"({"messages":"hi"})", 400, "messages", "must be an array"},
      {"/v1/chat/completions", R"({"messages":[{"role":"wizard","content":"x"}]})", 400, "messages[0].role", "wizard"},
      {"/v1/chat/completions", "{" + msgs + R"(,"temperature":"hot"})", 400, "temperature", "must be a number"},
      {"/v1/chat/completions", "{" + msgs + R"(,"temperature":7})", 400, "temperature", "[0, 2]"},
      {"/v1/chat/completions", "{" + msgs + R"(,"top_p":0})", 400, "top_p", "(0, 1]"},
      {"/v1/chat/completions", "{" + msgs + R"(,"max_tokens":0})", 400, "max_tokens", "[1,"},
      {"/v1/chat/completions", "{" + msgs + R"(,"max_tokens":100000})", 400, "max_tokens", "exceeds this model's context"},
      {"/v1/chat/completions", "{" + msgs + R"(,"n":100})", 400, "n", "[1, 16]"},
      {"/v1/chat/completions", "{" + msgs + R"(,"model":"gpt-4"})", 400, "model", "does not exist"},
      {"/v1/chat/completions", "{" + msgs + R"(,"stop":[1]})", 400, "stop", "strings"},
      {"/v1/chat/completions", "{" + msgs + R"(,"logit_bias":{"999999":1}})", 400, "logit_bias", "token id"},
      {"/v1/chat/completions", "{" + msgs + R"(,"presence_penalty":3})", 400, "presence_penalty", "[-2, 2]"},
      {"/v1/chat/completions", "{" + msgs + R"(,"frequency_penalty":"x"})", 400, "frequency_penalty", "a number"},
      {"/v1/completions", R"({"prompt":[1,2,49152]})", 400, "prompt", "token id in [0, 49152)"},
      {"/v1/completions", R"({"prompt":""})", 400, "prompt", "empty"},
      {"/v1/completions", R"({"max_tokens":3})", 400, "prompt", "required"},
      {"/v1/completions", R"({"prompt":"x","seed":"abc"})", 400, "seed", "integer"},
  };
  for (const BadCase& c : cases) {
    SCOPED_TRACE(std::string(c.path) + " " + c.body);
    auto r = server_->client().Post(c.path, c.body, "application/json");
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, c.status) << r->body;
    const json j = json::parse(r->body);
    EXPECT_EQ(j["error"]["type"], "invalid_request_error");
    EXPECT_EQ(j["error"]["code"], c.status);
    if (*c.param) {
      EXPECT_EQ(j["error"]["param"], c.param);
    }
    EXPECT_NE(j["error"]["message"].get<std::string>().find(c.message), std::string::npos) << j.dump();
  }
  auto r = server_->client().Get("/v1/nothing");
  EXPECT_EQ(r->status, 404);
  EXPECT_NE(r->body.find("no such endpoint"), std::string::npos);
  // The server is still serving.
  EXPECT_EQ(server_->post("/v1/completions", {{"prompt", "Hi"}, {"max_tokens", 2}})->status, 200);
}

// Hostile bodies: every prefix of a valid request, random bytes, nesting 100000 deep, wrong types at every field;
// each gets a 400 with a JSON error body, and the server keeps serving.
TEST_F(ServerTest, HostileBodiesNeverCrashOrHang) {
  const std::string valid = R"({"messages":[{"role":"user","content":"hi"}],"max_tokens":2,"temperature":0})";
  std::vector<std::string> bodies;
  for (size_t n = 0; n < valid.size(); n += 3) bodies.push_back(valid.substr(0, n));
  uint64_t x = 42;
  for (int i = 0; i < 40; ++i) {
    std::string b;
    for (int k = 0; k < 1 + i * 7; ++k) b += char((x = x * 6364136223846793005ull + 1442695040888963407ull) >> 56);
    bodies.push_back(b);
  }
  bodies.push_back(std::string(100000, '[') + std::string(100000, ']'));
  std::string nested = "1";
  for (int i = 0; i < 20000; ++i) nested = "{\"a\":" + nested + "}";
  bodies.push_back(nested);
  for (const char* f : {"messages", "max_tokens", "temperature", "top_p", "top_k", "n", "stop", "seed", "stream",
                        "logprobs", "top_logprobs", "logit_bias", "stream_options", "min_p"})
    for (const char* v : {"null", "\"x\"", "-1", "1e308", "[]", "{}", "true"}) {
      json j = json::parse(valid);
      j[f] = json::parse(v);
      bodies.push_back(j.dump());
    }
  int ok = 0;
  for (const std::string& b : bodies) {
    auto r = server_->client().Post("/v1/chat/completions", b, "application/json");
    ASSERT_TRUE(r) << "no answer to: " << b.substr(0, 80);
    if (r->status == 200) {
      ++ok;  // (null, or a value that happens to be valid for that field)
      continue;
    }
    EXPECT_EQ(r->status, 400) << b.substr(0, 80) << " -> " << r->body;
    EXPECT_TRUE(json::parse(r->body, nullptr, false).contains("error")) << r->body;
  }
  EXPECT_LT(ok, 40);
  EXPECT_EQ(server_->client().Get("/health")->status, 200);
}

// 16 streamed greedy requests of mixed lengths at once: none lost or mixed up; each equals the request alone.
TEST_F(ServerTest, ConcurrentStreamsEqualTheRequestsAlone) {
  const std::vector<std::string> prompts = {"The capital of France is", "1, 2, 3, 4,", "Water boils at",
                                            "The largest planet is", "My favourite colour is", "Hello"};
  std::vector<std::string> alone;
  for (size_t i = 0; i < prompts.size(); ++i)
    alone.push_back(json::parse(server_->post("/v1/completions", {{"prompt", prompts[i]}, {"max_tokens", 4 + int(i)},
                                                                  {"temperature", 0}})->body)["choices"][0]["text"]);
  std::vector<std::future<std::string>> futures;
  for (int k = 0; k < 16; ++k) {
    const size_t i = size_t(k) % prompts.size();
    futures.push_back(std::async(std::launch::async, [&, i] {
      auto r = server_->post("/v1/completions", {{"prompt", prompts[i]}, {"max_tokens", 4 + int(i)},
                                                 {"temperature", 0}, {"stream", true}});
      if (!r) return "<no answer: " + httplib::to_string(r.error()) + ">";
      if (r->status != 200) return "<status " + std::to_string(r->status) + ": " + r->body + ">";
      bool done = false;
      std::string text;
      for (const json& e : sse_events(r->body, &done)) text += e["choices"][0]["text"].get<std::string>();
      return done ? text : std::string("<no [DONE]>");
    }));
  }
  for (int k = 0; k < 16; ++k) EXPECT_EQ(futures[size_t(k)].get(), alone[size_t(k) % prompts.size()]) << "request " << k;
  // (the engine thread updates its gauges after the step whose callbacks answered the last request)
  EXPECT_TRUE(server_->srv->engine().drain(10));
  const EngineCounters c = server_->srv->engine().counters();
  EXPECT_EQ(c.running, 0);
  EXPECT_EQ(c.kv_pages_free, c.kv_pages_total);
}

// Resident memory after returning the allocator's free pages to the system (freed-but-cached heap and the many
// threads' arenas would otherwise read as growth).
int64_t rss_kib() {
  malloc_trim(0);
  std::ifstream f("/proc/self/status");
  std::string line;
  while (std::getline(f, line))
    if (line.rfind("VmRSS:", 0) == 0) return std::stoll(line.substr(6));
  return -1;
}

// Four rounds of 64 concurrent streamed requests of mixed lengths: none lost, truncated or mixed up (each
// equals its request alone), every KV page back after each round, and the process's RSS does not keep growing.
TEST_F(ServerTest, LoadRoundsLoseNothingAndDoNotGrowMemory) {
  std::vector<json> bodies;
  std::vector<std::string> alone;
  for (int i = 0; i < 8; ++i) {
    json b = {{"prompt", "Item " + std::to_string(i) + " of the list:"}, {"max_tokens", 2 + i}, {"temperature", 0}};
    alone.push_back(json::parse(server_->post("/v1/completions", b)->body)["choices"][0]["text"]);
    b["stream"] = true;
    bodies.push_back(b);
  }
  std::vector<int64_t> rss;
  for (int round = 0; round < 4; ++round) {
    std::vector<std::future<std::string>> futures;
    for (int k = 0; k < 64; ++k)
      futures.push_back(std::async(std::launch::async, [&, k] {
        auto r = server_->post("/v1/completions", bodies[size_t(k % 8)]);
        if (!r) return "<no answer: " + httplib::to_string(r.error()) + ">";
        bool done = false;
        std::string text;
        for (const json& e : sse_events(r->body, &done)) text += e["choices"][0]["text"].get<std::string>();
        return done ? text : std::string("<no [DONE]>");
      }));
    for (int k = 0; k < 64; ++k) EXPECT_EQ(futures[size_t(k)].get(), alone[size_t(k % 8)]) << "round " << round << " request " << k;
    ASSERT_TRUE(server_->srv->engine().drain(10));
    const EngineCounters c = server_->srv->engine().counters();
    EXPECT_EQ(c.kv_pages_free, c.kv_pages_total);
    rss.push_back(rss_kib());
  }
  // Round 0 warms the thread pools up; a leak of a request's state would grow every round after it.
  EXPECT_LT(rss[3] - rss[1], 16 * 1024) << "RSS KiB by round: " << rss[0] << ", " << rss[1] << ", " << rss[2] << ", "
                                       << rss[3];
}

// A client that goes away mid-stream: its sequence is aborted and its pages freed.
TEST_F(ServerTest, ClientDisconnectAbortsTheSequence) {
  const int64_t aborted_before = server_->srv->engine().counters().aborted;
  {
    httplib::Client c("127.0.0.1", server_->srv->port());
    std::atomic<int> chunks{0};
    // End-of-text ids banned (logit_bias): only the abort can end it before 2000 tokens.
    json body = {{"prompt", "Tell me a long story."}, {"max_tokens", 2000}, {"stream", true},
                 {"temperature", 0.8}, {"seed", 1}, {"logit_bias", json::object()}};
    for (int32_t id : server_->bundle.tokenizer->eos_ids()) body["logit_bias"][std::to_string(id)] = -100;
    httplib::Request req;
    req.method = "POST";
    req.path = "/v1/completions";
    req.body = body.dump();
    req.set_header("Content-Type", "application/json");
    req.content_receiver = [&](const char*, size_t, uint64_t, uint64_t) { return ++chunks < 5; };  // then hang up
    c.send(req);
    EXPECT_GE(chunks.load(), 5);
  }
  for (int i = 0; i < 200 && server_->srv->engine().counters().running > 0; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  const EngineCounters c = server_->srv->engine().counters();
  EXPECT_EQ(c.running, 0);
  EXPECT_EQ(c.aborted, aborted_before + 1) << "finished " << c.finished << ", failed " << c.failed << ", waiting "
                                           << c.waiting << ", generated " << c.generated_tokens;
  EXPECT_EQ(c.kv_pages_free, c.kv_pages_total);
}

// A second request sharing a long prefix with the first reuses its cached pages: the hit rate shows in /metrics,
// the output is the same as without the cache (a server with prefix caching off), and fewer tokens are computed.
TEST(ServerOptionsTest, PrefixCacheReusesALongSharedPrefix) {
  if (!default_model()) GTEST_SKIP() << "the default model is missing";
  std::string story = "Here is a list of facts about the solar system, one per line.\n";
  for (int i = 0; i < 12; ++i) story += "Fact " + std::to_string(i) + ": the planets move around the sun.\n";
  const json first = {{"prompt", story + "Question: which star is at the centre?"}, {"max_tokens", 12}, {"temperature", 0}};
  const json second = {{"prompt", story + "Question: how many planets are there?"}, {"max_tokens", 12}, {"temperature", 0}};
  RunnerOptions off;
  off.prefix_caching = false;
  std::string want;
  {
    TestServer plain({}, off);
    want = json::parse(plain.post("/v1/completions", second)->body)["choices"][0]["text"];
    EXPECT_EQ(plain.srv->engine().counters().prefix_hit_tokens, 0);
  }
  TestServer s;
  ASSERT_EQ(s.post("/v1/completions", first)->status, 200);
  EXPECT_TRUE(s.srv->engine().drain(10));
  const EngineCounters before = s.srv->engine().counters();
  EXPECT_EQ(before.prefix_hit_tokens, 0);
  EXPECT_GT(before.kv_pages_cached, 4);  // the first request's full pages stay cached after it ends
  auto r = s.post("/v1/completions", second);
  ASSERT_EQ(r->status, 200);
  EXPECT_EQ(json::parse(r->body)["choices"][0]["text"], want);
  const EngineCounters after = s.srv->engine().counters();
  const int64_t prompt = json::parse(r->body)["usage"]["prompt_tokens"];
  EXPECT_GE(after.prefix_hit_tokens, prompt / 2) << "of " << prompt;
  EXPECT_EQ(after.prefix_hit_tokens % 16, 0);  // whole pages
  EXPECT_EQ(json::parse(r->body)["usage"]["prompt_tokens_details"]["cached_tokens"], after.prefix_hit_tokens);
  const std::string metrics = s.client().Get("/metrics")->body;
  EXPECT_NE(metrics.find("tandem_prefix_cache_hit_rate 0."), std::string::npos) << metrics;
  EXPECT_EQ(metrics.find("tandem_prefix_cache_hit_rate 0.000000"), std::string::npos);
}

TEST(ServerOptionsTest, ApiKeyIsRequiredWhenSet) {
  if (!default_model()) GTEST_SKIP() << "the default model is missing";
  ServerOptions o;
  o.api_key = "secret";
  TestServer s(o);
  const json body = {{"prompt", "Hi"}, {"max_tokens", 1}};
  auto r = s.post("/v1/completions", body);
  EXPECT_EQ(r->status, 401);
  EXPECT_EQ(json::parse(r->body)["error"]["type"], "authentication_error");
  EXPECT_EQ(s.post("/v1/completions", body, {{"Authorization", "Bearer wrong"}})->status, 401);
  EXPECT_EQ(s.post("/v1/completions", body, {{"Authorization", "Bearer secret"}})->status, 200);
  EXPECT_EQ(s.client().Get("/health")->status, 200);  // outside /v1: no key needed
}

TEST(ServerOptionsTest, LimitsGive400And413And503) {
  if (!default_model()) GTEST_SKIP() << "the default model is missing";
  ServerOptions o;
  o.engine.max_model_len = 64;
  o.engine.max_num_seqs = 1;
  o.engine.max_num_batched_tokens = 64;
  o.engine.max_queue = 0;
  o.max_body_bytes = 4096;
  TestServer s(o);
  // A prompt longer than the context: 400 naming the field and the limit.
  std::string long_text;
  for (int i = 0; i < 100; ++i) long_text += "word ";
  auto r = s.post("/v1/completions", {{"prompt", long_text}});
  EXPECT_EQ(r->status, 400);
  EXPECT_EQ(json::parse(r->body)["error"]["param"], "prompt");
  EXPECT_NE(r->body.find("context is 64 tokens"), std::string::npos) << r->body;
  // A body over the limit: 413.
  r = s.client().Post("/v1/completions", std::string(8192, ' '), "application/json");
  EXPECT_EQ(r->status, 413);
  // One running, none may wait: the second concurrent request gets 503 at once.
  auto first = std::async(std::launch::async, [&] {
    return s.post("/v1/completions", {{"prompt", "Count:"}, {"max_tokens", 40}, {"temperature", 0}})->status;
  });
  int busy = 0;
  for (int i = 0; i < 100 && busy == 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    if (s.srv->engine().counters().running == 1) {
      r = s.post("/v1/completions", {{"prompt", "Hi"}, {"max_tokens", 1}});
      busy = r->status;
    }
  }
  EXPECT_EQ(busy, 503);
  EXPECT_EQ(first.get(), 200);
}

// A KV pool of 6 pages (96 tokens) for three requests that need ~3 pages each: the engine preempts and recomputes,
// and every output equals the request alone.
TEST(ServerOptionsTest, PreemptionOnATinyKvPoolKeepsOutputsExact) {
  if (!default_model()) GTEST_SKIP() << "the default model is missing";
  RunnerOptions r = serve_runner();
  r.kv_tokens = 96;
  r.kv_fixed = true;
  ServerOptions o;
  o.engine.max_model_len = 96;
  TestServer s(o, r);
  const std::vector<std::string> prompts = {"The capital of France is", "Water boils at", "The largest planet is"};
  std::vector<std::string> alone;
  for (const std::string& p : prompts)
    alone.push_back(json::parse(s.post("/v1/completions", {{"prompt", p}, {"max_tokens", 30}, {"temperature", 0}})->body)
                        ["choices"][0]["text"]);
  std::vector<std::future<std::string>> futures;
  for (const std::string& p : prompts)
    futures.push_back(std::async(std::launch::async, [&, p] {
      auto res = s.post("/v1/completions", {{"prompt", p}, {"max_tokens", 30}, {"temperature", 0}});
      return res && res->status == 200 ? json::parse(res->body)["choices"][0]["text"].get<std::string>()
                                       : "<" + (res ? res->body : std::string("no answer")) + ">";
    }));
  for (size_t i = 0; i < prompts.size(); ++i) EXPECT_EQ(futures[i].get(), alone[i]) << prompts[i];
  EXPECT_TRUE(s.srv->engine().drain(10));
  const EngineCounters c = s.srv->engine().counters();
  EXPECT_GT(c.preemptions, 0) << "the pool was meant to run out";
  EXPECT_EQ(c.kv_pages_free, c.kv_pages_total);
}

TEST(ServerOptionsTest, ShutdownFinishesRunningRequestsAndRefusesNewOnes) {
  if (!default_model()) GTEST_SKIP() << "the default model is missing";
  auto s = std::make_unique<TestServer>();
  auto running = std::async(std::launch::async, [&] {
    return s->post("/v1/completions", {{"prompt", "Count:"}, {"max_tokens", 30}, {"temperature", 0}});
  });
  for (int i = 0; i < 100 && s->srv->engine().counters().running == 0; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  std::thread stopper([&] { s->srv->shutdown(30); });
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  auto refused = s->post("/v1/completions", {{"prompt", "Hi"}, {"max_tokens", 1}});
  if (refused) {
    EXPECT_EQ(refused->status, 503);  // (or the listener already closed)
  }
  auto r = running.get();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
  EXPECT_EQ(json::parse(r->body)["usage"]["completion_tokens"], 30);
  stopper.join();
}

// The load behind `tandem bench --phase serve`, on the CPU: every request yields exactly output_len tokens, the
// latencies are positive and ordered, and more concurrency (batching) does not lower throughput much.
TEST(ServeLoadTest, CountsEveryTokenAndMeasuresLatency) {
  if (!default_model()) GTEST_SKIP() << "the default model is missing";
  const ModelBundle bundle = open_model_bundle(*default_model());
  RunnerOptions r;
  r.device = "cpu";
  r.path = "reference";
  auto runner = make_runner(bundle, r);
  EngineOptions o;
  o.max_num_seqs = 4;
  o.max_queue = 0;
  Engine engine(*runner, o);
  const ServeLoadResult one = run_serve_load(engine, runner->config().vocab_size, 4, 8, 6, 1);
  const ServeLoadResult four = run_serve_load(engine, runner->config().vocab_size, 12, 8, 6, 4);
  EXPECT_EQ(one.output_tokens, 4 * 6);
  EXPECT_EQ(four.output_tokens, 12 * 6);
  for (const ServeLoadResult& x : {one, four}) {
    EXPECT_GT(x.ttft_p50, 0);
    EXPECT_GE(x.ttft_p99, x.ttft_p50);
    EXPECT_GT(x.itl_p50, 0);
    EXPECT_GE(x.itl_p99, x.itl_p50);
    EXPECT_GT(x.output_tok_s, 0);
  }
  // No throughput comparison between the levels: that is a benchmark's job (tandem bench --phase serve), and on
  // CI's two loaded cores a timing ratio is noise.
  EXPECT_TRUE(engine.drain(5));
  EXPECT_EQ(engine.counters().kv_pages_free, engine.counters().kv_pages_total);
}

}  // namespace
}  // namespace tandem::server
