// The CPU device host: weights in host memory (fp32 for the reference variants, cpu/reference_variants.cpp; in
// their stored format for the fast ones, cpu/cpu_variants.cpp; both when a plan mixes them), the paged KV pools in
// host memory (grown on demand), and activation slots sized per step.
#pragma once
#include <memory>

#include "exec/device_host.h"

namespace tandem::cpu {

// A host over fp32 weights loaded already (it cannot run variants that read stored-format weights).
std::unique_ptr<DeviceHost> make_cpu_host(std::shared_ptr<const Model> model, const HostOptions& options);
// A host that reads `source`'s weights in prepare_weights (the executor's constructor), in the formats the plan
// needs; `source` must outlive that call.
std::unique_ptr<DeviceHost> make_cpu_host(const ModelSource& source, const HostOptions& options,
                                          LoadProgress progress);

}  // namespace tandem::cpu
