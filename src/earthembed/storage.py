"""Where earthembed reads and writes: local paths, and object storage URLs (``s3://bucket/key``, ``gs://...``).

:func:`location` turns what a user typed into a :class:`pathlib.Path` (a plain path, ``file://...``) or an
:class:`ObjectPath` (``s3://``, ``gs://``; also what :class:`pathlib.Path` makes of such a URL, ``s3:/bucket/key``,
since command-line options typed as paths collapse the ``//``). An :class:`ObjectPath` answers the part of the
``pathlib`` API that earthembed's readers and writers use (``/``, ``name``, ``exists``, ``is_file``, ``is_dir``,
``read_text``, ``iterdir``, ``unlink`` ...), so code that takes a store or a dataset directory works on both, and
hands out the libraries' own access for the rest:

* Parquet / GeoParquet through :mod:`pyarrow.fs` (:meth:`ObjectPath.filesystem`; :func:`parquet_path` gives the
  ``(path, filesystem)`` pair pyarrow and geopandas take, with ``filesystem=None`` for a local path);
* Zarr through ``obstore`` (:meth:`ObjectPath.zarr_store`: ``zarr.storage.ObjectStore`` over obstore's store,
  which the zarrs codec pipeline reads natively);
* conditional puts (:meth:`ObjectPath.create`: put-if-absent, for commit markers) and a lease lock on top of
  them (:class:`ObjectLock`: one writer per output).

Settings come from the standard environment, and are passed to both libraries explicitly so that they agree:
S3 endpoint ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL`` (an S3-compatible server; plain ``http://`` is then
allowed), region ``AWS_REGION`` / ``AWS_DEFAULT_REGION`` (default ``us-east-1``); GCS emulator
``STORAGE_EMULATOR_HOST`` (no credentials are sent there, as with Google's own clients). Credentials are never
passed or written by earthembed: each library reads the standard chain itself (environment, ``AWS_PROFILE`` and the shared config files, web identity, container and
instance roles; with ``AWS_PROFILE`` set and boto3 installed, obstore resolves the profile through boto3).

Failures are one line naming the URL (:class:`StorageError`, an ``OSError``): an unreachable endpoint, a
missing bucket, missing or refused credentials; a missing object is a ``FileNotFoundError`` naming it.
Object storage is an optional extra: ``pip install 'earthembed[cloud]'`` (obstore; pyarrow is a core dependency).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import functools
import json
import os
import posixpath
import re
import socket
import threading
import time
import types
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REMOTE_SCHEMES = ("s3", "gs")
_URL = re.compile(r"^(s3|gs)://([^/]+)/*(.*?)/*$")
_COLLAPSED = re.compile(r"^(s3|gs):/([^/]+)/*(.*?)/*$")  # str(Path("s3://b/k")) == "s3:/b/k"
LOCK_TTL_S = 300.0
"""A lease lock not renewed for this long is stale (its holder died): another job may take it over."""


class StorageError(OSError):
    """Object storage could not be used (unreachable endpoint, missing bucket, credentials); names the URL."""


Version = dict[str, "str | None"]
"""One version of an object, ``{"e_tag": ..., "version": ...}`` (obstore's ``UpdateVersion``): S3 compares the
e_tag, GCS the generation (``version``), so both are kept."""


def _version(meta: Any) -> Version:
    return {"e_tag": meta.get("e_tag"), "version": meta.get("version")}


def _same_version(a: Version, b: Version) -> bool:
    """The same version of an object: every identifier both name agrees (and they name one)."""
    both = [k for k in ("e_tag", "version") if a.get(k) and b.get(k)]
    return bool(both) and all(a[k] == b[k] for k in both)


def _parse(s: str) -> tuple[str, str, str] | None:
    m = _URL.match(s) or _COLLAPSED.match(s)
    return (m.group(1), m.group(2), m.group(3)) if m else None


def is_remote(p: Any) -> bool:
    """True for an :class:`ObjectPath` or a string / path that names one (``s3://``, ``gs://``)."""
    return isinstance(p, ObjectPath) or (isinstance(p, (str, os.PathLike)) and _parse(os.fspath(p)) is not None)


def location(p: str | os.PathLike[str] | ObjectPath) -> Path | ObjectPath:
    """``p`` as an :class:`ObjectPath` (``s3://``, ``gs://``) or a :class:`pathlib.Path` (anything else;
    ``file://`` is stripped)."""
    if isinstance(p, ObjectPath):
        return p
    s = os.fspath(p)
    if s.startswith("file://"):
        return Path(s[len("file://"):])
    r = _parse(s)
    return Path(p) if r is None else ObjectPath(*r)


def parquet_path(p: str | os.PathLike[str] | ObjectPath) -> tuple[str, Any]:
    """``(path, filesystem)`` for pyarrow / geopandas readers and writers: ``(str(p), None)`` for a local path,
    ``("bucket/key", pyarrow S3/GCS filesystem)`` for object storage."""
    loc = location(p)
    if isinstance(loc, ObjectPath):
        return loc.fs_path, loc.filesystem()
    return str(loc), None


# --- settings and clients ------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Settings:
    """What both libraries are told about one scheme's service (never credentials)."""

    scheme: str
    endpoint: str | None
    region: str | None

    @classmethod
    def from_env(cls, scheme: str) -> Settings:
        env = os.environ
        if scheme == "s3":
            ep = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or env.get("AWS_ENDPOINT") or None
            return cls("s3", ep.rstrip("/") if ep else None,
                       env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1")
        ep = env.get("STORAGE_EMULATOR_HOST") or None
        if ep and "://" not in ep:
            ep = f"http://{ep}"
        return cls(scheme, ep.rstrip("/") if ep else None, None)

    @property
    def where(self) -> str:
        return self.endpoint or {"s3": f"AWS S3 ({self.region})", "gs": "Google Cloud Storage"}[self.scheme]


SETTINGS_ENV = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_ENDPOINT", "AWS_REGION", "AWS_DEFAULT_REGION",
                "STORAGE_EMULATOR_HOST")
"""The variables :class:`Settings` reads: where the service is, never who you are."""


def settings_env() -> dict[str, str]:
    """The :data:`SETTINGS_ENV` variables set here, to hand to workers on other machines (a Ray job's
    ``runtime_env``); credentials are not among them: each node uses its own chain."""
    return {k: os.environ[k] for k in SETTINGS_ENV if os.environ.get(k)}


def _retry() -> dict[str, Any]:
    """Few, quick retries: a wrong endpoint fails in about a second instead of obstore's default 3 minutes."""
    ms = _dt.timedelta(milliseconds=100)
    return {"max_retries": 3, "retry_timeout": _dt.timedelta(seconds=20),
            "backoff": {"init_backoff": ms, "max_backoff": _dt.timedelta(seconds=2), "base": 2}}


def _emulator_key(endpoint: str) -> str:
    """obstore's "service account" for a GCS emulator (``STORAGE_EMULATOR_HOST``), object_store's emulator mode:
    requests go to ``endpoint`` and carry no token, and no credentials are looked up (as Google's own clients do
    with that variable; otherwise object_store would ask the GCE metadata server for one). The endpoint is given
    here, not as ``base_url``: the zarrs pipeline rebuilds the store with its own object_store, which has no
    such key for GCS."""
    return json.dumps({"gcs_base_url": endpoint, "disable_oauth": True, "client_email": "", "private_key": "",
                       "private_key_id": ""})


@functools.lru_cache(maxsize=64)
def _object_store(settings: Settings, bucket: str, prefix: str, pid: int) -> Any:
    """obstore's store for ``bucket`` (under ``prefix``), one per process (``pid``: rebuilt after a fork)."""
    try:
        from obstore.store import GCSStore, S3Store
    except ImportError:
        raise StorageError(f"{settings.scheme}://{bucket}: object storage needs obstore: pip install "
                           "'earthembed[cloud]'") from None
    client: dict[str, Any] = {"timeout": _dt.timedelta(seconds=60), "connect_timeout": _dt.timedelta(seconds=5)}
    if settings.endpoint and settings.endpoint.startswith("http://"):
        client["allow_http"] = True
    kw: dict[str, Any] = {"prefix": prefix or None, "client_options": client, "retry_config": _retry()}
    if settings.scheme == "gs":
        if settings.endpoint:
            kw["config"] = {"service_account_key": _emulator_key(settings.endpoint)}
        return GCSStore(bucket, **kw)
    if settings.endpoint:
        kw["endpoint"] = settings.endpoint
    if os.environ.get("AWS_PROFILE") and not os.environ.get("AWS_ACCESS_KEY_ID"):
        with contextlib.suppress(ImportError):  # profiles (SSO, assume-role) resolved by boto3's chain
            import boto3
            from obstore.auth.boto3 import Boto3CredentialProvider

            kw["credential_provider"] = Boto3CredentialProvider(boto3.Session())
    return S3Store(bucket, region=settings.region, conditional_put="etag", **kw)


@functools.lru_cache(maxsize=16)
def _filesystem(settings: Settings, pid: int) -> Any:
    import pyarrow.fs as pafs

    if settings.scheme == "gs":
        if settings.endpoint:  # an emulator: anonymous, like obstore's store above
            scheme, _, host = settings.endpoint.partition("://")
            return pafs.GcsFileSystem(endpoint_override=host, scheme=scheme, anonymous=True,
                                      retry_time_limit=_dt.timedelta(seconds=20))
        return pafs.GcsFileSystem(retry_time_limit=_dt.timedelta(seconds=20))
    kw: dict[str, Any] = {"region": settings.region, "connect_timeout": 5, "request_timeout": 60,
                          "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=3)}
    if settings.endpoint:
        scheme, _, host = settings.endpoint.partition("://")
        kw.update(endpoint_override=host or scheme, scheme=scheme if host else "https")
    return pafs.S3FileSystem(**kw)


# --- errors ----------------------------------------------------------------------------------------------------


_UNREACHABLE = ("error sending request", "connection refused", "dns error", "failed to lookup", "timed out",
                "operation timed out", "curlcode", "could not connect", "couldn't connect", "unreachable",
                "connection reset", "network")
_DENIED = ("accessdenied", "access denied", "access_denied", "forbidden", "invalidaccesskeyid",
           "signaturedoesnotmatch", "status code: 403", "permission denied", "permissiondenied")
_NO_CREDS = ("credential", "unauthenticated", "missing authentication", "expiredtoken")


def _first_line(e: BaseException) -> str:
    s = str(e).strip().splitlines()
    return (s[0] if s else type(e).__name__)[:300]


def _access_problem(e: BaseException) -> str | None:
    """Why ``e`` is a failure to use the object store at all (``bucket``, ``unreachable``, ``credentials``,
    ``denied``), None for anything else (a missing object, a bad one): read from the message, since obstore and
    pyarrow raise their own types."""
    msg = f"{type(e).__name__} {e}".lower()
    if "nosuchbucket" in msg or "no_such_bucket" in msg or "bucket does not exist" in msg:
        return "bucket"
    for kind, words in (("unreachable", _UNREACHABLE), ("credentials", _NO_CREDS), ("denied", _DENIED)):
        if any(k in msg for k in words):
            return kind
    return None


def storage_error(url: str, settings: Settings, bucket: str, e: BaseException, what: str = "access") -> OSError:
    """One line for a failure of object storage at ``url``: what went wrong and what to check."""
    msg = f"{type(e).__name__} {e}".lower()
    problem = _access_problem(e)
    if problem == "bucket":
        return StorageError(f"{url}: bucket {bucket!r} does not exist at {settings.where}")
    if problem == "unreachable":
        hint = ("; check AWS_ENDPOINT_URL and the network" if settings.scheme == "s3" else
                "; check STORAGE_EMULATOR_HOST and the network" if settings.endpoint else "")
        return StorageError(f"{url}: cannot reach the object store at {settings.where} ({_first_line(e)}){hint}")
    if problem == "credentials":
        return StorageError(f"{url}: no usable credentials for {settings.where} ({_first_line(e)}); set them the "
                            "standard way (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE, an instance or "
                            "pod role)")
    if problem == "denied":
        return StorageError(f"{url}: access denied by {settings.where} ({_first_line(e)}); check the credentials "
                            "and the bucket policy")
    if isinstance(e, FileNotFoundError) or "not found" in msg or "nosuchkey" in msg or "path_not_found" in msg:
        return FileNotFoundError(f"{url}: not found")
    return StorageError(f"{url}: {what} failed at {settings.where} ({_first_line(e)})")


# --- paths ------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ObjectPath:
    """An object or a prefix ("directory") in a bucket: ``scheme://bucket/key`` with the ``pathlib`` subset
    earthembed needs. Cheap to make and to pickle (clients are built lazily, once per process)."""

    scheme: str
    bucket: str
    key: str = ""

    def __post_init__(self) -> None:
        parts = [p for p in self.key.split("/") if p not in ("", ".")]
        if ".." in parts:
            raise ValueError(f"{self.scheme}://{self.bucket}/{self.key}: '..' is not allowed in an object key")
        object.__setattr__(self, "key", "/".join(parts))

    # -- names
    def __str__(self) -> str:
        return f"{self.scheme}://{self.bucket}/{self.key}" if self.key else f"{self.scheme}://{self.bucket}"

    def __fspath__(self) -> str:
        """The URL: code that only passes paths along (``Path(p)``, pyarrow) keeps it; :func:`location` turns
        ``Path(p)`` (``s3:/bucket/key``) back into this object. Nothing local exists there, so a local
        ``exists()`` is False and an ``open()`` fails naming the URL."""
        return str(self)

    def __truediv__(self, other: str | os.PathLike[str]) -> ObjectPath:
        return ObjectPath(self.scheme, self.bucket, posixpath.join(self.key, os.fspath(other)))

    @property
    def name(self) -> str:
        return self.key.rsplit("/", 1)[-1]

    @property
    def stem(self) -> str:
        return posixpath.splitext(self.name)[0]

    @property
    def suffix(self) -> str:
        return posixpath.splitext(self.name)[1]

    @property
    def parent(self) -> ObjectPath:
        return ObjectPath(self.scheme, self.bucket, posixpath.dirname(self.key))

    @property
    def parents(self) -> list[ObjectPath]:
        out, p = [], self
        while p.key:
            p = p.parent
            out.append(p)
        return out

    def with_name(self, name: str) -> ObjectPath:
        return self.parent / name

    def resolve(self) -> ObjectPath:
        return self

    absolute = expanduser = resolve

    @property
    def fs_path(self) -> str:
        """``bucket/key``: the path :meth:`filesystem` (pyarrow) takes."""
        return f"{self.bucket}/{self.key}" if self.key else self.bucket

    # -- clients
    @property
    def settings(self) -> Settings:
        return Settings.from_env(self.scheme)

    def object_store(self, prefix: str = "") -> Any:
        """obstore's store for the bucket (keys relative to ``prefix``)."""
        return _object_store(self.settings, self.bucket, prefix, os.getpid())

    def filesystem(self) -> Any:
        """The pyarrow filesystem (S3 or GCS) for this URL, the endpoint and region given explicitly."""
        return _filesystem(self.settings, os.getpid())

    def zarr_store(self, read_only: bool = True) -> Any:
        """``zarr.storage.ObjectStore`` rooted here (obstore underneath: the zarrs codec pipeline reads it)."""
        from zarr.storage import ObjectStore

        return ObjectStore(self.object_store(self.key), read_only=read_only)

    def _fail(self, e: BaseException, what: str) -> OSError:
        return storage_error(str(self), self.settings, self.bucket, e, what)

    def access_error(self, e: BaseException, what: str = "reading") -> OSError | None:
        """The one-line :class:`StorageError` when ``e`` is a failure to use the object store at all (unreachable,
        missing bucket, missing or refused credentials), None otherwise: for readers that report a damaged object
        as the object's problem but must not blame the object for the network or the credentials."""
        if isinstance(e, StorageError):
            return e
        return self._fail(e, what) if _access_problem(e) else None

    @contextlib.contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        try:
            yield
        except (StorageError, FileNotFoundError) as e:
            if isinstance(e, StorageError) or str(e).startswith(str(self)):
                raise
            raise self._fail(e, what) from None
        except Exception as e:  # obstore and pyarrow raise their own types; the message tells them apart
            raise self._fail(e, what) from None

    # -- queries
    def head(self) -> dict[str, Any] | None:
        """The object's metadata (size, e_tag, last_modified), or None when there is no such object."""
        import obstore

        try:
            with self._errors("reading"):
                return dict(obstore.head(self.object_store(), self.key))
        except FileNotFoundError:
            return None

    def is_file(self) -> bool:
        return bool(self.key) and self.head() is not None

    def is_dir(self) -> bool:
        """True when some object lies under ``key/`` (a prefix exists only through its objects)."""
        import obstore

        with self._errors("listing"):
            stream = obstore.list(self.object_store(), prefix=f"{self.key}/" if self.key else None, chunk_size=1)
            return any(len(batch) for batch in stream)

    def exists(self) -> bool:
        return self.is_file() or self.is_dir()

    def _list(self) -> tuple[list[str], list[dict[str, Any]]]:
        import obstore

        with self._errors("listing"):
            r = obstore.list_with_delimiter(self.object_store(), prefix=f"{self.key}/" if self.key else None)
        return list(r["common_prefixes"]), list(r["objects"])

    def iterdir(self) -> Iterator[ObjectPath]:
        """Objects and prefixes directly under this one (one LIST)."""
        prefixes, objects = self._list()
        for k in sorted([*prefixes, *(o["path"] for o in objects)]):
            yield ObjectPath(self.scheme, self.bucket, k)

    def sizes(self) -> dict[str, int]:
        """``{name: bytes}`` of the objects directly under this prefix (one LIST)."""
        return {o["path"].rsplit("/", 1)[-1]: int(o["size"]) for o in self._list()[1]}

    def walk_files(self) -> Iterator[tuple[ObjectPath, int]]:
        """Every object below this prefix, with its size."""
        import obstore

        with self._errors("listing"):
            for batch in obstore.list(self.object_store(), prefix=f"{self.key}/" if self.key else None):
                for o in batch:
                    yield ObjectPath(self.scheme, self.bucket, o["path"]), int(o["size"])

    def stat(self) -> types.SimpleNamespace:
        h = self.head()
        if h is None:
            raise FileNotFoundError(f"{self}: not found")
        return types.SimpleNamespace(st_size=int(h["size"]), st_mtime=h["last_modified"].timestamp())

    # -- reads
    def read_bytes(self) -> bytes:
        import obstore

        with self._errors("reading"):
            return bytes(obstore.get(self.object_store(), self.key).bytes())

    def read_text(self, encoding: str = "utf-8") -> str:
        return self.read_bytes().decode(encoding)

    # -- writes (one PUT each: a reader sees the old object or the new one, never half)
    def write_bytes(self, data: bytes) -> int:
        import obstore

        with self._errors("writing"):
            obstore.put(self.object_store(), self.key, data)
        return len(data)

    def write_text(self, text: str, encoding: str = "utf-8") -> int:
        return self.write_bytes(text.encode(encoding))

    def create(self, data: bytes) -> bool:
        """Put-if-absent (``If-None-Match: *``): True when this call created the object, False when it existed."""
        return self.create_tagged(data) is not None

    def create_tagged(self, data: bytes) -> Version | None:
        """:meth:`create` returning the new object's :data:`Version` (None when it existed)."""
        import obstore
        from obstore.exceptions import AlreadyExistsError, PreconditionError

        try:
            with self._errors("writing"):
                return _version(obstore.put(self.object_store(), self.key, data, mode="create"))
        except (AlreadyExistsError, PreconditionError):
            return None
        except StorageError as e:
            if "already exists" in str(e).lower() or "precondition" in str(e).lower():
                return None
            raise

    def replace_if(self, data: bytes, version: Version) -> Version | None:
        """Overwrite only if the object is still at ``version`` (S3: ``If-Match`` its e_tag; GCS:
        ``x-goog-if-generation-match`` its generation): the new version, or None if it changed."""
        import obstore
        from obstore.exceptions import AlreadyExistsError, PreconditionError

        try:
            with self._errors("writing"):
                mode = {k: v for k, v in version.items() if v}  # obstore takes no None
                return _version(obstore.put(self.object_store(), self.key, data, mode=mode))
        except (AlreadyExistsError, PreconditionError, FileNotFoundError):
            return None
        except StorageError as e:
            if "precondition" in str(e).lower():
                return None
            raise

    def unlink(self, missing_ok: bool = False) -> None:
        import obstore

        if not missing_ok and self.head() is None:
            raise FileNotFoundError(f"{self}: not found")
        try:
            with self._errors("deleting"):
                obstore.delete(self.object_store(), self.key)
        except FileNotFoundError:  # GCS answers 404 to deleting a missing object, S3 204
            if not missing_ok:
                raise

    def mkdir(self, parents: bool = False, exist_ok: bool = False) -> None:
        """Nothing to do: a prefix exists through the objects under it."""

    def rmtree(self) -> None:
        """Delete every object under this prefix (and the object of this name, if any)."""
        import obstore

        keys = [p.key for p, _ in self.walk_files()]
        with self._errors("deleting"):
            for i in range(0, len(keys), 1000):
                obstore.delete(self.object_store(), keys[i : i + 1000])
        self.unlink(missing_ok=True)


# --- helpers that take either kind of path ---------------------------------------------------------------------


def write_json(path: Path | ObjectPath, obj: Any, indent: int | None = 2) -> None:
    """:func:`earthembed.file_writes.write_json` (atomic) locally; one PUT (atomic too) on object storage."""
    from earthembed.file_writes import dumps
    from earthembed.file_writes import write_json as write_local

    if isinstance(path, ObjectPath):
        path.write_text(dumps(obj, indent=indent, where=path))
    else:
        write_local(path, obj, indent=indent)


def create(path: Path | ObjectPath, data: bytes) -> bool:
    """Put-if-absent: True when this call created ``path``, False when it already existed."""
    if isinstance(path, ObjectPath):
        return path.create(data)
    try:
        with open(path, "xb") as f:
            f.write(data)
    except FileExistsError:
        return False
    return True


def remove(path: Path | ObjectPath) -> None:
    """Remove a file or a whole directory (prefix)."""
    import shutil

    if isinstance(path, ObjectPath):
        path.rmtree()
    elif path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def file_sizes(directory: Path | ObjectPath) -> dict[str, int]:
    """``{name: bytes}`` of the files directly in ``directory`` (one LIST on object storage)."""
    if isinstance(directory, ObjectPath):
        return directory.sizes()
    try:
        return {e.name: e.stat().st_size for e in os.scandir(directory) if e.is_file()}
    except FileNotFoundError:
        return {}


def read_parquet_tables(paths: list[Path | ObjectPath], columns: Any = None) -> list[Any]:
    """The Parquet files ``paths`` as Arrow tables, in order (concurrently on object storage, where each read
    waits on the network)."""
    import pyarrow.parquet as pq

    def read(p: Path | ObjectPath) -> Any:
        src, fs = parquet_path(p)
        if fs is None:
            return pq.read_table(src, columns=columns)
        with p._errors("reading"):  # type: ignore[union-attr]
            return pq.read_table(src, columns=columns, filesystem=fs)

    if not any(isinstance(p, ObjectPath) for p in paths) or len(paths) < 2:
        return [read(p) for p in paths]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=min(16, len(paths))) as ex:
        return list(ex.map(read, paths))


def read_parquet_rows(path: Path | ObjectPath, start: int, stop: int, columns: Any = None,
                      batch_rows: int = 4096, pre_buffer: bool = False) -> tuple[Any, int, list[int]]:
    """Rows ``[start, stop)`` of one Parquet file, reading only the row groups that hold them (ranged reads on
    object storage), streamed ``batch_rows`` at a time so that only those rows are kept: ``(table, rows in the
    file, row groups read)``. The table carries the file's schema metadata (GeoParquet ``geo``)."""
    import contextlib

    import pyarrow as pa
    import pyarrow.parquet as pq

    src, fs = parquet_path(path)
    loc = location(path)
    with loc._errors("reading") if isinstance(loc, ObjectPath) else contextlib.nullcontext():
        pf = pq.ParquetFile(src, filesystem=fs, pre_buffer=pre_buffer, buffer_size=0 if pre_buffer else 1 << 16)
        md = pf.metadata
        if not 0 <= start <= stop <= md.num_rows:
            raise IndexError(f"{loc}: rows {start}..{stop} asked of a file of {md.num_rows} rows")
        groups, first, at = [], 0, 0
        for g in range(md.num_row_groups):
            n = md.row_group(g).num_rows
            if at < stop and at + n > start:
                first = at if not groups else first
                groups.append(g)
            at += n
        schema = pf.schema_arrow if columns is None else pa.schema([pf.schema_arrow.field(c) for c in columns],
                                                                    metadata=pf.schema_arrow.metadata)
        kept, at = [], first
        for b in pf.iter_batches(batch_size=batch_rows, row_groups=groups, columns=columns) if groups else ():
            lo, hi = max(start, at), min(stop, at + b.num_rows)
            if hi > lo:
                kept.append(b.slice(lo - at, hi - lo))
            at += b.num_rows
            if at >= stop:
                break
    return pa.Table.from_batches(kept, schema=schema), md.num_rows, groups


def read_parquet_schema(path: Path | ObjectPath) -> Any:
    import pyarrow.parquet as pq

    src, fs = parquet_path(path)
    if fs is None:
        return pq.read_schema(src)
    with path._errors("reading"):  # type: ignore[union-attr]
        return pq.read_schema(src, filesystem=fs)


def write_bytes_atomic(path: Path | ObjectPath, data: bytes) -> None:
    """Replace ``path`` with ``data`` so that readers never see half of it: a temporary file renamed into place
    locally; on object storage a pyarrow output stream, which makes the object visible only once complete
    (a multipart upload for large data)."""
    if isinstance(path, ObjectPath):
        fs = path.filesystem()
        with path._errors("writing"), fs.open_output_stream(path.fs_path) as f:
            f.write(data)
        return
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def upload_dir(src: str | Path, dst: ObjectPath) -> int:
    """Copy the files under local directory ``src`` to ``dst`` (like ``aws s3 sync SRC DST`` for a new
    prefix); returns how many objects were written."""
    src = Path(src)
    n = 0
    for f in sorted(src.rglob("*")):
        if f.is_file():
            (dst / f.relative_to(src).as_posix()).write_bytes(f.read_bytes())
            n += 1
    return n


# --- lock ------------------------------------------------------------------------------------------------------


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class ObjectLock:
    """One writer per output on object storage: a lock object created by put-if-absent and renewed (a lease)
    while held. A lock whose holder is a dead process on this host, or that was not renewed for ``ttl``
    seconds (its holder died elsewhere), is taken over by a conditional overwrite, so exactly one of two
    racing takers wins. :class:`earthembed.errors.LockedError` names the holder otherwise."""

    def __init__(self, target: str | ObjectPath, lock: ObjectPath, ttl: float = LOCK_TTL_S) -> None:
        self.target, self.lock, self.ttl = str(target), lock, float(ttl)
        self._version: Version | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.lost = False

    def _payload(self) -> bytes:
        from earthembed.file_writes import holder_info

        return json.dumps({**holder_info(), "token": self._token, "renewed": time.time(),
                           "ttl_s": self.ttl}).encode()

    def _stale(self, holder: dict[str, Any], modified: float) -> bool:
        """Its holder is a dead process on this host, or it was not renewed within its ttl (a holder elsewhere
        died, or a live pid on this host is another process now)."""
        if time.time() > modified + float(holder.get("ttl_s") or self.ttl):
            return True
        pid = holder.get("pid")
        return holder.get("host") == socket.gethostname() and isinstance(pid, int) and not _alive(pid)

    def acquire(self) -> ObjectLock:
        from earthembed.errors import LockedError

        self._token = uuid.uuid4().hex
        version = None
        for _ in range(2):  # a second try when the lock was released between our create and our read
            version = self.lock.create_tagged(self._payload())
            if version is not None:
                break
            got = self._read_lock()
            if got is None:
                continue
            holder, modified, old = got
            if not self._stale(holder, modified):
                raise LockedError(self._held_by(holder))
            version = self.lock.replace_if(self._payload(), old)  # exactly one of racing takers wins
            if version is None:
                raise LockedError(self._held_by({}))
            break
        if version is None:
            raise LockedError(self._held_by({}))
        self._version = version
        self._stop.clear()
        self._thread = threading.Thread(target=self._renew, name="earthembed-lock", daemon=True)
        self._thread.start()
        return self

    def _read_lock(self) -> tuple[dict[str, Any], float, Version] | None:
        """(holder, last modified, version) of the lock object, None when there is none."""
        import obstore

        try:
            with self.lock._errors("reading"):
                got = obstore.get(self.lock.object_store(), self.lock.key)
                meta, raw = got.meta, bytes(got.bytes())
        except FileNotFoundError:
            return None
        try:
            holder = json.loads(raw)
        except ValueError:
            holder = {}
        return (holder if isinstance(holder, dict) else {}), meta["last_modified"].timestamp(), _version(meta)

    def _held_by(self, holder: dict[str, Any]) -> str:
        who = (f"pid {holder.get('pid')} on {holder.get('host')} ({str(holder.get('command', ''))[:120]}), "
               f"renewed {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(holder.get('renewed', 0)))}"
               if holder else "another job")
        return (f"{self.target}: is being written by {who}; wait for it to finish (or stop it) - two writers would "
                f"corrupt it. Lock: {self.lock} (taken over automatically {self.ttl:.0f} s after its holder stops "
                "renewing it)")

    def _renew(self) -> None:
        while not self._stop.wait(self.ttl / 4):
            try:
                version = self.lock.replace_if(self._payload(), self._version or {})
            except OSError:
                continue  # a network hiccup: try again at the next beat, the lease is still ours for a while
            if version is None:
                self.lost = True
                return
            self._version = version

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._version is not None and not self.lost:
            h = self.lock.head()
            if h is not None and _same_version(_version(h), self._version):
                with contextlib.suppress(OSError):
                    self.lock.unlink(missing_ok=True)
        self._version = None

    def __enter__(self) -> ObjectLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def output_lock(target: Path | ObjectPath, lock_file: Path | ObjectPath) -> Any:
    """The exclusive lock of an output: :class:`earthembed.file_writes.OutputLock` (flock) locally,
    :class:`ObjectLock` on object storage."""
    if isinstance(lock_file, ObjectPath):
        return ObjectLock(target, lock_file)
    from earthembed.file_writes import OutputLock

    return OutputLock(target, lock_file)


@contextlib.contextmanager
def quiet_zarrs() -> Iterator[None]:
    """Hide zarrs' note that it rebuilt an obstore store made by another module (harmless: the two do not
    share a connection pool)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Successfully reconstructed a store", category=RuntimeWarning)
        yield
