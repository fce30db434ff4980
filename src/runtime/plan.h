// A plan: one variant per stage, all on one device, agreeing on the KV layout. Built from a path preset
// (exec/variant.h: "reference", "standard") plus --variant STAGE=NAME overrides, and checked: every stage covered
// once, each multi-stage variant whole, one device, the KV layout supported by every variant touching the cache,
// and the model/dtype supported, every variant's `needs` present. A failed check names the stages and variants in
// conflict. A preset with a fallback (fused -> standard) swaps, stage by stage, each of its variants that cannot run
// the model (and any variant needing one swapped) for the fallback's, and says so in Plan::notices; a variant
// chosen by --variant is never swapped: it runs or the plan fails.
#pragma once
#include <array>
#include <string>
#include <vector>

#include "exec/variant.h"

namespace tandem {

struct PlanRequest {
  std::string path = "reference";           // a preset name
  std::vector<std::string> overrides = {};  // "STAGE=NAME"; NAME is a variant name or its implementation part
  KvLayout kv_layout = KvLayout::NHD;
  const ModelConfig* config = nullptr;      // when set, variants that cannot run it are rejected
  DType dtype = DType::F32;
};

struct Plan {
  std::string path;
  Device device = Device::CPU;
  KvLayout kv_layout = KvLayout::NHD;
  std::array<const Variant*, kNumStages> by_stage{};
  std::vector<const Variant*> segments;  // the variants in stage order, each once
  std::vector<std::string> overridden;   // variant names chosen by overrides
  std::vector<std::string> notices;      // one line per preset variant replaced by its fallback (print them)
  // "stage            variant" lines, overrides marked.
  std::string describe() const;
};

Plan build_plan(const PlanRequest& request);

}  // namespace tandem
