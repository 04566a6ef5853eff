#!/usr/bin/env python3
"""A small webhook receiver for the routes benchmark (simulator/bench/routes/run.sh).

Checks every POST's X-Iothub-Signature (HMAC-SHA256 of the body with the route's secret; a bad
one is answered 401 and counted), answers 200, and keeps per message the delay from the hub's
`receivedAt` to the POST's arrival here. GET /stats answers the counts and the p50/p99/max of
that delay in milliseconds (one machine, one clock).

    webhook_receiver.py PORT SECRET
"""
import hashlib
import hmac
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PORT = int(sys.argv[1])
SECRET = sys.argv[2].encode()
LOCK = threading.Lock()
STATS = {"posts": 0, "messages": 0, "bad_signatures": 0, "first_ms": None, "last_ms": None}
DELAYS = []
SEEN = set()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def reply(self, status, body=b""):
        self.send_response(status)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        now = time.time() * 1000.0
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        want = "sha256=" + hmac.new(SECRET, body, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(self.headers.get("x-iothub-signature", ""), want):
            with LOCK:
                STATS["bad_signatures"] += 1
            return self.reply(401)
        batch = json.loads(body)
        with LOCK:
            STATS["posts"] += 1
            STATS["first_ms"] = STATS["first_ms"] or now
            STATS["last_ms"] = now
            for m in batch["messages"]:
                key = (m["route"], m["seq"])
                if key in SEEN:
                    continue
                SEEN.add(key)
                STATS["messages"] += 1
                DELAYS.append(now - m["receivedAt"])
        self.reply(200)

    def do_GET(self):
        with LOCK:
            d = sorted(DELAYS)
            out = dict(STATS)
        pick = lambda q: round(d[min(len(d) - 1, int(q * len(d)))], 1) if d else None
        out.update(p50_ms=pick(0.5), p99_ms=pick(0.99), max_ms=round(d[-1], 1) if d else None)
        self.reply(200, json.dumps(out).encode())


ThreadingHTTPServer(("127.0.0.1", PORT), Handler).serve_forever()
