#include "core/parallel.h"

#include <algorithm>
#include <condition_variable>
#include <cstdlib>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

namespace tandem {
namespace {

class Pool {
 public:
  explicit Pool(int n) : n_(std::max(1, n)) {
    for (int i = 1; i < n_; ++i) workers_.emplace_back([this, i] { loop(i); });
  }
  ~Pool() {
    {
      std::lock_guard lk(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    for (auto& t : workers_) t.join();
  }
  int size() const { return n_; }

  void run(int64_t n, const std::function<void(int64_t, int64_t)>& fn, int64_t min_chunk) {
    const int64_t max_parts = std::max<int64_t>(1, n / std::max<int64_t>(1, min_chunk));
    const int parts = int(std::min<int64_t>(n_, max_parts));
    if (parts <= 1) {
      fn(0, n);
      return;
    }
    std::unique_lock run_lk(run_mu_);  // one parallel region at a time
    {
      std::lock_guard lk(mu_);
      fn_ = &fn;
      n_items_ = n;
      parts_ = parts;
      pending_ = parts - 1;
      error_ = nullptr;
      ++generation_;
    }
    cv_.notify_all();
    work(0);
    std::unique_lock lk(mu_);
    done_cv_.wait(lk, [this] { return pending_ == 0; });
    fn_ = nullptr;
    if (error_) std::rethrow_exception(error_);
  }

 private:
  void work(int part) {
    const int64_t begin = n_items_ * part / parts_, end = n_items_ * (part + 1) / parts_;
    try {
      if (begin < end) (*fn_)(begin, end);
    } catch (...) {
      std::lock_guard lk(mu_);
      if (!error_) error_ = std::current_exception();
    }
  }
  void loop(int index) {
    uint64_t seen = 0;
    for (;;) {
      {
        std::unique_lock lk(mu_);
        cv_.wait(lk, [&] { return stop_ || generation_ != seen; });
        if (stop_) return;
        seen = generation_;
        if (index >= parts_) continue;
      }
      work(index);
      std::lock_guard lk(mu_);
      if (--pending_ == 0) done_cv_.notify_one();
    }
  }

  int n_;
  std::vector<std::thread> workers_;
  std::mutex mu_, run_mu_;
  std::condition_variable cv_, done_cv_;
  bool stop_ = false;
  uint64_t generation_ = 0;
  const std::function<void(int64_t, int64_t)>* fn_ = nullptr;
  int64_t n_items_ = 0;
  int parts_ = 0, pending_ = 0;
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
