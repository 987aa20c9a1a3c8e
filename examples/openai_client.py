#!/usr/bin/env python3
"""The `openai` Python package pointed at `msa-mem serve`.

Start a server first (any GGUF model; stories260K is the small one the
tests use):

    msa-mem convert llama2c stories260K.bin tok512.bin stories260K.gguf
    msa-mem serve --model stories260K.gguf --port 8080

then run this (pip install openai):

    python3 examples/openai_client.py --base-url http://127.0.0.1:8080/v1

It holds a three-turn chat, sending the whole history each turn as any
OpenAI client does, and prints usage's cached_tokens: from the second turn
on, the server finds the conversation in its store and prefills only the
new message. Then it streams a reply, and continues one stored response
twice with previous_response_id: each continuation forks the snapshot, so
both see the same conversation and neither disturbs the other.
"""

import argparse
import os

from openai import OpenAI


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--base-url", default="http://127.0.0.1:8080/v1")
    ap.add_argument("--api-key", default=os.environ.get("MSA_API_KEY", "none"))
    ap.add_argument("--model", help="model id (default: the one the server lists)")
    a = ap.parse_args()

    client = OpenAI(base_url=a.base_url, api_key=a.api_key)
    model = a.model or client.models.list().data[0].id
    print(f"model: {model}")

    messages = [{"role": "system", "content": "You tell short stories."}]
    for question in ("Once upon a time", "What happened next?", "How did it end?"):
        messages.append({"role": "user", "content": question})
        r = client.chat.completions.create(model=model, messages=messages, max_tokens=40,
                                           temperature=0)
        reply = r.choices[0].message.content
        messages.append({"role": "assistant", "content": reply})
        u = r.usage
        print(f"\n> {question}\n{reply.strip()}\n  [prompt {u.prompt_tokens} tokens, "
              f"{u.prompt_tokens_details.cached_tokens} of them cached; "
              f"{u.completion_tokens} generated]")

    print("\nstreamed:", end=" ", flush=True)
    for chunk in client.chat.completions.create(
            model=model, max_tokens=40, temperature=0.8, seed=1, stream=True,
            messages=[{"role": "user", "content": "Tell me about a dog"}]):
        if chunk.choices and chunk.choices[0].delta.content:
            print(chunk.choices[0].delta.content, end="", flush=True)
    print()

    first = client.responses.create(model=model, input="Once upon a time", temperature=0,
                                    max_output_tokens=30, instructions="Tell a story.")
    print(f"\nresponse {first.id}: {first.output_text.strip()}")
    for i in range(2):
        r = client.responses.create(model=model, input="And then?", temperature=0,
                                    max_output_tokens=30, previous_response_id=first.id)
        print(f"continuation {i + 1} ({r.usage.input_tokens_details.cached_tokens} of "
              f"{r.usage.input_tokens} input tokens cached): {r.output_text.strip()}")


if __name__ == "__main__":
    main()
