#include "server/server.h"

#include <httplib.h>
#include <sys/socket.h>

#include <chrono>
#include <condition_variable>
#include <deque>
#include <map>
#include <mutex>
#include <optional>

#include "server/metrics.h"
#include "runtime/stop_strings.h"
#include "server/openai.h"

namespace tandem::server {
namespace {
using nlohmann::json;
using Clock = std::chrono::steady_clock;

std::string dump(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

int64_t unix_now() {
  return std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
}

// One choice of a request: its text so far (stop strings applied), tokens and logprobs.
struct Choice {
  uint64_t engine_id = 0;
  std::optional<StreamDecoder> decoder;  // none without a tokenizer (token-id prompts): no text
  StopStrings stop;
  std::string text;
  std::vector<TokenEvent> events;    // with logprobs only
  std::vector<std::string> pieces;   // the text of each token (logprobs)
  EngineResult result;
  std::string finish_reason;
  bool done = false;
  Choice(std::optional<StreamDecoder> d, std::vector<std::string> stops)
      : decoder(std::move(d)), stop(std::move(stops)) {}
};

// What one HTTP request waits on; the engine thread fills it, the handler thread sends it.
struct Job {
  std::mutex mu;
  std::condition_variable cv;
  CompletionRequest req;
  std::string id, model;
  int64_t created = 0;
  int64_t prompt_tokens = 0;
  std::vector<std::unique_ptr<Choice>> choices;
  std::deque<std::string> events;  // SSE "data: ..." records ready to send
  int remaining = 0;
  Clock::time_point start = Clock::now(), last_token;
  bool first_token_seen = false;
};

std::string sse(const json& j) { return "data: " + dump(j) + "\n\n"; }

}  // namespace

struct Server::Impl {
  const ModelBundle& bundle;
  Executor& runner;
  ServerOptions opt;
  std::optional<ChatTemplate> chat;
  std::vector<int32_t> chat_stop_ids;
  httplib::Server http;
  std::atomic<bool> closing{false};
  Metrics metrics;
  std::atomic<uint64_t> next_id{1};
  Engine* engine = nullptr;

  Impl(const ModelBundle& b, Executor& r, ServerOptions o) : bundle(b), runner(r), opt(std::move(o)) {
    if (bundle.tokenizer) {
      try {
        chat = chat_template_for(bundle);
      } catch (const Error&) {
        chat.reset();  // /v1/chat/completions answers that the model has no chat format
      }
      chat_stop_ids = bundle.tokenizer->eos_ids();
      if (chat)
        for (const std::string& s : chat->stop_strings())
          if (auto id = bundle.tokenizer->piece_to_id(s);
              id && std::find(chat_stop_ids.begin(), chat_stop_ids.end(), *id) == chat_stop_ids.end())
            chat_stop_ids.push_back(*id);
    }
  }

  void reply_error(httplib::Response& res, const ApiError& e) {
    res.status = e.status;
    res.set_content(error_body(e), "application/json");
  }

  // A chunk of a streamed choice: text (or the chat delta), finish_reason when it ends.
  json chunk(const Job& job, size_t index, const std::string& text, const std::string* finish, bool role = false) {
    json c = {{"index", index}, {"finish_reason", finish ? json(*finish) : json(nullptr)}, {"logprobs", nullptr}};
    if (job.req.chat) {
      json delta = json::object();
      if (role) delta["role"] = "assistant";
      if (!text.empty() || (!role && !finish)) delta["content"] = text;
      c["delta"] = delta;
    } else {
      c["text"] = text;
    }
    return {{"id", job.id},
            {"object", job.req.chat ? "chat.completion.chunk" : "text_completion"},
            {"created", job.created},
            {"model", job.model},
            {"choices", json::array({c})}};
  }

  json usage(const Job& job) {
    int64_t completion = 0;
    for (const auto& c : job.choices) completion += int64_t(c->result.tokens.size());
    const int64_t cached = job.choices.empty() ? 0 : job.choices.front()->result.cached_tokens;
    return {{"prompt_tokens", job.prompt_tokens},
            {"completion_tokens", completion},
            {"total_tokens", job.prompt_tokens + completion},
            {"prompt_tokens_details", {{"cached_tokens", cached}}}};
  }

  json logprobs_of(const Job& job, const Choice& c) { return logprobs_of(job, c.events, 0); }
  // The OpenAI logprobs object of `events` (chat: content entries; completions: parallel arrays, text offsets
  // from `offset`).
  json logprobs_of(const Job& job, const std::vector<TokenEvent>& events, int64_t offset) {
    const Tokenizer& tok = *bundle.tokenizer;
    auto piece = [&](int32_t id) { return tok.decode(std::span<const int32_t>(&id, 1), false); };
    auto bytes = [](const std::string& s) {
      json b = json::array();
      for (unsigned char ch : s) b.push_back(int(ch));
      return b;
    };
    if (job.req.chat) {
      json content = json::array();
      for (const TokenEvent& e : events) {
        json top = json::array();
        for (const auto& [id, lp] : e.top) top.push_back({{"token", piece(id)}, {"logprob", lp}, {"bytes", bytes(piece(id))}});
        const std::string p = piece(e.token);
        content.push_back({{"token", p}, {"logprob", e.logprob}, {"bytes", bytes(p)}, {"top_logprobs", top}});
      }
      return {{"content", content}};
    }
    json tokens = json::array(), lps = json::array(), tops = json::array(), offsets = json::array();
    for (const TokenEvent& e : events) {
      const std::string p = piece(e.token);
      tokens.push_back(p);
      lps.push_back(e.logprob);
      json top = json::object();
      for (const auto& [id, lp] : e.top) top[piece(id)] = lp;
      tops.push_back(top);
      offsets.push_back(offset);
      offset += int64_t(p.size());
    }
    return {{"tokens", tokens}, {"token_logprobs", lps}, {"top_logprobs", tops}, {"text_offset", offsets}};
  }

  json full_response(const Job& job) {
    json choices = json::array();
    for (size_t i = 0; i < job.choices.size(); ++i) {
      const Choice& c = *job.choices[i];
      json ch = {{"index", i}, {"finish_reason", c.finish_reason}};
      ch["logprobs"] = job.req.logprobs >= 0 ? logprobs_of(job, c) : json(nullptr);
      if (job.req.chat) ch["message"] = {{"role", "assistant"}, {"content", c.text}};
      else ch["text"] = c.text;
      choices.push_back(ch);
    }
    return {{"id", job.id},
            {"object", job.req.chat ? "chat.completion" : "text_completion"},
            {"created", job.created},
            {"model", job.model},
            {"choices", choices},
            {"usage", usage(job)}};
  }

  // Parses, tokenizes and submits every choice; throws ApiError.
  std::shared_ptr<Job> start(const std::string& body, bool is_chat) {
    if (closing) throw ApiError{503, "the server is shutting down", "", "server_error"};
    const ModelConfig& cfg = runner.config();
    auto job = std::make_shared<Job>();
    job->req = parse_request(body, is_chat, int32_t(cfg.vocab_size));
    const CompletionRequest& r = job->req;
    if (!r.model.empty() && r.model != opt.served_model_name)
      throw ApiError{400, fmt::format("the model '{}' does not exist; this server serves '{}'", r.model,
                                      opt.served_model_name), "model"};
    job->model = opt.served_model_name;
    job->created = unix_now();
    job->id = fmt::format("{}-{:016x}", is_chat ? "chatcmpl" : "cmpl", next_id++);
    std::vector<int32_t> prompt;
    std::vector<int32_t> stop_ids;
    if (is_chat) {
      if (!bundle.tokenizer) throw ApiError{400, "this model has no tokenizer: use /v1/completions with token ids", "messages"};
      if (!chat) throw ApiError{400, "this model has no recognized chat format: use /v1/completions", "messages"};
      prompt = bundle.tokenizer->encode(chat->render(r.messages), false, true);
      stop_ids = chat_stop_ids;
    } else if (r.prompt_is_ids) {
      prompt = r.prompt_ids;
      if (bundle.tokenizer) stop_ids = bundle.tokenizer->eos_ids();
    } else {
      if (!bundle.tokenizer) throw ApiError{400, "this model has no tokenizer: send 'prompt' as token ids", "prompt"};
      prompt = bundle.tokenizer->encode(r.prompt_text, true, true);
      stop_ids = bundle.tokenizer->eos_ids();
    }
    if (!bundle.tokenizer && (r.logprobs >= 0 || !r.stop.empty()))
      throw ApiError{400, "logprobs and stop strings need a tokenizer; this model has none", r.stop.empty() ? "logprobs" : "stop"};
    const int64_t ctx = engine->max_model_len();
    const char* prompt_field = is_chat ? "messages" : "prompt";
    if (int64_t(prompt.size()) >= ctx)
      throw ApiError{400, fmt::format("the prompt is {} tokens; this model's context is {} tokens (--max-model-len), "
                                      "and at least one more is needed to answer", prompt.size(), ctx), prompt_field};
    const int64_t max_new = r.max_tokens > 0 ? r.max_tokens : ctx - int64_t(prompt.size());
    if (int64_t(prompt.size()) + max_new > ctx)
      throw ApiError{400, fmt::format("the prompt ({} tokens) + max_tokens ({}) = {} exceeds this model's context of {} "
                                      "tokens (--max-model-len)", prompt.size(), max_new,
                                      int64_t(prompt.size()) + max_new, ctx),
                     r.max_tokens > 0 ? "max_tokens" : prompt_field};
    job->prompt_tokens = int64_t(prompt.size());
    job->remaining = r.n;
    for (int i = 0; i < r.n; ++i)
      job->choices.push_back(std::make_unique<Choice>(
          bundle.tokenizer ? std::optional<StreamDecoder>(bundle.tokenizer->stream_decoder(true)) : std::nullopt,
          r.stop));
    if (r.stream && is_chat)
      for (int i = 0; i < r.n; ++i) job->events.push_back(sse(chunk(*job, size_t(i), "", nullptr, true)));
    // The n choices are admitted all or nothing: a full queue refuses the request whole.
    std::vector<EngineRequest> requests;
    for (int i = 0; i < r.n; ++i) {
      EngineRequest e;
      e.prompt = prompt;
      e.max_new_tokens = max_new;
      e.sampling = r.sampling;
      if (r.sampling.seed && r.n > 1) e.sampling.seed = *r.sampling.seed + uint64_t(i);
      e.stop_ids = stop_ids;
      e.top_logprobs = r.logprobs;
      e.logit_bias = r.logit_bias;
      e.presence_penalty = r.presence_penalty;
      e.frequency_penalty = r.frequency_penalty;
      // The callbacks hold the job weakly: a handler that is gone (client disconnected) has aborted its
      // requests already, and the engine ends them as aborted.
      std::weak_ptr<Job> weak = job;
      e.on_token = [this, weak, i](const TokenEvent& ev) { return on_token(weak, size_t(i), ev); };
      e.on_done = [this, weak, i](const EngineResult& res) { on_done(weak, size_t(i), res); };
      requests.push_back(std::move(e));
    }
    try {
      const std::vector<uint64_t> ids = engine->submit(std::move(requests));
      std::lock_guard<std::mutex> lock(job->mu);
      for (size_t i = 0; i < ids.size(); ++i) job->choices[i]->engine_id = ids[i];
    } catch (const Engine::QueueFull& e) {
      throw ApiError{503, std::string("the server is busy: ") + e.what() + "; retry later", "", "server_error"};
    } catch (const Engine::Failed& e) {
      throw ApiError{503, e.what(), "", "server_error"};
    } catch (const Error& e) {
      throw ApiError{400, e.what(), ""};
    }
    return job;
  }

  bool on_token(const std::weak_ptr<Job>& weak, size_t index, const TokenEvent& ev) {
    auto job = weak.lock();
    if (!job) return false;
    std::lock_guard<std::mutex> lock(job->mu);
    Choice& c = *job->choices[index];
    const Clock::time_point now = Clock::now();
    if (!job->first_token_seen) {
      job->first_token_seen = true;
      metrics.ttft.observe(std::chrono::duration<double>(now - job->start).count());
    } else {
      metrics.itl.observe(std::chrono::duration<double>(now - job->last_token).count());
    }
    job->last_token = now;
    if (job->req.logprobs >= 0) c.events.push_back(ev);
    const int64_t offset = int64_t(c.text.size());
    const std::string text = c.decoder ? c.stop.push(c.decoder->push(ev.token)) : std::string();
    c.text += text;
    // A chunk per token when logprobs ride on it (not for the token that completed a stop string), else per text.
    const bool with_lp = job->req.logprobs >= 0 && !c.stop.stopped();
    if (job->req.stream && (with_lp || !text.empty())) {
      json ch = chunk(*job, index, text, nullptr);
      if (with_lp) ch["choices"][0]["logprobs"] = logprobs_of(*job, {ev}, offset);
      job->events.push_back(sse(ch));
    }
    job->cv.notify_all();
    return !c.stop.stopped();
  }

  void on_done(const std::weak_ptr<Job>& weak, size_t index, const EngineResult& res) {
    auto job = weak.lock();
    if (!job) return;
    std::lock_guard<std::mutex> lock(job->mu);
    Choice& c = *job->choices[index];
    c.result = res;
    std::string tail;
    if (!c.stop.stopped() && c.decoder) tail = c.stop.push(c.decoder->flush()) + c.stop.flush();
    c.text += tail;
    c.finish_reason = c.stop.stopped() ? "stop" : res.finish_reason;
    c.done = true;
    if (job->req.stream) {
      if (res.finish_reason == "error") {
        job->events.push_back(sse(json::parse(error_body({500, res.error, "", "server_error"}))));
      } else {
        if (!tail.empty()) job->events.push_back(sse(chunk(*job, index, tail, nullptr)));
        job->events.push_back(sse(chunk(*job, index, "", &c.finish_reason)));
      }
    }
    job->remaining--;
    job->cv.notify_all();
  }

  void abort_all(Job& job) {
    std::lock_guard<std::mutex> lock(job.mu);
    for (const auto& c : job.choices)
      if (!c->done) engine->abort(c->engine_id);
  }

  void handle_completion(const httplib::Request& req, httplib::Response& res, bool is_chat) {
    std::shared_ptr<Job> job;
    try {
      job = start(req.body, is_chat);
    } catch (const ApiError& e) {
      reply_error(res, e);
      metrics.count_request(e.status);
      return;
    }
    if (!job->req.stream) {
      std::unique_lock<std::mutex> lock(job->mu);
      job->cv.wait(lock, [&] { return job->remaining == 0; });
      for (const auto& c : job->choices)
        if (c->result.finish_reason == "error") {
          reply_error(res, {500, c->result.error, "", "server_error"});
          metrics.count_request(500);
          return;
        }
      res.set_content(dump(full_response(*job)), "application/json");
      metrics.count_request(200);
      return;
    }
    metrics.count_request(200);
    res.set_header("Cache-Control", "no-cache");
    res.set_chunked_content_provider(
        "text/event-stream",
        [this, job](size_t, httplib::DataSink& sink) {
          std::unique_lock<std::mutex> lock(job->mu);
          for (;;) {
            if (!job->events.empty()) {
              const std::string e = std::move(job->events.front());
              job->events.pop_front();
              lock.unlock();
              if (!sink.write(e.data(), e.size())) {
                abort_all(*job);
                return false;
              }
              lock.lock();
              continue;
            }
            if (job->remaining == 0) {
              std::string end;
              if (job->req.include_usage) {
                json u = chunk(*job, 0, "", nullptr);
                u["choices"] = json::array();
                u["usage"] = usage(*job);
                end += sse(u);
              }
              end += "data: [DONE]\n\n";
              lock.unlock();
              sink.write(end.data(), end.size());
              sink.done();
              return true;
            }
            // Nothing for a while: an SSE comment line, which fails once the client has gone (then abort).
            if (!job->cv.wait_for(lock, std::chrono::milliseconds(200),
                                  [&] { return !job->events.empty() || job->remaining == 0; })) {
              lock.unlock();
              static const char kKeepAlive[] = ": keep-alive\n\n";
              if (!sink.write(kKeepAlive, sizeof kKeepAlive - 1)) {
                abort_all(*job);
                return false;
              }
              lock.lock();
            }
          }
        },
        [this, job](bool success) {
          if (!success) abort_all(*job);
        });
  }

  std::string metrics_text() {
    const EngineCounters c = engine->counters();
    return metrics.render(c);
  }

  int listen_fd = -1;

  void routes() {
    // cpp-httplib listens with a backlog of 5: a burst of clients overflows it and some see their connection
    // reset. The socket is kept here and its backlog raised after bind (listen() again on Linux). SO_REUSEADDR
    // (not httplib's SO_REUSEPORT, which would let a second server share the port silently).
    http.set_socket_options([this](socket_t sock) {
      int yes = 1;
      setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof(yes));
      listen_fd = int(sock);
    });
    http.set_payload_max_length(opt.max_body_bytes);
    const int threads = opt.threads;
    http.new_task_queue = [threads] { return new httplib::ThreadPool(size_t(threads)); };
    http.set_pre_routing_handler([this](const httplib::Request& req, httplib::Response& res) {
      if (!opt.api_key.empty() && req.path.rfind("/v1/", 0) == 0 &&
          req.get_header_value("Authorization") != "Bearer " + opt.api_key) {
        reply_error(res, {401, "a valid API key is required: 'Authorization: Bearer <key>' (--api-key)", "",
                          "authentication_error"});
        metrics.count_request(401);
        return httplib::Server::HandlerResponse::Handled;
      }
      return httplib::Server::HandlerResponse::Unhandled;
    });
    http.Post("/v1/completions", [this](const httplib::Request& q, httplib::Response& r) { handle_completion(q, r, false); });
    http.Post("/v1/chat/completions",
              [this](const httplib::Request& q, httplib::Response& r) { handle_completion(q, r, true); });
    http.Get("/v1/models", [this](const httplib::Request&, httplib::Response& r) {
      json m = {{"id", opt.served_model_name}, {"object", "model"}, {"created", unix_now()}, {"owned_by", "tandem"},
                {"max_model_len", engine->max_model_len()}};
      r.set_content(dump({{"object", "list"}, {"data", json::array({m})}}), "application/json");
    });
    // 503 once the server drains or its engine stopped after a fault (a load balancer takes it out of service).
    http.Get("/health", [this](const httplib::Request&, httplib::Response& r) {
      const std::string failure = engine->failure();
      r.status = closing || !failure.empty() ? 503 : 200;
      json j = {{"status", !failure.empty() ? "failed" : closing ? "shutting down" : "ok"}};
      if (!failure.empty()) j["error"] = failure;
      r.set_content(dump(j), "application/json");
    });
    http.Get("/metrics", [this](const httplib::Request&, httplib::Response& r) {
      r.set_content(metrics_text(), "text/plain; version=0.0.4");
    });
    http.set_error_handler([this](const httplib::Request&, httplib::Response& res) {
      if (!res.body.empty()) return;  // a handler's own error body
      const char* what = res.status == 404 ? "no such endpoint"
                         : res.status == 413 ? "the request body is too large"
                         : res.status == 405 ? "method not allowed"
                                             : "bad request";
      res.set_content(error_body({res.status, what, ""}), "application/json");
      metrics.count_request(res.status);
    });
    http.set_exception_handler([this](const httplib::Request&, httplib::Response& res, std::exception_ptr ep) {
      std::string what = "internal error";
      try {
        std::rethrow_exception(ep);
      } catch (const std::exception& e) {
        what = e.what();
      } catch (...) {
      }
      res.status = 500;
      res.set_content(error_body({500, what, "", "server_error"}), "application/json");
      metrics.count_request(500);
    });
  }
};

Server::Server(const ModelBundle& bundle, Executor& runner, ServerOptions options)
    : impl_(std::make_unique<Impl>(bundle, runner, std::move(options))) {
  engine_ = std::make_unique<Engine>(runner, impl_->opt.engine);
  impl_->engine = engine_.get();
  impl_->routes();
}

Server::~Server() {
  impl_->http.stop();
  engine_.reset();  // aborts what is left; callbacks see their jobs gone
}

void Server::bind() {
  Impl& m = *impl_;
  if (m.opt.port == 0) {
    port_ = m.http.bind_to_any_port(m.opt.host);
    TD_CHECK(port_ > 0, "cannot listen on {} (any port)", m.opt.host);
  } else {
    TD_CHECK(m.http.bind_to_port(m.opt.host, m.opt.port), "cannot listen on {}:{} (in use, or not an address of this "
             "machine?)", m.opt.host, m.opt.port);
    port_ = m.opt.port;
  }
  if (m.listen_fd >= 0) ::listen(m.listen_fd, SOMAXCONN);
}

void Server::serve() { impl_->http.listen_after_bind(); }

void Server::shutdown(double drain_seconds) {
  impl_->closing = true;
  engine_->close_admission();
  // What the drain did not finish ends as "abort" (its clients get their text so far and finish_reason abort).
  if (!engine_->drain(drain_seconds)) {
    engine_->abort_all();
    engine_->drain(10);
  }
  impl_->http.stop();
}

}  // namespace tandem::server
