// tandem run "question" (one-shot chat) and tandem chat (interactive, with history).
#include <poll.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>

#include "cli/common.h"

namespace tandem::cli {
namespace {

// Ctrl-C in `tandem chat` stops the answer (or clears the line being typed), not the program: the handler only
// counts; the token callback and the line reader look at the count.
std::atomic<int> g_interrupts{0};
extern "C" void on_sigint(int) { g_interrupts.fetch_add(1, std::memory_order_relaxed); }

class SigintScope {  // installs on_sigint without SA_RESTART, so a blocked read returns EINTR
 public:
  SigintScope() {
    struct sigaction sa {};
    sa.sa_handler = on_sigint;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, &old_);
  }
  ~SigintScope() { sigaction(SIGINT, &old_, nullptr); }

 private:
  struct sigaction old_ {};
};

// Reads the user's lines from fd 0 (not std::cin, so that EINTR is seen): a line ending in `\` continues on the
// next; on a terminal, lines that arrive together (a paste) form one message.
class LineReader {
 public:
  enum class Status { line, interrupted, eof };
  Status read(std::string& out) {
    out.clear();
    for (;;) {
      std::string line;
      const Status s = read_line(line);
      if (s != Status::line) {
        if (s == Status::eof && !out.empty()) return Status::line;
        return s;
      }
      const bool continued = !line.empty() && line.back() == '\\';
      if (continued) line.pop_back();
      out += line;
      if (continued || (tty_ && pending())) {
        out += '\n';
        continue;
      }
      return Status::line;
    }
  }

 private:
  Status read_line(std::string& line) {
    for (;;) {
      const size_t nl = buf_.find('\n');
      if (nl != std::string::npos) {
        line = buf_.substr(0, nl);
        buf_.erase(0, nl + 1);
        return Status::line;
      }
      char chunk[4096];
      const ssize_t n = ::read(0, chunk, sizeof chunk);
      if (n > 0) {
        buf_.append(chunk, size_t(n));
      } else if (n == 0) {
        if (buf_.empty()) return Status::eof;
        line.swap(buf_);
        buf_.clear();
        return Status::line;
      } else if (errno == EINTR) {
        if (g_interrupts.exchange(0) > 0) {
          buf_.clear();
          return Status::interrupted;
        }
      } else {
        return Status::eof;
      }
    }
  }
  // More input already waiting (a paste arrives in one burst; typing does not).
  bool pending() {
    if (buf_.find('\n') != std::string::npos) return true;
    struct pollfd p {0, POLLIN, 0};
    return ::poll(&p, 1, 0) > 0 && (p.revents & POLLIN);
  }
  std::string buf_;
  bool tty_ = ::isatty(0) != 0;
};

struct ChatArgs {
  ModelOptions model;
  SamplingArgs sampling;
  std::string system;
  std::vector<std::string> question;  // run: the words of the question, joined by spaces
  std::string prompt, file;           // run: -p TEXT (- = stdin), -f FILE
};

// One assistant turn: render the conversation, generate until an end-of-turn token or a --stop string, stream the
// text. Ctrl-C (g_interrupts) ends the answer early.
GenerationResult assistant_turn(Loaded& l, const ChatTemplate& chat, std::vector<ChatMessage>& history,
                                const SamplingArgs& sa, GenerationStats& st) {
  const Tokenizer& tok = *l.bundle.tokenizer;
  GenerationRequest req = sa.req;
  // The rendered text carries the BOS text itself where the format has one.
  req.prompt = tok.encode(chat.render(history), false, true);
  fit_context(l, sa.ctx_size, req);
  req.stop_ids = stop_ids(l, &chat);
  StreamDecoder stream = tok.stream_decoder(true);
  StopStrings stops(sa.stops);
  std::string reply;
  bool interrupted = false;
  auto emit = [&](const std::string& piece) {
    reply += piece;
    std::fputs(piece.c_str(), stdout);
    std::fflush(stdout);
  };
  GenerationResult res = generate_one(*l.runner, req, [&](int32_t t) {
    if (g_interrupts.exchange(0) > 0) {
      interrupted = true;
      return false;
    }
    if (std::find(req.stop_ids.begin(), req.stop_ids.end(), t) != req.stop_ids.end()) return true;
    emit(stops.push(stream.push(t)));
    return !stops.stopped();
  }, st);
  if (!stops.stopped() && !interrupted) emit(stops.push(stream.flush()) + stops.flush());
  std::fputs("\n", stdout);
  std::fflush(stdout);  // before anything on stderr
  // The partial answer stays in the conversation, as the user saw it.
  if (interrupted) std::fprintf(stderr, "[answer stopped by Ctrl-C; the conversation is kept]\n");
  history.push_back({"assistant", reply});
  return res;
}

void save_conversation(const std::string& file, const std::vector<ChatMessage>& history) {
  nlohmann::json messages = nlohmann::json::array();
  for (const ChatMessage& m : history) messages.push_back({{"role", m.role}, {"content", m.content}});
  std::ofstream out(file);
  out << nlohmann::json{{"messages", messages}}.dump(2) << "\n";
  out.close();
  if (!out) {
    std::fprintf(stderr, "cannot write %s\n", file.c_str());
  } else {
    std::fprintf(stderr, "saved %zu messages to %s\n", history.size(), file.c_str());
  }
}

Loaded load_chat_model(ChatArgs& a, ChatTemplate& chat) {
  check_sampling(a.sampling);  // before the model is read, as is the template name
  if (!a.model.chat_template.empty()) ChatTemplate::from_name(a.model.chat_template);
  Loaded l = load(a.model);
  TD_CHECK(l.bundle.tokenizer.has_value(), "{}: chat needs a tokenizer (tokenizer.json or a GGUF vocabulary)",
           model_path(a.model).string());
  chat = chat_template_for(l.bundle, a.model.chat_template);
  std::fprintf(stderr, "chat template: %s\n", std::string(chat.name()).c_str());
  return l;
}

void run_once(ChatArgs& a) {
  std::string prompt = a.prompt;
  std::vector<std::string> words = a.question;
  if (words.size() == 1 && words[0] == "-" && prompt.empty()) {  // tandem run - < question.txt
    prompt = "-";
    words.clear();
  }
  const std::string question = read_prompt(prompt, a.file, words);
  TD_CHECK(!question.empty(), "no question: tandem run \"QUESTION\" (or -p TEXT, -f FILE, -p - for stdin)");
  ChatTemplate chat;
  Loaded l = load_chat_model(a, chat);
  std::vector<ChatMessage> history;
  if (!a.system.empty()) history.push_back({"system", a.system});
  history.push_back({"user", question});
  GenerationStats st;
  const GenerationResult res = assistant_turn(l, chat, history, a.sampling, st);
  std::fprintf(stderr, "finish: %s, seed %llu\n", res.finish_reason.c_str(), (unsigned long long)res.seed);
  print_stats(st);
}

void run_repl(ChatArgs& a) {
  ChatTemplate chat;
  Loaded l = load_chat_model(a, chat);
  // One seed for the session (every turn samples from it): --seed with this value repeats the session.
  std::fprintf(stderr, "seed %llu\n", (unsigned long long)*a.sampling.req.sampling.seed);
  std::vector<ChatMessage> history;
  if (!a.system.empty()) history.push_back({"system", a.system});
  static const char kHelp[] =
      "commands: /help this list; /reset clear the conversation (the system prompt stays); /system TEXT set the "
      "system prompt and clear the conversation; /save FILE write the conversation as JSON (OpenAI messages); "
      "/exit or Ctrl-D quit.\nA line ending in \\ continues on the next (a pasted block is one message). Ctrl-C "
      "stops an answer and keeps the conversation.\n";
  std::fprintf(stderr, "type a message; /help lists the commands\n");
  SigintScope sigint;
  LineReader reader;
  std::string line;
  for (;;) {
    std::fputs("> ", stdout);
    std::fflush(stdout);
    const LineReader::Status status = reader.read(line);
    if (status == LineReader::Status::interrupted) {
      std::fputs("\n", stdout);
      std::fprintf(stderr, "(Ctrl-C: /exit or Ctrl-D quits)\n");
      continue;
    }
    if (status == LineReader::Status::eof || line == "/exit" || line == "/quit") break;
    if (line.empty()) continue;
    if (line.rfind("/save", 0) == 0 && (line.size() == 5 || line[5] == ' ')) {
      if (line.size() <= 6) {
        std::fprintf(stderr, "usage: /save FILE\n");
      } else {
        save_conversation(line.substr(6), history);
      }
      continue;
    }
    if (line == "/help") {
      std::fputs(kHelp, stderr);
      continue;
    }
    if (line == "/reset") {
      history.resize(a.system.empty() ? 0 : 1);
      std::fprintf(stderr, "conversation cleared\n");
      continue;
    }
    if (line.rfind("/system", 0) == 0 && (line.size() == 7 || line[7] == ' ')) {
      a.system = line.size() > 8 ? line.substr(8) : std::string();
      history.clear();
      if (!a.system.empty()) history.push_back({"system", a.system});
      std::fprintf(stderr, "system prompt %s; conversation cleared\n", a.system.empty() ? "removed" : "set");
      continue;
    }
    if (line[0] == '/' && line.find(' ') == std::string::npos) {  // not a message: an unknown command
      std::fprintf(stderr, "unknown command %s\n%s", line.c_str(), kHelp);
      continue;
    }
    history.push_back({"user", line});
    GenerationStats st;
    g_interrupts.store(0);
    try {
      assistant_turn(l, chat, history, a.sampling, st);
    } catch (const Error& e) {  // e.g. the conversation outgrew the context: say so, keep the session
      history.pop_back();
      std::fprintf(stderr, "error: %s\n", e.what());
      continue;
    }
    if (st.decode_seconds <= 0) continue;  // stopped before the stats were complete
    std::fprintf(stderr, "[%lld prompt tokens, %lld of them cached, %.1f tok/s decode]\n", (long long)st.prompt_tokens,
                 (long long)st.cached_prompt_tokens, st.generated_tokens / std::max(st.decode_seconds, 1e-9));
  }
  std::fputs("\n", stdout);
}

void add_chat_options(CLI::App* cmd, ChatArgs& a) {
  add_model_options(cmd, a.model, false);
  // Each turn re-reads the conversation: with prefix caching only the new part is computed.
  a.model.runner.prefix_caching = true;
  cmd->add_flag("!--no-prefix-caching", a.model.runner.prefix_caching,
                "recompute the whole conversation every turn instead of reusing its cached K/V pages");
  cmd->add_option("--system", a.system, "system prompt");
  cmd->add_option("--chat-template", a.model.chat_template, "override the chat format: chatml | llama3 | mistral");
  add_sampling_options(cmd, a.sampling);
}
}  // namespace

void register_chat(CLI::App& app) {
  auto once = std::make_shared<ChatArgs>();
  once->sampling.req.max_new_tokens = 256;
  CLI::App* run = app.add_subcommand("run", "ask the model one question (default model if no -m)");
  add_chat_options(run, *once);
  run->add_option("question", once->question, "the question (several words are joined by spaces; - reads stdin)");
  run->add_option("-p,--prompt", once->prompt, "the question (- reads it from stdin)");
  run->add_option("-f,--file", once->file, "read the question from this file");
  run->callback([once] { run_once(*once); });

  auto repl = std::make_shared<ChatArgs>();
  repl->sampling.req.max_new_tokens = 512;
  CLI::App* chat = app.add_subcommand("chat", "interactive chat with history (default model if no -m)");
  add_chat_options(chat, *repl);
  chat->callback([repl] { run_repl(*repl); });
}

}  // namespace tandem::cli
