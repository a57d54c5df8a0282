"""A minimal STAC API (item search) for tests, run as a separate process (GDAL holds the GIL while it fetches,
so a server thread in the test process would never answer).

    python tests/fake_stac_api.py ITEMS.json FILES_DIR PORT

Serves the landing page (``conformsTo`` with core + item-search), ``GET``/``POST /search`` (filters by
``collections``, ``bbox`` intersection and ``datetime`` interval; every match on one page, no paging) and the
files of FILES_DIR under ``/files/`` (plain GETs, as ``python -m http.server``). Each search request is appended to ``FILES_DIR/search.log`` so a test can check it was used.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

CONFORMS = ["https://api.stacspec.org/v1.0.0/core", "https://api.stacspec.org/v1.0.0/item-search"]


def _when(s: str | None) -> dt.datetime | None:
    if s in (None, "", ".."):
        return None
    return dt.datetime.fromisoformat(str(s).replace("Z", "+00:00"))


def matches(item: dict, collections: list[str] | None, bbox: list[float] | None, datetime: str | None) -> bool:
    if collections and item.get("collection") not in collections:
        return False
    if bbox:
        b = item["bbox"]
        if not (b[0] < bbox[2] and bbox[0] < b[2] and b[1] < bbox[3] and bbox[1] < b[3]):
            return False
    if datetime:
        start, _, end = datetime.partition("/")
        t = _when(item["properties"].get("datetime"))
        lo, hi = _when(start), _when(end or start)
        if t is not None and ((lo and t < lo) or (hi and t > hi)):
            return False
    return True


def main() -> None:
    items_path, files, port = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
    items = json.loads(items_path.read_text())
    base = f"http://127.0.0.1:{port}"

    class Handler(SimpleHTTPRequestHandler):
        def __init__(self, *a, **k):
            super().__init__(*a, directory=str(files), **k)

        def log_message(self, *a):  # quiet
            pass

        def _json(self, obj: dict) -> None:
            body = json.dumps(obj).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _search(self, q: dict) -> None:
            with open(files / "search.log", "a") as f:
                f.write(json.dumps(q) + "\n")
            cols = q.get("collections")
            cols = cols.split(",") if isinstance(cols, str) else cols
            bbox = q.get("bbox")
            bbox = [float(v) for v in bbox.split(",")] if isinstance(bbox, str) else bbox
            feats = [it for it in items if matches(it, cols, bbox, q.get("datetime"))]
            self._json({"type": "FeatureCollection", "features": feats, "links": []})

        def do_GET(self):  # noqa: N802
            url = urlparse(self.path)
            if url.path in ("", "/"):
                self._json({"type": "Catalog", "id": "fake-api", "stac_version": "1.0.0", "description": "test API",
                            "conformsTo": CONFORMS,
                            "links": [{"rel": "self", "href": base}, {"rel": "root", "href": base},
                                      {"rel": "search", "href": f"{base}/search", "method": "GET",
                                       "type": "application/geo+json"},
                                      {"rel": "search", "href": f"{base}/search", "method": "POST",
                                       "type": "application/geo+json"}]})
            elif url.path == "/search":
                self._search({k: v[0] for k, v in parse_qs(url.query).items()})
            elif url.path.startswith("/files/"):
                self.path = url.path[len("/files"):]
                super().do_GET()
            else:
                self.send_error(404)

        def do_HEAD(self):  # noqa: N802
            if self.path.startswith("/files/"):
                self.path = self.path[len("/files"):]
            super().do_HEAD()

        def do_POST(self):  # noqa: N802
            if urlparse(self.path).path != "/search":
                self.send_error(404)
                return
            n = int(self.headers.get("Content-Length") or 0)
            self._search(json.loads(self.rfile.read(n) or b"{}"))

    ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()


if __name__ == "__main__":
    main()
