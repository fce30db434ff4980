#include "cuda/device_query.h"

#include <cuda_runtime.h>

namespace tandem::cuda {

int device_count() {
  int n = 0;
  // No driver or no GPU is not an error here: it means "run on the CPU".
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    (void)cudaGetLastError();
    return 0;
  }
  return n;
}

std::string device_name(int index) {
  cudaDeviceProp prop{};
  if (cudaGetDeviceProperties(&prop, index) != cudaSuccess) {
    (void)cudaGetLastError();
    return "unknown";
  }
  return prop.name;
}

}  // namespace tandem::cuda
