"""Helpers shared by the GPU benchmark kit's Python scripts (standard library only, so they run without torch)."""
from __future__ import annotations

import json
import os
import random
import sys
import time
import traceback

# Token ids of the prompt are drawn from [FIRST_PROMPT_ID, vocab): ids 0, 1, 2 are <unk>, <s>, </s> in Llama's vocabulary.
FIRST_PROMPT_ID = 3


def log(message: str) -> None:
    """One progress line on stderr, with the wall-clock time (run.sh shows stderr live)."""
    print(f"{time.strftime('%H:%M:%S')} {message}", file=sys.stderr, flush=True)


def make_prompt_ids(count: int, vocab_size: int, seed: int) -> list[int]:
    """`count` pseudo-random token ids in [3, vocab_size), the same for a given seed on every machine and Python."""
    if count <= 0:
        raise ValueError(f"--prompt-tokens must be positive, got {count}")
    rng = random.Random(seed)
    return [rng.randrange(FIRST_PROMPT_ID, vocab_size) for _ in range(count)]


def read_prompt_ids(path: str) -> list[int]:
    """Reads prompt_ids.json: a JSON array of ints (also accepted: an object with 'ids' or 'prompt_ids')."""
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    if isinstance(data, dict):
        data = data.get("ids", data.get("prompt_ids"))
    if not isinstance(data, list) or not data or not all(isinstance(x, int) for x in data):
        raise ValueError(f"{path}: expected a non-empty JSON array of token ids")
    return data


def write_json(path: str, obj, indent: int | None = 2) -> None:
    """Writes `obj` as JSON through a temporary file, so a reader never sees half a file (a step may be killed)."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=indent)
        f.write("\n")
    os.replace(tmp, path)


def load_json(path: str):
    """The JSON in `path`, or None when the file is missing or unreadable."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def extract_json_object(text: str):
    """
    The JSON object a command printed on stdout, even with other lines around it: the last line that parses as a
    JSON object, else the span from the first '{' to the last '}'. None when there is none.
    """
    for line in reversed(text.splitlines()):
        line = line.strip()
        if line.startswith("{") and line.endswith("}"):
            try:
                value = json.loads(line)
            except ValueError:
                continue
            if isinstance(value, dict):
                return value
    start, end = text.find("{"), text.rfind("}")
    if 0 <= start < end:
        try:
            value = json.loads(text[start:end + 1])
            return value if isinstance(value, dict) else None
        except ValueError:
            return None
    return None


def read_text(path: str, limit: int | None = None) -> str:
    """The file's text ('' when missing); with `limit`, only its last `limit` characters."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            text = f.read()
    except OSError:
        return ""
    return text[-limit:] if limit is not None else text


def error_text(exc: BaseException) -> str:
    """A short, single-string account of an exception: type, message and the last frames of the traceback."""
    frames = traceback.format_exception(type(exc), exc, exc.__traceback__)
    return "".join(frames)[-3000:]
