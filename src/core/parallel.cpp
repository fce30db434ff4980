#include "core/parallel.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <exception>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define TD_CPU_RELAX() _mm_pause()
#else
#define TD_CPU_RELAX() std::this_thread::yield()
#endif

namespace tandem {
namespace {

// How long a thread spins on an atomic before it sleeps on a condition variable. A decode step runs a parallel
// region every 10-100 us; waking a sleeping thread through the kernel costs 10-50 us, which at ~200 regions a token
// was a third of a decode step on 2 cores. Bounded, so an idle pool (or one sharing cores with other processes)
// stops burning CPU soon after the last region.
constexpr auto kSpin = std::chrono::microseconds(300);

// Spin until pred() or kSpin has passed; true when pred() held.
template <class Pred>
bool spin_until(Pred pred) {
  const auto deadline = std::chrono::steady_clock::now() + kSpin;
  for (;;) {
    for (int i = 0; i < 64; ++i) {
      if (pred()) return true;
      TD_CPU_RELAX();
    }
    if (std::chrono::steady_clock::now() > deadline) return pred();
  }
}

thread_local bool t_in_region = false;  // nested parallel_for runs inline instead of deadlocking

class Pool {
 public:
  explicit Pool(int n) : n_(std::clamp(n, 1, 0xFFFF)) {
    for (int i = 1; i < n_; ++i) workers_.emplace_back([this, i] { loop(i); });
  }
  ~Pool() {
    stop_.store(true);
    {
      std::lock_guard lk(mu_);
    }
    wake_cv_.notify_all();
    for (auto& t : workers_) t.join();
  }
  int size() const { return n_; }

  void run(int64_t n, const std::function<void(int64_t, int64_t)>& fn, int64_t min_chunk) {
    const int64_t max_parts = std::max<int64_t>(1, n / std::max<int64_t>(1, min_chunk));
    const int parts = int(std::min<int64_t>(n_, max_parts));
    if (parts <= 1 || t_in_region) {
      fn(0, n);
      return;
    }
    std::unique_lock run_lk(run_mu_);  // one parallel region at a time
    fn_ = &fn;
    n_items_ = n;
    error_ = nullptr;
    pending_.store(parts - 1);
    // seq_cst: publishes the fields above; pairs with sleepers_ (see loop). The part count travels in the ticket so a
    // worker never pairs one region's generation with another's part count.
    ticket_.store(((ticket_.load() >> 16) + 1) << 16 | uint64_t(parts));
    if (sleepers_.load() > 0) {
      { std::lock_guard lk(mu_); }
      wake_cv_.notify_all();
    }
    t_in_region = true;
    run_part(0, n / parts);
    t_in_region = false;
    if (!spin_until([this] { return pending_.load(std::memory_order_acquire) == 0; })) {
      std::unique_lock lk(mu_);
      main_waiting_.store(true);
      done_cv_.wait(lk, [this] { return pending_.load() == 0; });
      main_waiting_.store(false);
    }
    fn_ = nullptr;
    if (error_) std::rethrow_exception(error_);
  }

 private:
  void run_part(int64_t begin, int64_t end) {
    try {
      if (begin < end) (*fn_)(begin, end);
    } catch (...) {
      std::lock_guard lk(mu_);
      if (!error_) error_ = std::current_exception();
    }
  }
  void loop(int index) {
    t_in_region = true;
    uint64_t seen = 0;
    for (;;) {
      auto fresh = [&] { return stop_.load(std::memory_order_relaxed) || ticket_.load(std::memory_order_acquire) != seen; };
      if (!spin_until(fresh)) {
        // Dekker with run(): we raise sleepers_ and then read ticket_; run() bumps ticket_ and then reads
        // sleepers_ (all seq_cst), so at least one of us sees the other and no wake-up is lost.
        std::unique_lock lk(mu_);
        sleepers_.fetch_add(1);
        wake_cv_.wait(lk, [&] { return stop_.load() || ticket_.load() != seen; });
        sleepers_.fetch_sub(1);
      }
      if (stop_.load()) return;
      seen = ticket_.load();
      const int parts = int(seen & 0xFFFF);
      if (index >= parts) continue;
      const int64_t begin = n_items_ * index / parts, end = n_items_ * (index + 1) / parts;
      run_part(begin, end);
      if (pending_.fetch_sub(1) == 1 && main_waiting_.load()) {
        { std::lock_guard lk(mu_); }
        done_cv_.notify_one();
      }
    }
  }

  int n_;
  std::vector<std::thread> workers_;
  std::mutex mu_, run_mu_;
  std::condition_variable wake_cv_, done_cv_;
  std::atomic<bool> stop_{false}, main_waiting_{false};
  std::atomic<uint64_t> ticket_{0};  // (generation << 16) | parts of the region
  std::atomic<int> pending_{0}, sleepers_{0};
  const std::function<void(int64_t, int64_t)>* fn_ = nullptr;
  int64_t n_items_ = 0;
  std::exception_ptr error_;
};
int default_threads() {
  if (const char* env = std::getenv("TANDEM_THREADS")) {
    const int n = std::atoi(env);
    if (n > 0) return n;
  }
  return std::max(1u, std::thread::hardware_concurrency());
}

std::mutex g_pool_mu;
std::unique_ptr<Pool>& pool() {
  static std::unique_ptr<Pool> p;
  return p;
}
Pool& get_pool() {
  std::lock_guard lk(g_pool_mu);
  if (!pool()) pool() = std::make_unique<Pool>(default_threads());
  return *pool();
}
}  // namespace

int num_threads() { return get_pool().size(); }

void set_num_threads(int n) {
  std::lock_guard lk(g_pool_mu);
  pool() = std::make_unique<Pool>(n > 0 ? n : default_threads());
}

void parallel_for(int64_t n, const std::function<void(int64_t, int64_t)>& fn, int64_t min_chunk) {
  if (n <= 0) return;
  get_pool().run(n, fn, min_chunk);
}

}  // namespace tandem
