// The limits of this GPU, measured in the same process as the benchmark they judge: device-to-device copy
// bandwidth (bytes read + bytes written per second) and the bf16 GEMM rate of cuBLASLt on a large square
// product of random data. Also the card's name and driver.
#pragma once
#include <cuda_runtime.h>

#include <string>

namespace tandem::cuda {

struct Ceilings {
  double copy_bw_GBps = 0;
  double gemm_peak_tflops = 0;
};

double measure_copy_bandwidth_GBps(cudaStream_t stream, int64_t bytes = int64_t(1) << 30, int reps = 20);
double measure_gemm_peak_tflops(cudaStream_t stream, int64_t n = 8192, int reps = 20);
std::string card_name();
// The NVIDIA kernel driver version (/proc/driver/nvidia/version), else the CUDA driver API version.
std::string driver_version();
// Bytes of device memory in use right now (all processes).
int64_t device_memory_used();

}  // namespace tandem::cuda
