// tandem: one binary, subcommands. Flags follow llama.cpp / vLLM conventions (-m, -p, -n, --temp, ...).
#include <cstdio>

#include "cli/common.h"

int main(int argc, char** argv) {
  CLI::App app{"tandem: an LLM inference engine with a reference path to check every fast path against"};
  app.require_subcommand(1);
  app.set_version_flag("--version", std::string("tandem ") + TANDEM_GIT_COMMIT);
  tandem::cli::register_generate(app);
  tandem::cli::register_chat(app);
  tandem::cli::register_info(app);
  tandem::cli::register_perplexity(app);
  tandem::cli::register_bench(app);
  tandem::cli::register_trace(app);
  tandem::cli::register_diff(app);
  tandem::cli::register_bisect(app);
  tandem::cli::register_serve(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : 2;  // usage errors exit 2 (help and version 0)
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
