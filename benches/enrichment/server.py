"""Serve a rate-limited company-data API on 127.0.0.1 for the enrichment benchmark.

`GET /v1/companies/<domain>` returns a JSON object like a firmographics API:

    {"company": {"name": ..., "industry": ...}, "metrics": {"employees": N},
     "geo": {"country": ...}}

The values are derived from the domain, so every request for a domain
returns the same values. The server

- returns 401 unless the request has the header --key-header with the value
  of the environment variable --key-env,
- admits --rate requests per second with a token bucket of --burst tokens,
  which starts full. A request that finds the bucket empty gets 429 with
  `Retry-After: 1` at once and takes no token.
- responds to an admitted request --latency-ms milliseconds after reading it.

It speaks HTTP/1.1 with keep-alive, one request at a time per connection
(no pipelining), and listens on 127.0.0.1 only. At start it prints
`listening on 127.0.0.1:PORT` as the first line of stdout.

`GET /stats` returns the counters as JSON and writes them to --stats-file. On
SIGTERM or SIGINT the server writes them to --stats-file and exits with 0.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import logging
import os
import signal
import sys
import time
import urllib.parse
from pathlib import Path

COMPANY_PATH_PREFIX = "/v1/companies/"
STATS_PATH = "/stats"

# Maximum length of a request line or header line, in bytes.
MAX_LINE_BYTES = 8192
MAX_HEADER_LINES = 100

MAX_RECORDED_429S = 1000

# Period of the timer that measures how late the event loop runs, in seconds.
LOOP_LAG_PERIOD = 0.01

INDUSTRIES = ["Software", "Retail", "Manufacturing", "Finance", "Healthcare", "Logistics", "Media", "Education"]
COUNTRIES = ["US", "DE", "FR", "GB", "NL", "ES", "IT", "SE", "CA", "AU"]

REASON_PHRASES = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    405: "Method Not Allowed",
    429: "Too Many Requests",
}


class TokenBucket:
    """Admits `rate` requests per second on average and at most `burst` at once."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = float(burst)
        self.updated = time.monotonic()

    def try_take(self) -> bool:
        """Take one token and return True, or return False when the bucket is empty."""
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


class Stats:
    """Counters of the company requests the server received."""

    def __init__(self) -> None:
        self.started = time.time()
        self.requests = 0
        self.ok_responses = 0
        self.throttled = 0
        self.unauthorized = 0
        self.other_errors = 0
        self.domains_served: set[str] = set()
        self.connections = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.first_request_monotonic: float | None = None
        self.last_request_monotonic: float | None = None
        # Seconds after the first request at which 429s were sent, the first MAX_RECORDED_429S of them.
        self.throttled_at: list[float] = []
        # Maximum delay of the event loop in waking a timer. Such a delay also delays reading every request.
        self.max_loop_lag_seconds = 0.0

    def to_json(self) -> dict:
        span = None
        if self.first_request_monotonic is not None and self.last_request_monotonic is not None:
            span = self.last_request_monotonic - self.first_request_monotonic
        return {
            "requests": self.requests,
            "ok_responses": self.ok_responses,
            "throttled": self.throttled,
            "unauthorized": self.unauthorized,
            "other_errors": self.other_errors,
            "distinct_domains_served": len(self.domains_served),
            "repeated_ok_responses": self.ok_responses - len(self.domains_served),
            "connections": self.connections,
            "max_in_flight": self.max_in_flight,
            "seconds_first_to_last_request": span,
            "throttled_at_seconds": [round(offset, 3) for offset in self.throttled_at],
            "max_loop_lag_seconds": self.max_loop_lag_seconds,
            "uptime_seconds": time.time() - self.started,
        }


def company_data(domain: str) -> dict:
    """Return the company data for a domain, the same on every call."""
    digest = hashlib.sha256(domain.encode()).digest()
    stem = domain.split(".")[0]
    return {
        "company": {
            "name": f"{stem.replace('-', ' ').title()} Inc",
            "industry": INDUSTRIES[digest[0] % len(INDUSTRIES)],
        },
        "metrics": {"employees": 1 + int.from_bytes(digest[1:4], "big") % 50_000},
        "geo": {"country": COUNTRIES[digest[4] % len(COUNTRIES)]},
    }


def encode_response(status: int, body: bytes, extra_headers: list[tuple[str, str]], keep_alive: bool) -> bytes:
    headers = [
        f"HTTP/1.1 {status} {REASON_PHRASES.get(status, 'Error')}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        f"Connection: {'keep-alive' if keep_alive else 'close'}",
    ]
    headers.extend(f"{name}: {value}" for name, value in extra_headers)
    return ("\r\n".join(headers) + "\r\n\r\n").encode("ascii") + body


class CompanyServer:
    """The HTTP server: request parsing, authentication, rate limit and responses."""

    def __init__(self, args: argparse.Namespace, api_key: str) -> None:
        self.latency = args.latency_ms / 1000
        self.key_header = args.key_header.lower()
        self.api_key = api_key
        self.bucket = TokenBucket(args.rate, args.burst)
        self.stats = Stats()
        self.stats_file: Path = args.stats_file

    def write_stats(self) -> dict:
        """Write the counters to the stats file and return them."""
        counters = self.stats.to_json()
        temporary = self.stats_file.with_suffix(".tmp")
        temporary.write_text(json.dumps(counters, indent=2) + "\n")
        temporary.replace(self.stats_file)
        return counters

    async def handle_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.stats.connections += 1
        try:
            while True:
                request = await read_request(reader)
                if request is None:
                    break
                method, target, headers = request
                keep_alive = headers.get("connection", "").lower() != "close"
                status, body, extra_headers = await self.respond(method, target, headers)
                writer.write(encode_response(status, body, extra_headers, keep_alive))
                await writer.drain()
                if not keep_alive:
                    break
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # The client closed the connection.
        except ValueError as error:
            self.stats.other_errors += 1
            logging.warning("closed the connection from %s: %s", writer.get_extra_info("peername"), error)
        finally:
            writer.close()

    async def respond(self, method: str, target: str, headers: dict[str, str]) -> tuple[int, bytes, list]:
        path = urllib.parse.urlsplit(target).path
        if path == STATS_PATH:
            return 200, json.dumps(self.write_stats()).encode(), []
        if not path.startswith(COMPANY_PATH_PREFIX):
            return 404, b'{"error": "not found"}', []
        if method != "GET":
            return 405, b'{"error": "only GET is allowed"}', [("Allow", "GET")]

        stats = self.stats
        now = time.monotonic()
        stats.requests += 1
        if stats.first_request_monotonic is None:
            stats.first_request_monotonic = now
        stats.last_request_monotonic = now
        if headers.get(self.key_header) != self.api_key:
            stats.unauthorized += 1
            return 401, b'{"error": "missing or invalid API key"}', []
        if not self.bucket.try_take():
            stats.throttled += 1
            if len(stats.throttled_at) < MAX_RECORDED_429S:
                stats.throttled_at.append(now - stats.first_request_monotonic)
            return 429, b'{"error": "rate limit exceeded"}', [("Retry-After", "1")]
        domain = urllib.parse.unquote(path[len(COMPANY_PATH_PREFIX):])
        if not domain or "/" in domain:
            stats.other_errors += 1
            return 400, b'{"error": "expected /v1/companies/<domain>"}', []

        stats.in_flight += 1
        stats.max_in_flight = max(stats.max_in_flight, stats.in_flight)
        try:
            await asyncio.sleep(self.latency)
        finally:
            stats.in_flight -= 1
        stats.ok_responses += 1
        stats.domains_served.add(domain)
        return 200, json.dumps(company_data(domain)).encode(), []


async def measure_loop_lag(stats: Stats) -> None:
    """Record in stats how much later than requested a short sleep returns, until cancelled."""
    while True:
        before = time.monotonic()
        await asyncio.sleep(LOOP_LAG_PERIOD)
        lag = time.monotonic() - before - LOOP_LAG_PERIOD
        stats.max_loop_lag_seconds = max(stats.max_loop_lag_seconds, lag)


async def read_request(reader: asyncio.StreamReader) -> tuple[str, str, dict[str, str]] | None:
    """Read one request head (and skip its body), or return None when the client closed the connection."""
    request_line = await reader.readline()
    if not request_line:
        return None
    if len(request_line) > MAX_LINE_BYTES:
        raise ValueError(f"request line of {len(request_line)} bytes is longer than {MAX_LINE_BYTES}")
    parts = request_line.decode("latin-1").split()
    if len(parts) != 3:
        raise ValueError(f"invalid request line {request_line!r}")
    method, target, _version = parts
    headers: dict[str, str] = {}
    for _ in range(MAX_HEADER_LINES):
        line = await reader.readline()
        if line in (b"\r\n", b"\n"):
            break
        if not line:
            raise ConnectionError("connection closed inside the request head")
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    else:
        raise ValueError(f"request head has more than {MAX_HEADER_LINES} header lines")
    body_length = int(headers.get("content-length", "0"))
    if body_length:
        await reader.readexactly(body_length)
    return method, target, headers


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0, help="TCP port on 127.0.0.1 (default: a free port)")
    parser.add_argument("--rate", type=float, default=200.0, help="admitted requests per second")
    parser.add_argument("--burst", type=int, default=10, help="token bucket size, in requests")
    parser.add_argument("--latency-ms", type=float, default=20.0, help="delay before each 200 response, in ms")
    parser.add_argument("--key-header", default="X-Api-Key", help="header that carries the API key")
    parser.add_argument("--key-env", default="BENCH_KEY", help="environment variable with the expected API key")
    parser.add_argument("--stats-file", type=Path, required=True, help="JSON file the counters are written to")
    args = parser.parse_args()
    if args.rate <= 0 or args.burst < 1 or args.latency_ms < 0:
        parser.error("--rate must be positive, --burst at least 1 and --latency-ms 0 or more")
    return args


async def serve(args: argparse.Namespace, api_key: str) -> None:
    company_server = CompanyServer(args, api_key)
    server = await asyncio.start_server(company_server.handle_connection, "127.0.0.1", args.port)
    port = server.sockets[0].getsockname()[1]
    print(f"listening on 127.0.0.1:{port}", flush=True)
    logging.info("listening on 127.0.0.1:%d: %g requests per second, burst %d", port, args.rate, args.burst)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signal_number in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signal_number, stop.set)
    lag_task = asyncio.create_task(measure_loop_lag(company_server.stats))
    async with server:
        await stop.wait()
    lag_task.cancel()
    counters = company_server.write_stats()
    logging.info("stopped after %d requests, %d of them throttled", counters["requests"], counters["throttled"])


def main() -> None:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(message)s", level=logging.INFO)
    args = parse_args()
    api_key = os.environ.get(args.key_env)
    if not api_key:
        sys.exit(f"the environment variable {args.key_env} with the expected API key is not set")
    asyncio.run(serve(args, api_key))


if __name__ == "__main__":
    main()
