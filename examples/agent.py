#!/usr/bin/env python3
"""agent.py: an agent loop whose memory is an msa-mem session.

Every user task, every reply the model writes and every tool result goes
into one persistent session through the Python bindings. Kill the process
and start it again: it opens the same session and continues with its whole
memory, without re-reading (re-prefilling) any of it; the per-turn cost does
not grow with the history because MSA reads only the blocks it selects.

The "tools" are deliberately tiny and deterministic (a word counter and a
clock that reports the turn number), because the point here is the memory,
not the tools; a real agent would parse the model's reply to pick a tool.

    python3 examples/agent.py --model stories260K.gguf --store /tmp/agent-store
    python3 examples/agent.py --model stories260K.gguf --store /tmp/agent-store  # continues

With --json the last line printed is a summary that tests/test_cli.py reads:
tokens at start and end, the first tokens of the memory, and how many turns
the memory holds.
"""

import argparse
import json
import os
import sys
from pathlib import Path

try:
    import msa_mem
except ImportError:  # run from a checkout
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bindings" / "python"))
    import msa_mem

TASKS = [
    "Tell me a short story about a cat.",
    "What did the cat find in the garden?",
    "Write one sentence about a happy dog.",
    "How many words were in my first request?",
]

TURN_MARK = "[turn "


def word_count(text: str) -> str:
    return str(len(text.split()))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=os.environ.get("MSA_MODEL"), help="GGUF model")
    ap.add_argument("--store", default=os.environ.get("MSA_STORE"), help="store folder")
    ap.add_argument("--session", default="agent")
    ap.add_argument("--turns", type=int, default=3, help="turns to run this time")
    ap.add_argument("--max-tokens", type=int, default=32, help="reply length per turn")
    ap.add_argument("--template", default="plain", help="chat template (plain, llama3, ...)")
    ap.add_argument("--json", action="store_true", help="end with a JSON summary line")
    a = ap.parse_args()
    if not a.model:
        ap.error("give --model (or set MSA_MODEL)")

    with msa_mem.Engine(a.model, store=a.store, block_size=16, top_k=4) as eng:
        with eng.session(a.session, create=True) as mem:
            start = len(mem.tokens())
            seen = mem.text().count(TURN_MARK) if start else 0
            print(f"memory '{a.session}': {start} tokens, {seen} earlier turns", file=sys.stderr)
            for i in range(a.turns):
                turn = seen + i + 1
                task = TASKS[(turn - 1) % len(TASKS)]
                # the task, then the model's reply, then a tool result: all of it memory
                mem.append_message("user", f"{TURN_MARK}{turn}] {task}", True,
                                   template=a.template, source=f"turn {turn} task")
                reply = "".join(mem.generate(max_tokens=a.max_tokens,
                                             source=f"turn {turn} reply"))
                mem.append("\n")
                print(f"turn {turn}: {task}\n  agent: {reply.strip()}")
                result = f"word_count={word_count(task)}"
                mem.append_message("user", f"tool result: {result}", False,
                                   template=a.template, source=f"turn {turn} tool")
                print(f"  tool: {result}")
            end = len(mem.tokens())
            summary = {
                "session": a.session,
                "tokens_at_start": start,
                "tokens_at_end": end,
                "first_tokens": mem.tokens()[:32],
                "turns_seen": mem.text().count(TURN_MARK),
                "info": {k: v for k, v in mem.info().items() if k != "pager"},
            }
    if a.json:
        print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
