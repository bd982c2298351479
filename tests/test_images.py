"""Image validation, re-encoding and downloading against a local http.server (no internet)."""

from __future__ import annotations

import io
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image

from vlm2rec.data.images import (
    ImageOptions,
    ImageRejected,
    ImageRequest,
    download,
    normalize_image,
    resolve_images,
)


def _jpeg(size: tuple[int, int] = (64, 48), colour: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, colour).save(out, format="JPEG")
    return out.getvalue()


def _png_rgba(size: tuple[int, int] = (20, 10)) -> bytes:
    out = io.BytesIO()
    Image.new("RGBA", size, (0, 0, 255, 0)).save(out, format="PNG")  # fully transparent blue
    return out.getvalue()


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims a huge size with almost no data: the shape of a decompression bomb."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        body = tag + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 16)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


LIMITS = {"max_bytes": 1_000_000, "max_pixels": 4_000_000, "max_side": 32}


def test_normalize_downscales_and_reencodes_jpeg() -> None:
    out = normalize_image(_jpeg((200, 100)), **LIMITS)
    with Image.open(io.BytesIO(out)) as img:
        assert img.format == "JPEG"
        assert img.size == (32, 16)  # longest side capped, aspect ratio kept
    assert normalize_image(_jpeg((200, 100)), **LIMITS) == out  # deterministic bytes


def test_normalize_flattens_transparency_on_white() -> None:
    out = normalize_image(_png_rgba(), **LIMITS)
    with Image.open(io.BytesIO(out)) as img:
        r, g, b = img.convert("RGB").getpixel((5, 5))  # type: ignore[misc]
    assert min(r, g, b) > 240  # transparent blue became white, not blue or black


@pytest.mark.parametrize(
    ("data", "limits", "reason"),
    [
        (b"\x00garbage, not an image" * 10, LIMITS, "undecodable"),
        (_jpeg()[:200], LIMITS, "undecodable"),  # truncated: only a full decode notices
        (_jpeg(), {**LIMITS, "max_bytes": 100}, "too_large"),
        (_jpeg((64, 48)), {**LIMITS, "max_pixels": 1000}, "too_many_pixels"),
        (_png_header_only(100_000, 100_000), LIMITS, "too_many_pixels"),
        # over PIL's own bomb guard (2 * Image.MAX_IMAGE_PIXELS) even with a lax limit of ours
        (_png_header_only(100_000, 100_000), {**LIMITS, "max_pixels": 10**12}, "too_many_pixels"),
    ],
)
def test_normalize_rejects_bad_images(data: bytes, limits: dict[str, int], reason: str) -> None:
    with pytest.raises(ImageRejected) as info:
        normalize_image(data, **limits)
    assert info.value.reason == reason


class _Handler(BaseHTTPRequestHandler):
    hits: dict[str, int]
    routes: dict[str, tuple[int, bytes]]

    def do_GET(self) -> None:
        self.hits[self.path] = self.hits.get(self.path, 0) + 1
        if self.path == "/slow.jpg":
            time.sleep(1.5)  # longer than the client's timeout
        if self.path == "/flaky.jpg" and self.hits[self.path] == 1:
            status, body = 503, b"try again"
        else:
            status, body = self.routes.get(self.path, (404, b"not here"))
        try:
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up on /slow.jpg

    def log_message(self, format: str, *args: object) -> None:  # keep pytest output clean
        pass


@pytest.fixture()
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, dict[str, int]]]:
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    hits: dict[str, int] = {}
    routes = {
        "/ok.jpg": (200, _jpeg((300, 200))),
        "/ok2.png": (200, _png_rgba()),
        "/slow.jpg": (200, _jpeg()),
        "/flaky.jpg": (200, _jpeg()),
        "/garbage.jpg": (200, b"<html>this is not an image</html>"),
        "/big.jpg": (200, b"\xff" * 5000),
    }
    handler = type("Handler", (_Handler,), {"hits": hits, "routes": routes})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", hits
    finally:
        httpd.shutdown()
        httpd.server_close()


def _options(tmp_path: Path, **kw: object) -> ImageOptions:
    base: dict[str, object] = {
        "cache_dir": tmp_path / "cache",
        "timeout_s": 0.4,
        "retries": 1,
        "backoff_s": 0.01,
        "max_side": 64,
        "max_bytes": 4000,
        "workers": 4,
    }
    return ImageOptions(**{**base, **kw})  # type: ignore[arg-type]


def test_resolve_images_over_http(server: tuple[str, dict[str, int]], tmp_path: Path) -> None:
    url, hits = server
    names = ["ok.jpg", "missing.jpg", "slow.jpg", "garbage.jpg", "flaky.jpg", "big.jpg", "ok2.png"]
    requests = [ImageRequest(f"id{n}", f"{url}/{name}") for n, name in enumerate(names)]
    requests.append(ImageRequest("dup", f"{url}/ok.jpg"))  # same URL as item 0
    requests.append(ImageRequest("none", None))
    requests.append(ImageRequest("ftp", "ftp://example.org/x.jpg"))
    results = resolve_images(requests, _options(tmp_path))
    ok = [n for n, img in enumerate(results.images) if img is not None]
    assert ok == [0, 4, 6, 7]
    assert results.images[7] == results.images[0]
    with Image.open(io.BytesIO(results.images[0] or b"")) as img:
        assert img.size == (64, 43)
    assert results.failures == {
        "no_reference": 1,
        "not_found": 1,
        "timeout": 1,
        "too_large": 1,
        "undecodable": 1,
        "unsupported_url": 1,
    }
    assert hits["/ok.jpg"] == 1  # the shared URL was fetched once
    assert hits["/flaky.jpg"] == 2  # 503, then a retry that worked
    assert hits["/missing.jpg"] == 1  # a 404 is permanent: not retried
    assert hits["/slow.jpg"] == 2  # a timeout is transient: retried once

    # Second run: served from the cache, 404 remembered; only the transient timeout is tried again.
    before = dict(hits)
    again = resolve_images(requests, _options(tmp_path, timeout_s=3.0))
    assert again.images[0] == results.images[0]
    assert again.images[2] is not None  # the slow server answers within the longer timeout
    assert {k: hits[k] - before.get(k, 0) for k in hits} == {
        **{k: 0 for k in before},
        "/slow.jpg": 1,
        "/big.jpg": 1,  # too_large depends on --max-image-bytes, so it is not cached as missing
        "/garbage.jpg": 0,
    }


def test_no_download_and_local_sources(server: tuple[str, dict[str, int]], tmp_path: Path) -> None:
    url, hits = server
    folder = tmp_path / "imgs"
    folder.mkdir()
    (folder / "A1.png").write_bytes(_png_rgba())
    (folder / "A1.jpg").write_bytes(_jpeg())  # .jpg ranks before .png for the same stem
    (folder / "bad.jpg").write_bytes(b"nope")
    (tmp_path / "rel.jpg").write_bytes(_jpeg((10, 10)))
    requests = [
        ImageRequest("A1", f"{url}/ok.jpg"),  # folder wins over the URL
        ImageRequest("bad", None),
        ImageRequest("B2", f"{url}/ok.jpg"),  # URL, but downloading is off
        ImageRequest("C3", "rel.jpg", base_dir=tmp_path),
        ImageRequest("D4", "nowhere.jpg", base_dir=tmp_path),
        ImageRequest("E5", _jpeg((5, 5))),
    ]
    results = resolve_images(requests, _options(tmp_path, image_dir=folder, download=False))
    assert [img is not None for img in results.images] == [True, False, False, True, False, True]
    with Image.open(io.BytesIO(results.images[0] or b"")) as img:
        assert img.size == (64, 48)
        assert img.convert("RGB").getpixel((1, 1))[0] > 150  # type: ignore[index]
    assert results.failures == {"download_disabled": 1, "file_not_found": 1, "undecodable": 1}
    assert hits == {}


def test_download_retries_with_backoff(server: tuple[str, dict[str, int]]) -> None:
    url, _ = server
    waits: list[float] = []
    kw = {"timeout_s": 0.3, "max_bytes": 10_000, "backoff_s": 0.5, "sleep": waits.append}
    assert download(f"{url}/flaky.jpg", retries=3, **kw)[:2] == b"\xff\xd8"  # type: ignore[arg-type]
    assert waits == [0.5]
    with pytest.raises(ImageRejected) as info:
        download(f"{url}/slow.jpg", retries=2, **kw)  # type: ignore[arg-type]
    assert info.value.reason == "timeout"
    assert waits == [0.5, 0.5, 1.0]  # exponential: backoff_s * 2**attempt
    with pytest.raises(ImageRejected, match="unsupported_url"):
        download("file:///etc/passwd", retries=0, **kw)  # type: ignore[arg-type]
