#!/usr/bin/env python3
"""tandem serve driven by the official `openai` Python client (pinned in tools/setup.sh, in .deps/venv).

    openai_client_test.py TANDEM_BINARY

Starts `tandem serve --port 0` on the default model (CPU reference path) on 127.0.0.1, runs the checks below
with the client, then sends SIGTERM and expects a clean exit 0. Exit 0: all passed; 1: a check failed; 77: the
openai package is missing (ctest shows the test as skipped).
"""
import os
import re
import signal
import subprocess
import sys
import time

try:
    import openai
except ImportError:
    print("SKIPPED: the openai package is missing (tools/setup.sh installs it into .deps/venv)")
    sys.exit(77)

QUESTION = "What is the capital of France?"
ANSWER = "The capital of France is Paris."
failures = []


def check(cond, what):
    print(("ok   " if cond else "FAIL ") + what)
    if not cond:
        failures.append(what)


def start(binary):
    proc = subprocess.Popen([binary, "serve", "--port", "0", "--api-key", "sk-test", "--served-model-name", "smollm2",
                             "--max-num-seqs", "8"], stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        m = re.search(r"on http://127\.0\.0\.1:(\d+)", line)
        if m:
            return proc, int(m.group(1))
    proc.kill()
    raise SystemExit("FAIL: tandem serve did not report its port")


def main():
    proc, port = start(sys.argv[1])
    try:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="sk-test", max_retries=0, timeout=120)
        models = client.models.list()
        check([m.id for m in models.data] == ["smollm2"], "models.list names the served model")

        chat = client.chat.completions.create(model="smollm2", messages=[{"role": "user", "content": QUESTION}],
                                              max_tokens=20, temperature=0)
        check(chat.choices[0].message.content == ANSWER, f"chat: {chat.choices[0].message.content!r}")
        check(chat.choices[0].finish_reason == "stop", "chat finish_reason stop")
        check(chat.usage.total_tokens == chat.usage.prompt_tokens + chat.usage.completion_tokens, "chat usage adds up")

        stream = client.chat.completions.create(model="smollm2", messages=[{"role": "user", "content": QUESTION}],
                                                max_tokens=20, temperature=0, stream=True,
                                                stream_options={"include_usage": True})
        text, usage, finish = "", None, None
        for chunk in stream:
            if chunk.usage:
                usage = chunk.usage
            for c in chunk.choices:
                text += c.delta.content or ""
                finish = c.finish_reason or finish
        check(text == ANSWER, f"streamed chat: {text!r}")
        check(finish == "stop" and usage is not None and usage.completion_tokens > 0, "stream ends with usage")

        stopped = client.chat.completions.create(model="smollm2", messages=[{"role": "user", "content": QUESTION}],
                                                 max_tokens=20, temperature=0, stop=["of Fr"])
        check(stopped.choices[0].message.content == "The capital ", "stop string across tokens")

        comp = dict(model="smollm2", prompt="Once upon a time", max_tokens=8, temperature=1.0, seed=7, n=2)
        a, b = client.completions.create(**comp), client.completions.create(**comp)
        check(len(a.choices) == 2 and [c.text for c in a.choices] == [c.text for c in b.choices],
              "completions: n=2, the same seed gives the same texts")

        lp = client.chat.completions.create(model="smollm2", messages=[{"role": "user", "content": QUESTION}],
                                            max_tokens=4, temperature=0, logprobs=True, top_logprobs=2)
        content = lp.choices[0].logprobs.content
        check(len(content) == 4 and all(t.logprob <= 0 and len(t.top_logprobs) == 2 for t in content),
              "chat logprobs with top_logprobs")

        try:
            client.chat.completions.create(model="smollm2", messages=[], max_tokens=4)
            check(False, "empty messages rejected")
        except openai.BadRequestError as e:
            check(e.status_code == 400 and "messages" in str(e), "empty messages: BadRequestError naming the field")

        try:
            openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="wrong", max_retries=0).models.list()
            check(False, "wrong API key rejected")
        except openai.AuthenticationError as e:
            check(e.status_code == 401, "wrong API key: AuthenticationError")
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = None
    check(code == 0, f"SIGTERM: clean exit (code {code})")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
