"""Stand-ins for the command-line tools the agent presets run: small executables that check the
argument vector the real tools document, read the prompt from stdin and print the documented lines.

- ``CLAUDE``: Claude Code in print mode (``claude -p --output-format stream-json --verbose``); the prompt
  "crash" exits 2 with a message on stderr, "fail" reports ``error_max_turns``; a 5 MiB tool-result line
  is printed on the way (a reader must skip it, not hold it).
- ``CODEX``: ``codex exec --json -``; the prompt "fail" ends with ``turn.failed``.
"""

from __future__ import annotations

import sys
from pathlib import Path

CLAUDE = r'''
import json, sys
args = sys.argv[1:]
assert args[:4] == ["-p", "--output-format", "stream-json", "--verbose"], args
prompt = sys.stdin.read().strip()
def out(doc):
    print(json.dumps(doc), flush=True)
print("a banner line that is not JSON")
out({"type": "system", "subtype": "init", "session_id": "s-1", "model": "claude-test", "tools": ["Bash"],
     "cwd": "/", "permissionMode": "default"})
if prompt == "crash":
    print("claude: something broke", file=sys.stderr)
    sys.exit(2)
out({"type": "assistant", "message": {"role": "assistant", "content": [
    {"type": "text", "text": "Looking at it."},
    {"type": "tool_use", "id": "t1", "name": "Bash", "input": {"command": "ls"}}]}, "session_id": "s-1"})
out({"type": "user", "message": {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1",
                                                              "content": "x" * (5 << 20)}]}})
if prompt == "fail":
    out({"type": "result", "subtype": "error_max_turns", "is_error": True, "session_id": "s-1", "num_turns": 9})
    sys.exit(1)
out({"type": "assistant", "message": {"role": "assistant", "content": [{"type": "text", "text": "Done: " + prompt}]}})
out({"type": "result", "subtype": "success", "is_error": False, "result": "Done: " + prompt + " " + " ".join(args[4:]),
     "session_id": "s-1", "total_cost_usd": 0.0123, "num_turns": 2, "duration_ms": 1500,
     "usage": {"input_tokens": 10, "output_tokens": 5}})
'''

CODEX = r'''
import json, sys
args = sys.argv[1:]
assert args[:2] == ["exec", "--json"] and args[-1] == "-", args
prompt = sys.stdin.read().strip()
def out(doc):
    print(json.dumps(doc), flush=True)
out({"type": "thread.started", "thread_id": "th-1"})
out({"type": "turn.started"})
if prompt == "fail":
    out({"type": "turn.failed", "error": {"message": "stream disconnected before completion"}})
    sys.exit(1)
out({"type": "item.started", "item": {"id": "item_0", "type": "command_execution", "command": "bash -lc ls",
                                     "aggregated_output": "", "status": "in_progress"}})
out({"type": "item.completed", "item": {"id": "item_0", "type": "command_execution", "command": "bash -lc ls",
                                       "aggregated_output": "README.md\n", "exit_code": 0, "status": "completed"}})
out({"type": "item.completed", "item": {"id": "item_1", "type": "reasoning", "text": "thinking"}})
out({"type": "item.completed", "item": {"id": "item_2", "type": "agent_message", "text": "Codex did: " + prompt}})
out({"type": "turn.completed", "usage": {"input_tokens": 20, "cached_input_tokens": 0, "output_tokens": 6}})
'''


def stand_in(tmp_path: Path, name: str, body: str) -> str:
    path = tmp_path / name
    path.write_text(f"#!{sys.executable}\n{body}")
    path.chmod(0o755)
    return str(path)
