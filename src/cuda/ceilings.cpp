#include "cuda/ceilings.h"

#include <algorithm>
#include <fstream>
#include <regex>
#include <vector>

#include "cuda/check.h"
#include "cuda/device_buffer.h"
#include "cuda/device_query.h"
#include "cuda/gemm.cuh"
#include "cuda/random_fill.cuh"

namespace tandem::cuda {
namespace {
double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// Median milliseconds of `reps` runs of f() on `stream`, timed with events, after 3 warm-up runs.
template <typename F>
double time_ms(cudaStream_t stream, int reps, F&& f) {
  cudaEvent_t a, b;
  TD_CUDA_CHECK(cudaEventCreate(&a));
  TD_CUDA_CHECK(cudaEventCreate(&b));
  for (int i = 0; i < 3; ++i) f();
  std::vector<double> ms;
  for (int i = 0; i < reps; ++i) {
    TD_CUDA_CHECK(cudaEventRecord(a, stream));
    f();
    TD_CUDA_CHECK(cudaEventRecord(b, stream));
    TD_CUDA_CHECK(cudaEventSynchronize(b));
    float t = 0;
    TD_CUDA_CHECK(cudaEventElapsedTime(&t, a, b));
    ms.push_back(t);
  }
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  return median(ms);
}
}  // namespace

double measure_copy_bandwidth_GBps(cudaStream_t stream, int64_t bytes, int reps) {
  DeviceTensor src = DeviceTensor::empty(DType::U8, {bytes}), dst = DeviceTensor::empty(DType::U8, {bytes});
  TD_CUDA_CHECK(cudaMemsetAsync(src.view().data, 1, size_t(bytes), stream));
  const double ms = time_ms(stream, reps, [&] {
    TD_CUDA_CHECK(cudaMemcpyAsync(dst.view().data, src.view().data, size_t(bytes), cudaMemcpyDeviceToDevice, stream));
  });
  return 2.0 * double(bytes) / (ms * 1e-3) / 1e9;
}

double measure_gemm_peak_tflops(cudaStream_t stream, int64_t n, int reps) {
  DeviceTensor x = DeviceTensor::empty(DType::BF16, {n, n}), w = DeviceTensor::empty(DType::BF16, {n, n});
  DeviceTensor y = DeviceTensor::empty(DType::BF16, {n, n});
  fill_uniform(x, 1, 0.0f, 1.0f, stream);  // random data: zeros run faster than real inputs
  fill_uniform(w, 2, 0.0f, 1.0f, stream);
  Gemm gemm;
  const double ms = time_ms(stream, reps, [&] { gemm.linear(x, w, y, stream); });
  return 2.0 * double(n) * double(n) * double(n) / (ms * 1e-3) / 1e12;
}

std::string card_name() { return device_count() > 0 ? device_name(0) : "none"; }

std::string driver_version() {
  std::ifstream f("/proc/driver/nvidia/version");
  std::string line;
  if (f && std::getline(f, line)) {
    std::smatch m;
    if (std::regex_search(line, m, std::regex(R"((\d+\.\d+(\.\d+)?))"))) return m[1].str();
  }
  int v = 0;
  if (cudaDriverGetVersion(&v) == cudaSuccess)
    return "CUDA driver API " + std::to_string(v / 1000) + "." + std::to_string((v % 1000) / 10);
  return "unknown";
}

int64_t device_memory_used() {
  size_t free_b = 0, total_b = 0;
  TD_CUDA_CHECK(cudaMemGetInfo(&free_b, &total_b));
  return int64_t(total_b - free_b);
}

}  // namespace tandem::cuda
