// Test-only CPU variants that inject faults into one sequence of a step, for the server's fault tests
// (test_server_faults.cpp). Registered in server_tests alone; never in a preset. Each runs the reference
// attention (or logits), then acts only on the rows whose token is a marker id, so the other sequences of the same
// step are untouched and the fault follows the sequence (a rerun of it alone meets it again).
#include <cmath>
#include <limits>

#include "core/error.h"
#include "exec/variant.h"
#include "fault_variants.h"

namespace tandem::server::test_support {
namespace {

void reference_attention(const VariantArgs& a) {
  const Variant* ref = find_variant(Device::CPU, "attention.reference");
  TD_CHECK(ref != nullptr, "attention.reference is not registered");
  ref->run(a);
}

Variant fault_variant(std::string name, std::string summary, std::function<void(const VariantArgs&)> after) {
  Variant v;
  v.name = std::move(name);
  v.device = Device::CPU;
  v.stages = {Stage::attention, Stage::attention};
  v.kv_layouts = {KvLayout::NHD, KvLayout::HND};
  v.test_only = true;
  v.summary = std::move(summary);
  v.run = [after = std::move(after)](const VariantArgs& a) {
    reference_attention(a);
    after(a);
  };
  return v;
}

// attention.test_nan_on_marker: layer kNanLayer's attention output is NaN in the rows of the marker token.
TD_REGISTER_VARIANT(fault_variant(
    "attention.test_nan_on_marker", "TEST ONLY: NaN attention rows for the marker token (vocab - 1) in one layer",
    [](const VariantArgs& a) {
      if (a.layer != kNanLayer) return;
      const int32_t marker = nan_marker(a.config.vocab_size);
      const int32_t* ids = a.step.token_ids.ptr<const int32_t>();
      const int64_t cols = a.slots.attn.shape[1];
      for (int64_t t = 0; t < a.step.tokens; ++t)
        if (ids[t] == marker)
          for (int64_t c = 0; c < cols; ++c)
            a.slots.attn.ptr<float>()[t * a.slots.attn.strides[0] + c] = std::numeric_limits<float>::quiet_NaN();
    }));

// logits.test_one_nan_on_marker: the reference logits, then ONE NaN (column nan_logit_column) in the row of each
// marker token that asked for logits: a partly NaN row, which a greedy pick that skipped NaN would still choose from.
TD_REGISTER_VARIANT([] {
  Variant v;
  v.name = "logits.test_one_nan_on_marker";
  v.device = Device::CPU;
  v.stages = {Stage::logits, Stage::logits};
  v.test_only = true;
  v.summary = "TEST ONLY: one NaN in the logits row of the marker token (vocab - 1)";
  v.run = [](const VariantArgs& a) {
    const Variant* ref = find_variant(Device::CPU, "logits.reference");
    TD_CHECK(ref != nullptr, "logits.reference is not registered");
    ref->run(a);
    const int32_t marker = nan_marker(a.config.vocab_size);
    const int32_t* ids = a.step.token_ids.ptr<const int32_t>();
    const int32_t* rows = a.step.logit_rows.ptr<const int32_t>();
    for (int64_t r = 0; r < a.slots.logits.shape[0]; ++r)
      if (ids[rows[r]] == marker)
        a.slots.logits.ptr<float>()[r * a.slots.logits.strides[0] + nan_logit_column(a.config.vocab_size)] =
            std::numeric_limits<float>::quiet_NaN();
  };
  return v;
}());

// attention.test_throw_on_marker: a step holding the fault marker (vocab - 2) throws, as a kernel fault would.
TD_REGISTER_VARIANT(fault_variant(
    "attention.test_throw_on_marker", "TEST ONLY: throws in a step that holds the fault marker (vocab - 2)",
    [](const VariantArgs& a) {
      const int32_t marker = fault_marker(a.config.vocab_size);
      const int32_t* ids = a.step.token_ids.ptr<const int32_t>();
      for (int64_t t = 0; t < a.step.tokens; ++t)
        TD_CHECK(ids[t] != marker, "injected executor fault in L{}.attention", a.layer);
    }));

}  // namespace
}  // namespace tandem::server::test_support
