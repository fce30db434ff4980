// GGUF tokenizer metadata (tokenizer.ggml.*) -> TokenizerSpec, following the mapping in tokenizer.h.
#pragma once
#include "tokenizer/tokenizer.h"

namespace tandem {
class GgufFile;
TokenizerSpec tokenizer_spec_from_gguf(const GgufFile& file);
}  // namespace tandem
