#!/usr/bin/env python3
"""
`ilgpu-medusa serve` under load, the way it is deployed: starts the server on a free port of this machine, waits for
GET /health, sends one greedy completion alone, then --clients streaming completions at once (the prompts of
--prompts, round robin; the engine batches them), and stops the server with SIGTERM. Prints one JSON object:
tokens/s alone and together, time to first token, whether the first prompt's batched reply equals its reply alone, and
the server's exit code. Standard library only. On the host the batched reply must be the same (--require-identical:
the host computes each row alike whatever the batch); a GPU's kernels for one row and for many may sum in another
order, which can flip a near-tie, so there it is reported. Everything ends within --deadline-s, JSON printed.

  python3 scripts/gpu-bench/serve_check.py --model DIR --device cuda --prompts prompts/stories-20.txt \
      [--clients 8] [--max-tokens 128] [--deadline-s 120] [--require-identical] -- dotnet .gpu-kit/app/ilgpu-medusa.dll

Exit code 0 when every request succeeded, the server stopped with 0 (and with --require-identical the replies agree);
1 otherwise.
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gpu_bench_common import log  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="model directory (with its Medusa heads for --heads auto)")
    p.add_argument("--device", default="auto", help="--device of the server (default auto)")
    p.add_argument("--prompts", required=True, help="prompts, one a line ('#' comments and blank lines skipped)")
    p.add_argument("--clients", type=int, default=8, help="concurrent streaming requests (default 8)")
    p.add_argument("--max-tokens", type=int, default=128, help="max_tokens of every request (default 128)")
    p.add_argument("--deadline-s", type=float, default=120,
                   help="all of it, the server's stop included, within this many seconds (default 120; keep it under any outer limit)")
    p.add_argument("--require-identical", action="store_true",
                   help="fail when the first prompt's batched reply differs from its reply alone (for the host backend)")
    p.add_argument("app", nargs="+", help="the command that runs ilgpu-medusa, after --")
    args = p.parse_args(argv)
    if args.clients < 1 or args.max_tokens < 1:
        p.error("--clients and --max-tokens must be at least 1")
    return args


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def read_prompts(path: str) -> list[str]:
    with open(path, encoding="utf-8") as f:
        prompts = [line.strip() for line in f if line.strip() and not line.lstrip().startswith("#")]
    if not prompts:
        raise SystemExit(f"serve_check.py: no prompts in {path}")
    return prompts


def post(port: int, path: str, body: dict, timeout: float) -> dict:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
        response = conn.getresponse()
        data = response.read().decode("utf-8")
        if response.status != 200:
            raise RuntimeError(f"POST {path}: {response.status} {data[:500]}")
        return json.loads(data)
    finally:
        conn.close()


def stream(port: int, body: dict, result: dict, timeout: float) -> None:
    """One streaming completion: its text, tokens (from the usage chunk), time to the first text and in all."""
    t0 = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("POST", "/v1/completions", json.dumps(dict(body, stream=True, stream_options={"include_usage": True})),
                     {"Content-Type": "application/json"})
        response = conn.getresponse()
        if response.status != 200:
            raise RuntimeError(f"{response.status} {response.read()[:500]!r}")
        text, tokens, first, done = [], None, None, False
        for raw in response:
            line = raw.decode("utf-8").rstrip("\r\n")
            if not line.startswith("data: "):
                continue
            data = line[6:]
            if data == "[DONE]":
                done = True
                break
            chunk = json.loads(data)
            if "error" in chunk:
                raise RuntimeError(f"error event: {chunk['error']}")
            for choice in chunk.get("choices", []):
                if choice.get("text"):
                    first = first or time.perf_counter()
                    text.append(choice["text"])
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
        if not done:
            raise RuntimeError("the stream ended without data: [DONE]")
        end = time.perf_counter()
        result.update(text="".join(text), tokens=tokens, seconds=end - t0, ttft_s=(first or end) - t0, start=t0, end=end)
    except Exception as e:  # noqa: BLE001 - reported per request
        result["error"] = f"{type(e).__name__}: {e}"
    finally:
        conn.close()


def main(argv=None) -> int:
    args = parse_args(argv)
    prompts = read_prompts(args.prompts)
    port = free_port()
    server_log = tempfile.NamedTemporaryFile("w+", prefix="serve-", suffix=".log", delete=False)
    command = [*args.app, "serve", "--model", args.model, "--device", args.device, "--heads", "auto", "--port", str(port),
               "--max-concurrent-requests", str(max(64, args.clients))]
    log(f"starting: {' '.join(command)}")
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=server_log)
    out = {"device": args.device, "clients": args.clients, "max_tokens": args.max_tokens, "port": port, "ok": False}
    t0 = time.perf_counter()
    # The server's stop gets up to 20 s of the deadline; requests get what is left before it.
    left = lambda: max(1.0, args.deadline_s - 20 - (time.perf_counter() - t0))  # noqa: E731
    try:
        while True:
            if server.poll() is not None:
                raise RuntimeError(f"the server exited with {server.returncode} before it answered")
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            try:
                conn.request("GET", "/health")
                if conn.getresponse().status == 200:
                    break
            except OSError:
                pass
            finally:
                conn.close()
            if left() <= 1.0:
                raise RuntimeError(f"no answer from /health within {time.perf_counter() - t0:.0f} s")
            time.sleep(0.2)
        out["start_seconds"] = round(time.perf_counter() - t0, 2)
        log(f"server up on port {port} after {out['start_seconds']} s")

        request = {"prompt": prompts[0], "max_tokens": args.max_tokens, "temperature": 0}
        post(port, "/v1/completions", dict(request, max_tokens=8), left())  # warm-up: kernels compiled, trees built
        t1 = time.perf_counter()
        alone = post(port, "/v1/completions", request, left())
        alone_s = time.perf_counter() - t1
        alone_tokens = alone["usage"]["completion_tokens"]
        out["alone"] = {"tokens": alone_tokens, "seconds": round(alone_s, 4),
                        "tokens_per_second": round(alone_tokens / alone_s, 2),
                        "medusa_mean_accepted": (alone.get("ilgpu_medusa") or {}).get("medusa_mean_accepted")}
        log(f"alone: {alone_tokens} tokens in {alone_s:.3f} s ({alone_tokens / alone_s:.1f} tok/s)")

        results = [{} for _ in range(args.clients)]
        threads = [threading.Thread(target=stream, args=(port, {"prompt": prompts[i % len(prompts)], "max_tokens": args.max_tokens,
                                                                 "temperature": 0}, results[i], left()))
                   for i in range(args.clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        errors = [r["error"] for r in results if "error" in r]
        if errors:
            raise RuntimeError(f"{len(errors)} of {args.clients} streaming requests failed; first: {errors[0]}")
        wall = max(r["end"] for r in results) - min(r["start"] for r in results)
        tokens = sum(r["tokens"] or 0 for r in results)
        out["concurrent"] = {"requests": args.clients, "tokens": tokens, "seconds": round(wall, 4),
                             "tokens_per_second": round(tokens / wall, 2),
                             "ttft_ms_mean": round(1000 * sum(r["ttft_s"] for r in results) / len(results), 1),
                             "ttft_ms_max": round(1000 * max(r["ttft_s"] for r in results), 1)}
        out["concurrent_over_alone"] = round((tokens / wall) / (alone_tokens / alone_s), 3)
        out["identical_first_reply"] = results[0]["text"] == alone["choices"][0]["text"]
        log(f"{args.clients} at once: {tokens} tokens in {wall:.3f} s ({tokens / wall:.1f} tok/s,"
            f" {out['concurrent_over_alone']}x alone); first prompt's reply identical to alone: {out['identical_first_reply']}")
    except Exception as e:  # noqa: BLE001 - reported in the JSON and the exit code
        out["error"] = f"{type(e).__name__}: {e}"
        log(f"error: {out['error']}")
    finally:
        if server.poll() is None:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(timeout=max(5.0, args.deadline_s - (time.perf_counter() - t0)))
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
        out["exit_code"] = server.returncode
        server_log.seek(0)
        lines = server_log.read().splitlines()
        out["server_log_tail"] = lines[-8:]
        server_log.close()
        os.unlink(server_log.name)
    out["ok"] = "error" not in out and out["exit_code"] == 0 and (out.get("identical_first_reply") is True or not args.require_identical)
    print(json.dumps(out))
    return 0 if out["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
