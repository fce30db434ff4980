// The serving engine: continuous batching over one Executor on a thread of its own.
//
// Every step it (1) drops aborted sequences, (2) admits waiting requests while fewer than max_num_seqs run, (3)
// builds one ragged Step: a token for every sequence that is decoding, then prompt chunks of the sequences still
// in prefill, at most max_num_batched_tokens tokens in all (chunked prefill mixed with decode), (4) runs it and
// samples a token for every sequence whose last prompt token (or last token) was in the step. When the KV pool
// cannot hold the step (KvOutOfPages: nothing ran), the most recently admitted running sequence is preempted:
// its pages are freed and it goes back to the front of the queue with its prompt plus the tokens generated so
// far, recomputed when it is admitted again (vLLM's preemption by recompute; its sampler keeps its state, so a
// preempted request ends with exactly the tokens it would have had alone when the path is batch-invariant).
// With the runner's prefix caching on, an admitted sequence starts after the cached pages of its prefix, and
// every full page it computes is published for later ones (a preempted sequence finds its own pages again).
// Requests are independent: a request's callbacks run on the engine thread, in the order of its tokens.
//
// Faults. A sampled row whose logits hold a NaN or Inf, one value or all, fails that request alone whichever way
// its token is chosen (the host scans the rows it samples; the device's argmax or sampler gives its sentinel for
// such a row): "error", naming the step and the first non-finite tap found by rerunning the sequence alone with taps
// on (generate.h locate_non_finite); the others go on. An exception from the executor's forward()
// other than KvOutOfPages kills the engine: its state (and a CUDA context after a kernel fault) can no longer be
// trusted, so every running and waiting request fails with the error, submit() throws Failed from then on, and
// failure() says why (the server's /health turns 503).
#pragma once
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "runtime/executor.h"
#include "runtime/sampler.h"

namespace tandem {

struct EngineOptions {
  int max_num_seqs = 16;                // sequences running at once
  int max_queue = 256;                  // requests waiting beyond those (submit() refuses more)
  int64_t max_num_batched_tokens = 512; // tokens per step (prefill chunks + decodes)
  int64_t max_model_len = 0;            // prompt + new tokens per sequence (0: the model's context)
  // Every sampled logits row comes back to the host and is scanned for NaN/Inf, and the host samples it (steps are
  // never greedy_only nor Step::sampling). Without it the same rows fail (the device's argmax or sampler,
  // exec/sampling.h sample_token, gives no token for a row with any NaN/Inf), but the logits stay on the device and
  // the error cannot count them. Requests with logprobs, logit_bias or presence/frequency penalties always have
  // their step's rows copied to the host.
  bool check_logits = false;
};

// One sampled token; logprob and top (most likely tokens with their logprobs) when the request asked for them.
struct TokenEvent {
  int32_t token = -1;
  float logprob = 0.0f;
  std::vector<std::pair<int32_t, float>> top;
};

struct EngineResult {
  std::vector<int32_t> tokens;  // generated tokens, the end-of-generation token (if hit) included
  std::string finish_reason;    // "stop" (eos or stop id, or finish() from a callback), "length", "abort", "error"
  std::string error;            // finish_reason "error": what went wrong
  int64_t prompt_tokens = 0;
  int preemptions = 0;
  int64_t cached_tokens = 0;    // prompt tokens found in the prefix cache when first admitted
  uint64_t seed = 0;
};

struct EngineRequest {
  std::vector<int32_t> prompt;
  int64_t max_new_tokens = 16;
  SamplingParams sampling;
  std::vector<int32_t> stop_ids;  // end of generation besides the model's eos ids
  bool stop_at_eos = true;
  int top_logprobs = -1;          // -1: no logprobs; 0: the chosen token's; k: and the k most likely
  std::vector<std::pair<int32_t, float>> logit_bias;  // added to those logits before sampling
  // OpenAI's penalties over the tokens generated so far: logit -= presence * (count > 0) + frequency * count.
  float presence_penalty = 0.0f, frequency_penalty = 0.0f;
  // Engine thread, once per token; return false to finish the request now ("stop": a stop string was seen).
  std::function<bool(const TokenEvent&)> on_token;
  // Engine thread, exactly once, last.
  std::function<void(const EngineResult&)> on_done;
};

struct EngineCounters {
  int64_t running = 0, waiting = 0;
  int64_t prompt_tokens = 0, generated_tokens = 0, steps = 0, preemptions = 0;
  int64_t kv_pages_total = 0, kv_pages_free = 0;  // free includes cached pages no sequence uses (evictable)
  int64_t kv_pages_cached = 0;
  int64_t prefix_hit_tokens = 0, prefix_query_tokens = 0;  // prompt tokens found cached / looked up
  int64_t finished = 0, aborted = 0, failed = 0;
};

class Engine {
 public:
  Engine(Executor& runner, EngineOptions options);
  ~Engine();  // aborts what is left and joins the engine thread
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  // Throws tandem::Error naming the field for an invalid request (empty prompt, id outside the vocabulary, prompt
  // + max_new_tokens over max_model_len, bad sampling values); QueueFull when max_queue requests wait or admission
  // is closed. Returns the request's id.
  class QueueFull : public Error {
   public:
    using Error::Error;
  };
  // The engine stopped after a fault (failure() says which); nothing is admitted any more.
  class Failed : public Error {
   public:
    using Error::Error;
  };
  uint64_t submit(EngineRequest request);
  // All or nothing (the n choices of one request): every request is validated and queued, or none is and this
  // throws (QueueFull when they do not all fit). Returns their ids in order.
  std::vector<uint64_t> submit(std::vector<EngineRequest> requests);
  // Finishes the request with "abort" within one step (a client that went away); unknown ids are ignored.
  void abort(uint64_t id);
  // Refuse new requests from now on (graceful shutdown); drain() waits until nothing runs or waits, or timeout.
  void close_admission();
  bool drain(double timeout_seconds);
  // Finishes every running and waiting request with "abort" within one step (a drain that timed out).
  void abort_all();
  EngineCounters counters() const;
  // Empty while the engine works; else the fault that stopped it.
  std::string failure() const;
  int64_t max_model_len() const { return max_model_len_; }

 private:
  struct Seq;
  void loop();
  bool step_once();  // false when there was nothing to do
  void finish(Seq& s, std::string reason, std::string error = {});
  void admit();
  void preempt_newest();
  void fail_non_finite(Seq& s, int64_t step, const std::string& what);
  void die(const std::string& what);
  void validate(const EngineRequest& r) const;

  Executor& runner_;
  EngineOptions options_;
  int64_t max_model_len_ = 0;
  mutable std::mutex mu_;
  std::condition_variable cv_, idle_cv_;
  std::deque<std::unique_ptr<Seq>> waiting_;   // guarded by mu_
  std::vector<uint64_t> aborts_;               // guarded by mu_
  bool stop_ = false, closed_ = false;         // guarded by mu_
  bool abort_all_ = false;                     // guarded by mu_
  std::string failure_;                        // guarded by mu_
  std::vector<std::unique_ptr<Seq>> running_;  // engine thread only (sizes mirrored into counters_)
  EngineCounters counters_;                    // guarded by mu_
  uint64_t next_id_ = 1;                       // guarded by mu_
  int32_t next_seq_ = 0;                       // engine thread only
  std::thread thread_;
};

}  // namespace tandem
