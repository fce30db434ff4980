#include "runtime/engine.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <map>
#include <span>

#include "core/error.h"
#include "runtime/generate.h"

namespace tandem {

struct Engine::Seq {
  uint64_t id = 0;
  EngineRequest req;
  Sampler sampler;
  std::vector<int32_t> tokens;  // prompt + generated: what the cache must hold before the next sample
  int64_t computed = 0;         // tokens whose K/V are cached (0 again after a preemption)
  int32_t seq = -1;             // the runner's sequence while it holds one
  bool running = false;         // counted in counters_.running
  EngineResult result;
  Seq(uint64_t id_, EngineRequest r) : id(id_), req(std::move(r)), sampler(req.sampling), tokens(req.prompt) {
    result.prompt_tokens = int64_t(req.prompt.size());
    result.seed = sampler.seed();
  }
  int64_t generated() const { return int64_t(result.tokens.size()); }
};

Engine::Engine(Executor& runner, EngineOptions options) : runner_(runner), options_(options) {
  const int64_t ctx = runner_.config().max_positions;
  max_model_len_ = options_.max_model_len > 0 ? std::min(options_.max_model_len, ctx) : ctx;
  TD_CHECK(options_.max_num_seqs >= 1, "--max-num-seqs {}: must be at least 1", options_.max_num_seqs);
  TD_CHECK(options_.max_queue >= 0, "--max-queue {}: must not be negative", options_.max_queue);
  TD_CHECK(options_.max_num_batched_tokens >= options_.max_num_seqs,
           "--max-num-batched-tokens {} must be at least --max-num-seqs {} (every running sequence decodes a token "
           "a step)", options_.max_num_batched_tokens, options_.max_num_seqs);
  counters_.kv_pages_total = runner_.pages().num_pages();
  counters_.kv_pages_free = runner_.pages().free_pages();
  thread_ = std::thread([this] { loop(); });
}

Engine::~Engine() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  thread_.join();
}

void Engine::validate(const EngineRequest& r) const {
  const ModelConfig& c = runner_.config();
  TD_CHECK(!r.prompt.empty(), "the prompt is empty");
  for (size_t i = 0; i < r.prompt.size(); ++i)
    TD_CHECK(r.prompt[i] >= 0 && r.prompt[i] < c.vocab_size,
             "prompt token {} has id {}, outside the vocabulary (size {})", i, r.prompt[i], c.vocab_size);
  TD_CHECK(r.max_new_tokens >= 1, "max_tokens must be at least 1, got {}", r.max_new_tokens);
  TD_CHECK(int64_t(r.prompt.size()) < max_model_len_,
           "the prompt has {} tokens; the context is {} tokens (--max-model-len), and one is needed to answer",
           r.prompt.size(), max_model_len_);
  TD_CHECK(int64_t(r.prompt.size()) + r.max_new_tokens <= max_model_len_,
           "prompt ({} tokens) + max_tokens ({}) = {} exceeds the context of {} tokens (--max-model-len)",
           r.prompt.size(), r.max_new_tokens, int64_t(r.prompt.size()) + r.max_new_tokens, max_model_len_);
  r.sampling.validate();
  TD_CHECK(r.top_logprobs <= 20, "top_logprobs must be at most 20, got {}", r.top_logprobs);
  for (const auto& [id, bias] : r.logit_bias)
    TD_CHECK(id >= 0 && id < c.vocab_size && std::isfinite(bias), "logit_bias: token {} (bias {}) must be an id in "
             "[0, {}) with a finite bias", id, bias, c.vocab_size);
}

uint64_t Engine::submit(EngineRequest r) {
  std::vector<EngineRequest> one;
  one.push_back(std::move(r));
  return submit(std::move(one)).front();
}

std::vector<uint64_t> Engine::submit(std::vector<EngineRequest> rs) {
  TD_CHECK(!rs.empty(), "no requests to submit");
  for (const EngineRequest& r : rs) validate(r);
  std::unique_lock<std::mutex> lock(mu_);
  if (!failure_.empty()) throw Failed("the engine stopped after a fault: " + failure_);
  if (closed_) throw QueueFull("the server is shutting down");
  // Free running slots count as room: a request admitted next step never waits.
  const int64_t room = options_.max_queue + std::max<int64_t>(0, options_.max_num_seqs - counters_.running) -
                       int64_t(waiting_.size());
  if (int64_t(rs.size()) > room)
    throw QueueFull(rs.size() == 1 ? fmt::format("{} requests are waiting (--max-queue {})", waiting_.size(),
                                                 options_.max_queue)
                                   : fmt::format("{} sequences (n) do not fit: {} requests are waiting (--max-queue "
                                                 "{}), room for {} more", rs.size(), waiting_.size(),
                                                 options_.max_queue, std::max<int64_t>(0, room)));
  std::vector<uint64_t> ids;
  for (EngineRequest& r : rs) {
    ids.push_back(next_id_++);
    waiting_.push_back(std::make_unique<Seq>(ids.back(), std::move(r)));
  }
  counters_.waiting = int64_t(waiting_.size());
  lock.unlock();
  cv_.notify_all();
  return ids;
}

void Engine::abort(uint64_t id) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    aborts_.push_back(id);
  }
  cv_.notify_all();
}

void Engine::abort_all() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    abort_all_ = true;
    for (const auto& sp : waiting_) aborts_.push_back(sp->id);
  }
  cv_.notify_all();
}

void Engine::close_admission() {
  std::lock_guard<std::mutex> lock(mu_);
  closed_ = true;
}

bool Engine::drain(double timeout_seconds) {
  std::unique_lock<std::mutex> lock(mu_);
  return idle_cv_.wait_for(lock, std::chrono::duration<double>(timeout_seconds),
                           [this] { return counters_.running == 0 && counters_.waiting == 0; });
}

EngineCounters Engine::counters() const {
  std::lock_guard<std::mutex> lock(mu_);
  return counters_;
}

std::string Engine::failure() const {
  std::lock_guard<std::mutex> lock(mu_);
  return failure_;
}

void Engine::finish(Seq& s, std::string reason, std::string error) {
  const bool was_running = s.running;
  try {
    if (s.seq >= 0) runner_.release_sequence(s.seq);
  } catch (const std::exception&) {  // (a runner after a fault): on_done must still run, or its client waits forever
  }
  s.seq = -1;
  s.running = false;
  s.result.finish_reason = std::move(reason);
  s.result.error = std::move(error);
  {
    std::lock_guard<std::mutex> lock(mu_);
    // (before on_done: a client that submits from it finds the slot free)
    if (was_running) counters_.running--;
    counters_.kv_pages_free = runner_.pages().free_pages();
    counters_.kv_pages_cached = runner_.pages().cached_pages();
    counters_.finished += s.result.finish_reason == "stop" || s.result.finish_reason == "length";
    counters_.aborted += s.result.finish_reason == "abort";
    counters_.failed += s.result.finish_reason == "error";
    counters_.preemptions += s.result.preemptions;
    counters_.prompt_tokens += s.result.prompt_tokens;
  }
  if (s.req.on_done) s.req.on_done(s.result);
}

void Engine::admit() {
  while (int64_t(running_.size()) < options_.max_num_seqs) {
    std::unique_ptr<Seq> s;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (waiting_.empty()) return;
      s = std::move(waiting_.front());
      waiting_.pop_front();
      counters_.waiting = int64_t(waiting_.size());
    }
    s->seq = next_seq_++;
    try {
      runner_.create_sequence(s->seq, s->result.prompt_tokens + s->req.max_new_tokens);
      s->computed = runner_.attach_prefix(s->seq, s->tokens);  // 0 without prefix caching
    } catch (const Error& e) {  // (cannot happen for a validated request) fails this request, not another
      finish(*s, "error", e.what());
      continue;
    }
    if (s->result.preemptions == 0) s->result.cached_tokens = s->computed;
    s->running = true;
    running_.push_back(std::move(s));
    std::lock_guard<std::mutex> lock(mu_);
    counters_.prefix_hit_tokens += running_.back()->computed;
    counters_.prefix_query_tokens += int64_t(running_.back()->tokens.size());
    counters_.running = int64_t(running_.size());
  }
}

void Engine::preempt_newest() {
  std::unique_ptr<Seq> s = std::move(running_.back());
  running_.pop_back();
  runner_.release_sequence(s->seq);
  s->seq = -1;
  s->running = false;
  s->computed = 0;
  s->result.preemptions++;
  std::lock_guard<std::mutex> lock(mu_);
  waiting_.push_front(std::move(s));
  counters_.waiting = int64_t(waiting_.size());
  counters_.running = int64_t(running_.size());
}

namespace {
// log-softmax of one row at `token`, and the k most likely (ties: lower id first); NaN entries never count.
TokenEvent with_logprobs(std::span<const float> row, int32_t token, int k) {
  TokenEvent e;
  e.token = token;
  double m = -INFINITY;
  for (float v : row)
    if (!std::isnan(v)) m = std::max(m, double(v));
  double sum = 0;
  for (float v : row)
    if (!std::isnan(v)) sum += std::exp(double(v) - m);
  const double lse = m + std::log(sum);
  e.logprob = float(double(row[size_t(token)]) - lse);
  if (k > 0) {
    std::vector<int32_t> ids(row.size());
    for (size_t i = 0; i < ids.size(); ++i) ids[i] = int32_t(i);
    const auto better = [&](int32_t a, int32_t b) {
      const float x = std::isnan(row[size_t(a)]) ? -INFINITY : row[size_t(a)];
      const float y = std::isnan(row[size_t(b)]) ? -INFINITY : row[size_t(b)];
      return x != y ? x > y : a < b;
    };
    const size_t n = std::min(ids.size(), size_t(k));
    std::partial_sort(ids.begin(), ids.begin() + long(n), ids.end(), better);
    for (size_t i = 0; i < n; ++i) e.top.push_back({ids[i], float(double(row[size_t(ids[i])]) - lse)});
  }
  return e;
}
}  // namespace

void Engine::fail_non_finite(Seq& s, int64_t step, const std::string& what) {
  // Its pages go first: the rerun needs room for the same tokens.
  try {
    runner_.release_sequence(s.seq);
  } catch (const std::exception&) {
  }
  s.seq = -1;
  const std::string why = locate_non_finite(runner_, next_seq_++, s.tokens, options_.max_num_batched_tokens);
  finish(s, "error",
         fmt::format("the logits for output token {} (position {}, engine step {}) {}, so no token can be sampled; {}",
                     s.generated() + 1, s.tokens.size() - 1, step, what, why));
}

void Engine::die(const std::string& what) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    failure_ = what;
    closed_ = true;
  }
  const std::string msg = "the engine stopped after a fault in a step: " + what;
  for (auto& sp : running_) finish(*sp, "error", msg);
  running_.clear();
  std::deque<std::unique_ptr<Seq>> left;
  {
    std::lock_guard<std::mutex> lock(mu_);
    left.swap(waiting_);
    counters_.waiting = 0;
  }
  for (auto& sp : left) finish(*sp, "error", msg);
}

bool Engine::step_once() {
  // Aborts first: a waiting request ends at once, a running one before the step.
  std::vector<uint64_t> aborts;
  {
    std::lock_guard<std::mutex> lock(mu_);
    aborts.swap(aborts_);
    if (abort_all_) {
      for (const auto& sp : running_) aborts.push_back(sp->id);
      for (const auto& sp : waiting_) aborts.push_back(sp->id);
      abort_all_ = false;
    }
  }
  for (uint64_t id : aborts) {
    for (size_t i = 0; i < running_.size(); ++i)
      if (running_[i]->id == id) {
        finish(*running_[i], "abort");
        running_.erase(running_.begin() + long(i));
        break;
      }
    std::unique_ptr<Seq> waiting;
    {
      std::lock_guard<std::mutex> lock(mu_);
      for (auto it = waiting_.begin(); it != waiting_.end(); ++it)
        if ((*it)->id == id) {
          waiting = std::move(*it);
          waiting_.erase(it);
          counters_.waiting = int64_t(waiting_.size());
          break;
        }
    }
    if (waiting) finish(*waiting, "abort");
  }
  admit();
  if (running_.empty()) return false;

  const ModelConfig& c = runner_.config();
  for (;;) {
    // Decodes first (one token each), then prompt chunks in admission order within the token budget.
    Step step;
    std::vector<std::pair<Seq*, int64_t>> fed;  // sequence, tokens fed this step
    std::vector<Seq*> sampled;                   // sequences whose logits row comes back, in step order
    int64_t budget = options_.max_num_batched_tokens;
    bool greedy_only = true;  // every sampled row needs only its argmax
    bool on_device = !options_.check_logits;  // every sampled row can be sampled by the runner (no host-side logits)
    for (int pass = 0; pass < 2; ++pass)
      for (auto& sp : running_) {
        Seq& s = *sp;
        const int64_t left = int64_t(s.tokens.size()) - s.computed;
        const bool decoding = left == 1;
        if ((pass == 0) != decoding || budget == 0) continue;
        const int64_t n = std::min(left, budget);
        budget -= n;
        for (int64_t i = 0; i < n; ++i) {
          const int64_t p = s.computed + i;
          const bool last = p + 1 == int64_t(s.tokens.size());
          step.add(s.tokens[size_t(p)], s.seq, int32_t(p), last);
        }
        fed.push_back({&s, n});
        if (s.computed + n == int64_t(s.tokens.size())) {
          sampled.push_back(&s);
          on_device = on_device && s.req.top_logprobs < 0 && s.req.logit_bias.empty() &&
                      s.req.presence_penalty == 0.0f && s.req.frequency_penalty == 0.0f;
          greedy_only = greedy_only && s.req.sampling.greedy() &&
                        (s.req.sampling.repeat_penalty == 1.0f || s.req.sampling.repeat_last_n == 0);
        }
      }
    // Token ids come back instead of logits rows when no sampled row needs its logits on the host: the argmax of
    // each, or the runner samples each with its sampler's draw (committed below once the token is taken).
    step.greedy_only = on_device && greedy_only && !sampled.empty();
    if (on_device && !greedy_only)
      for (Seq* s : sampled) step.sampling.push_back(s->sampler.peek_draw(s->tokens));
    StepOutput out;
    try {
      out = runner_.forward(step, nullptr);
    } catch (const KvOutOfPages& e) {
      if (running_.size() == 1) {  // alone and still too big: the pool cannot hold this request at all
        finish(*running_.back(), "error", e.what());
        running_.clear();
        return true;
      }
      preempt_newest();
      continue;
    } catch (const std::exception& e) {  // the executor's state is no longer known: the engine stops (see engine.h)
      die(e.what());
      return true;
    }
    const int64_t V = c.vocab_size;
    const int64_t step_no = [&] {
      std::lock_guard<std::mutex> lock(mu_);
      return counters_.steps;
    }();
    // The NaN guard, before the step's pages are offered to the prefix cache: a poisoned sequence's are not.
    std::vector<std::string> non_finite(sampled.size());
    for (size_t i = 0; i < sampled.size(); ++i) {
      if (!out.argmax.empty() || !out.sampled.empty()) {
        // The device pick's sentinel: one NaN/Inf anywhere in the row (exec/step.h greedy_token), not counted.
        if ((out.argmax.empty() ? out.sampled[i] : out.argmax[i]) == kNonFiniteRow)
          non_finite[i] = fmt::format("hold NaN or Inf among {} values (the {} found one; --check-logits counts them)",
                                      V, out.argmax.empty() ? "sampler" : "greedy pick");
      } else {
        const NonFiniteRow nf = count_non_finite_row({out.logits.f32() + int64_t(i) * V, size_t(V)});
        if (nf.any()) non_finite[i] = fmt::format("hold {} NaN and {} Inf of {} values", nf.nan, nf.inf, V);
      }
    }
    for (auto& [s, n] : fed) {
      s->computed += n;
      const auto at = std::find(sampled.begin(), sampled.end(), s);
      if (at == sampled.end() || non_finite[size_t(at - sampled.begin())].empty())
        runner_.publish_prefix(s->seq, std::span<const int32_t>(s->tokens.data(), size_t(s->computed)));
    }
    std::vector<Seq*> done;
    for (size_t i = 0; i < sampled.size(); ++i) {
      Seq& s = *sampled[i];
      if (!non_finite[i].empty()) {
        fail_non_finite(s, step_no, non_finite[i]);
        done.push_back(&s);
        continue;
      }
      std::span<const float> row;
      std::vector<float> biased;
      if (out.argmax.empty() && out.sampled.empty())
        row = std::span<const float>(out.logits.f32() + int64_t(i) * V, size_t(V));
      const bool penalties = s.req.presence_penalty != 0.0f || s.req.frequency_penalty != 0.0f;
      if (!row.empty() && (!s.req.logit_bias.empty() || (penalties && !s.result.tokens.empty()))) {
        biased.assign(row.begin(), row.end());
        for (const auto& [id, b] : s.req.logit_bias) biased[size_t(id)] += b;
        if (penalties) {
          std::map<int32_t, int> counts;
          for (int32_t t : s.result.tokens) counts[t]++;
          for (const auto& [t, n] : counts)
            biased[size_t(t)] -= s.req.presence_penalty + s.req.frequency_penalty * float(n);
        }
        row = biased;
      }
      int32_t tok = -1;
      try {
        // greedy_only steps chose on the device (the sampler's greedy rule), sampled steps with the sampler's draw;
        // otherwise the sampler draws here.
        if (!out.argmax.empty()) {
          tok = out.argmax[i];
        } else if (!out.sampled.empty()) {
          tok = out.sampled[i];
          TD_CHECK(tok >= 0, "sampler: all {} logits are NaN/-inf after the repetition penalty", V);
          s.sampler.accept_draw();
        } else {
          tok = s.sampler.sample(row, s.tokens);
        }
      } catch (const Error& e) {
        finish(s, "error", e.what());
        done.push_back(&s);
        continue;
      }
      s.tokens.push_back(tok);
      s.result.tokens.push_back(tok);
      TokenEvent ev = s.req.top_logprobs >= 0 && !row.empty() ? with_logprobs(row, tok, s.req.top_logprobs)
                                                               : TokenEvent{tok, 0.0f, {}};
      const bool keep_going = !s.req.on_token || s.req.on_token(ev);
      const auto& stops = s.req.stop_ids;
      const bool eos = s.req.stop_at_eos &&
                       (std::find(c.eos_token_ids.begin(), c.eos_token_ids.end(), tok) != c.eos_token_ids.end() ||
                        std::find(stops.begin(), stops.end(), tok) != stops.end());
      bool aborted = false;
      if (!keep_going) {  // a callback that ends the request: a stop string, or a client gone (aborted already)
        std::lock_guard<std::mutex> lock(mu_);
        aborted = std::find(aborts_.begin(), aborts_.end(), s.id) != aborts_.end();
      }
      if (!keep_going || eos) {
        finish(s, aborted ? "abort" : "stop");
        done.push_back(&s);
      } else if (s.generated() >= s.req.max_new_tokens) {
        finish(s, "length");
        done.push_back(&s);
      }
    }
    std::erase_if(running_, [&](const std::unique_ptr<Seq>& sp) {
      return std::find(done.begin(), done.end(), sp.get()) != done.end();
    });
    std::lock_guard<std::mutex> lock(mu_);
    counters_.steps++;
    counters_.generated_tokens += int64_t(sampled.size());
    return true;
  }
}

void Engine::loop() {
  for (;;) {
    bool worked = false;
    try {
      worked = step_once();
    } catch (const std::exception& e) {  // nothing may take the engine thread down
      for (auto& sp : running_) {
        try {
          finish(*sp, "error", e.what());
        } catch (...) {
        }
      }
      running_.clear();
      worked = true;
    }
    std::unique_lock<std::mutex> lock(mu_);
    counters_.running = int64_t(running_.size());
    counters_.kv_pages_total = runner_.pages().num_pages();
    counters_.kv_pages_free = runner_.pages().free_pages();
    counters_.kv_pages_cached = runner_.pages().cached_pages();
    if (counters_.running == 0 && counters_.waiting == 0) idle_cv_.notify_all();
    if (stop_) break;
    if (!worked) cv_.wait(lock, [this] { return stop_ || !waiting_.empty() || !aborts_.empty(); });
    if (stop_) break;
  }
  // Shutting down: whatever is left ends as aborted.
  for (auto& sp : running_) finish(*sp, "abort");
  running_.clear();
  std::deque<std::unique_ptr<Seq>> left;
  {
    std::lock_guard<std::mutex> lock(mu_);
    left.swap(waiting_);
    counters_.waiting = 0;
    counters_.running = 0;
  }
  for (auto& sp : left) finish(*sp, "abort");
  idle_cv_.notify_all();
}

}  // namespace tandem
