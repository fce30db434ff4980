// Test conveniences: executors over the CPU and CUDA hosts with a path preset and optional overrides.
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "cpu/cpu_host.h"
#include "cuda/cuda_host.h"
#include "runtime/executor.h"
#include "runtime/plan.h"

namespace tandem {

struct TestRunnerOptions {
  int64_t page_size = 16;
  KvLayout layout = KvLayout::NHD;
  std::vector<std::string> variants = {};
  bool kv_poison = false;
  int64_t kv_tokens = 0;
  bool cuda_graphs = true;
};

inline std::unique_ptr<Executor> reference_runner(std::shared_ptr<const Model> model, const TestRunnerOptions& o = {}) {
  const ModelConfig cfg = model->config;
  Plan plan = build_plan({"reference", o.variants, o.layout, &cfg, DType::F32});
  auto host = cpu::make_cpu_host(std::move(model), HostOptions{DType::F32, o.kv_tokens, o.page_size, o.layout});
  return std::make_unique<Executor>(std::move(host), std::move(plan), ExecutorOptions{o.kv_poison, false, o.cuda_graphs});
}

// A CUDA path preset ("standard", "fused") over the model's weights.
inline std::unique_ptr<Executor> cuda_runner(const std::string& path, const ModelSource& src, DType dtype,
                                             int64_t kv_tokens, TestRunnerOptions o = {}) {
  Plan plan = build_plan({path, o.variants, o.layout, &src.config(), dtype});
  auto host = cuda::make_cuda_host(src, HostOptions{dtype, kv_tokens, o.page_size, o.layout}, nullptr);
  return std::make_unique<Executor>(std::move(host), std::move(plan), ExecutorOptions{o.kv_poison, false, o.cuda_graphs});
}

inline std::unique_ptr<Executor> standard_runner(const ModelSource& src, DType dtype, int64_t kv_tokens,
                                                 TestRunnerOptions o = {}) {
  return cuda_runner("standard", src, dtype, kv_tokens, std::move(o));
}

}  // namespace tandem
