"""Hostile-input-safe image loading: local files and http(s) URLs to RGB PIL images.

Every failure is an ``ImageError`` with a short machine-readable ``reason``; the
indexer writes it to ``errors.jsonl`` and moves on. The rules:

- bytes: 0-byte and oversize inputs are refused before they are read in full;
- URLs: only http(s); every connection, redirects included, goes to a resolved
  address that is checked at connect time (no private, loopback, link-local,
  reserved or multicast targets unless allowed), so DNS rebinding cannot slip a
  private address in between the check and the connection;
- pixels: the declared size is checked before any pixel is decoded; truncated
  files fail instead of loading half an image;
- content decides the format, never the file extension.

Everything here is safe to call from many threads at once.
"""

from __future__ import annotations

import io
import ipaddress
import logging
import re
import socket
import stat
import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpcore
import httpx
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError
from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_exponential

logger = logging.getLogger(__name__)

# Formats a product image can reasonably come in. Pillow can open many more (EPS
# shells out to Ghostscript, for one); restricting the set keeps hostile files
# away from rarely exercised decoders.
SAFE_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "AVIF")
# Pillow registers its format plugins lazily, on the first open. Registering them here, once, keeps
# threads that decode concurrently from seeing a half-filled registry (and refusing valid JPEGs).
Image.init()
_OPEN_FORMATS = tuple(f for f in SAFE_FORMATS if f in Image.OPEN) or None

# Decoded RGB bytes per file byte above which an over-limit image is reported
# as a decompression bomb rather than merely too big: real photos stay well under it.
_BOMB_RATIO = 100

_URL_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_TRANSIENT_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_CHUNK = 64 * 1024


class ImageError(ValueError):
    """An image that cannot be used. ``reason`` is a short code such as ``"http_404"``."""

    def __init__(self, reason: str, source: str, detail: str) -> None:
        super().__init__(f"{source}: {detail}")
        self.reason = reason
        self.source = source
        self.detail = detail

    def __reduce__(self) -> tuple[Any, ...]:
        # Keeps the error picklable, so it survives a process pool.
        return (type(self), (self.reason, self.source, self.detail))


@dataclass(frozen=True)
class ImagePolicy:
    """Limits for one loader. ``trusted_hosts`` may use private addresses even when those are refused."""

    max_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 40_000_000
    url_timeout: float = 10.0
    allow_private_urls: bool = False
    retries: int = 3
    trusted_hosts: frozenset[str] = field(default_factory=frozenset)

    def __post_init__(self) -> None:
        object.__setattr__(self, "trusted_hosts", frozenset(h.lower() for h in self.trusted_hosts))

    @classmethod
    def from_settings(cls, settings: Any) -> ImagePolicy:
        return cls(
            max_bytes=settings.max_image_bytes,
            max_pixels=settings.max_image_pixels,
            url_timeout=settings.url_timeout,
            allow_private_urls=settings.allow_private_urls,
        )


def is_url(source: str) -> bool:
    """True for anything written as ``scheme://...`` (supported or not)."""
    return bool(_URL_RE.match(source))


def is_http_url(value: str) -> bool:
    try:
        return is_url(value) and urlsplit(value).scheme.lower() in ("http", "https")
    except ValueError:  # e.g. an unclosed IPv6 bracket
        return False


def load_image(source: str, policy: ImagePolicy) -> tuple[Image.Image, bytes]:
    """Fetch and decode ``source``; the raw bytes come back too, for content hashing."""
    data = fetch_bytes(source, policy)
    return decode_image(data, source, policy), data


def decode_upload(data: bytes, policy: ImagePolicy, source: str = "upload") -> Image.Image:
    """Decode an image sent by a client, with the same limits as catalog images."""
    _check_size(len(data), source, policy)
    return decode_image(data, source, policy)


# --------------------------------------------------------------------------- fetching


def fetch_bytes(source: str, policy: ImagePolicy) -> bytes:
    """Bytes of a local file or an http(s) URL, at most ``policy.max_bytes`` of them."""
    if is_url(source):
        return _fetch_url(source, policy)
    return _read_file(source, policy)


def _check_size(size: int, source: str, policy: ImagePolicy) -> None:
    if size == 0:
        raise ImageError("empty", source, "file is empty (0 bytes)")
    if size > policy.max_bytes:
        raise ImageError("too_large", source, f"{size} bytes is over the limit of {policy.max_bytes}")


def _read_file(source: str, policy: ImagePolicy) -> bytes:
    path = Path(source)
    try:
        st = path.stat()
    except FileNotFoundError:
        raise ImageError("not_found", source, "no such file") from None
    except OSError as exc:
        raise ImageError("unreadable", source, f"cannot read: {exc.strerror or exc}") from None
    if stat.S_ISDIR(st.st_mode):
        raise ImageError("not_a_file", source, "is a directory, not an image file")
    if not stat.S_ISREG(st.st_mode):
        # Devices and FIFOs report no meaningful size and may never end.
        raise ImageError("not_a_file", source, "is not a regular file")
    _check_size(st.st_size, source, policy)
    try:
        with path.open("rb") as fh:
            # One byte past the limit tells a file that grew since stat() from one that fits.
            data = fh.read(policy.max_bytes + 1)
    except OSError as exc:
        raise ImageError("unreadable", source, f"cannot read: {exc.strerror or exc}") from None
    _check_size(len(data), source, policy)
    return data


def _fetch_url(url: str, policy: ImagePolicy) -> bytes:
    scheme = url.split(":", 1)[0].lower()
    if scheme not in ("http", "https"):
        raise ImageError("unsupported_scheme", url, f"only http(s) URLs are fetched, not {scheme}:")
    retrying = Retrying(
        stop=stop_after_attempt(max(1, policy.retries)),
        wait=wait_exponential(multiplier=0.2, max=2.0),
        retry=retry_if_exception(_is_transient),
        reraise=True,
    )
    return retrying(_fetch_once, url, policy)


def _is_transient(exc: BaseException) -> bool:
    if not isinstance(exc, ImageError):
        return False
    if exc.reason in ("timeout", "network"):
        return True
    return exc.reason.startswith("http_") and exc.reason[5:].isdigit() and int(exc.reason[5:]) in _TRANSIENT_STATUS


def _fetch_once(url: str, policy: ImagePolicy) -> bytes:
    client = _client(policy)
    deadline = time.monotonic() + policy.url_timeout
    try:
        with client.stream("GET", url) as resp:
            if resp.status_code != 200:
                raise ImageError(f"http_{resp.status_code}", url, f"HTTP {resp.status_code}")
            declared = resp.headers.get("content-length")
            if declared and declared.isdigit() and int(declared) > policy.max_bytes:
                raise ImageError("too_large", url, f"declares {declared} bytes, over the limit of {policy.max_bytes}")
            buf = bytearray()
            for chunk in resp.iter_bytes(_CHUNK):
                buf += chunk
                if len(buf) > policy.max_bytes:
                    raise ImageError("too_large", url, f"body is over the limit of {policy.max_bytes} bytes")
                # httpx times out each read; this bounds a server that drips bytes forever.
                if time.monotonic() > deadline:
                    raise ImageError("timeout", url, f"download took longer than {policy.url_timeout:g}s")
    except _BlockedAddress as exc:
        raise ImageError("private_address", url, f"{exc}; set LOOKALIKE_ALLOW_PRIVATE_URLS=true to allow it") from None
    except httpx.TimeoutException:
        raise ImageError("timeout", url, f"no response within {policy.url_timeout:g}s") from None
    except httpx.TooManyRedirects:
        raise ImageError("too_many_redirects", url, "too many redirects") from None
    except httpx.UnsupportedProtocol as exc:
        # Our own scheme check ran already, so this is a URL without a host or a redirect elsewhere.
        raise ImageError("bad_url", url, f"malformed URL or redirect to a non-http(s) URL: {exc}") from None
    except httpx.InvalidURL as exc:
        raise ImageError("bad_url", url, f"invalid URL: {exc}") from None
    except httpx.TransportError as exc:
        raise ImageError("network", url, f"network error: {exc or type(exc).__name__}") from None
    if not buf:
        raise ImageError("empty", url, "response body is empty")
    return bytes(buf)


@lru_cache(maxsize=8)
def _client(policy: ImagePolicy) -> httpx.Client:
    # One client per policy, shared by all threads: httpx clients are thread-safe and
    # keep connections alive, which matters when thousands of images share a CDN.
    return httpx.Client(
        transport=_GuardedTransport(policy),
        timeout=httpx.Timeout(policy.url_timeout),
        follow_redirects=True,
        max_redirects=5,
        # Compressed bodies would be inflated before the byte cap sees them.
        headers={"Accept-Encoding": "identity", "User-Agent": "lookalike-indexer"},
        # Environment proxies would make the address check apply to the proxy, not the target.
        trust_env=False,
    )


class _GuardedTransport(httpx.HTTPTransport):
    """httpx transport whose every TCP connection passes the address policy."""

    def __init__(self, policy: ImagePolicy) -> None:
        super().__init__(trust_env=False)
        # httpx exposes no hook for the network backend, so its pool is rebuilt with one.
        self._pool = httpcore.ConnectionPool(
            ssl_context=httpx.create_ssl_context(trust_env=False),
            max_connections=100,
            max_keepalive_connections=20,
            keepalive_expiry=5.0,
            network_backend=_GuardedBackend(policy),
        )


class _BlockedAddress(Exception):
    """Raised inside the transport; turned into ImageError("private_address") with the URL."""


class _GuardedBackend(httpcore.SyncBackend):
    def __init__(self, policy: ImagePolicy) -> None:
        self._policy = policy

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Any = None,
    ) -> httpcore.NetworkStream:
        policy = self._policy
        if policy.allow_private_urls or host.lower() in policy.trusted_hosts:
            return super().connect_tcp(host, port, timeout, local_address, socket_options)
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as exc:
            raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from exc
        addresses = list(dict.fromkeys(info[4][0] for info in infos))
        for address in addresses:
            if not is_public_address(address):
                # A host with any private address is refused outright: which one a
                # client ends up using is not under our control.
                raise _BlockedAddress(f"host {host} resolves to non-public address {address}")
        last: Exception | None = None
        for address in addresses:
            # Connecting to the checked address, not the name, closes the DNS-rebinding gap.
            try:
                return super().connect_tcp(address, port, timeout, local_address, socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                last = exc
        assert last is not None
        raise last


def is_public_address(address: str) -> bool:
    """True for globally routable unicast addresses (embedded IPv4 in IPv6 checked too)."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped or ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
        if ip in _NAT64:
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is not None and not is_public_address(str(embedded)):
            return False
    return ip.is_global and not (ip.is_multicast or ip.is_reserved or ip.is_unspecified)


# --------------------------------------------------------------------------- decoding


def decode_image(data: bytes, source: str, policy: ImagePolicy, fit: int = 0) -> Image.Image:
    """Decode ``data`` to a fully loaded RGB image, upright per its EXIF orientation.

    With ``fit``, a JPEG is decoded at the smallest DCT scale (1/2, 1/4, 1/8) that keeps both sides at least
    ``fit`` pixels: for an encoder that resizes to ``fit`` anyway this halves decode and resize time at 640 px and
    saves far more on large photos."""
    if not data:
        raise ImageError("empty", source, "no image data (0 bytes)")
    try:
        im = Image.open(io.BytesIO(data), formats=_OPEN_FORMATS)
    except Image.DecompressionBombError as exc:
        raise ImageError("decompression_bomb", source, f"refused as a decompression bomb: {exc}") from None
    except UnidentifiedImageError:
        raise ImageError("not_an_image", source, "not a recognised image (JPEG, PNG, WebP, GIF, BMP, TIFF)") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise _decode_failure(exc, source) from None
    try:
        _check_pixels(im, len(data), source, policy)
        if getattr(im, "is_animated", False):
            im.seek(0)
        if fit and im.format == "JPEG":
            im.draft("RGB", (fit, fit))
        im.load()
        return _to_rgb(_upright(im, source))
    except ImageError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageError("decompression_bomb", source, f"refused as a decompression bomb: {exc}") from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError) as exc:
        # ImageFile.LOAD_TRUNCATED_IMAGES stays False on purpose: half an image would be indexed silently.
        raise _decode_failure(exc, source) from None
    finally:
        im.close()


def _decode_failure(exc: BaseException, source: str) -> ImageError:
    if "truncated" in str(exc).lower() or isinstance(exc, EOFError):
        return ImageError("truncated", source, f"image data is truncated: {exc}")
    return ImageError("corrupt", source, f"cannot decode image: {exc}")


def _check_pixels(im: ImageFile.ImageFile, nbytes: int, source: str, policy: ImagePolicy) -> None:
    width, height = im.size
    if width <= 0 or height <= 0:
        raise ImageError("corrupt", source, f"declares an empty size {width}x{height}")
    pixels = width * height
    if pixels <= policy.max_pixels:
        return
    if pixels * 3 > nbytes * _BOMB_RATIO:
        raise ImageError(
            "decompression_bomb",
            source,
            f"{nbytes} bytes declare {width}x{height} pixels (limit {policy.max_pixels}): decompression bomb",
        )
    raise ImageError("too_many_pixels", source, f"{width}x{height} pixels is over the limit of {policy.max_pixels}")


def _upright(im: Image.Image, source: str) -> Image.Image:
    try:
        return ImageOps.exif_transpose(im)
    except Exception as exc:  # noqa: BLE001 - bad EXIF must not cost a valid image
        logger.debug("%s: ignoring unreadable EXIF orientation: %s", source, exc)
        return im


def _to_rgb(im: Image.Image) -> Image.Image:
    if im.mode == "RGB":
        return im.copy() if isinstance(im, ImageFile.ImageFile) else im
    if im.mode.startswith("I;16"):
        # 16-bit greys: keep the top byte instead of clipping everything above 255 to white.
        im = im.point(lambda v: v / 256, "I").convert("L")
    elif im.mode in ("I", "F"):
        im = _stretch_to_l(im)
    has_alpha = im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info
    if has_alpha:
        rgba = im.convert("RGBA")
        # Transparent product cut-outs go on white, the usual catalog background.
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return im.convert("RGB")


def _stretch_to_l(im: Image.Image) -> Image.Image:
    lo, hi = im.getextrema()  # type: ignore[misc]
    if hi <= lo:
        return Image.new("L", im.size, 0)
    scale = 255.0 / (hi - lo)
    return im.point(lambda v: (v - lo) * scale, "F" if im.mode == "F" else "I").convert("L")
