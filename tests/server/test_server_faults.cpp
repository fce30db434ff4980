// Faults and limits of tandem serve on the default model (CPU reference path): a sequence whose logits go NaN
// fails alone with an error naming the first non-finite tap (the others and the server carry on); an executor
// fault fails what is in flight and turns /health unhealthy; queue, KV memory and disconnect limits; the
// sampling-parameter and token-id validation tables. Faults come from the test-only variants of
// fault_variants.cpp, switched on per server with RunnerOptions::variants.
#include <gtest/gtest.h>
#include <httplib.h>

#include <atomic>
#include <chrono>
#include <future>
#include <thread>

#include "fault_variants.h"
#include "runtime/generate.h"
#include "server_fixture.h"

namespace tandem::server {
namespace {
using nlohmann::json;
using test_support::default_model;
using test_support::fault_marker;
using test_support::nan_marker;
using test_support::serve_runner;
using test_support::sse_events;
using test_support::TestServer;

#define REQUIRE_MODEL() \
  if (!default_model()) GTEST_SKIP() << "the default model is missing (make setup fetches it)"

RunnerOptions with_variant(const std::string& v) {
  RunnerOptions r = serve_runner();
  r.variants = {v};
  return r;
}

// A greedy completion that only max_tokens ends: end-of-text ids banned (logit_bias).
json long_greedy(const TestServer& s, const std::string& prompt, int max_tokens) {
  json b = {{"prompt", prompt}, {"max_tokens", max_tokens}, {"temperature", 0}, {"logit_bias", json::object()}};
  for (int32_t id : s.bundle.tokenizer->eos_ids()) b["logit_bias"][std::to_string(id)] = -100;
  return b;
}

std::string text_of(const httplib::Result& r) {
  if (!r) return "<no answer>";
  if (r->status != 200) return "<status " + std::to_string(r->status) + ": " + r->body + ">";
  return json::parse(r->body)["choices"][0]["text"];
}

// The streamed text, "<error: MESSAGE>" where an error chunk came, "<no [DONE]>" when the stream did not end.
std::string streamed_text(const httplib::Result& r) {
  if (!r) return "<no answer>";
  if (r->status != 200) return "<status " + std::to_string(r->status) + ">";
  bool done = false;
  std::string text;
  for (const json& e : sse_events(r->body, &done)) {
    if (e.contains("error")) text += "<error: " + e["error"]["message"].get<std::string>() + ">";
    else if (!e["choices"].empty()) text += e["choices"][0]["text"].get<std::string>();
  }
  return done ? text : text + "<no [DONE]>";
}

void wait_until(const std::function<bool()>& cond, int ms = 10000) {
  for (int i = 0; i < ms / 10 && !cond(); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
}

// `poisoned`, streamed and alone: an error chunk naming the bad logits row (and `also`, when given), then [DONE].
void expect_error_chunk_then_done(TestServer& s, json poisoned, const std::string& also = "") {
  poisoned["stream"] = true;
  const std::string st = streamed_text(s.post("/v1/completions", poisoned));
  EXPECT_EQ(st.rfind("<error: the logits for output token 1", 0), 0u) << st;
  EXPECT_NE(st.find("hold NaN or Inf among 49152 values"), std::string::npos) << st;
  if (!also.empty()) {
    EXPECT_NE(st.find(also), std::string::npos) << st;
  }
  EXPECT_EQ(st.find("<no [DONE]>"), std::string::npos) << st;
}

// Not engine death: healthy, the same greedy output again, every page back, `failed` requests failed in all.
void expect_still_serving(TestServer& s, const json& healthy, const std::string& alone, int64_t failed) {
  EXPECT_EQ(s.client().Get("/health")->status, 200);
  EXPECT_EQ(text_of(s.post("/v1/completions", healthy)), alone);
  ASSERT_TRUE(s.srv->engine().drain(10));
  const EngineCounters c = s.srv->engine().counters();
  EXPECT_EQ(c.failed, failed);
  EXPECT_EQ(c.kv_pages_free, c.kv_pages_total);
  EXPECT_EQ(s.srv->engine().failure(), "");
}

// generate() on the CPU reference path with one test variant planted.
std::unique_ptr<Executor> reference_runner_with(const ModelBundle& bundle, const std::string& variant) {
  RunnerOptions o = with_variant(variant);
  o.device = "cpu";
  o.path = "reference";
  return make_runner(bundle, o);
}

// Checklist 24: a sequence whose logits go NaN fails alone, with the step and the first non-finite tap named;
// a request running beside it keeps its exact greedy output, and the server goes on serving.
TEST(ServerFaults, NanLogitsFailOnlyThatRequestAndNameTheTap) {
  REQUIRE_MODEL();
  TestServer s({}, with_variant("attention=test_nan_on_marker"));
  const int32_t marker = nan_marker(s.runner->config().vocab_size);
  const json healthy = long_greedy(s, "The capital of France is", 48);
  const std::string alone = text_of(s.post("/v1/completions", healthy));
  ASSERT_EQ(alone.find('<'), std::string::npos) << alone;
  const json poisoned = {{"prompt", {1, 2, marker, 5, 6}}, {"max_tokens", 4}, {"temperature", 0}};
  const int64_t failed_before = s.srv->engine().counters().failed;

  // Beside a running request (its logit_bias makes the step's rows come to the host: the scan finds the NaN).
  auto running = std::async(std::launch::async, [&] { return s.post("/v1/completions", healthy); });
  wait_until([&] { return s.srv->engine().counters().running > 0; });
  auto r = s.post("/v1/completions", poisoned);
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 500) << r->body;
  const json err = json::parse(r->body)["error"];
  EXPECT_EQ(err["type"], "server_error");
  const std::string msg = err["message"];
  for (const char* part : {"logits for output token 1 (position 4", "hold", "NaN", "first non-finite tap is L3.attention",
                           "(by attention.test_nan_on_marker)", "first at position 2", "its input L3.kv_write was finite"})
    EXPECT_NE(msg.find(part), std::string::npos) << part << " missing from: " << msg;
  EXPECT_EQ(text_of(running.get()), alone);

  // Streamed and alone (a greedy-only step: the argmax of a row holding NaN is -1): an error chunk, then [DONE].
  expect_error_chunk_then_done(s, poisoned, "L3.attention");
  expect_still_serving(s, healthy, alone, failed_before + 2);
}

// --check-logits: a greedy request's rows come to the host too, so the scan counts the NaN (without it the argmax
// says only that the row holds one), and healthy greedy output is unchanged.
TEST(ServerFaults, CheckLogitsScansGreedyRows) {
  REQUIRE_MODEL();
  ServerOptions o;
  o.engine.check_logits = true;
  TestServer s(o, with_variant("attention=test_nan_on_marker"));
  const json poisoned = {{"prompt", {1, 2, nan_marker(s.runner->config().vocab_size)}}, {"max_tokens", 2},
                         {"temperature", 0}};
  auto r = s.post("/v1/completions", poisoned);
  EXPECT_EQ(r->status, 500);
  EXPECT_NE(r->body.find("hold 49152 NaN and 0 Inf of 49152 values"), std::string::npos) << r->body;
  r = s.post("/v1/chat/completions", {{"messages", {{{"role", "user"}, {"content", "What is the capital of France?"}}}},
                                      {"max_tokens", 20}, {"temperature", 0}});
  ASSERT_EQ(r->status, 200) << r->body;
  EXPECT_EQ(json::parse(r->body)["choices"][0]["message"]["content"], "The capital of France is Paris.");
}

// The same guard in generate() (tandem generate, tandem chat): it throws, naming request, step and tap, instead of
// sampling from a NaN row; the engine check option (--check-logits) catches rows a greedy step keeps on the device.
TEST(ServerFaults, GenerateThrowsOnNanLogits) {
  REQUIRE_MODEL();
  const ModelBundle bundle = open_model_bundle(*default_model());
  auto runner = reference_runner_with(bundle, "attention=test_nan_on_marker");
  GenerationRequest q;
  q.prompt = {1, 2, nan_marker(runner->config().vocab_size), 5};
  q.max_new_tokens = 3;
  q.sampling.temperature = 0;
  try {
    generate(*runner, {q});
    FAIL() << "no error";
  } catch (const Error& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("request 0: the logits of step 0 (prefill, position 3)"), std::string::npos) << m;
    EXPECT_NE(m.find("first non-finite tap is L3.attention (by attention.test_nan_on_marker)"), std::string::npos) << m;
  }
  q.sampling.temperature = 0.7f;  // the sampler's path: the row on the host is scanned
  EXPECT_THROW(generate(*runner, {q}), Error);
  q.prompt = {1, 2, 3, 5};  // a clean prompt on the same runner: every sequence was released
  EXPECT_EQ(generate(*runner, {q})[0].tokens.size(), 3u);
}

// Checklist 24, one NaN: a logits row that is finite but for one NaN (logits.test_one_nan_on_marker) fails its
// request like an all-NaN row. Greedy, the argmax of a greedy-only step (run beside a greedy request, so the step
// stays greedy-only) gives its sentinel instead of skipping the NaN; sampled, the runner's sampler (Step::sampling)
// gives the same sentinel; sampled with logprobs, the row comes to the host, whose scan counts it; streamed, an
// error chunk then [DONE]. The request beside it keeps its exact output; the server goes on serving.
TEST(ServerFaults, OneNanLogitFailsOnlyThatRequestGreedyOrSampled) {
  REQUIRE_MODEL();
  TestServer s({}, with_variant("logits=test_one_nan_on_marker"));
  const int32_t marker = nan_marker(s.runner->config().vocab_size);
  // No logit_bias, no penalty: every step it runs in alone or with other greedy requests is greedy-only.
  const json healthy = {
      {"prompt", "Count from one to fifty: one, two, three,"}, {"max_tokens", 48}, {"temperature", 0}};
  const std::string alone = text_of(s.post("/v1/completions", healthy));
  ASSERT_EQ(alone.find('<'), std::string::npos) << alone;
  const json poisoned = {{"prompt", {1, 2, marker}}, {"max_tokens", 4}, {"temperature", 0}};
  const int64_t failed_before = s.srv->engine().counters().failed;

  auto running = std::async(std::launch::async, [&] { return s.post("/v1/completions", healthy); });
  wait_until([&] { return s.srv->engine().counters().running > 0; });
  auto r = s.post("/v1/completions", poisoned);
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 500) << r->body;
  std::string msg = json::parse(r->body)["error"]["message"];
  for (const char* part : {"logits for output token 1 (position 2", "hold NaN or Inf among 49152 values",
                           "first non-finite tap is logits (by logits.test_one_nan_on_marker): 1 NaN and 0 Inf of "
                           "49152 values",
                           "its input final_norm was finite"})
    EXPECT_NE(msg.find(part), std::string::npos) << part << " missing from: " << msg;
  EXPECT_EQ(text_of(running.get()), alone);

  // Sampled: the runner samples the row (its logits stay where they are) and gives the NaN guard's sentinel.
  json sampled = poisoned;
  sampled["temperature"] = 0.7;
  r = s.post("/v1/completions", sampled);
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 500) << r->body;
  msg = json::parse(r->body)["error"]["message"];
  EXPECT_NE(msg.find("hold NaN or Inf among 49152 values (the sampler found one"), std::string::npos) << msg;
  // Sampled with logprobs: the row comes to the host, whose scan counts the one NaN.
  sampled["logprobs"] = 1;
  r = s.post("/v1/completions", sampled);
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 500) << r->body;
  msg = json::parse(r->body)["error"]["message"];
  EXPECT_NE(msg.find("hold 1 NaN and 0 Inf of 49152 values"), std::string::npos) << msg;

  expect_error_chunk_then_done(s, poisoned);
  expect_still_serving(s, healthy, alone, failed_before + 4);
}

// The same in generate(): greedy (a greedy-only step, the CPU host's argmax), sampled by the runner (Step::sampling)
// and sampled on the host (logits_to_host, whose scan counts), one NaN is enough.
TEST(ServerFaults, GenerateThrowsOnOneNanLogit) {
  REQUIRE_MODEL();
  const ModelBundle bundle = open_model_bundle(*default_model());
  auto runner = reference_runner_with(bundle, "logits=test_one_nan_on_marker");
  GenerationRequest q;
  q.prompt = {1, 2, nan_marker(runner->config().vocab_size)};
  q.max_new_tokens = 3;
  for (const auto& [temperature, to_host] : {std::pair{0.0f, false}, std::pair{0.7f, false}, std::pair{0.7f, true}}) {
    q.sampling.temperature = temperature;
    q.logits_to_host = to_host;
    try {
      generate(*runner, {q});
      ADD_FAILURE() << "no error at temperature " << temperature;
    } catch (const Error& e) {
      const std::string m = e.what();
      EXPECT_NE(m.find("request 0: the logits of step 0 (prefill, position 2)"), std::string::npos) << m;
      EXPECT_NE(m.find(to_host ? "hold 1 NaN and 0 Inf of 49152" : "hold NaN or Inf among 49152 values"),
                std::string::npos)
          << m;
      EXPECT_NE(m.find("first non-finite tap is logits (by logits.test_one_nan_on_marker)"), std::string::npos) << m;
    }
  }
  q.prompt = {1, 2, 3};  // a clean prompt on the same runner: every sequence was released
  EXPECT_EQ(generate(*runner, {q})[0].tokens.size(), 3u);
}

// Checklist 20: an exception from the executor's step fails every request in flight (streamed: an error chunk,
// then [DONE]; plain: 500) and stops the engine: /health and new requests answer 503 naming the fault.
TEST(ServerFaults, ExecutorFaultFailsInFlightRequestsAndReportsUnhealthy) {
  REQUIRE_MODEL();
  TestServer s({}, with_variant("attention=test_throw_on_marker"));
  json healthy = long_greedy(s, "Tell me a story.", 400);
  healthy["stream"] = true;
  auto running = std::async(std::launch::async, [&] { return s.post("/v1/completions", healthy); });
  wait_until([&] { return s.srv->engine().counters().running > 0; });
  auto r = s.post("/v1/completions", {{"prompt", {1, fault_marker(s.runner->config().vocab_size), 3}}, {"max_tokens", 2}});
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 500) << r->body;
  EXPECT_NE(r->body.find("injected executor fault in L0.attention"), std::string::npos) << r->body;
  const std::string st = streamed_text(running.get());
  EXPECT_NE(st.find("<error: the engine stopped after a fault in a step: injected executor fault"), std::string::npos)
      << st;
  EXPECT_EQ(st.find("<no [DONE]>"), std::string::npos) << st;
  auto h = s.client().Get("/health");
  EXPECT_EQ(h->status, 503);
  EXPECT_EQ(json::parse(h->body)["status"], "failed");
  EXPECT_NE(json::parse(h->body)["error"].get<std::string>().find("injected"), std::string::npos);
  r = s.post("/v1/completions", {{"prompt", "Hi"}, {"max_tokens", 2}});
  EXPECT_EQ(r->status, 503);
  EXPECT_NE(r->body.find("the engine stopped after a fault"), std::string::npos) << r->body;
  EXPECT_EQ(s.client().Get("/metrics")->status, 200);  // the process still answers
}

// Checklist 17: with one sequence running and --max-queue 1, a request of n = 2 is refused whole at once (none
// of its choices queued), one of n = 1 waits, and the next gets 503 at once.
TEST(ServerLimits, QueueLimitRefusesAtOnceAndAdmitsChoicesAllOrNothing) {
  REQUIRE_MODEL();
  ServerOptions o;
  o.engine.max_num_seqs = 1;
  o.engine.max_queue = 1;
  TestServer s(o);
  auto blocker = std::async(std::launch::async, [&] { return s.post("/v1/completions", long_greedy(s, "Count:", 120)); });
  wait_until([&] { return s.srv->engine().counters().running == 1; });
  const auto timed_post = [&](const json& b, double* seconds) {
    const auto t0 = std::chrono::steady_clock::now();
    auto r = s.post("/v1/completions", b);
    *seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    return r;
  };
  double took = 0;
  auto r = timed_post({{"prompt", "Hi"}, {"max_tokens", 2}, {"n", 2}}, &took);
  EXPECT_EQ(r->status, 503) << r->body;
  EXPECT_NE(r->body.find("2 sequences (n) do not fit"), std::string::npos) << r->body;
  EXPECT_LT(took, 1.0);
  EXPECT_EQ(s.srv->engine().counters().waiting, 0);
  auto queued = std::async(std::launch::async, [&] { return s.post("/v1/completions", {{"prompt", "Hi"}, {"max_tokens", 2}}); });
  wait_until([&] { return s.srv->engine().counters().waiting == 1; });
  r = timed_post({{"prompt", "Hello"}, {"max_tokens", 2}}, &took);
  EXPECT_EQ(r->status, 503) << r->body;
  EXPECT_LT(took, 1.0);
  EXPECT_EQ(blocker.get()->status, 200);
  EXPECT_EQ(queued.get()->status, 200);
  EXPECT_EQ(s.srv->engine().counters().aborted, 0);  // nothing of the refused requests ever ran
}

// Checklist 16, before the first token: a streamed request waiting in the queue whose client hangs up is dropped
// from the queue (the keep-alive write fails) and never runs.
TEST(ServerLimits, ClientDisconnectBeforeTheFirstTokenDropsTheQueuedRequest) {
  REQUIRE_MODEL();
  ServerOptions o;
  o.engine.max_num_seqs = 1;
  TestServer s(o);
  auto blocker = std::async(std::launch::async, [&] { return s.post("/v1/completions", long_greedy(s, "Count:", 300)); });
  wait_until([&] { return s.srv->engine().counters().running == 1; });
  {
    httplib::Client c("127.0.0.1", s.srv->port());
    httplib::Request req;
    req.method = "POST";
    req.path = "/v1/completions";
    req.body = json({{"prompt", "Hi"}, {"max_tokens", 50}, {"stream", true}}).dump();
    req.set_header("Content-Type", "application/json");
    std::string got;
    req.content_receiver = [&](const char* d, size_t n, uint64_t, uint64_t) {
      got.append(d, n);
      return false;  // the first bytes (a keep-alive comment while it waits): hang up
    };
    c.send(req);
    EXPECT_EQ(got.rfind(": keep-alive", 0), 0u) << got;
  }
  wait_until([&] { return s.srv->engine().counters().aborted == 1; });
  const EngineCounters c = s.srv->engine().counters();
  EXPECT_EQ(c.aborted, 1);
  EXPECT_EQ(c.waiting, 0);
  EXPECT_EQ(c.running, 1) << "the blocker was meant to be still running";
  EXPECT_EQ(blocker.get()->status, 200);
  ASSERT_TRUE(s.srv->engine().drain(10));
  EXPECT_EQ(s.srv->engine().counters().kv_pages_free, s.srv->engine().counters().kv_pages_total);
}

// Total KV memory: a growing CPU pool grows only to what max_num_seqs sequences of max_model_len need, however
// many distinct prompts leave their pages in the prefix cache (those are evicted, not added to). Pages of 4
// tokens keep the prompts (the cost of this test) short.
TEST(ServerLimits, KvPoolStaysBoundedUnderManyDistinctPrompts) {
  REQUIRE_MODEL();
  RunnerOptions r = serve_runner();
  r.page_size = 4;
  r.kv_tokens = 16;  // 4 pages to start with
  ServerOptions o;
  o.engine.max_num_seqs = 4;
  o.engine.max_model_len = 32;
  TestServer s(o, r);
  std::vector<int64_t> totals;
  for (int round = 0; round < 3; ++round) {
    std::vector<std::future<int>> f;
    for (int k = 0; k < 12; ++k)
      f.push_back(std::async(std::launch::async, [&, round, k] {
        // (8 tokens or more: each leaves two full pages in the prefix cache)
        const std::string p = "Note " + std::to_string(round * 12 + k) + ": day " + std::to_string(k * 7919 + round);
        return s.post("/v1/completions", {{"prompt", p}, {"max_tokens", 2}, {"temperature", 0}})->status;
      }));
    for (auto& x : f) EXPECT_EQ(x.get(), 200);
    ASSERT_TRUE(s.srv->engine().drain(10));
    const EngineCounters c = s.srv->engine().counters();
    EXPECT_EQ(c.kv_pages_free, c.kv_pages_total);
    EXPECT_GT(c.kv_pages_cached, 0);
    totals.push_back(c.kv_pages_total);
  }
  // 36 distinct prompts have left 72 or more full pages behind; the pool holds fewer.
  const int64_t need = 4 * (32 / 4);  // max_num_seqs sequences of max_model_len tokens
  EXPECT_LE(totals.back(), 2 * need) << "the pool doubles when it grows, so at most twice the need";
  EXPECT_EQ(totals[1], totals[2]) << "the pool grew after the second round: " << totals[1] << " -> " << totals[2];
}

struct BadCase {
  const char* path;
  std::string body;
  const char* param;    // the field error.param must name ("": none; the JSON parser's own errors name none)
  const char* message;  // a fragment of error.message
};

// Checklist 13-15, what BadRequestsGetOpenAIErrorsNamingTheField does not cover: every sampling parameter out of
// range or not finite (a JSON number beyond double, 1e400, was a 500 from the JSON parser), token ids out of the
// vocabulary wherever one is given, numbers too large for their type, malformed field shapes. Each gets a 400
// naming the field (the parser's own errors name none); never a 500.
TEST(ServerLimits, SamplingAndTokenIdTablesGet400) {
  REQUIRE_MODEL();
  TestServer s;
  const std::string m = R"({"messages":[{"role":"user","content":"hi"}],)";
  const char* chat = "/v1/chat/completions";
  const char* cmpl = "/v1/completions";
  const BadCase cases[] = {
      {chat, m + R"("temperature":-0.5})", "temperature", "[0, 2]"},
      {chat, m + R"("temperature":1e400})", "", "number overflow"},
      {chat, m + R"("top_p":1.5})", "top_p", "[0, 1]"},
      {chat, m + R"("top_p":-1e400})", "", "number overflow"},
      {chat, m + R"("top_k":-2})", "top_k", "[-1,"},
      {chat, m + R"("top_k":1.5})", "top_k", "integer"},
      {chat, m + R"("top_k":1e30})", "top_k", "[-1,"},
      {chat, m + R"("min_p":-0.1})", "min_p", "[0, 1]"},
      {chat, m + R"("min_p":1.01})", "min_p", "[0, 1]"},
      {chat, m + R"("repetition_penalty":0})", "repetition_penalty", "[0.001, 100]"},
      {chat, m + R"("repetition_penalty":1e400})", "", "number overflow"},
      {chat, m + R"("presence_penalty":-2.5})", "presence_penalty", "[-2, 2]"},
      {chat, m + R"("frequency_penalty":1e400})", "", "number overflow"},
      {chat, m + R"("max_tokens":-1})", "max_tokens", "[1,"},
      {chat, m + R"("max_tokens":1e300})", "max_tokens", "[1,"},
      {chat, m + R"("max_tokens":2.5})", "max_tokens", "integer"},
      {chat, m + R"("max_completion_tokens":0})", "max_completion_tokens", "[1,"},
      {chat, m + R"("n":0})", "n", "[1, 16]"},
      {chat, m + R"("n":-3})", "n", "[1, 16]"},
      {chat, m + R"("stop":""})", "stop", "must not be empty"},
      {chat, m + R"("stop":["a",""]})", "stop", "must not be empty"},
      {chat, m + R"("stop":["a","b","c","d","e"]})", "stop", "at most 4"},
      {chat, m + R"("stop":{"a":1}})", "stop", "string or an array"},
      {chat, m + R"("seed":1.5})", "seed", "integer"},
      {chat, m + R"("seed":1e300})", "seed", "integer"},
      {chat, m + R"("logprobs":true,"top_logprobs":21})", "top_logprobs", "[0, 20]"},
      {chat, m + R"("top_logprobs":2})", "top_logprobs", "needs 'logprobs'"},
      {chat, m + R"("logprobs":"yes"})", "logprobs", "boolean"},
      {chat, m + R"("stream":1})", "stream", "boolean"},
      {chat, m + R"("stream_options":[true]})", "stream_options", "object"},
      {chat, m + R"("logit_bias":{"-1":1}})", "logit_bias", "token id in [0, 49152)"},
      {chat, m + R"("logit_bias":{"49152":1}})", "logit_bias", "token id in [0, 49152)"},
      {chat, m + R"("logit_bias":{"99999999999999999999":1}})", "logit_bias", "token id"},
      {chat, m + R"("logit_bias":{"12abc":1}})", "logit_bias", "token id"},
      {chat, m + R"("logit_bias":{"":1}})", "logit_bias", "token id"},
      {chat, m + R"("logit_bias":{"5":101}})", "logit_bias", "[-100, 100]"},
      {chat, m + R"("logit_bias":{"5":1e400}})", "", "number overflow"},
      {chat, m + R"("logit_bias":{"5":"x"}})", "logit_bias", "[-100, 100]"},
      {chat, m + R"("logit_bias":[1]})", "logit_bias", "object"},
      {chat, R"({"messages":[{"role":"user","content":5}]})", "messages[0].content", "string or an array"},
      {chat, R"({"messages":[{"role":"user"}]})", "messages[0].content", "required"},
      {chat, R"({"messages":[{"role":"user","content":[{"type":"image_url"}]}]})", "messages[0].content", "text"},
      {chat, R"({"messages":[7]})", "messages[0]", "object"},
      {chat, R"({"messages":[{"role":"user","content":"hi"}],"model":5})", "model", "string"},
      {cmpl, R"({"prompt":[-1,2]})", "prompt", "token id in [0, 49152)"},
      {cmpl, R"({"prompt":[1,99999999999999999999]})", "prompt", "token id"},
      {cmpl, R"({"prompt":[1,2.5]})", "prompt", "token id"},
      {cmpl, R"({"prompt":[1,"a"]})", "prompt", "token id"},
      {cmpl, R"({"prompt":["a","b"]})", "prompt", "one request each"},
      {cmpl, R"({"prompt":[]})", "prompt", "array of token ids"},
      {cmpl, R"({"prompt":{"text":"a"}})", "prompt", "must be a string"},
      {cmpl, R"({"prompt":"x","logprobs":6})", "logprobs", "[0, 5]"},
      {cmpl, R"({"prompt":"x","echo":true})", "echo", "not supported"},
  };
  for (const BadCase& c : cases) {
    SCOPED_TRACE(std::string(c.path) + " " + c.body);
    auto r = s.client().Post(c.path, c.body, "application/json");
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 400) << r->body;
    const json j = json::parse(r->body, nullptr, false);
    ASSERT_TRUE(j.is_object() && j.contains("error")) << r->body;
    EXPECT_EQ(j["error"]["type"], "invalid_request_error");
    if (*c.param) {
      EXPECT_EQ(j["error"]["param"], c.param) << r->body;
    }
    EXPECT_NE(j["error"]["message"].get<std::string>().find(c.message), std::string::npos) << r->body;
  }
  EXPECT_EQ(s.post("/v1/completions", {{"prompt", "Hi"}, {"max_tokens", 2}})->status, 200);
}

// Checklist 12: a prompt longer than the context and prompt + max_tokens over it get 400s naming both numbers.
TEST(ServerLimits, ContextLimitErrorsNameBothNumbers) {
  REQUIRE_MODEL();
  ServerOptions o;
  o.engine.max_model_len = 32;
  TestServer s(o);
  std::vector<int> ids(40, 42);
  auto r = s.post("/v1/completions", {{"prompt", ids}, {"max_tokens", 1}});
  EXPECT_EQ(r->status, 400);
  EXPECT_NE(r->body.find("the prompt is 40 tokens; this model's context is 32 tokens"), std::string::npos) << r->body;
  ids.resize(20);
  r = s.post("/v1/completions", {{"prompt", ids}, {"max_tokens", 13}});
  EXPECT_EQ(r->status, 400);
  EXPECT_EQ(json::parse(r->body)["error"]["param"], "max_tokens");
  EXPECT_NE(r->body.find("the prompt (20 tokens) + max_tokens (13) = 33 exceeds this model's context of 32"),
            std::string::npos) << r->body;
  r = s.post("/v1/completions", {{"prompt", ids}, {"max_tokens", 12}});  // exactly the context: fine
  EXPECT_EQ(r->status, 200) << r->body;
  // Chat without max_tokens: the rest of the context (documented: max_tokens defaults to what is left).
  r = s.post("/v1/chat/completions", {{"messages", {{{"role", "user"}, {"content", "Hi"}}}}, {"temperature", 0}});
  EXPECT_EQ(r->status, 200) << r->body;
}

// Checklist 19, timeout 0: shutdown aborts what runs; its client gets the text so far with finish_reason "abort",
// and a request still waiting gets the same, at once.
TEST(ServerLimits, ShutdownWithoutDrainTimeAbortsRunningRequests) {
  REQUIRE_MODEL();
  ServerOptions o;
  o.engine.max_num_seqs = 1;
  auto s = std::make_unique<TestServer>(o);
  auto running = std::async(std::launch::async, [&] { return s->post("/v1/completions", long_greedy(*s, "Count:", 1000)); });
  wait_until([&] { return s->srv->engine().counters().generated_tokens > 2; });
  auto waiting = std::async(std::launch::async, [&] { return s->post("/v1/completions", long_greedy(*s, "Hi", 1000)); });
  wait_until([&] { return s->srv->engine().counters().waiting == 1; });
  const auto t0 = std::chrono::steady_clock::now();
  s->srv->shutdown(0);
  for (auto* f : {&running, &waiting}) {
    auto r = f->get();
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 200) << r->body;
    EXPECT_EQ(json::parse(r->body)["choices"][0]["finish_reason"], "abort") << r->body;
  }
  EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), 5.0);
  const EngineCounters c = s->srv->engine().counters();
  EXPECT_EQ(c.aborted, 2);
  EXPECT_EQ(c.kv_pages_free, c.kv_pages_total);
}

}  // namespace
}  // namespace tandem::server
