// HF config.json -> ModelConfig for the registered architectures.
#pragma once
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

}  // namespace tandem
