#include "runtime/plan.h"

#include <algorithm>
#include <optional>
#include <map>
#include <sstream>

#include "core/error.h"

namespace tandem {
namespace {

std::string stage_list() {
  std::string s;
  for (int i = 0; i < kNumStages; ++i) s += (i ? ", " : "") + std::string(stage_name(Stage(i)));
  return s;
}

std::string names_for_stage(Device d, Stage s) {
  std::string out;
  for (const Variant* v : variants_for(d))
    if (v->stages.contains(s)) out += (out.empty() ? "" : ", ") + v->name;
  return out.empty() ? "none" : out;
}

const Variant* resolve(Device d, Stage s, const std::string& name, const std::string& arg, const std::string& path) {
  const Variant* v = find_variant(d, name);
  if (!v) v = find_variant(d, std::string(stage_name(s)) + "." + name);
  if (!v)
    for (const Variant* c : variants_for(d))
      if (c->stages.contains(s) && c->impl() == name) v = c;
  if (!v) {
    const Device other = d == Device::CPU ? Device::CUDA : Device::CPU;
    const Variant* o = find_variant(other, name);
    if (!o) o = find_variant(other, std::string(stage_name(s)) + "." + name);
    TD_CHECK(!o, "--variant {}: {} runs on {}, and the {} path runs on {} (a plan stays on one device; comparing "
             "devices is what `tandem diff` is for)", arg, o->name, device_name(other), path, device_name(d));
    fail("--variant {}: no variant '{}' for stage {} on {}; there: {}", arg, name, stage_name(s), device_name(d),
         names_for_stage(d, s));
  }
  TD_CHECK(v->stages.contains(s), "--variant {}: {} covers {}, not {}", arg, v->name, v->stages.str(),
           stage_name(s));
  return v;
}


bool in_plan(const std::array<const Variant*, kNumStages>& by_stage, const std::string& name) {
  return std::any_of(by_stage.begin(), by_stage.end(), [&](const Variant* v) { return v && v->name == name; });
}

// Swaps each preset variant that cannot run the model (or needs a variant no longer in the plan) for the fallback
// preset's variants of the same stages, until none is left; variants chosen by --variant stay.
void apply_fallback(Plan& plan, const PathPreset& preset, const PlanRequest& r, const std::map<Stage, std::string>& set_by) {
  const PathPreset* fb = find_path(preset.fallback);
  TD_CHECK(fb && fb->device == preset.device, "path {}: fallback preset {} is not a {} path", preset.name,
           preset.fallback, device_name(preset.device));
  std::array<const Variant*, kNumStages> fb_stage{};
  for (const std::string& name : fb->variants) {
    const Variant* v = find_variant(fb->device, name);
    TD_CHECK(v, "path {}: variant {} is not registered", fb->name, name);
    for (int s = int(v->stages.first); s <= int(v->stages.last); ++s) fb_stage[size_t(s)] = v;
  }
  auto swap = [&](const Variant* v, const std::string& why) {
    std::string names;
    for (int s = int(v->stages.first); s <= int(v->stages.last); ++s) {
      const Variant* f = fb_stage[size_t(s)];
      TD_CHECK(f, "path {}: its fallback {} has no variant for stage {}", preset.name, fb->name, stage_name(Stage(s)));
      TD_CHECK(int(f->stages.first) >= int(v->stages.first) && int(f->stages.last) <= int(v->stages.last),
               "path {}: fallback {} covers {}, more than {} ({})", preset.name, f->name, f->stages.str(), v->name,
               v->stages.str());
      if (names.find(f->name) == std::string::npos) names += (names.empty() ? "" : " + ") + f->name;
      plan.by_stage[size_t(s)] = f;
    }
    plan.notices.push_back(fmt::format("path {}: {} cannot run this model ({}); {} instead", plan.path, v->name, why,
                                       names));
  };
  for (bool changed = true; changed;) {
    changed = false;
    for (int s = 0; s < kNumStages && !changed; ++s) {
      const Variant* v = plan.by_stage[size_t(s)];
      if (!v || int(v->stages.first) != s || set_by.count(Stage(s))) continue;
      std::optional<std::string> why;
      if (v->unsupported) why = v->unsupported(*r.config, r.dtype);
      for (const std::string& need : v->needs)
        if (!why && !in_plan(plan.by_stage, need)) why = "it needs " + need + ", which is not in the plan";
      if (why) {
        swap(v, *why);
        changed = true;
      }
    }
  }
}

}  // namespace

std::string Plan::describe() const {
  std::ostringstream o;
  o << "path " << path << " on " << device_name(device) << ", KV layout " << kv_layout_name(kv_layout) << "\n";
  for (const Variant* v : segments) {
    const bool over = std::find(overridden.begin(), overridden.end(), v->name) != overridden.end();
    std::string stages = v->stages.str();
    stages.resize(std::max<size_t>(stages.size(), 24), ' ');
    o << "  " << stages << " " << v->name << (over ? "  (--variant)" : "") << "\n";
  }
  return o.str();
}

Plan build_plan(const PlanRequest& r) {
  const PathPreset* preset = find_path(r.path);
  if (!preset) {
    std::string known;
    for (const PathPreset& p : path_presets()) known += (known.empty() ? "" : ", ") + p.name;
    fail("--path {}: no such path; known: {}", r.path, known);
  }
  Plan plan;
  plan.path = preset->name;
  plan.device = preset->device;
  plan.kv_layout = r.kv_layout;
  for (const std::string& name : preset->variants) {
    const Variant* v = find_variant(preset->device, name);
    TD_CHECK(v, "path {}: variant {} is not registered on {}", preset->name, name, device_name(preset->device));
    for (int s = int(v->stages.first); s <= int(v->stages.last); ++s) {
      TD_CHECK(!plan.by_stage[size_t(s)], "path {}: stage {} is covered by both {} and {}", preset->name,
               stage_name(Stage(s)), plan.by_stage[size_t(s)]->name, v->name);
      plan.by_stage[size_t(s)] = v;
    }
  }

  std::map<Stage, std::string> set_by;  // stage -> the --variant argument that chose it
  for (const std::string& arg : r.overrides) {
    const size_t eq = arg.find('=');
    TD_CHECK(eq != std::string::npos && eq > 0 && eq + 1 < arg.size(), "--variant {}: expected STAGE=NAME", arg);
    const std::string stage_text = arg.substr(0, eq), name = arg.substr(eq + 1);
    const auto stage = stage_from_name(stage_text);
    TD_CHECK(stage.has_value(), "--variant {}: no stage '{}'; stages: {}", arg, stage_text, stage_list());
    const Variant* v = resolve(plan.device, *stage, name, arg, plan.path);
    for (int s = int(v->stages.first); s <= int(v->stages.last); ++s) {
      auto prev = set_by.find(Stage(s));
      TD_CHECK(prev == set_by.end(), "--variant {}: stage {} is already set by --variant {}", arg,
               stage_name(Stage(s)), prev == set_by.end() ? "" : prev->second);
      plan.by_stage[size_t(s)] = v;
      set_by[Stage(s)] = arg;
    }
    plan.overridden.push_back(v->name);
  }

  if (r.config && !preset->fallback.empty()) apply_fallback(plan, *preset, r, set_by);

  // Every stage covered; every run of equal choices is one whole variant.
  for (int s = 0; s < kNumStages;) {
    const Variant* v = plan.by_stage[size_t(s)];
    TD_CHECK(v, "path {}: no variant for stage {}", plan.path, stage_name(Stage(s)));
    int end = s;
    while (end + 1 < kNumStages && plan.by_stage[size_t(end + 1)] == v) ++end;
    if (s != int(v->stages.first) || end != int(v->stages.last)) {
      std::string others;
      for (int o = int(v->stages.first); o <= int(v->stages.last); ++o)
        if (plan.by_stage[size_t(o)] != v)
          others += (others.empty() ? "" : ", ") + std::string(stage_name(Stage(o))) + " is " +
                    plan.by_stage[size_t(o)]->name;
      fail("plan {}: {} covers {} as one kernel and cannot be split, but {}; override all of {} or none",
           plan.path, v->name, v->stages.str(), others, v->stages.str());
    }
    plan.segments.push_back(v);
    s = end + 1;
  }

  for (const Variant* v : plan.segments) {
    TD_CHECK(v->device == plan.device, "plan {}: {} runs on {}, the rest on {}", plan.path, v->name,
             device_name(v->device), device_name(plan.device));
    if (v->touches_kv() && !v->supports_layout(r.kv_layout)) {
      std::string ok;
      for (KvLayout l : v->kv_layouts) ok += (ok.empty() ? "" : ", ") + std::string(kv_layout_name(l));
      std::string neighbours;
      for (const Variant* n : plan.segments)
        if (n != v && n->touches_kv()) neighbours += (neighbours.empty() ? "" : ", ") + n->name;
      fail("plan {}: {} reads/writes the KV cache in {} only, but the cache is {} (--kv-layout){}", plan.path,
           v->name, ok, kv_layout_name(r.kv_layout),
           neighbours.empty() ? std::string() : "; its KV neighbours: " + neighbours);
    }
    for (const std::string& need : v->needs)
      TD_CHECK(in_plan(plan.by_stage, need), "plan {}: {} needs {} in the same plan ({}); choose both or neither",
               plan.path, v->name, need, v->needs_why);
    if (r.config && v->unsupported) {
      const auto why = v->unsupported(*r.config, r.dtype);
      TD_CHECK(!why, "plan {}: {} cannot run this model: {}", plan.path, v->name, why.value_or(""));
    }
  }
  return plan;
}

}  // namespace tandem
