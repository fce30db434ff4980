// HF config.json -> ModelConfig for the registered architectures.
#pragma once
#include <nlohmann/json_fwd.hpp>

#include <filesystem>
#include <string>

#include "model/arch.h"
#include "model/config.h"

namespace tandem {

struct HfConfig {
  ModelConfig config;
  const ArchSpec* arch = nullptr;
};

HfConfig read_hf_config(const std::filesystem::path& config_json);
HfConfig parse_hf_config(const std::string& json_text, const std::string& source);

// A JSON value for an error message, bounded: strings cut by excerpt(), lists and objects described by size.
std::string json_excerpt(const nlohmann::json& v);

}  // namespace tandem
