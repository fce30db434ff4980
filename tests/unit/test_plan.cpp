// Plans: presets + --variant overrides, and every check build_plan makes. Test-only variants registered here
// (a two-stage CPU variant, an NHD-only attention, an attention that refuses head_dim 2) stand in for the fused
// variants to come.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "cli_run.h"
#include "core/error.h"
#include "cpu/ops.h"
#include "runtime/plan.h"

namespace tandem {
namespace {
using ::testing::HasSubstr;

std::string error_of(const PlanRequest& r) {
  try {
    build_plan(r);
  } catch (const Error& e) {
    return e.what();
  }
  return "<no error>";
}

Variant test_variant(std::string name, Stage first, Stage last, std::vector<KvLayout> layouts = {}) {
  Variant v;
  v.name = std::move(name);
  v.device = Device::CPU;
  v.stages = {first, last};
  v.kv_layouts = std::move(layouts);
  v.test_only = true;
  v.run = [](const VariantArgs&) {};
  return v;
}

TD_REGISTER_VARIANT(test_variant("qkv_rope.test_fused", Stage::qkv, Stage::rope));
TD_REGISTER_VARIANT(test_variant("attention.test_nhd_only", Stage::attention, Stage::attention, {KvLayout::NHD}));
TD_REGISTER_VARIANT([] {
  Variant v = test_variant("attention.test_picky", Stage::attention, Stage::attention, {KvLayout::NHD, KvLayout::HND});
  v.unsupported = [](const ModelConfig& c, DType) -> std::optional<std::string> {
    if (c.head_dim == 2) return "head_dim 2 is not instantiated";
    return std::nullopt;
  };
  return v;
}());
TD_REGISTER_PATH(PathPreset{"test_fused_cpu", Device::CPU, "reference with a fused qkv..rope", [] {
                              std::vector<std::string> v;
                              for (int s = 0; s < kNumStages; ++s)
                                if (Stage(s) != Stage::qkv && Stage(s) != Stage::rope)
                                  v.push_back(std::string(stage_name(Stage(s))) + ".reference");
                              v.push_back("qkv_rope.test_fused");
                              return v;
                            }()});

TEST(Plan, PresetsCoverEveryStageOnOneDevice) {
  for (const char* path : {"reference", "standard", "test_fused_cpu"}) {
    const Plan p = build_plan({path});
    for (int s = 0; s < kNumStages; ++s) ASSERT_NE(p.by_stage[size_t(s)], nullptr) << path << " " << s;
    for (const Variant* v : p.segments) EXPECT_EQ(v->device, p.device) << v->name;
  }
  EXPECT_EQ(build_plan({"reference"}).device, Device::CPU);
  EXPECT_EQ(build_plan({"standard"}).device, Device::CUDA);
  EXPECT_EQ(build_plan({"test_fused_cpu"}).segments.size(), size_t(kNumStages - 1));
}

TEST(Plan, OverrideChangesExactlyTheStageAsked) {
  const Plan base = build_plan({"reference"});
  for (const char* name : {"test_drop_last_key", "attention.test_drop_last_key"}) {
    const Plan p = build_plan({"reference", {std::string("attention=") + name}});
    for (int s = 0; s < kNumStages; ++s) {
      if (Stage(s) == Stage::attention) EXPECT_EQ(p.by_stage[size_t(s)]->name, "attention.test_drop_last_key");
      else EXPECT_EQ(p.by_stage[size_t(s)], base.by_stage[size_t(s)]) << stage_name(Stage(s));
    }
    EXPECT_EQ(p.overridden, std::vector<std::string>{"attention.test_drop_last_key"});
  }
  // A multi-stage variant swapped in whole, and a preset's multi-stage variant replaced whole.
  const Plan fused = build_plan({"reference", {"qkv=qkv_rope.test_fused"}});
  EXPECT_EQ(fused.by_stage[size_t(Stage::rope)]->name, "qkv_rope.test_fused");
  EXPECT_EQ(fused.segments.size(), size_t(kNumStages - 1));
  const Plan unfused = build_plan({"test_fused_cpu", {"qkv=reference", "rope=reference"}});
  EXPECT_EQ(unfused.by_stage[size_t(Stage::qkv)]->name, "qkv.reference");
  EXPECT_EQ(unfused.by_stage[size_t(Stage::rope)]->name, "rope.reference");
}

TEST(Plan, EachInvalidCombinationIsNamed) {
  EXPECT_THAT(error_of({"nonsense", {}}), HasSubstr("--path nonsense: no such path; known: "));
  EXPECT_THAT(error_of({"reference", {"attention"}}), HasSubstr("--variant attention: expected STAGE=NAME"));
  EXPECT_THAT(error_of({"reference", {"atention=reference"}}), HasSubstr("no stage 'atention'; stages: embed, "));
  EXPECT_THAT(error_of({"reference", {"attention=fast"}}),
              HasSubstr("no variant 'fast' for stage attention on cpu; there: attention.reference, "));
  EXPECT_THAT(error_of({"reference", {"attention=qkv.reference"}}),
              HasSubstr("qkv.reference covers qkv, not attention"));
  // Another device's variant: a plan stays on one device.
  EXPECT_THAT(error_of({"reference", {"attention=attention.standard"}}),
              HasSubstr("attention.standard runs on cuda, and the reference path runs on cpu"));
  EXPECT_THAT(error_of({"standard", {"attention=attention.reference"}}),
              HasSubstr("attention.reference runs on cpu, and the standard path runs on cuda"));
  EXPECT_THAT(error_of({"reference", {"attention=reference", "attention=test_drop_last_key"}}),
              HasSubstr("--variant attention=test_drop_last_key: stage attention is already set by --variant attention=reference"));
  // Splitting a multi-stage variant names it, its range and the stage that broke it.
  EXPECT_THAT(error_of({"test_fused_cpu", {"rope=reference"}}),
              HasSubstr("qkv_rope.test_fused covers qkv..rope as one kernel and cannot be split, but rope is "
                        "rope.reference"));
  EXPECT_THAT(error_of({"reference", {"qkv=qkv_rope.test_fused", "rope=reference"}}),
              HasSubstr("--variant rope=reference: stage rope is already set by --variant qkv=qkv_rope.test_fused"));
  // KV layout disagreement names the variant, its layouts and its KV neighbours.
  EXPECT_THAT(error_of({"reference", {"attention=test_nhd_only"}, KvLayout::HND}),
              HasSubstr("attention.test_nhd_only reads/writes the KV cache in nhd only, but the cache is hnd "
                        "(--kv-layout); its KV neighbours: kv_write.reference"));
  EXPECT_EQ(build_plan({"reference", {"attention=test_nhd_only"}, KvLayout::NHD}).kv_layout, KvLayout::NHD);
  // A variant that cannot run the model says why.
  ModelConfig c;
  c.head_dim = 2;
  EXPECT_THAT(error_of({"reference", {"attention=test_picky"}, KvLayout::NHD, &c, DType::F32}),
              HasSubstr("attention.test_picky cannot run this model: head_dim 2 is not instantiated"));
  c.head_dim = 64;
  EXPECT_NO_THROW(build_plan({"reference", {"attention=test_picky"}, KvLayout::NHD, &c, DType::F32}));
}

ModelConfig gpu_config(int64_t head_dim) {
  ModelConfig c;
  c.n_heads = 9;
  c.n_kv_heads = 3;
  c.head_dim = head_dim;
  c.n_layers = 2;
  return c;
}

TEST(Plan, FusedPresetIsWholeAndFallsBackStageByStage) {
  const ModelConfig c64 = gpu_config(64);
  const Plan p = build_plan({"fused", {}, KvLayout::NHD, &c64, DType::BF16});
  EXPECT_EQ(p.device, Device::CUDA);
  EXPECT_TRUE(p.notices.empty()) << p.notices.front();
  EXPECT_EQ(p.by_stage[size_t(Stage::attention)]->name, "attention.fused");
  EXPECT_EQ(p.by_stage[size_t(Stage::attn_norm)]->name, "attn_norm..kv_write.fused");
  EXPECT_EQ(p.by_stage[size_t(Stage::rope)]->name, "attn_norm..kv_write.fused");
  EXPECT_EQ(p.by_stage[size_t(Stage::attn_residual)]->name, "o_proj..attn_residual.fused");
  EXPECT_EQ(p.by_stage[size_t(Stage::mlp_norm)]->name, "mlp_norm..act.fused");
  EXPECT_EQ(p.by_stage[size_t(Stage::act)]->name, "mlp_norm..act.fused");
  EXPECT_EQ(p.by_stage[size_t(Stage::mlp_residual)]->name, "down..mlp_residual.fused");
  // embed, four fused per-layer runs (of 4, 2, 3 and 2 stages), attention, final_norm, logits
  EXPECT_EQ(p.segments.size(), size_t(8));

  // head_dim 32 (and f32) are outside FlashInfer's instantiations: attention falls back alone, with a notice.
  const ModelConfig c32 = gpu_config(32);
  for (const auto& [cfg, dt] : {std::pair{&c32, DType::BF16}, std::pair{&c64, DType::F32}}) {
    const Plan f = build_plan({"fused", {}, KvLayout::HND, cfg, dt});
    EXPECT_EQ(f.by_stage[size_t(Stage::attention)]->name, "attention.standard");
    EXPECT_EQ(f.by_stage[size_t(Stage::rope)]->name, "attn_norm..kv_write.fused");
    ASSERT_EQ(f.notices.size(), 1u);
    EXPECT_THAT(f.notices[0], HasSubstr("path fused: attention.fused cannot run this model ("));
    EXPECT_THAT(f.notices[0], HasSubstr("); attention.standard instead"));
  }
  // Asked for by name, an unsupported variant is an error, not a fallback.
  EXPECT_THAT(error_of({"fused", {"attention=flashinfer"}, KvLayout::NHD, &c32, DType::BF16}),
              HasSubstr("attention.flashinfer cannot run this model: "));
}

TEST(Plan, FusedNormsNeedTheFusedResidual) {
  const ModelConfig c = gpu_config(64);
  const std::vector<std::string> standard_down = {"down=standard", "mlp_residual=standard"};
  // Swapping the fused down + residual: the preset's variants that read the norm it leaves in h follow it to
  // standard, each with a notice.
  const Plan p = build_plan({"fused", standard_down, KvLayout::NHD, &c, DType::BF16});
  EXPECT_EQ(p.by_stage[size_t(Stage::attn_norm)]->name, "attn_norm.standard");
  EXPECT_EQ(p.by_stage[size_t(Stage::kv_write)]->name, "kv_write.standard");
  EXPECT_EQ(p.by_stage[size_t(Stage::final_norm)]->name, "final_norm.standard");
  EXPECT_EQ(p.by_stage[size_t(Stage::act)]->name, "mlp_norm..act.fused");  // its residual variant is still there
  ASSERT_EQ(p.notices.size(), 2u);
  EXPECT_THAT(p.notices[0], HasSubstr("attn_norm..kv_write.fused cannot run this model (it needs "
                                      "down..mlp_residual.fused, which is not in the plan); attn_norm.standard + "));
  // The same for the MLP's norm and the attention residual.
  const Plan q = build_plan({"fused", {"o_proj=standard", "attn_residual=standard"}, KvLayout::NHD, &c, DType::BF16});
  EXPECT_EQ(q.by_stage[size_t(Stage::mlp_norm)]->name, "mlp_norm.standard");
  EXPECT_EQ(q.by_stage[size_t(Stage::act)]->name, "act.standard");
  ASSERT_EQ(q.notices.size(), 1u);
  EXPECT_THAT(q.notices[0], HasSubstr("mlp_norm..act.fused cannot run this model (it needs o_proj..attn_residual.fused"));
  // Chosen by name, the dependent variant cannot be swapped: the plan fails and says why.
  std::vector<std::string> both = standard_down;
  both.push_back("attn_norm=fused");
  EXPECT_THAT(error_of({"fused", both, KvLayout::NHD, &c, DType::BF16}),
              HasSubstr("attn_norm..kv_write.fused needs down..mlp_residual.fused in the same plan (in the GEMM "
                        "regime"));
  EXPECT_THAT(error_of({"fused", standard_down}), HasSubstr("attn_norm..kv_write.fused needs down..mlp_residual.fused"));
  // A fused residual split in two: named.
  EXPECT_THAT(error_of({"fused", {"mlp_residual=standard"}, KvLayout::NHD, &c, DType::BF16}),
              HasSubstr("down..mlp_residual.fused covers down..mlp_residual as one kernel and cannot be split"));
  // The standard variants do not need the fused residual: recomputing the norm is redundant, not wrong.
  EXPECT_NO_THROW(build_plan({"fused",
                              {"attn_norm=standard", "qkv=standard", "rope=standard", "kv_write=standard",
                               "mlp_norm=standard", "gate_up=standard", "act=standard", "final_norm=standard"},
                              KvLayout::NHD, &c, DType::BF16}));
}

TEST(Plan, RegistryRejectsMalformedVariants) {
  EXPECT_THROW(register_variant(test_variant("attention.reference", Stage::attention, Stage::attention)), Error);
  EXPECT_THROW(register_variant(test_variant("x.test", Stage::rope, Stage::qkv)), Error);
  EXPECT_THROW(register_variant(test_variant("x.test2", Stage::mlp_residual, Stage::final_norm)), Error);
  EXPECT_THROW(register_variant(test_variant("x.test3", Stage::embed, Stage::attn_norm)), Error);
}

TEST(Plan, InfoVariantsShowsTheTableAndTheOverride) {
  RunResult r = run_tandem("info --variants --path reference");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("attention.reference"));
  EXPECT_THAT(r.output, HasSubstr("attention.standard"));
  EXPECT_THAT(r.output, HasSubstr("(test only)"));
  EXPECT_THAT(r.output, HasSubstr("path reference on cpu, KV layout nhd"));
  EXPECT_THAT(r.output, ::testing::Not(HasSubstr("(--variant)")));
  r = run_tandem("info --variants --path reference --variant attention=test_drop_last_key --kv-layout hnd");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("attention.test_drop_last_key  (--variant)"));
  EXPECT_THAT(r.output, HasSubstr("KV layout hnd"));
  EXPECT_THAT(r.output, HasSubstr("kv_write.reference\n"));
  r = run_tandem("info --variants --path reference --variant attention=attention.standard");
  EXPECT_NE(r.exit_code, 0);
  EXPECT_THAT(r.output, HasSubstr("attention.standard runs on cuda"));
}

}  // namespace
}  // namespace tandem
