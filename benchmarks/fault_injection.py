"""Fault injection against real processes: a loaded server, clients that leave mid-way, an evaluation killed with
SIGKILL and a torn results line, and the sandbox's escape probes. Prints one markdown table and writes JSON.

1. Load: a server process (this script with ``--serve-toy``: uvicorn on ``create_app`` over a toy FunctionLM that
   sleeps per forward call; 1 worker, a bounded queue) and N client threads, each sending a few completions (every
   third one streamed) and retrying a 429 politely (Retry-After, exponential backoff with jitter). Counted: requests
   answered (200), 429s seen, 5xx, and lost (no answer after the retries: connection errors, timeouts, retries
   exhausted); the server's RSS (``/proc/PID/status``) before and after the whole fault run (load and disconnects).
2. Disconnects, on the same server: streamed completions closed after their first progress chunk, and uploads cut
   short (a Content-Length larger than the bytes sent, then the socket closed). Counted: disconnects injected, how
   many ``powersampling_requests_total`` labelled ``cancelled`` (and ``error``), whether each cancelled run stopped
   (``/health`` shows nothing running), and whether the server still answers a normal request afterwards.
3. Evaluation kill -9: ``python -m powersampling.cli eval`` (real CLI, real model) killed with SIGKILL once a few
   rows are in results.jsonl; a partial row (what a write cut by the kill leaves) is appended; the same command is
   run again to completion. Counted: expected (problem, method) pairs missing from the final results.jsonl (lost),
   pairs present twice (duplicated), and lines that do not parse (corrupt).
4. Sandbox: ``run_escape_probes()`` on the isolation backend that works here (bwrap or unshare): blocked / tried.

Usage: python benchmarks/fault_injection.py [--clients 40] [--requests-per-client 3] [--disconnects 10]
       [--skip-load] [--skip-disconnects] [--skip-eval] [--skip-sandbox] [--out benchmarks/results/fault_injection.json]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "fault_injection.json"
MODEL_NAME = "toy-fault"
RSS_GROWTH_LIMIT_MIB = 32.0  # what tests/test_server_load.py allows across rounds


def log(message: str) -> None:
    print(f"[fault_injection] {message}", file=sys.stderr, flush=True)


# the toy server (a separate process: this script run with --serve-toy)


def toy_model(delay_s: float, max_len: int = 400):
    """8 tokens, logits a fixed function of the prefix; EOS is impossible before ``max_len`` tokens, so a request
    runs to its max_tokens, and each forward call sleeps ``delay_s`` (a model that takes time)."""
    import numpy as np

    from powersampling import FunctionLM

    def logits(prefix):
        if len(prefix) >= max_len:
            row = np.full(8, -np.inf)
            row[0] = 0.0
            return row
        row = np.random.default_rng([len(prefix), *prefix]).normal(size=8) * 1.5
        row[0] = -np.inf
        if delay_s:
            time.sleep(delay_s)
        return row

    return FunctionLM(8, 0, logits, name=MODEL_NAME)


def serve_toy(delay_ms: float, workers: int, max_queue: int) -> int:
    """Bind a free loopback port, print ``PORT <n>`` on stdout, serve until SIGTERM."""
    import uvicorn

    from powersampling.server import ServerSettings, create_app

    app = create_app(toy_model(delay_ms / 1000), ServerSettings(workers=workers, max_queue=max_queue))
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    print(f"PORT {sock.getsockname()[1]}", flush=True)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on", access_log=False))
    server.run(sockets=[sock])
    return 0


class ServerProcess:
    def __init__(self, args, log_path: Path) -> None:
        self.log_path = log_path
        self.log_file = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                str(Path(__file__).resolve()),
                "--serve-toy",
                "--delay-ms",
                str(args.delay_ms),
                "--workers",
                str(args.workers),
                "--max-queue",
                str(args.max_queue),
            ],
            stdout=subprocess.PIPE,
            stderr=self.log_file,
            stdin=subprocess.DEVNULL,
        )
        line = self.proc.stdout.readline().decode().strip()  # the port, printed before the app starts serving
        if not line.startswith("PORT "):
            self.stop()
            raise RuntimeError(f"the toy server did not start: {self.log_tail()}")
        self.url = f"http://127.0.0.1:{int(line.split()[1])}"
        import httpx

        end = time.monotonic() + 60
        while True:
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None or time.monotonic() > end:
                self.stop()
                raise RuntimeError(f"the toy server did not answer /health: {self.log_tail()}")
            time.sleep(0.05)

    def rss_mib(self) -> float:
        return _status_kib(self.proc.pid, "VmRSS") / 1024

    def peak_rss_mib(self) -> float:
        return _status_kib(self.proc.pid, "VmHWM") / 1024

    def log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-2000:]
        except OSError:
            return ""

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log_file.close()
        return self.proc.returncode


def _status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/{pid}/status")


def scrape(url: str) -> dict[tuple[str, tuple], float]:
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(url + "/metrics", timeout=10).text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def count(samples, name: str, **labels) -> float:
    return sum(
        v for (n, ls), v in samples.items() if n == name and all(dict(ls).get(k) == x for k, x in labels.items())
    )


def requests_by_status(url: str) -> collections.Counter:
    samples = scrape(url)
    out: collections.Counter = collections.Counter()
    for (name, labels), value in samples.items():
        labels = dict(labels)
        if name == "powersampling_requests_total" and labels.get("model_name") == MODEL_NAME:
            out[labels.get("status")] += int(value)
    return out


def wait_until(predicate, timeout_s: float, step_s: float = 0.05) -> bool:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(step_s)
    return bool(predicate())


def idle(url: str) -> bool:
    import httpx

    queue = httpx.get(url + "/health", timeout=10).json()["queue"]
    return queue["running"] == 0 and queue["waiting"] == 0


# 1. load


def load_body(client: int, request: int) -> dict:
    body = {
        "model": MODEL_NAME,
        "prompt": f"{client % 7 + 1} {request + 1}",
        "max_tokens": 8,
        "method": "power",
        "power_sampling": {"n_mcmc": 2, "block_size": 4, "seed": client * 100 + request},
    }
    if (client + request) % 3 == 0:
        body["stream"] = True
    return body


def one_client(url: str, client: int, args, tally: collections.Counter, lock: threading.Lock) -> None:
    """A polite client: each request is retried on 429 (waiting at least Retry-After, backing off exponentially with
    jitter) and on a connection error, up to ``args.max_attempts`` tries."""
    import httpx

    rng = random.Random(client)
    seen: collections.Counter = collections.Counter()
    with httpx.Client(base_url=url, timeout=args.client_timeout) as http:
        for request in range(args.requests_per_client):
            body = load_body(client, request)
            outcome = "lost"
            for attempt in range(args.max_attempts):
                retry_after = 0.0
                try:
                    if body.get("stream"):
                        with http.stream("POST", "/v1/completions", json=body) as response:
                            response.read()
                    else:
                        response = http.post("/v1/completions", json=body)
                except httpx.HTTPError as exc:
                    seen["transport_errors"] += 1
                    seen[f"transport:{type(exc).__name__}"] += 1
                else:
                    code = response.status_code
                    if code == 200:
                        text = response.text
                        complete = (
                            text.rstrip().endswith("data: [DONE]") and '"error"' not in text
                            if body.get("stream")
                            else response.json()["choices"][0]["finish_reason"] in ("stop", "length")
                        )
                        outcome = "answered" if complete else "broken"
                        break
                    if code == 429:
                        seen["429"] += 1
                        retry_after = float(response.headers.get("retry-after") or 0)
                    elif code >= 500:
                        seen["5xx"] += 1
                        outcome = "5xx"
                        break
                    else:
                        seen["other_4xx"] += 1
                        outcome = "4xx"
                        break
                if attempt + 1 < args.max_attempts:
                    backoff = min(args.backoff_cap_s, args.backoff_base_s * 2**attempt)
                    time.sleep(max(backoff, retry_after) * rng.uniform(1.0, 1.5))
            seen[outcome] += 1
            seen["attempts"] += attempt + 1
    with lock:
        tally.update(seen)


def run_load(server: ServerProcess, args) -> dict:
    before = requests_by_status(server.url)
    tally: collections.Counter = collections.Counter()
    lock = threading.Lock()
    threads = [
        threading.Thread(target=one_client, args=(server.url, i, args, tally, lock), name=f"client-{i}")
        for i in range(args.clients)
    ]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    drained = wait_until(lambda: idle(server.url), 30)
    after = requests_by_status(server.url)
    delta = {k: after[k] - before[k] for k in set(after) | set(before) if after[k] - before[k]}
    total = args.clients * args.requests_per_client
    return {
        "clients": args.clients,
        "requests_per_client": args.requests_per_client,
        "requests": total,
        "answered": tally["answered"],
        "seen_429": tally["429"],
        "seen_5xx": tally["5xx"],
        "lost": tally["lost"],
        "broken_streams": tally["broken"],
        "other_4xx": tally["other_4xx"],
        "transport_errors": tally["transport_errors"],
        "transport_error_kinds": {k.split(":", 1)[1]: v for k, v in tally.items() if k.startswith("transport:")},
        "attempts": tally["attempts"],
        "wall_s": round(wall, 2),
        "queue_drained": drained,
        "metrics_status_delta": delta,
        "metrics_agree": delta.get("ok", 0) == tally["answered"] and delta.get("rejected", 0) == tally["429"],
    }


# 2. disconnects


def stream_and_leave(url: str, first_chunk_timeout_s: float) -> bool:
    """Open a long streamed completion, read up to its first progress chunk, close the connection. Whether a
    progress chunk came (the run was under way when the client left)."""
    import httpx

    body = {
        "model": MODEL_NAME,
        "prompt": "1",
        "max_tokens": 300,
        "stream": True,
        "method": "power",
        "power_sampling": {"n_mcmc": 50, "block_size": 4},
    }
    with httpx.stream("POST", url + "/v1/completions", json=body, timeout=first_chunk_timeout_s) as response:
        if response.status_code != 200:
            return False
        for line in response.iter_lines():
            if line.startswith("data: ") and '"progress"' in line:
                return True
    return False


def upload_and_leave(url: str) -> None:
    """Declare a 4 KiB JSON body, send its first bytes, close the socket."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as conn:
        conn.sendall(
            b"POST /v1/completions HTTP/1.1\r\nHost: fault\r\nContent-Type: application/json\r\n"
            b"Content-Length: 4096\r\n\r\n" + f'{{"model": "{MODEL_NAME}", "prompt": "1 2'.encode()
        )
        time.sleep(0.1)  # the server reads the headers and the first bytes before the client leaves


def run_disconnects(server: ServerProcess, args) -> dict:
    import httpx

    before = requests_by_status(server.url)
    streams_under_way = 0
    runs_stopped = 0
    for _ in range(args.disconnects):
        streams_under_way += stream_and_leave(server.url, 30)
        runs_stopped += wait_until(lambda: idle(server.url), args.stop_timeout_s)
    for _ in range(args.disconnects):
        upload_and_leave(server.url)
    injected = 2 * args.disconnects

    def cancelled() -> int:
        return requests_by_status(server.url)["cancelled"] - before["cancelled"]

    wait_until(lambda: cancelled() >= injected, 10, 0.1)
    after = requests_by_status(server.url)
    delta = {k: after[k] - before[k] for k in set(after) | set(before) if after[k] - before[k]}
    # a normal request afterwards
    body = {"model": MODEL_NAME, "prompt": "3 4", "max_tokens": 8, "method": "power", "power_sampling": {"seed": 1}}
    try:
        code_after = httpx.post(server.url + "/v1/completions", json=body, timeout=60).status_code
    except httpx.HTTPError as exc:
        code_after = f"{type(exc).__name__}"
    return {
        "streams_closed": args.disconnects,
        "streams_under_way_when_closed": streams_under_way,
        "uploads_cut": args.disconnects,
        "injected": injected,
        "labelled_cancelled": delta.get("cancelled", 0),
        "labelled_error": delta.get("error", 0),
        "metrics_status_delta": delta,
        "runs_stopped": runs_stopped,
        "answer_after": code_after,
        "idle_after": wait_until(lambda: idle(server.url), 10),
    }


# 3. evaluation kill -9


def eval_command(args, out: Path) -> list[str]:
    cmd = [sys.executable, "-m", "powersampling.cli", "eval", "--task", args.eval_task, "--methods", args.eval_methods]
    cmd += ["--limit", str(args.eval_limit), "--max-new-tokens", str(args.eval_max_new_tokens), "--seed", "0"]
    cmd += ["--backend", args.eval_backend, "--out", str(out)]
    if args.eval_backend in ("llama.cpp", "transformers", "auto"):
        cmd += ["--threads", "1"]
    if args.eval_model:
        cmd += ["--model", args.eval_model]
    return cmd


def complete_lines(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except OSError:
        return 0


def run_eval_kill(args, work: Path) -> dict:
    from powersampling.eval import load_problems

    out = work / "eval-run"
    results = out / "results.jsonl"
    cmd = eval_command(args, out)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    methods = [m.strip() for m in args.eval_methods.split(",") if m.strip()]
    expected = {(p.problem_id, m) for p in load_problems(args.eval_task, args.eval_limit) for m in methods}

    started = time.perf_counter()
    with open(work / "eval-killed.log", "wb") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, stdin=subprocess.DEVNULL, env=env)
        end = time.monotonic() + args.eval_timeout_s
        while proc.poll() is None and complete_lines(results) < args.kill_after_rows and time.monotonic() < end:
            time.sleep(0.01)
        finished_first = proc.poll() is not None
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    first_wall = time.perf_counter() - started
    data = results.read_bytes() if results.is_file() else b""
    rows_at_kill = data.count(b"\n")
    torn_by_kill = bool(data) and not data.endswith(b"\n")
    # what a write cut by the kill leaves: the start of a row for a pair not yet done, no newline
    done = {(r["problem_id"], r["method"]) for r in (json.loads(x) for x in data.split(b"\n")[:rows_at_kill] if x)}
    pending = sorted(expected - done)
    problem_id, method = pending[0] if pending else sorted(expected)[0]
    fake = {"task": args.eval_task, "problem_id": problem_id, "index": 0, "method": method, "correct": True}
    whole = json.dumps({**fake, "text": "a killed write leaves half of this row"})
    torn = whole[: len(whole) // 2].encode()
    with open(results, "ab") as fh:
        fh.write(torn)
    started = time.perf_counter()
    with open(work / "eval-resumed.log", "wb") as err:
        resumed = subprocess.run(
            cmd, stdout=subprocess.DEVNULL, stderr=err, stdin=subprocess.DEVNULL, env=env, timeout=args.eval_timeout_s
        )
    resume_wall = time.perf_counter() - started
    resume_log = (work / "eval-resumed.log").read_text(errors="replace")

    final = results.read_bytes()
    lines = final.split(b"\n")
    corrupt, pairs = 0, collections.Counter()
    for raw in lines:
        if not raw.strip():
            continue
        try:
            row = json.loads(raw)
            pairs[(row["problem_id"], row["method"])] += 1
        except (ValueError, KeyError, TypeError):
            corrupt += 1
    return {
        "command": " ".join(cmd[1:]),
        "expected_rows": len(expected),
        "killed": not finished_first and proc.returncode == -signal.SIGKILL,
        "finished_before_kill": finished_first,
        "rows_at_kill": rows_at_kill,
        "torn_by_kill": torn_by_kill,
        "torn_bytes_appended": len(torn),
        "first_run_wall_s": round(first_wall, 2),
        "resume_returncode": resumed.returncode,
        "resume_wall_s": round(resume_wall, 2),
        "resume_reported_repair": "repaired" in resume_log,
        "final_rows": sum(pairs.values()),
        "rows_lost": len(expected - set(pairs)),
        "rows_duplicated": sum(n - 1 for n in pairs.values() if n > 1),
        "rows_unexpected": sum(n for k, n in pairs.items() if k not in expected),
        "corrupt_lines": corrupt,
        "ends_with_newline": final.endswith(b"\n"),
        "resume_log_tail": resume_log[-1500:] if resumed.returncode else "",
    }


# 4. sandbox


def run_sandbox() -> dict:
    from powersampling.sandbox import isolation_backend
    from powersampling.sandbox.probes import run_escape_probes

    backend = isolation_backend()
    if backend is None:
        return {"backend": None, "tried": 0, "blocked": 0, "probes": [], "note": "no isolation backend works here"}
    started = time.perf_counter()
    results = run_escape_probes(backend=backend)
    return {
        "backend": backend,
        "tried": len(results),
        "blocked": sum(r.blocked for r in results),
        "escaped": [r.name for r in results if not r.blocked],
        "probes": [{"name": r.name, "blocked": r.blocked, "detail": r.detail} for r in results],
        "wall_s": round(time.perf_counter() - started, 2),
    }


# the table


def table(report: dict, args) -> str:
    rows = ["| fault family | injected | measured | ok |", "|---|---|---|---|"]

    def yes(flag: bool) -> str:
        return "yes" if flag else "**NO**"

    load = report.get("load")
    if load:
        extra = f", broken streams {load['broken_streams']}" if load["broken_streams"] else ""
        rows.append(
            f"| load: {load['clients']} clients x {load['requests_per_client']} requests, 1 worker, queue "
            f"{args.max_queue}, retry on 429 | {load['requests']} requests ({load['attempts']} attempts) "
            f"| answered {load['answered']} / 429 seen {load['seen_429']} / 5xx {load['seen_5xx']} / lost "
            f"{load['lost']}{extra} | {yes(load['ok'])} |"
        )
    memory = report.get("memory")
    if memory:
        rows.append(
            f"| server memory over the fault run | load + disconnects | RSS {memory['rss_before_mib']:.1f} -> "
            f"{memory['rss_after_mib']:.1f} MiB ({memory['rss_growth_mib']:+.1f}; peak "
            f"{memory['peak_rss_mib']:.1f}) | {yes(memory['ok'])} |"
        )
    disc = report.get("disconnects")
    if disc:
        rows.append(
            f"| disconnects: streams closed after the first chunk + uploads cut short | {disc['streams_closed']} + "
            f"{disc['uploads_cut']} | labelled cancelled {disc['labelled_cancelled']} / {disc['injected']} (error "
            f"{disc['labelled_error']}); runs stopped {disc['runs_stopped']} / {disc['streams_closed']}; next "
            f"request {disc['answer_after']} | {yes(disc['ok'])} |"
        )
    ev = report.get("eval")
    if ev:
        how = "SIGKILL" if ev["killed"] else "SIGKILL came too late (run had finished)"
        rows.append(
            f"| eval kill -9 + torn line + resume | {how} at {ev['rows_at_kill']} of {ev['expected_rows']} rows, "
            f"{ev['torn_bytes_appended']}-byte partial row | rows lost {ev['rows_lost']} / duplicated "
            f"{ev['rows_duplicated']} (corrupt lines {ev['corrupt_lines']}, resume exit {ev['resume_returncode']}) "
            f"| {yes(ev['ok'])} |"
        )
    box = report.get("sandbox")
    if box:
        escaped = f" (escaped: {', '.join(box['escaped'])})" if box.get("escaped") else ""
        rows.append(
            f"| sandbox escapes ({box['backend'] or 'no isolation'}) | {box['tried']} hostile programs "
            f"| blocked {box['blocked']} / {box['tried']}{escaped} | {yes(box['ok'])} |"
        )
    return "\n".join(rows)


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON report path")
    parser.add_argument("--clients", type=int, default=40)
    parser.add_argument("--requests-per-client", type=int, default=3)
    parser.add_argument("--max-attempts", type=int, default=12, help="tries per request (429 and connection errors)")
    parser.add_argument("--backoff-base-s", type=float, default=0.25)
    parser.add_argument("--backoff-cap-s", type=float, default=4.0)
    parser.add_argument("--client-timeout", type=float, default=60.0)
    parser.add_argument("--delay-ms", type=float, default=2.0, help="toy model: sleep per forward call")
    parser.add_argument("--workers", type=int, default=1, help="server sampling threads")
    parser.add_argument("--max-queue", type=int, default=8, help="server queue before 429")
    parser.add_argument("--disconnects", type=int, default=10, help="streams closed, and as many uploads cut")
    parser.add_argument("--stop-timeout-s", type=float, default=10.0, help="for a cancelled run to stop")
    parser.add_argument("--eval-task", default="gsm8k")
    parser.add_argument("--eval-methods", default="sample,low-temp")
    parser.add_argument("--eval-limit", type=int, default=6)
    parser.add_argument("--eval-max-new-tokens", type=int, default=16)
    parser.add_argument("--eval-backend", default="llama.cpp")
    parser.add_argument("--eval-model", default=None, help="default: the embedded SmolLM2-135M-Instruct")
    parser.add_argument("--kill-after-rows", type=int, default=3)
    parser.add_argument("--eval-timeout-s", type=float, default=600.0)
    parser.add_argument("--skip-load", action="store_true")
    parser.add_argument("--skip-disconnects", action="store_true")
    parser.add_argument("--skip-eval", action="store_true")
    parser.add_argument("--skip-sandbox", action="store_true")
    parser.add_argument("--serve-toy", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.clients < 1 or args.requests_per_client < 1 or args.max_attempts < 1 or args.disconnects < 0:
        parser.error("--clients, --requests-per-client and --max-attempts must be >= 1, --disconnects >= 0")
    if args.kill_after_rows < 1:
        parser.error("--kill-after-rows must be >= 1")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.serve_toy:
        raise SystemExit(serve_toy(args.delay_ms, args.workers, args.max_queue))
    report: dict = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "node": platform.node(),
            "cpus": os.cpu_count(),
            "loadavg_start": os.getloadavg(),
            "python": platform.python_version(),
        },
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "serve_toy"},
    }
    with tempfile.TemporaryDirectory(prefix="fault-injection-") as tmp:
        work = Path(tmp)
        if not (args.skip_load and args.skip_disconnects):
            server = ServerProcess(args, work / "server.log")
            try:
                import httpx

                warm = httpx.post(server.url + "/v1/completions", json=load_body(1, 1), timeout=60)
                warm.raise_for_status()
                rss_before = server.rss_mib()
                if not args.skip_load:
                    log(f"load: {args.clients} clients x {args.requests_per_client} requests")
                    load = run_load(server, args)
                    load["ok"] = (
                        load["answered"] == load["requests"]
                        and load["seen_5xx"] == 0
                        and load["lost"] == 0
                        and load["queue_drained"]
                    )
                    report["load"] = load
                if not args.skip_disconnects:
                    log(f"disconnects: {args.disconnects} streams, {args.disconnects} uploads")
                    disc = run_disconnects(server, args)
                    disc["ok"] = (
                        disc["labelled_cancelled"] == disc["injected"]
                        and disc["labelled_error"] == 0
                        and disc["runs_stopped"] == disc["streams_closed"]
                        and disc["answer_after"] == 200
                        and disc["idle_after"]
                    )
                    report["disconnects"] = disc
                rss_after = server.rss_mib()
                growth = rss_after - rss_before
                report["memory"] = {
                    "rss_before_mib": round(rss_before, 1),
                    "rss_after_mib": round(rss_after, 1),
                    "rss_growth_mib": round(growth, 1),
                    "peak_rss_mib": round(server.peak_rss_mib(), 1),
                    "limit_mib": RSS_GROWTH_LIMIT_MIB,
                    "ok": growth < RSS_GROWTH_LIMIT_MIB,
                }
            finally:
                code = server.stop()
                report["server_exit"] = code  # uvicorn re-raises the SIGTERM it handled: -15 is a clean stop
                if code not in (0, -signal.SIGTERM, None):
                    report["server_log_tail"] = server.log_tail()
        if not args.skip_eval:
            log(f"eval kill -9: {' '.join(eval_command(args, work / 'eval-run')[3:])}")
            ev = run_eval_kill(args, work)
            ev["ok"] = (
                ev["killed"]
                and ev["resume_returncode"] == 0
                and ev["rows_lost"] == 0
                and ev["rows_duplicated"] == 0
                and ev["rows_unexpected"] == 0
                and ev["corrupt_lines"] == 0
                and ev["ends_with_newline"]
            )
            report["eval"] = ev
    if not args.skip_sandbox:
        log("sandbox escape probes")
        box = run_sandbox()
        box["ok"] = box["tried"] > 0 and box["blocked"] == box["tried"]
        report["sandbox"] = box
    report["machine"]["loadavg_end"] = os.getloadavg()
    report["table"] = table(report, args)
    report["all_ok"] = all(report[k]["ok"] for k in ("load", "memory", "disconnects", "eval", "sandbox") if k in report)
    print(report["table"])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    log(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    raise SystemExit(0 if main()["all_ok"] else 1)
