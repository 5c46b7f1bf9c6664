#!/usr/bin/env python3
"""Echo upstream for the Keygate demo and end-to-end tests.

Answers every request (any method, any path) with 200 and a JSON body describing what it
received, so you can see exactly what Keygate forwarded:

    {"method": "GET", "path": "/v1/hello?x=1", "headers": {"x-keygate-subject": "...", ...}}

Header names are lowercased; a repeated header's values are joined with ", ".
Usage: echo_upstream.py [PORT]   (default: $KEYGATE_ECHO_PORT or 8090; binds 127.0.0.1,
override the host with $KEYGATE_ECHO_HOST). Python 3 standard library only.
"""

import json
import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class EchoHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, which Envoy's upstream pool reuses
    # Headers and body go out in separate writes: without TCP_NODELAY each response waits
    # ~40 ms for Envoy's delayed ACK (Nagle), which would swamp every latency we measure.
    disable_nagle_algorithm = True

    def version_string(self):
        return "keygate-echo"

    def _echo(self):
        length = int(self.headers.get("content-length") or 0)
        if length > 0:
            self.rfile.read(length)  # drain the request body to keep the connection usable
        headers = {}
        for name, value in self.headers.items():
            key = name.lower()
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        body = json.dumps({"method": self.command, "path": self.path, "headers": headers}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _echo

    def log_message(self, format, *args):  # noqa: A002 - signature fixed by the base class
        pass  # quiet: one line per request would drown the test logs


class EchoServer(ThreadingHTTPServer):
    # The listen backlog (socketserver's default is 5): a burst of new upstream connections
    # from Envoy beyond it has its SYNs dropped and retried a second later, past the echo
    # cluster's 1 s connect_timeout (a 503 that Keygate had nothing to do with).
    request_queue_size = 1024
    daemon_threads = True


def main():
    port = int(sys.argv[1]) if len(sys.argv) > 1 else int(os.environ.get("KEYGATE_ECHO_PORT", "8090"))
    host = os.environ.get("KEYGATE_ECHO_HOST", "127.0.0.1")
    server = EchoServer((host, port), EchoHandler)
    print(f"echo upstream listening on http://{host}:{port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
