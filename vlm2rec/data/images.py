"""Item images for converters: found in a local folder, read from a path, or downloaded once.

Every image, whatever its origin, goes through :func:`normalize_image`: size-limited, decoded
defensively with PIL (format allow-list, pixel limit checked from the header before decoding, full
decode to catch truncation), and re-encoded as a JPEG whose longest side is at most ``max_side`` so the
items table stays small. A missing or bad image is never fatal: it becomes a null image and its reason
is counted (:attr:`ImageResults.failures`).

Downloads run on a thread pool (bounded concurrency), with a per-socket timeout and a whole-download
deadline, retries with exponential backoff on transient faults (timeouts, connection errors, HTTP 408,
429 and 5xx), and an on-disk cache: raw bytes under ``sha256(url)``, and a ``.missing`` marker for
permanent faults (404/410), so a second run neither downloads again nor retries dead links.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import http.client
import io
import os
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

from PIL import Image
from tqdm import tqdm

__all__ = [
    "ImageOptions",
    "ImageRejected",
    "ImageRequest",
    "ImageResults",
    "download",
    "normalize_image",
    "resolve_images",
]

#: PIL decoders we accept; anything else (e.g. PSD, EPS through Ghostscript) is rejected as undecodable.
ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
LOCAL_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff")
RETRY_HTTP_CODES = frozenset({408, 429, 500, 502, 503, 504})
PERMANENT_HTTP_CODES = frozenset({404, 410})
USER_AGENT = "vlm2rec-study/0.1 (dataset converter)"


class ImageRejected(Exception):
    """An image could not be used; ``reason`` is the short counter key (``not_found``, ``timeout``…)."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclasses.dataclass(frozen=True)
class ImageOptions:
    """Where images come from and the limits they must meet."""

    image_dir: Path | None = None  #: folder of ``<source_id>.<ext>`` files, looked up first
    download: bool = True  #: fetch http(s) URLs (False: such items get a null image)
    cache_dir: Path | None = None  #: download cache (None: no cache)
    max_bytes: int = 10 * 2**20  #: larger files/downloads are rejected (``too_large``)
    max_pixels: int = 40_000_000  #: width * height above this is rejected before decoding
    max_side: int = 512  #: re-encoded images fit in a max_side x max_side box
    jpeg_quality: int = 90
    workers: int = 8  #: concurrent downloads/decodes
    timeout_s: float = 10.0  #: a stalled connect/read fails after this; a whole download after 4x
    retries: int = 3  #: extra attempts after a transient fault
    backoff_s: float = 0.5  #: wait backoff_s * 2**attempt before retry number attempt+1


@dataclasses.dataclass(frozen=True)
class ImageRequest:
    """One item's image reference: raw bytes, an http(s) URL, a file path, or nothing."""

    source_id: str  #: looked up as ``<image_dir>/<source_id>.<ext>`` first
    ref: str | bytes | None = None
    base_dir: Path | None = None  #: relative file paths are resolved against this folder


@dataclasses.dataclass(frozen=True)
class ImageResults:
    """Encoded images aligned with the requests (None where missing) and failure counts by reason."""

    images: list[bytes | None]
    failures: dict[str, int]


def _to_rgb(img: Image.Image) -> Image.Image:
    """Flatten any mode to RGB; transparent pixels become white (product shots sit on white)."""
    if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return img.convert("RGB")


def normalize_image(
    data: bytes, *, max_bytes: int, max_pixels: int, max_side: int, jpeg_quality: int = 90
) -> bytes:
    """Validate untrusted image bytes and re-encode them as a JPEG no larger than max_side.

    Raises :class:`ImageRejected` with reason ``too_large`` (bytes), ``too_many_pixels`` (header
    dimensions, or PIL's own decompression-bomb guard) or ``undecodable`` (unknown format, truncated
    or corrupt data). The same input always gives the same bytes.
    """
    if len(data) > max_bytes:
        raise ImageRejected("too_large", f"{len(data)} bytes > {max_bytes}")
    try:
        with Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS) as img:
            width, height = img.size  # from the header: nothing is decoded yet
            if width * height > max_pixels:
                raise ImageRejected("too_many_pixels", f"{width}x{height} > {max_pixels} pixels")
            img.draft("RGB", (max_side, max_side))  # JPEG: decode at a reduced scale, saves memory
            img.load()  # full decode: truncated or corrupt data fails here, not later in training
            rgb = _to_rgb(img)
    except ImageRejected:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageRejected("too_many_pixels", str(exc)) from None
    except Exception as exc:  # untrusted bytes: any decoder fault means "not an image we can use"
        raise ImageRejected("undecodable", f"{type(exc).__name__}: {exc}") from None
    rgb.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    rgb.save(out, format="JPEG", quality=jpeg_quality)
    return out.getvalue()


def _read_limited(response: http.client.HTTPResponse, max_bytes: int, deadline: float) -> bytes:
    """Read the body in chunks, failing on the size cap or the whole-download deadline."""
    length = response.headers.get("Content-Length")
    if length is not None and length.isdigit() and int(length) > max_bytes:
        raise ImageRejected("too_large", f"Content-Length {length} > {max_bytes}")
    chunks: list[bytes] = []
    size = 0
    while chunk := response.read(65536):
        size += len(chunk)
        if size > max_bytes:
            raise ImageRejected("too_large", f"body > {max_bytes} bytes")
        if time.monotonic() > deadline:  # a server dripping bytes never trips the socket timeout
            raise ImageRejected("timeout", "download deadline exceeded")
        chunks.append(chunk)
    return b"".join(chunks)


def _fetch_once(url: str, timeout_s: float, max_bytes: int) -> bytes:
    """One GET; raises ImageRejected with a reason, ``transient`` set by the caller's retry policy."""
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    # A fresh opener per call reads the proxy environment now (the global one caches it forever).
    opener = urllib.request.build_opener()
    try:
        with opener.open(request, timeout=timeout_s) as response:
            return _read_limited(response, max_bytes, time.monotonic() + 4 * timeout_s)
    except urllib.error.HTTPError as exc:
        reason = "not_found" if exc.code in PERMANENT_HTTP_CODES else f"http_{exc.code}"
        raise ImageRejected(reason, url[:80]) from None
    except urllib.error.URLError as exc:
        reason = "timeout" if isinstance(exc.reason, TimeoutError) else "network_error"
        raise ImageRejected(reason, str(exc.reason)) from None
    except TimeoutError as exc:
        raise ImageRejected("timeout", str(exc)) from None
    except (OSError, http.client.HTTPException) as exc:
        raise ImageRejected("network_error", f"{type(exc).__name__}: {exc}") from None


def _is_transient(reason: str) -> bool:
    codes = {f"http_{code}" for code in RETRY_HTTP_CODES}
    return reason in ("timeout", "network_error") or reason in codes


def download(
    url: str,
    *,
    timeout_s: float,
    retries: int,
    backoff_s: float,
    max_bytes: int,
    sleep: Callable[[float], None] = time.sleep,
) -> bytes:
    """GET ``url`` (http/https only), retrying transient faults; raises :class:`ImageRejected`."""
    if not url.lower().startswith(("http://", "https://")):
        raise ImageRejected("unsupported_url", url[:80])
    for attempt in range(retries + 1):
        try:
            return _fetch_once(url, timeout_s, max_bytes)
        except ImageRejected as exc:
            if attempt == retries or not _is_transient(exc.reason):
                raise
        sleep(backoff_s * 2**attempt)
    raise AssertionError("unreachable")  # the loop either returns or raises


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex}.tmp")  # unique: threads share the cache
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _cached_download(url: str, options: ImageOptions) -> bytes:
    """Download through the cache; a dead link (404/410) is remembered, other faults are not."""
    if options.cache_dir is None:
        return _download_with(url, options)
    key = hashlib.sha256(url.encode()).hexdigest()
    hit, missing = options.cache_dir / key, options.cache_dir / f"{key}.missing"
    if hit.exists():
        return hit.read_bytes()
    if missing.exists():
        raise ImageRejected(missing.read_text().strip() or "not_found", "cached")
    try:
        data = _download_with(url, options)
    except ImageRejected as exc:
        if exc.reason == "not_found":  # only a dead link is certain to stay dead
            _atomic_write(missing, exc.reason.encode())
        raise
    _atomic_write(hit, data)
    return data


def _download_with(url: str, options: ImageOptions) -> bytes:
    return download(
        url,
        timeout_s=options.timeout_s,
        retries=options.retries,
        backoff_s=options.backoff_s,
        max_bytes=options.max_bytes,
    )


def _read_file(path: Path, max_bytes: int) -> bytes:
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise ImageRejected("too_large", f"{path}: {size} bytes > {max_bytes}")
        return path.read_bytes()
    except FileNotFoundError:
        raise ImageRejected("file_not_found", str(path)) from None
    except IsADirectoryError:
        raise ImageRejected("file_not_found", f"{path} is a folder") from None


def _index_folder(folder: Path | None) -> dict[str, Path]:
    """``{stem: path}`` of image files in ``folder``; for one stem, the first extension in our order."""
    if folder is None:
        return {}
    if not folder.is_dir():
        raise FileNotFoundError(f"--images {folder}: not a folder")
    rank = {ext: n for n, ext in enumerate(LOCAL_EXTENSIONS)}
    index: dict[str, Path] = {}
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        stem, ext = os.path.splitext(entry.name)
        if ext.lower() in rank and entry.is_file():
            old = index.get(stem)
            if old is None or rank[ext.lower()] < rank[old.suffix.lower()]:
                index[stem] = Path(entry.path)
    return index


Source = tuple[
    str, object
]  #: ("bytes", request index) | ("file", Path) | ("url", str) | ("fail", reason)


def _source(request: ImageRequest, index: int, folder: dict[str, Path], download: bool) -> Source:
    """Decide where one request's bytes come from, without any IO."""
    if isinstance(request.ref, bytes):
        return ("bytes", index)
    if request.source_id in folder:
        return ("file", folder[request.source_id])
    ref = (request.ref or "").strip()
    if not ref:
        return ("fail", "no_reference")
    if ref.lower().startswith(("http://", "https://")):
        return ("url", ref) if download else ("fail", "download_disabled")
    if "://" in ref:
        return ("fail", "unsupported_url")
    path = Path(ref)
    return (
        "file",
        path if path.is_absolute() or request.base_dir is None else request.base_dir / path,
    )


def _load(source: Source, requests: Sequence[ImageRequest], options: ImageOptions) -> bytes:
    kind, value = source
    if kind == "fail":
        raise ImageRejected(str(value))
    if kind == "bytes":
        assert isinstance(value, int)
        data = requests[value].ref
        assert isinstance(data, bytes)
    elif kind == "file":
        assert isinstance(value, Path)
        data = _read_file(value, options.max_bytes)
    else:
        data = _cached_download(str(value), options)
    return normalize_image(
        data,
        max_bytes=options.max_bytes,
        max_pixels=options.max_pixels,
        max_side=options.max_side,
        jpeg_quality=options.jpeg_quality,
    )


def resolve_images(requests: Sequence[ImageRequest], options: ImageOptions) -> ImageResults:
    """Fetch, validate and re-encode every request's image, each distinct source once, concurrently.

    Order of lookup per item: raw bytes in the reference; ``<image_dir>/<source_id>.<ext>``; an
    http(s) URL (downloaded unless ``options.download`` is False); a file path.
    """
    if options.cache_dir is not None:
        options.cache_dir.mkdir(parents=True, exist_ok=True)
    folder = _index_folder(options.image_dir)
    sources = [_source(r, n, folder, options.download) for n, r in enumerate(requests)]
    distinct = list(dict.fromkeys(sources))  # the same URL shared by two items is fetched once
    outcome: dict[Source, bytes | str] = {}
    with (
        ThreadPoolExecutor(max_workers=max(1, options.workers)) as pool,
        tqdm(total=len(distinct), desc="images", unit="img", file=sys.stderr, disable=None) as bar,
    ):
        futures = {pool.submit(_load, s, requests, options): s for s in distinct}
        for future in as_completed(futures):
            try:
                outcome[futures[future]] = future.result()
            except ImageRejected as exc:
                outcome[futures[future]] = exc.reason
            bar.update(1)
    images: list[bytes | None] = []
    failures: collections.Counter[str] = collections.Counter()
    for source in sources:
        result = outcome[source]
        images.append(result if isinstance(result, bytes) else None)
        if isinstance(result, str):
            failures[result] += 1
    return ImageResults(images, dict(sorted(failures.items())))
