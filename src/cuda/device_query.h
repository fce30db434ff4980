// GPU discovery that never fails: zero devices means the engine runs on the CPU.
#pragma once
#include <string>

namespace tandem::cuda {
int device_count();
std::string device_name(int index);
}  // namespace tandem::cuda
