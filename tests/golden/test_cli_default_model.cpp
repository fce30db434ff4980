// run / generate / chat / perplexity flags on the default model (issue 15): unquoted words, prompts from a file or
// stdin, --stop, --json, the seed and the stats lines, prefill progress on a terminal. Skips (visibly) when the
// model has not been fetched.
#include <gtest/gtest.h>
#include <pty.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "cli_run.h"

namespace tandem {
namespace {
namespace fs = std::filesystem;

const fs::path kModel = fs::path(TANDEM_FIXTURES).parent_path().parent_path() / "models/SmolLM2-135M-Instruct.Q4_1.gguf";
const std::string kBin = TANDEM_BINARY;

class CliDefaultModel : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!fs::exists(kModel)) GTEST_SKIP() << kModel << " is missing: run tools/fetch_default_model.sh (make test does)";
  }
  // The reference path: the answers asserted below are its greedy tokens, whatever path is the default.
  static std::string m() { return " -m " + kModel.string() + " --path reference "; }
  static fs::path temp(const std::string& name, const std::string& text) {
    const fs::path p = fs::path(::testing::TempDir()) / ("tandem_cli_" + std::to_string(::getpid()) + "_" + name);
    std::ofstream(p) << text;
    return p;
  }
};

// What the answer printed on stdout alone (stderr dropped).
std::string stdout_of(const std::string& args) {
  const RunResult r = run_shell(kBin + " " + args + " 2>/dev/null");
  EXPECT_EQ(r.exit_code, 0) << args;
  return r.output;
}

// The words of an unquoted question are joined in order; the answer is the quoted question's. run prints the seed.
TEST_F(CliDefaultModel, RunJoinsUnquotedWordsInOrder) {
  const RunResult r = run_tandem("run" + m() + "--temp 0 -n 16 What is the capital of France?");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("Paris"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("finish: stop, seed "), std::string::npos) << r.output;
  EXPECT_EQ(stdout_of("run" + m() + "--temp 0 -n 16 What is the capital of France?"),
            stdout_of("run" + m() + "--temp 0 -n 16 'What is the capital of France?'"));
}

// -f FILE, -p - and run - read the same prompt (one trailing newline dropped) and give the same greedy answer.
TEST_F(CliDefaultModel, PromptFromFileAndStdin) {
  const fs::path f = temp("prompt.txt", "The capital of France is\n");
  const std::string from_text = stdout_of("generate" + m() + "--temp 0 -n 6 -p 'The capital of France is'");
  EXPECT_FALSE(from_text.empty());
  EXPECT_EQ(stdout_of("generate" + m() + "--temp 0 -n 6 -f " + f.string()), from_text);
  EXPECT_EQ(stdout_of("generate" + m() + "--temp 0 -n 6 -p - < " + f.string()), from_text);
  const fs::path q = temp("question.txt", "What is the capital of France?\n");
  const std::string answer = stdout_of("run" + m() + "--temp 0 -n 16 'What is the capital of France?'");
  EXPECT_EQ(stdout_of("run" + m() + "--temp 0 -n 16 -f " + q.string()), answer);
  EXPECT_EQ(stdout_of("run" + m() + "--temp 0 -n 16 - < " + q.string()), answer);
}

// --stop ends the answer before the stop string, which is not printed; finish says which one.
TEST_F(CliDefaultModel, StopStrings) {
  RunResult r = run_shell(kBin + " run" + m() + "--temp 0 -n 16 --stop Paris --stop Lyon 'What is the capital of France?'");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(r.output, "The capital of France is \n") << r.output;
  r = run_tandem("generate" + m() + "--temp 0 -n 6 -p 'The capital of France is' --stop 'is P' --stop '.'");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("\nfinish: stop (--stop \".\"), seed "), std::string::npos) << r.output;
  EXPECT_EQ(r.output.find("Paris."), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("Paris"), std::string::npos) << r.output;
}

// generate: the text ends with a newline before the stats (stdout and stderr into one pipe); --json is one object.
TEST_F(CliDefaultModel, GenerateStatsAndJson) {
  RunResult r = run_tandem("generate" + m() + "--temp 0 -n 4 -p 'The capital of France is' --seed 9");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find(" Paris.\n\n\nfinish: length, seed 9\nprompt: "), std::string::npos) << r.output;
  r = run_shell(kBin + " generate" + m() + "--temp 0 -n 4 -p 'The capital of France is' --seed 9 --json 2>/dev/null");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const nlohmann::json j = nlohmann::json::parse(r.output);
  EXPECT_EQ(j["text"], " Paris.\n\n");
  EXPECT_EQ(j["tokens"].size(), 4u);
  EXPECT_EQ(j["seed"].get<uint64_t>(), 9u);
  EXPECT_EQ(j["finish_reason"], "length");
  EXPECT_EQ(j["prompt_tokens"].get<int64_t>(), 5);
  EXPECT_GT(j["decode_seconds"].get<double>(), 0);
  r = run_shell(kBin + " generate" + m() + "--temp 0 -n 8 -p 'The capital of France is' --stop . --json 2>/dev/null");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const nlohmann::json s = nlohmann::json::parse(r.output);
  EXPECT_EQ(s["text"], " Paris");
  EXPECT_EQ(s["finish_reason"], "stop");
  EXPECT_EQ(s["stop"], ".");
}

TEST_F(CliDefaultModel, PerplexityJson) {
  const fs::path f = temp("ppl.txt", "The quick brown fox jumps over the lazy dog. Paris is the capital of France, and "
                                     "Berlin is the capital of Germany. Water boils at one hundred degrees Celsius.");
  const RunResult r = run_shell(kBin + " perplexity" + m() + "-f " + f.string() + " --ctx-size 16 --json 2>/dev/null");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const nlohmann::json j = nlohmann::json::parse(r.output);
  EXPECT_GT(j["perplexity"].get<double>(), 1.0);
  EXPECT_LT(j["perplexity"].get<double>(), 1000.0);
  EXPECT_EQ(j["ctx"].get<int64_t>(), 16);
  EXPECT_GE(j["tokens"].get<int64_t>(), 25);
  EXPECT_GE(j["windows"].get<int64_t>(), 2);
}

// chat prints its session seed; --seed N repeats it.
TEST_F(CliDefaultModel, ChatPrintsTheSeed) {
  RunResult r = run_shell("printf '/exit\\n' | " + kBin + " chat" + m() + "--seed 1234 2>&1");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("\nseed 1234\n"), std::string::npos) << r.output;
  r = run_shell("printf '/exit\\n' | " + kBin + " chat" + m() + "2>&1");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("\nseed "), std::string::npos) << r.output;
}

// Runs `cmd` under /bin/sh with a pseudo-terminal as stdin, stdout and stderr; returns all it printed.
RunResult run_in_pty(const std::string& cmd) {
  int master = -1;
  const pid_t pid = forkpty(&master, nullptr, nullptr, nullptr);
  if (pid < 0) return {-1, "forkpty failed"};
  if (pid == 0) {
    execl("/bin/sh", "sh", "-c", cmd.c_str(), static_cast<char*>(nullptr));
    _exit(127);
  }
  std::string out;
  char buf[4096];
  for (;;) {
    const ssize_t n = read(master, buf, sizeof buf);
    if (n > 0) {
      out.append(buf, size_t(n));
    } else if (n < 0 && errno == EINTR) {
      continue;
    } else {
      break;  // EIO: the child closed the terminal
    }
  }
  close(master);
  int status = 0;
  waitpid(pid, &status, 0);
  return {WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status), out};
}

// On a terminal a long prefill reports its progress ("prefill 256/N tokens") and the load shows its bar; into a
// pipe neither appears.
TEST_F(CliDefaultModel, PrefillAndLoadProgressOnATerminal) {
  std::string text;
  for (int i = 0; i < 50; ++i) text += "the cat sat on the mat. ";  // > 256 tokens
  const fs::path f = temp("long.txt", text);
  const std::string cmd = kBin + " generate" + m() + "--temp 0 -n 1 -f " + f.string();
  const RunResult tty = run_in_pty(cmd + " > /dev/null");
  EXPECT_EQ(tty.exit_code, 0) << tty.output;
  EXPECT_NE(tty.output.find("\rprefill 256/"), std::string::npos) << tty.output;
  EXPECT_NE(tty.output.find("\rloading ["), std::string::npos) << tty.output;
  const RunResult pipe = run_tandem("generate" + m() + "--temp 0 -n 1 -f " + f.string());
  EXPECT_EQ(pipe.exit_code, 0) << pipe.output;
  EXPECT_EQ(pipe.output.find("prefill "), std::string::npos) << pipe.output;
  EXPECT_EQ(pipe.output.find("loading ["), std::string::npos) << pipe.output;
}

}  // namespace
}  // namespace tandem
