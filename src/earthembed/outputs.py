"""The write policy: where earthembed may write, what it may replace, how it writes, and who holds the lock.

Every command that writes goes through this module, so that no flag can make it delete or corrupt what it did
not create (a user's file, the command's own input, a chip store, a pretraining run):

* :func:`check_output` is the one check before anything is computed, for every output: files (tables, maps,
  previews, indexes, sidecars, pages) and directories (stores, few-shot and segment outputs, pretraining runs,
  model exports). An existing file is refused unless ``overwrite``, and even then only a file of the expected
  kind that earthembed wrote and recognises (:data:`FILE_KINDS`: a key in Parquet metadata, a GeoTIFF tag, a PNG
  text chunk, an HTML ``<meta>``, a JSON key) is replaced. A directory output is refused when it is a file or a
  non-empty directory that the same command did not create (:data:`DIR_KINDS`: the marker file
  :data:`DIR_MARKER` that :func:`claim_dir` writes, or an older output holding only that command's files).
  Never an input of the same command (:func:`check_output_location`), never a path inside a chip store, a
  pretraining run or a segment run (:func:`protected_dir_above`).
* :func:`atomic_path` is how a file is written: a temporary file in the target's own directory (a rename across
  filesystems would be a copy, not atomic), renamed into place when complete, removed on failure; the target
  is checked once more just before the rename.
* :class:`~earthembed.file_writes.OutputLock` is the exclusive lock of an output, and
  :func:`~earthembed.file_writes.write_json` / :class:`~earthembed.file_writes.WriteError` how JSON is written
  and how a full disk is reported: :mod:`earthembed.file_writes`, below this module and
  :mod:`earthembed.storage` (which writes through them too), re-exported here with the policy they serve.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import re
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path, PurePosixPath
from typing import Any

from earthembed.errors import OutputError
from earthembed.file_writes import STORAGE_ERRNOS as STORAGE_ERRNOS
from earthembed.file_writes import OutputLock as OutputLock
from earthembed.file_writes import WriteError as WriteError
from earthembed.file_writes import describe_holder as describe_holder
from earthembed.file_writes import dumps as dumps
from earthembed.file_writes import holder_info as holder_info
from earthembed.file_writes import os_error_of as os_error_of
from earthembed.file_writes import removed_on_failure
from earthembed.file_writes import sha256_file as sha256_file
from earthembed.file_writes import write_error as write_error
from earthembed.file_writes import write_json as write_json
from earthembed.storage import ObjectPath, is_remote, location


def _resolved(p: str | Path) -> Path:
    return Path(os.path.abspath(os.path.expanduser(str(p)))).resolve()


_URL_ROOT = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://([^/]*)(.*)$")


def _place(p: str | Path | ObjectPath) -> tuple[str, PurePosixPath | Path]:
    """(where, path there): ``("", resolved local path)``, ``("s3://bucket", /key)`` for object storage (also
    a URL collapsed by ``Path``, ``s3:/bucket/key``) and ``("https://host", /path)`` for any other URL, so that
    two places overlap only on the same filesystem or bucket."""
    if is_remote(p):
        loc = location(p)
        return f"{loc.scheme}://{loc.bucket}", PurePosixPath("/" + loc.key)  # type: ignore[union-attr]
    m = _URL_ROOT.match(str(p))
    if m and m.group(1).lower() != "file":
        return f"{m.group(1).lower()}://{m.group(2)}", PurePosixPath("/" + m.group(3).strip("/"))
    return "", _resolved(location(p))


def is_within(path: str | Path, root: str | Path) -> bool:
    """True when ``path`` is ``root`` or below it (both resolved, symlinks followed; on object storage: the same
    bucket and ``root``'s key a prefix of ``path``'s by whole names)."""
    (pw, p), (rw, r) = _place(path), _place(root)
    return pw == rw and (p == r or r in p.parents)


def check_output_location(out: str | Path | ObjectPath, inputs: Iterable[str | Path | ObjectPath],
                          what: str = "--out") -> None:
    """Refuse an output that is an input, contains one (an ancestor) or lies inside an input folder.

    Writing there could replace the very files being read, or (inside an input tree) make the next run read its
    own output as input. A location on object storage (``s3://``, ``gs://``) is compared with inputs in the same
    bucket only (by key, whole names): it is never a local path, so a local input never contains it."""
    ow, o = _place(out)
    for src in inputs:
        sw, s = _place(src)
        if sw != ow:
            continue
        if o == s:
            raise OutputError(f"{out}: {what} is the input {src} itself; choose another {what}")
        if o in s.parents:
            raise OutputError(f"{out}: {what} contains the input {src}; choose a {what} outside the input")
        if s in o.parents:
            raise OutputError(f"{out}: {what} is inside the input {src}; choose a {what} outside the input tree")


OUTPUT_KEY = "earthembed_output"
"""The marker key naming what earthembed wrote: in a table's ``earthembed`` Parquet metadata, a GeoTIFF tag, a PNG
text chunk, a JSON object and a directory's :data:`DIR_MARKER`; its value is the output kind."""
DIR_MARKER = ".earthembed-output.json"
"""Written by :func:`claim_dir` into a directory a command creates: ``{"earthembed_output": KIND, ...}``."""
HTML_MARKER = '<meta name="generator" content="earthembed">'
"""In the ``<head>`` of every HTML page earthembed writes."""
FAISS_FOURCC = (b"IwFl", b"IxM2")  # the faiss index types `earthembed index` writes: IVF-Flat, IDMap2(HNSW)


def _parquet_meta(path: Path) -> dict[str, Any] | None:
    try:
        import pyarrow.parquet as pq

        md = pq.read_schema(path).metadata or {}
        meta = json.loads(md[b"earthembed"]) if b"earthembed" in md else None
    except Exception:  # not Parquet, unreadable, bad JSON: not ours
        return None
    return meta if isinstance(meta, dict) else None


def _table_of(kind: str) -> Callable[[Path], bool]:
    def recognise(path: Path) -> bool:
        meta = _parquet_meta(path)
        return meta is not None and meta.get(OUTPUT_KEY) == kind

    return recognise


def _is_embedding_table(path: Path) -> bool:
    meta = _parquet_meta(path)
    return meta is not None and meta.get(OUTPUT_KEY, "embeddings") == "embeddings"


def _is_map(path: Path) -> bool:
    try:
        import rasterio

        with rasterio.open(path) as ds:
            tags = ds.tags()
    except Exception:
        return False
    return tags.get(OUTPUT_KEY) == "map" or "earthembed_kind" in tags  # the latter: maps written before the key


def _is_png(path: Path) -> bool:
    try:
        from PIL import Image

        with Image.open(path) as im:
            return im.format == "PNG" and OUTPUT_KEY in im.info
    except Exception:
        return False


def _is_html(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(8192).decode("utf-8", "replace")
    except OSError:
        return False
    return HTML_MARKER in head or "by earthembed</p>" in head  # the latter: pages written before the marker


def _is_faiss(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) in FAISS_FOURCC
    except OSError:
        return False


def _is_sidecar(path: Path) -> bool:
    try:
        obj = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(obj, dict) and (obj.get(OUTPUT_KEY) == "faiss sidecar"
                                      or {"table", "column", "fingerprint", "kind"} <= obj.keys())


FILE_KINDS: dict[str, tuple[str, Callable[[Path], bool]]] = {
    "embeddings": ("embedding table", _is_embedding_table),
    "predictions": ("predictions table", _table_of("predictions")),
    "hits": ("search hits table", _table_of("hits")),
    "change": ("change table", _table_of("change")),
    "map": ("map GeoTIFF", _is_map),
    "png": ("PNG image", _is_png),
    "html": ("report page", _is_html),
    "faiss": ("faiss index", _is_faiss),
    "faiss sidecar": ("faiss index sidecar", _is_sidecar),
}
"""File kinds: name -> (what it is called in errors, how earthembed recognises one it wrote)."""


@dataclasses.dataclass(frozen=True)
class DirKind:
    """A directory output: what it is called, the entries the command writes into it, the sets of entries that
    identify one written before :data:`DIR_MARKER` existed (any one set, all of its entries), whether re-running
    the command reuses it (resume, refresh its results) or replaces it (only with ``overwrite``), and whether
    other commands must stay out of it (a run that resumes from its files)."""

    what: str
    entries: frozenset[str] = frozenset()
    identify: tuple[frozenset[str], ...] = ()
    reuse: bool = True
    protected: bool = False


DIR_KINDS: dict[str, DirKind] = {
    "fewshot": DirKind("few-shot output directory", frozenset({
        "results.csv", "results.parquet", "bootstrap.parquet", "budgets.parquet", "run.json", "summary.csv",
        "summary.md", "best.csv", "label_efficiency.png", "rcf.parquet", "rcf_featurizer", "random_init.parquet"}),
        (frozenset({"run.json"}),)),
    "segment": DirKind("segment output directory", frozenset({
        "cells", "results.csv", "results.parquet", "budgets.parquet", "run.json", "summary.csv", "summary.md",
        "label_fraction.png", "predictions.png"}), (frozenset({"cells"}),), protected=True),
    "pretrain": DirKind("pretraining run directory", frozenset({
        "config.yaml", "checkpoints", "logs", "metrics.csv", "export", ".earthembed-run.lock"}),
        (frozenset({"config.yaml"}), frozenset({"checkpoints"})), protected=True),
    "demo": DirKind("demo output directory", frozenset({
        "store", "run", "emb_pretrained.parquet", "emb_pretrained_rgb.parquet", "emb_random_init.parquet",
        "emb_galileo.parquet", "emb_galileo.model", "fewshot",
        "embeddings_pca.png", "report.md", "labels_points.gpkg", "predictions.parquet", "maps", "search",
        "report.html"}), (frozenset({"store", "run", "report.md"}),)),
    "export": DirKind("model export", frozenset({"model.json", "model.safetensors"}), (frozenset({"model.json"}),),
                      reuse=False),
    # recognised by its own marker (is_store_dir); StoreWriter then resumes, replaces or refuses
    "store": DirKind("chip store"),
}
STORE_MARKER = "earthembed.json"
"""The file that makes a directory a chip store (:mod:`earthembed.data.store`'s metadata)."""
STORE_FORMAT = "earthembed-chip-store"
"""Its ``format``."""


def is_store_dir(path: str | Path | ObjectPath) -> bool:
    """True when ``path`` is provably a chip store: its ``earthembed.json`` marker parses and says so.

    The only kind of directory ``--overwrite`` may replace; here, beside the other outputs' markers, so that the
    write policy recognises a store without importing the store."""
    try:
        meta = json.loads((location(path) / STORE_MARKER).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and meta.get("format") == STORE_FORMAT


def output_kind(path: str | Path) -> str | None:
    """Which :data:`DIR_KINDS` output ``path`` is: its marker's kind, a chip store, or an older output holding
    nothing but that kind's entries (``.tmp``/``.lock`` files aside) and a set of entries that identifies it."""
    path = location(path)
    if isinstance(path, ObjectPath):  # only marked outputs and stores: earthembed never wrote others there
        return _marked_kind(path) or ("store" if is_store_dir(path) else None)
    if not path.is_dir():
        return None
    marked = _marked_kind(path)
    if marked is not None:
        return marked
    if is_store_dir(path):
        return "store"
    names: set[str] | None = None
    for kind, k in DIR_KINDS.items():
        if not any(all((path / n).exists() for n in need) for need in k.identify):
            continue  # checked first: most directories are no output, and listing one can be long
        if names is None:
            try:
                names = {e.name for e in path.iterdir() if not e.name.endswith((".tmp", ".lock"))}
            except OSError:
                return None
        if names <= k.entries:
            return kind
    return None


def _marked_kind(path: Path | ObjectPath) -> str | None:
    try:
        marked = json.loads((path / DIR_MARKER).read_text()).get(OUTPUT_KEY)
    except (OSError, ValueError, AttributeError):
        return None
    return str(marked) if marked in DIR_KINDS else None


def protected_dir_above(path: str | Path | ObjectPath) -> tuple[Path | ObjectPath, str] | None:
    """(directory, what it is) when ``path`` lies strictly inside a chip store or a run that resumes from its own
    files (pretraining, segment): no other output may be written there. On object storage the prefixes above
    ``path`` in its bucket (two small GETs each), never a local directory."""
    p = location(path)
    if not isinstance(p, ObjectPath):
        p = Path(os.path.abspath(os.path.expanduser(str(p))))
    for d in p.parents:
        kind = output_kind(d)
        if kind == "store" or (kind is not None and DIR_KINDS[kind].protected):
            return d, DIR_KINDS[kind].what
    return None


def _refuse_existing_file(out: Path, kind: str, overwrite: bool, option: str) -> None:
    what, recognise = FILE_KINDS[kind]
    if not overwrite:
        raise OutputError(f"{out}: {option} already exists; pass --overwrite to replace it (only an earthembed "
                          f"{what} is ever replaced)")
    if out.is_symlink() or not out.is_file() or not recognise(out):
        raise OutputError(f"{out}: {option} exists and is not an earthembed {what}; refusing to replace it, even "
                          f"with --overwrite - move it away or choose another {option}")


REMOTE_KINDS = frozenset({"store"})
"""Outputs :func:`check_output` allows on object storage (``s3://``, ``gs://``): chip stores (written through
:mod:`earthembed.storage` by :class:`~earthembed.data.store.StoreWriter`); embedding datasets are checked by
:mod:`earthembed.embed.shards`. Every other output is a local file or directory: a URL there is refused."""


def check_output(out: str | Path | ObjectPath, kind: str, inputs: Iterable[str | Path | ObjectPath | None] = (),
                 overwrite: bool = False, option: str = "--out") -> Path | ObjectPath:
    """Refuse ``out`` as an output of ``kind`` (:data:`FILE_KINDS` or :data:`DIR_KINDS`) unless the policy of the
    module docstring allows it; ``inputs``: the paths the command reads (None entries are ignored); ``option``:
    how the user named ``out`` (for the message). Writes nothing; returns ``out`` as a :class:`~pathlib.Path`, or
    an :class:`~earthembed.storage.ObjectPath` for a URL on object storage (only for :data:`REMOTE_KINDS`; it is
    never taken for a local path: ``s3://b/x`` is not ``./s3:/b/x``)."""
    out = location(out) if is_remote(out) else Path(out)
    if isinstance(out, ObjectPath) and kind not in REMOTE_KINDS:
        local_only(out, kind, option)
    check_output_location(out, [s for s in inputs if s is not None and str(s) != ""], option)
    inside = protected_dir_above(out)
    if inside is not None:
        raise OutputError(f"{out}: {option} is inside the {inside[1]} {inside[0]}; write it outside (earthembed "
                          "never adds files to a store or a run it may resume from)")
    if kind in FILE_KINDS:
        if out.is_dir() and not out.is_symlink():
            raise OutputError(f"{out}: {option} is a directory; it names the file to write, e.g. "
                              f"{out / ('output' + (out.suffix or ''))}")
        if out.exists() or out.is_symlink():
            _refuse_existing_file(out, kind, overwrite, option)
        return out
    k = DIR_KINDS[kind]
    if isinstance(out, ObjectPath):
        if out.is_file():
            raise OutputError(f"{out}: {option} is an object, not a prefix; the {k.what} is a directory of objects")
        full = out.is_dir()
    else:
        if out.exists() and not out.is_dir() or out.is_symlink() and not out.exists():
            raise OutputError(f"{out}: {option} exists and is not a directory; the {k.what} is a directory")
        full = out.is_dir() and any(out.iterdir())
    if full:
        found = output_kind(out)
        if found != kind:
            held = f"holds an earthembed {DIR_KINDS[found].what}, not" if found else "is a non-empty directory and not"
            raise OutputError(f"{out}: {option} {held} an earthembed {k.what}; choose a new or empty directory "
                              "(nothing in it is replaced, even with --overwrite)")
        if not k.reuse and not overwrite:
            raise OutputError(f"{out}: {option} already holds an earthembed {k.what}; pass --overwrite to replace it")
    return out


def local_only(out: str | Path | ObjectPath, kind: str | None = None, option: str = "--out") -> None:
    """Refuse a URL on object storage for an output written to a local path (files, :func:`claim_dir`), in one
    line: without this it would become a local directory named ``s3:``."""
    if not is_remote(out):
        return
    what = FILE_KINDS[kind][0] if kind in FILE_KINDS else DIR_KINDS[kind].what if kind in DIR_KINDS else "output"
    raise OutputError(f"{location(out)}: {option} on object storage is not supported for a {what} (only chip stores "
                      "and embedding datasets are written there); write it to a local path and upload it")


def claim_dir(out: str | Path, kind: str) -> Path:
    """Create directory ``out`` (checked by :func:`check_output`) and mark it as ``kind``'s, so that re-running the
    command recognises it and other commands stay out of a protected one. Idempotent."""
    local_only(out, kind)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    marker = out / DIR_MARKER
    if not marker.exists():  # a temporary file of its own: several ranks of one distributed run may claim at once
        with atomic_path(marker) as tmp:
            who = holder_info()
            tmp.write_text(dumps({OUTPUT_KEY: kind, "created": who["since"], "host": who["host"],
                                  "command": who["command"]}))
    return out


def prepare_output_dir(out: str | Path, kind: str, inputs: Iterable[str | Path | None] = (),
                       overwrite: bool = False, option: str = "--out") -> Path:
    """:func:`check_output` then :func:`claim_dir`: for a command about to write into its directory."""
    return claim_dir(check_output(out, kind, inputs, overwrite, option), kind)


@functools.cache
def _umask() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it: once per process, restored at once
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | Path, kind: str | None = None, overwrite: bool = False,
                option: str = "--out") -> Iterator[Path]:
    """Yield a new temporary file beside ``path`` (same directory, same suffix) to write; when the block ends
    without error it is renamed onto ``path``, otherwise removed. With ``kind``, a file that appeared at ``path``
    meanwhile is checked again (:func:`check_output`'s rule) before it is replaced."""
    local_only(path, kind, option)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=f".tmp{path.suffix}")
    os.close(fd)
    tmp = Path(name)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it private (0600); the output gets the usual permissions
    with removed_on_failure(tmp, path):
        yield tmp
        if kind is not None and (path.exists() or path.is_symlink()):
            _refuse_existing_file(path, kind, overwrite, option)
        os.replace(tmp, path)


def save_png(fig: Any, png: str | Path, overwrite: bool = True, dpi: int = 110, tight: bool = True,
             own: bool = False) -> Path:
    """Save a matplotlib figure as a PNG marked as earthembed's (text chunk :data:`OUTPUT_KEY`), through
    :func:`atomic_path`: an existing file is replaced only with ``overwrite`` and only when it is an earthembed
    PNG; ``own``: a file of a directory the command owns (checked with the directory), replaced as it is. The
    figure is closed."""
    import matplotlib.pyplot as plt

    png = Path(png)
    try:
        if tight:
            fig.tight_layout()
        with atomic_path(png, None if own else "png", overwrite, option="the PNG") as tmp:
            fig.savefig(tmp, dpi=dpi, format="png", metadata={OUTPUT_KEY: "figure"})
    finally:
        plt.close(fig)
    return png
