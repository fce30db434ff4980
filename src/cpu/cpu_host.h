// The CPU device host: fp32 weights in host memory, the paged KV pools in host memory (grown on demand), and
// activation slots sized per step. It runs the reference variants (cpu/reference_variants.cpp).
#pragma once
#include <memory>

#include "exec/device_host.h"

namespace tandem::cpu {

std::unique_ptr<DeviceHost> make_cpu_host(std::shared_ptr<const Model> model, const HostOptions& options);

}  // namespace tandem::cpu
