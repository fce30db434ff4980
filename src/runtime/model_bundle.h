// Everything a user-facing command needs from a model path: the weights (reference path for now), the
// tokenizer (tokenizer.json of an HF folder, or the GGUF's own vocabulary) and the model's chat template.
#pragma once
#include <filesystem>
#include <memory>
#include <optional>
#include <string>

#include "model/model.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/tokenizer.h"

namespace tandem {

struct ModelBundle {
  std::shared_ptr<const Model> model;
  std::optional<Tokenizer> tokenizer;  // none for an HF folder without tokenizer.json
  std::string tokenizer_source;
  std::string chat_template_text;  // the model's own Jinja template; may be empty
  double load_seconds = 0;
};

ModelBundle load_model_bundle(const std::filesystem::path& path, void (*progress)(int64_t, int64_t) = nullptr);

// Reads only the tokenizer and template (no weights): for `tandem info` and tokenizer tests.
ModelBundle load_tokenizer_only(const std::filesystem::path& path);

// The chat format: `override_name` if given, else detected from the model's template and vocabulary.
ChatTemplate chat_template_for(const ModelBundle& bundle, std::string_view override_name = {});

// -m default: $TANDEM_MODEL, else models/SmolLM2-135M-Instruct.Q4_1.gguf under the working directory or
// next to the binary's build folder. Throws with the setup command when none exists.
std::filesystem::path default_model_path();

}  // namespace tandem
