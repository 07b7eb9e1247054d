"""A webhook receiver for tests/webhooks.rs that checks every signature with the
Standard Webhooks reference library (`standardwebhooks`, installed by scripts/test.sh),
an implementation independent of syncpool's.

Every request is logged to --log as one JSON line: {"id", "type", "verified", "status"}.
The first --fail-first requests are answered 503; the first --hang-first are held for a
minute (a worker can be killed while it waits); others are answered 200 when the
signature verifies, 400 when it does not. The bound port is written to --port-file.
"""

import argparse
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks.webhooks import Webhook

p = argparse.ArgumentParser()
p.add_argument("--secret", required=True)
p.add_argument("--port-file", required=True)
p.add_argument("--log", required=True)
p.add_argument("--fail-first", type=int, default=0)
p.add_argument("--hang-first", type=int, default=0)
args = p.parse_args()

lock = threading.Lock()
seen = {"n": 0}
hook = Webhook(args.secret)


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", "0"))).decode()
        with lock:
            seen["n"] += 1
            n = seen["n"]
        headers = {k.lower(): v for k, v in self.headers.items()}
        try:
            payload = hook.verify(body, headers)
            verified, kind = True, payload.get("type")
        except Exception:
            verified, kind = False, None
        if n <= args.hang_first:
            self.log(headers, kind, verified, "hang")
            time.sleep(60)
            return
        status = 503 if n <= args.fail_first else (200 if verified else 400)
        self.log(headers, kind, verified, status)
        self.send_response(status)
        self.send_header("content-length", "0")
        self.end_headers()

    def log(self, headers, kind, verified, status):
        line = {"id": headers.get("webhook-id"), "type": kind, "verified": verified, "status": status}
        with lock, open(args.log, "a") as f:
            f.write(json.dumps(line) + "\n")

    def log_message(self, *a):
        pass


server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
with open(args.port_file + ".tmp", "w") as f:
    f.write(str(server.server_address[1]))
import os

os.rename(args.port_file + ".tmp", args.port_file)
server.serve_forever()
