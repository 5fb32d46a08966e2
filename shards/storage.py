"""One filesystem layer: every avtta path is a URL, a local path, ``file://...`` or ``s3://bucket/prefix``.

Built on fsspec (with s3fs for ``s3://``): one API for local files, S3-compatible object stores and every other
scheme fsspec knows, ``cat_ranges`` for ranged reads, and the layer webdataset, pandas, pyarrow and Ray Data already
use. Local paths take the fast path through :mod:`.io` (temporary name, fsync, rename), so local outputs are byte-
and behaviour-identical to what they were before URLs.

Object stores have no rename. A write here is therefore made *whole* and then made visible in one step: small
objects are one PUT of their complete bytes; large ones (shards) are written to a local temporary file, then
uploaded (one PUT, or a multipart upload whose completion is the single moment it appears). A reader sees the old
object or the complete new one, never half of one.

Credentials come only from the standard places: the environment (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
``AWS_SESSION_TOKEN``, ``AWS_PROFILE``) and the AWS config files (``~/.aws/credentials``, ``~/.aws/config``), read by
botocore. They are never passed through this module's arguments, so they cannot reach a config file, a manifest or
a log line. The endpoint of an S3-compatible service comes from ``AVTTA_S3_ENDPOINT`` (what ``--s3-endpoint``
sets), else the standard ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``. Errors name the URL and say what is wrong
(access denied, no such bucket, endpoint unreachable) after a bounded number of retries, never a secret.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

from . import io as _io

__all__ = [
    "ENDPOINT_ENV",
    "StorageError",
    "atomic_write",
    "endpoint_url",
    "exists",
    "find",
    "is_local",
    "isdir",
    "join",
    "listdir",
    "local_copy",
    "local_path",
    "open_read",
    "read_bytes",
    "read_many",
    "read_ranges",
    "read_text",
    "remote_errors",
    "remove",
    "resolve",
    "set_endpoint",
    "size",
    "staged_path",
    "state",
    "upload",
]

ENDPOINT_ENV = "AVTTA_S3_ENDPOINT"
_ENDPOINT_FALLBACKS = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
_SECRET_ENV = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN")

# Bounded retries, so that a stopped server or a wrong endpoint fails a job in seconds, not never: botocore's
# "standard" mode retries throttling and transient errors (3 attempts in all); s3fs retries its own list of
# retryable errors (connection resets, timeouts, 5xx) S3_RETRIES times with a 0.1 s * 1.7^i back-off. A refused
# connection therefore fails after ~8 s (measured); a server that accepts but never answers after at most
# 3 x 3 x 20 s (the read timeout bounds each wait for a response, not the upload of a large body).
S3_RETRIES = 3
S3_CONFIG = {"connect_timeout": 5, "read_timeout": 20, "retries": {"max_attempts": 3, "mode": "standard"}}


class StorageError(OSError):
    """A storage operation failed for a reason the user must fix; the message names the URL, never a secret."""


def _text(url: str | os.PathLike) -> str:
    return os.fspath(url)


def _scheme(url: str) -> str:
    head, sep, _ = url.partition("://")
    return head.lower() if sep and head.isidentifier() else ""


def is_local(url: str | os.PathLike) -> bool:
    """Whether ``url`` names a local file (a plain path or ``file://``)."""
    return _scheme(_text(url)) in ("", "file", "local")


def local_path(url: str | os.PathLike) -> Path:
    """The local :class:`Path` of a local URL (a plain path or ``file://``); ``ValueError`` for a remote one."""
    text = _text(url)
    if not is_local(text):
        raise ValueError(f"{text}: not a local path")
    return Path(text.split("://", 1)[1]) if "://" in text else Path(text)


def endpoint_url() -> str | None:
    """The S3 endpoint URL in force: ``AVTTA_S3_ENDPOINT``, else ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``."""
    for name in (ENDPOINT_ENV, *_ENDPOINT_FALLBACKS):
        if os.environ.get(name):
            return os.environ[name]
    return None


def set_endpoint(url: str | None) -> None:
    """Use ``url`` as the S3 endpoint in this process and the processes it starts (``--s3-endpoint``)."""
    if url:
        if _scheme(url) not in ("http", "https"):
            raise ValueError(f"--s3-endpoint {url!r}: expected an http:// or https:// URL")
        os.environ[ENDPOINT_ENV] = url


def _options(scheme: str) -> dict[str, Any]:
    if scheme not in ("s3", "s3a"):
        return {}
    opts: dict[str, Any] = {"config_kwargs": S3_CONFIG, "use_listings_cache": False}
    endpoint = endpoint_url()
    if endpoint:
        opts["endpoint_url"] = endpoint
    return opts


_FILESYSTEMS: dict[tuple, Any] = {}
_CREDENTIAL_ENV = (
    "AWS_ACCESS_KEY_ID",
    *_SECRET_ENV,
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_SHARED_CREDENTIALS_FILE",
    "AWS_CONFIG_FILE",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
)


def _env_fingerprint() -> str:
    import hashlib

    h = hashlib.sha256()
    for name in _CREDENTIAL_ENV:
        h.update(f"{name}={os.environ.get(name, '')}\0".encode())
    return h.hexdigest()


def resolve(url: str | os.PathLike) -> tuple[Any, str]:
    """The fsspec filesystem of ``url`` and the path within it."""
    import fsspec

    text = _text(url)
    scheme = _scheme(text)
    if scheme in ("", "file", "local"):
        return fsspec.filesystem("file"), str(local_path(text))
    opts = _options(scheme)
    # fsspec caches instances by their arguments only; the credentials come from the environment, so the key also
    # holds a digest of it (a changed key or profile gets a new client), and the process id (clients are not
    # fork-safe)
    cache_key = (scheme, repr(sorted(opts.items())), _env_fingerprint(), os.getpid())
    fs = _FILESYSTEMS.get(cache_key)
    if fs is None:
        try:
            fs = fsspec.filesystem(scheme, skip_instance_cache=True, **opts)
        except (ImportError, ValueError) as e:
            raise StorageError(f"{text}: unsupported URL scheme {scheme!r} ({e})") from None
        if scheme in ("s3", "s3a"):
            fs.retries = S3_RETRIES
        _FILESYSTEMS[cache_key] = fs
    if scheme in ("s3", "s3a"):
        bucket = fs._strip_protocol(text).split("/", 1)[0]
        if not bucket:
            raise ValueError(f"{text}: missing bucket name (expected s3://bucket/prefix)")
    return fs, fs._strip_protocol(text)


def join(url: str | os.PathLike, *parts: str) -> str:
    """``url`` with ``parts`` appended, as a string (``os.path.join`` for local paths, ``/`` for URLs)."""
    text = _text(url)
    if is_local(text):
        return os.path.join(text, *parts)
    return posixpath.join(text.rstrip("/") if not text.endswith("://") else text, *parts)


def _scrub(text: str) -> str:
    for name in _SECRET_ENV:
        secret = os.environ.get(name)
        if secret:
            text = text.replace(secret, "***")
    return text


def _explain(url: str, err: BaseException) -> StorageError | None:
    """The user-facing error for a failed remote operation, or None when ``err`` is not a storage problem."""
    name = type(err).__name__
    detail = _scrub(str(err))[:300]
    endpoint = endpoint_url() or "the default AWS endpoint"
    if isinstance(err, PermissionError) or any(
        code in detail for code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "Forbidden")
    ):
        return StorageError(
            f"{url}: access denied by {endpoint} (check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or the AWS profile)"
        )
    if "NoSuchBucket" in detail or "bucket does not exist" in detail.lower():
        return StorageError(f"{url}: no such bucket at {endpoint}")
    connect = ("EndpointConnectionError", "ConnectTimeoutError", "ClientConnectorError", "ConnectionError")
    if any(c in name for c in connect) or "Could not connect" in detail or "Connect call failed" in detail:
        return StorageError(f"{url}: cannot reach the S3 endpoint {endpoint} ({name})")
    if name in ("ReadTimeoutError", "ServerDisconnectedError", "ClientOSError", "ClientPayloadError"):
        return StorageError(f"{url}: the S3 endpoint {endpoint} stopped answering ({name})")
    return None


@contextlib.contextmanager
def remote_errors(url: str) -> Iterator[None]:
    """Turn a failed remote operation on ``url`` into the one clear error naming it: :class:`StorageError` (access
    denied, no such bucket, unreachable endpoint) or ``FileNotFoundError``; other errors pass unchanged."""
    try:
        yield
    except StorageError:
        raise
    except FileNotFoundError as e:
        explained = _explain(url, e)
        if explained is not None:
            raise explained from None
        raise FileNotFoundError(f"{url}: no such file") from None
    except Exception as e:  # botocore / aiohttp errors have no common base with a useful meaning
        explained = _explain(url, e)
        if explained is None:
            raise
        raise explained from None


def _either(url: str | os.PathLike, local: Callable[[Path], Any], remote: Callable[[Any, str], Any]) -> Any:
    """``local(path)`` for a local URL, else ``remote(fs, path)`` with its errors explained."""
    text = _text(url)
    if is_local(text):
        return local(local_path(text))
    fs, path = resolve(text)
    with remote_errors(text):
        return remote(fs, path)


def exists(url: str | os.PathLike) -> bool:
    """Whether a file or a folder (prefix) exists at ``url``."""
    return _either(url, Path.exists, lambda fs, path: fs.exists(path))


def isdir(url: str | os.PathLike) -> bool:
    """Whether ``url`` is a folder (locally) or a prefix with objects below it (remote)."""
    return _either(url, Path.is_dir, lambda fs, path: fs.isdir(path))


def size(url: str | os.PathLike) -> int:
    """Size in bytes of the file at ``url``."""
    return _either(url, lambda p: p.stat().st_size, lambda fs, path: int(fs.size(path)))


def listdir(url: str | os.PathLike) -> list[str]:
    """Sorted names directly below ``url`` (files and folders); empty when it does not exist."""
    text = _text(url)
    if is_local(text):
        p = local_path(text)
        return sorted(c.name for c in p.iterdir()) if p.is_dir() else []
    fs, path = resolve(text)
    with remote_errors(text):
        try:
            entries = fs.ls(path, detail=False)
        except FileNotFoundError:
            return []
    return sorted(posixpath.basename(e.rstrip("/")) for e in entries if e.rstrip("/") != path.rstrip("/"))


def _rel(path: str, base: str) -> str:
    return posixpath.relpath(path, base.rstrip("/"))


def find(url: str | os.PathLike, name: str | None = None) -> list[str]:
    """URLs of every file below ``url`` (named ``name`` if given), sorted; empty when ``url`` does not exist."""
    return sorted(state(url, name))


def state(url: str | os.PathLike, name: str | None = None) -> dict[str, tuple[int, str]]:
    """{URL: (size, version tag)} of every file below ``url`` (named ``name`` if given).

    The tag changes whenever the file is rewritten (mtime locally, the ETag on S3), so comparing two states tells
    whether anything below ``url`` was added, removed or replaced in between.
    """
    text = _text(url)
    if is_local(text):
        root = local_path(text)
        if not root.is_dir():
            return {}
        files = root.rglob(name) if name else (p for p in root.rglob("*") if p.is_file())
        out = {}
        for p in files:
            st = p.stat()
            out[os.path.join(text, str(p.relative_to(root)))] = (st.st_size, str(st.st_mtime_ns))
        return out
    fs, path = resolve(text)
    with remote_errors(text):
        try:
            found = fs.find(path, detail=True)
        except FileNotFoundError:
            return {}
    out = {}
    for key, info in found.items():
        if info.get("type") == "directory" or (name and posixpath.basename(key) != name):
            continue
        out[join(text, _rel(key, path))] = (int(info.get("size") or 0), str(info.get("ETag") or info.get("mtime")))
    return out


@contextlib.contextmanager
def open_read(url: str | os.PathLike, mode: str = "rb", **kwargs: Any) -> Iterator[IO]:
    """Open ``url`` for reading (``mode`` "rb" or "r"; text mode takes ``encoding``/``newline``)."""
    text = _text(url)
    if "r" not in mode or any(c in mode for c in "wax+"):
        raise ValueError(f"open_read({text!r}): mode {mode!r} is not a read mode")
    if is_local(text):
        with open(local_path(text), mode, **kwargs) as fh:
            yield fh
        return
    fs, path = resolve(text)
    with remote_errors(text):
        fh = fs.open(path, mode, **kwargs)
    with fh:
        with remote_errors(text):
            yield fh


def read_bytes(url: str | os.PathLike) -> bytes:
    """The whole content of ``url``."""
    return _either(url, Path.read_bytes, lambda fs, path: fs.cat_file(path))


def read_many(urls: Sequence[str | os.PathLike]) -> list[bytes | OSError]:
    """The whole content of each of ``urls``, or, for one that does not exist, the ``FileNotFoundError`` (returned,
    not raised, so that one missing file among many is the caller's to report).

    Local files are read one by one; remote ones with one concurrent batch of GETs per filesystem (fsspec ``cat``).
    A storage fault (access denied, unreachable endpoint, ...) raises :class:`StorageError`.
    """
    out: list[bytes | OSError | None] = [None] * len(urls)
    remote: dict[int, list[tuple[int, str, str]]] = {}
    filesystems: dict[int, Any] = {}
    for i, url in enumerate(urls):
        text = _text(url)
        if is_local(text):
            try:
                out[i] = local_path(text).read_bytes()
            except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as err:
                out[i] = err
            continue
        fs, path = resolve(text)
        filesystems[id(fs)] = fs
        remote.setdefault(id(fs), []).append((i, text, path))
    for key, items in remote.items():
        with remote_errors(items[0][1]):
            got = filesystems[key].cat([path for _, _, path in items], on_error="return")
        for i, text, path in items:
            blob = got[path]
            if isinstance(blob, BaseException):
                if isinstance(blob, FileNotFoundError) and _explain(text, blob) is None:
                    out[i] = FileNotFoundError(f"{text}: no such file")
                    continue
                with remote_errors(text):
                    raise blob
            out[i] = bytes(blob)
    return out  # type: ignore[return-value]


def read_text(url: str | os.PathLike, encoding: str = "utf-8") -> str:
    """The whole content of ``url`` decoded as text (universal newlines, as :func:`open` reads)."""
    data = read_bytes(url).decode(encoding)
    return data.replace("\r\n", "\n").replace("\r", "\n")


def read_ranges(url: str | os.PathLike, ranges: Sequence[tuple[int, int]], *, max_gap: int = 0) -> list[bytes]:
    """The bytes ``[start, end)`` of each range of ``url``; ranges that touch (or lie ``max_gap`` apart) are coalesced.

    Remote files take one ranged GET per coalesced run, issued concurrently (fsspec ``cat_ranges``).
    """
    text = _text(url)
    if not ranges:
        return []
    if is_local(text):
        out = []
        with open(local_path(text), "rb") as fh:
            for start, end in ranges:
                fh.seek(start)
                out.append(fh.read(end - start))
        return out
    order = sorted(range(len(ranges)), key=lambda i: ranges[i])
    runs: list[list[int]] = []  # [start, end, *indices]
    for i in order:
        start, end = ranges[i]
        if runs and start <= runs[-1][1] + max_gap:
            runs[-1][1] = max(runs[-1][1], end)
            runs[-1].append(i)
        else:
            runs.append([start, end, i])
    fs, path = resolve(text)
    with remote_errors(text):
        blobs = fs.cat_ranges([path] * len(runs), [r[0] for r in runs], [r[1] for r in runs], on_error="raise")
    out: list[bytes] = [b""] * len(ranges)
    for run, blob in zip(runs, blobs, strict=True):
        for i in run[2:]:
            start, end = ranges[i]
            out[i] = bytes(blob[start - run[0] : end - run[0]])
    return out


def upload(local: str | os.PathLike, url: str | os.PathLike) -> None:
    """Copy the local file ``local`` to the remote ``url`` as one object (visible only once complete)."""
    text = _text(url)
    fs, path = resolve(text)
    with remote_errors(text):
        fs.put_file(os.fspath(local), path)


@contextlib.contextmanager
def staged_path(url: str | os.PathLike) -> Iterator[Path]:
    """Yield a local path to write; on success it becomes ``url`` in one step, on error nothing appears.

    Locally this is :func:`avtta.shards.io.atomic_path` (temporary in the destination folder, fsync, rename). For a
    remote URL the file is written in a private temporary folder and uploaded whole when the block ends.
    """
    text = _text(url)
    if is_local(text):
        with _io.atomic_path(local_path(text)) as tmp:
            yield tmp
        return
    folder = tempfile.mkdtemp(prefix="avtta-stage-")
    try:
        tmp = Path(folder) / posixpath.basename(text.rstrip("/"))
        yield tmp
        upload(tmp, text)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def atomic_write(url: str | os.PathLike, data: bytes | str | Callable[[IO], None], *, text: bool | None = None) -> str:
    """Write ``data`` (bytes, str, or a function given the open file) to ``url`` atomically; return ``url``.

    Same contract as :func:`avtta.shards.io.atomic_write`; a remote object is one PUT of the complete content.
    """
    target = _text(url)
    if is_local(target):
        _io.atomic_write(local_path(target), data, text=text)
        return target
    if text is None:
        text = isinstance(data, str)
    if callable(data):
        import io as _stdio

        buf = _stdio.StringIO(newline="") if text else _stdio.BytesIO()
        data(buf)
        data = buf.getvalue()
    payload = data.encode("utf-8") if isinstance(data, str) else bytes(data)
    fs, path = resolve(target)
    with remote_errors(target):
        fs.pipe_file(path, payload)
    return target


def remove(url: str | os.PathLike, *, missing_ok: bool = True) -> None:
    """Delete the file at ``url``."""
    text = _text(url)
    if is_local(text):
        local_path(text).unlink(missing_ok=missing_ok)
        return
    fs, path = resolve(text)
    with remote_errors(text):
        try:
            fs.rm_file(path)
        except FileNotFoundError:
            if not missing_ok:
                raise


@contextlib.contextmanager
def local_copy(url: str | os.PathLike) -> Iterator[Path]:
    """A local file with the content of ``url``: the file itself when local, else a temporary copy removed after.

    PyAV (FFmpeg) decodes from it: one whole GET per file, then every seek is a local one.
    """
    text = _text(url)
    if is_local(text):
        yield local_path(text)
        return
    fs, path = resolve(text)
    folder = tempfile.mkdtemp(prefix="avtta-copy-")
    try:
        dst = Path(folder) / posixpath.basename(path)
        with remote_errors(text):
            fs.get_file(path, str(dst))
        yield dst
    finally:
        shutil.rmtree(folder, ignore_errors=True)
