// tandem: one binary, subcommands. Flags follow llama.cpp / vLLM conventions (-m, -p, -n, -c, --temp, ...).
#include <cstdio>
#include <algorithm>
#include <cstring>

#include "cli/common.h"

namespace {
// CLI11 takes one-letter short options only: llama.cpp's -ngl N becomes --n-gpu-layers N.
std::vector<std::string> llama_cpp_spellings(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  for (std::string& a : args) {
    if (a == "-ngl") a = "--n-gpu-layers";
    else if (a.rfind("-ngl=", 0) == 0) a = "--n-gpu-layers=" + a.substr(5);
  }
  return args;
}

bool is_subcommand(CLI::App& app, const std::string& name) {
  for (const CLI::App* s : app.get_subcommands([](const CLI::App*) { return true; }))
    if (s->check_name(name)) return true;
  return false;
}

std::string subcommand_names(const CLI::App& app) {
  std::string names;
  for (const CLI::App* s : app.get_subcommands([](const CLI::App*) { return true; }))
    names += (names.empty() ? "" : ", ") + s->get_name();
  return names;
}
}  // namespace

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
  std::vector<std::string> args = llama_cpp_spellings(argc, argv);
  // The first word names the subcommand; CLI11 would call an unknown one "A subcommand is required".
  if (args.empty() || (args[0][0] != '-' && !is_subcommand(app, args[0]))) {
    if (args.empty()) {
      std::fprintf(stderr, "tandem: a subcommand is required (%s); tandem --help describes them\n",
                   subcommand_names(app).c_str());
    } else {
      std::fprintf(stderr, "tandem: unknown subcommand '%s' (subcommands: %s); tandem --help describes them\n",
                   args[0].c_str(), subcommand_names(app).c_str());
    }
    return 2;
  }
  std::reverse(args.begin(), args.end());  // CLI11 parses a reversed vector (its own argv order)
  try {
    app.parse(args);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : 2;  // usage errors exit 2 (help and version 0)
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
