// A small persistent thread pool for the CPU paths: parallel_for splits [0, n) into contiguous chunks, one per
// worker, and blocks until all are done. Deterministic: each index is computed by exactly one thread with the same
// arithmetic whatever the thread count. Threads spin briefly (~300 us) between regions before they sleep, since a
// decode step runs hundreds of short regions; a nested parallel_for runs inline on the calling thread.
#pragma once
#include <cstdint>
#include <functional>

namespace tandem {

// Threads used by parallel_for: TANDEM_THREADS if set, else every hardware thread.
int num_threads();
void set_num_threads(int n);

// fn(begin, end) over chunks of [0, n). Runs inline when n is small or one thread is configured.
void parallel_for(int64_t n, const std::function<void(int64_t, int64_t)>& fn, int64_t min_chunk = 1);

}  // namespace tandem
