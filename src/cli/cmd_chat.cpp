// tandem run "question" (one-shot chat) and tandem chat (interactive, with history).
#include <cstdio>
#include <iostream>

#include "cli/common.h"

namespace tandem::cli {
namespace {

struct ChatArgs {
  ModelOptions model;
  GenerationRequest req;
  uint64_t seed = 0;
  CLI::Option* seed_opt = nullptr;
  std::string system;
  std::string question;
};

// One assistant turn: render the conversation, generate until an end-of-turn token, stream the text.
std::string assistant_turn(Loaded& l, const ChatTemplate& chat, std::vector<ChatMessage>& history,
                           GenerationRequest req, GenerationStats* st) {
  const Tokenizer& tok = *l.bundle.tokenizer;
  // The rendered text carries the BOS text itself where the format has one.
  req.prompt = tok.encode(chat.render(history), false, true);
  req.stop_ids = stop_ids(l, &chat);
  StreamDecoder stream = tok.stream_decoder(true);
  std::string reply;
  generate(*l.runner, {req},
           [&](size_t, int32_t t) {
             if (std::find(req.stop_ids.begin(), req.stop_ids.end(), t) != req.stop_ids.end()) return;
             const std::string piece = stream.push(t);
             reply += piece;
             std::fputs(piece.c_str(), stdout);
             std::fflush(stdout);
           },
           st);
  const std::string tail = stream.flush();
  reply += tail;
  std::fputs(tail.c_str(), stdout);
  std::fputs("\n", stdout);
  history.push_back({"assistant", reply});
  return reply;
}

Loaded load_chat_model(const ChatArgs& a, ChatTemplate& chat) {
  Loaded l = load(a.model);
  TD_CHECK(l.bundle.tokenizer.has_value(), "{}: chat needs a tokenizer (tokenizer.json or a GGUF vocabulary)",
           model_path(a.model).string());
  chat = chat_template_for(l.bundle, a.model.chat_template);
  std::fprintf(stderr, "chat template: %s\n", std::string(chat.name()).c_str());
  return l;
}

void run_once(ChatArgs& a) {
  if (a.seed_opt->count()) a.req.sampling.seed = a.seed;
  ChatTemplate chat;
  Loaded l = load_chat_model(a, chat);
  std::vector<ChatMessage> history;
  if (!a.system.empty()) history.push_back({"system", a.system});
  history.push_back({"user", a.question});
  GenerationStats st;
  assistant_turn(l, chat, history, a.req, &st);
  print_stats(st);
}

void run_repl(ChatArgs& a) {
  if (a.seed_opt->count()) a.req.sampling.seed = a.seed;
  ChatTemplate chat;
  Loaded l = load_chat_model(a, chat);
  std::vector<ChatMessage> history;
  if (!a.system.empty()) history.push_back({"system", a.system});
  static const char kHelp[] =
      "commands: /help this list; /reset clear the conversation (the system prompt stays); /system TEXT set the "
      "system prompt and clear the conversation; /exit or Ctrl-D quit\n";
  std::fprintf(stderr, "type a message; /help lists the commands\n");
  std::string line;
  for (;;) {
    std::fputs("> ", stdout);
    std::fflush(stdout);
    if (!std::getline(std::cin, line) || line == "/exit" || line == "/quit") break;
    if (line.empty()) continue;
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
    try {
      assistant_turn(l, chat, history, a.req, &st);
    } catch (const Error& e) {  // e.g. the conversation outgrew the context: say so, keep the session
      history.pop_back();
      std::fprintf(stderr, "error: %s\n", e.what());
      continue;
    }
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
  add_sampling_options(cmd, a.req, a.seed, a.seed_opt);
}
}  // namespace

void register_chat(CLI::App& app) {
  auto once = std::make_shared<ChatArgs>();
  once->req.max_new_tokens = 256;
  CLI::App* run = app.add_subcommand("run", "ask the model one question (default model if no -m)");
  add_chat_options(run, *once);
  run->add_option("question", once->question, "the question")->required();
  run->callback([once] { run_once(*once); });

  auto repl = std::make_shared<ChatArgs>();
  repl->req.max_new_tokens = 512;
  CLI::App* chat = app.add_subcommand("chat", "interactive chat with history (default model if no -m)");
  add_chat_options(chat, *repl);
  chat->callback([repl] { run_repl(*repl); });
}

}  // namespace tandem::cli
