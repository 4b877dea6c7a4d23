"""Image loading against real files and a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import io
import struct
import threading
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from indexer.images import (
    ImageError,
    ImagePolicy,
    decode_image,
    decode_upload,
    fetch_bytes,
    is_public_address,
    load_image,
)
from indexer.settings import Settings

POLICY = ImagePolicy(max_bytes=1_000_000, max_pixels=1_000_000, url_timeout=2.0, retries=1)
LOCAL = ImagePolicy(max_bytes=1_000_000, max_pixels=1_000_000, url_timeout=2.0, allow_private_urls=True, retries=1)


def encode(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


def red_jpeg(size=(64, 48)) -> bytes:
    return encode(Image.new("RGB", size, (255, 0, 0)), "JPEG", quality=95)


def noise_jpeg(size=(64, 64)) -> bytes:
    rng = np.random.default_rng(0)
    return encode(Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)), "JPEG")


def write(tmp_path: Path, name: str, data: bytes) -> str:
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


def reason_of(fn, *args) -> str:
    with pytest.raises(ImageError) as info:
        fn(*args)
    return info.value.reason


def png_with_declared_size(width: int, height: int) -> bytes:
    """A valid 1x1 PNG whose IHDR is rewritten to declare another size (CRC fixed up)."""
    data = bytearray(encode(Image.new("L", (1, 1)), "PNG"))
    ihdr = 8  # after the signature: length(4) "IHDR"(4) body(13) crc(4)
    body = bytearray(data[ihdr + 8 : ihdr + 21])
    body[0:8] = struct.pack(">II", width, height)
    data[ihdr + 8 : ihdr + 21] = body
    data[ihdr + 21 : ihdr + 25] = struct.pack(">I", zlib.crc32(b"IHDR" + bytes(body)))
    return bytes(data)


# --------------------------------------------------------------------------- good images


def test_jpeg_and_png_decode_to_rgb(tmp_path):
    for name, data in [("a.jpg", red_jpeg()), ("b.png", encode(Image.new("RGB", (64, 48), "red"), "PNG"))]:
        img, raw = load_image(write(tmp_path, name, data), POLICY)
        assert raw == data
        assert img.mode == "RGB" and img.size == (64, 48)
        r, g, b = img.getpixel((10, 10))
        assert r > 240 and g < 15 and b < 15


def test_palette_and_grey_become_rgb():
    pal = Image.new("P", (4, 4))
    pal.putpalette([0, 0, 0, 0, 0, 255])
    pal.putpixel((1, 1), 1)
    img = decode_image(encode(pal, "PNG"), "pal.png", POLICY)
    assert img.mode == "RGB" and img.getpixel((1, 1)) == (0, 0, 255) and img.getpixel((0, 0)) == (0, 0, 0)
    grey = decode_image(encode(Image.new("L", (4, 4), 128), "PNG"), "grey.png", POLICY)
    assert grey.mode == "RGB" and grey.getpixel((0, 0)) == (128, 128, 128)


def test_sixteen_bit_grey_keeps_its_range():
    arr = np.array([[0, 32768, 65535]], dtype=np.uint16)
    img = decode_image(encode(Image.fromarray(arr), "PNG"), "deep.png", POLICY)
    assert [img.getpixel((x, 0))[0] for x in range(3)] == [0, 128, 255]


def test_transparency_is_composited_on_white():
    rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    rgba.putpixel((0, 0), (255, 0, 0, 255))
    img = decode_image(encode(rgba, "PNG"), "cutout.png", POLICY)
    assert img.mode == "RGB"
    assert img.getpixel((0, 0)) == (255, 0, 0)
    assert img.getpixel((3, 3)) == (255, 255, 255)
    pal = Image.new("P", (2, 1))
    pal.putpalette([0, 0, 0, 0, 255, 0])
    pal.putpixel((1, 0), 1)
    pal.info["transparency"] = 0
    img = decode_image(encode(pal, "PNG"), "pal-alpha.png", POLICY)
    assert img.getpixel((0, 0)) == (255, 255, 255) and img.getpixel((1, 0)) == (0, 255, 0)


def test_exif_orientation_is_applied():
    # Landscape pixels with orientation 6 ("rotate 90° clockwise to view"): shown upright it is portrait.
    im = Image.new("RGB", (60, 20), (0, 0, 255))
    im.paste((255, 0, 0), (0, 0, 10, 20))  # red strip on the left edge of the stored pixels
    exif = Image.Exif()
    exif[0x0112] = 6
    img = decode_image(encode(im, "JPEG", exif=exif.tobytes(), quality=95), "rotated.jpg", POLICY)
    assert img.size == (20, 60)
    r, g, b = img.getpixel((10, 3))  # the left strip ends up on top
    assert r > 200 and b < 60


def test_fit_decodes_large_jpegs_at_a_reduced_scale_but_never_below_fit():
    data = noise_jpeg((700, 500))
    assert decode_image(data, "big.jpg", POLICY).size == (700, 500)
    assert decode_image(data, "big.jpg", POLICY, fit=224).size == (350, 250)  # 1/2: 1/4 would cut 125 < 224
    assert decode_image(data, "big.jpg", POLICY, fit=100).size == (175, 125)
    assert decode_image(data, "big.jpg", POLICY, fit=600).size == (700, 500)
    png = encode(Image.new("RGB", (700, 500), "red"), "PNG")
    assert decode_image(png, "big.png", POLICY, fit=100).size == (700, 500)  # only JPEG has DCT scaling
    # Orientation is applied after the reduced decode, so a rotated photo still keeps both sides >= fit.
    exif = Image.Exif()
    exif[0x0112] = 6
    rotated = encode(Image.new("RGB", (700, 500), "blue"), "JPEG", exif=exif.tobytes())
    assert decode_image(rotated, "rotated.jpg", POLICY, fit=224).size == (250, 350)


def test_content_wins_over_extension(tmp_path):
    png = encode(Image.new("RGB", (8, 8), "green"), "PNG")
    img, _ = load_image(write(tmp_path, "really-a-png.jpg", png), POLICY)
    assert img.size == (8, 8)


def test_animated_gif_uses_first_frame():
    frames = [Image.new("RGB", (8, 8), c) for c in ("red", "blue")]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
    assert decode_image(buf.getvalue(), "anim.gif", POLICY).getpixel((0, 0)) == (255, 0, 0)


def test_decode_upload_checks_size():
    assert decode_upload(red_jpeg(), POLICY).size == (64, 48)
    assert reason_of(decode_upload, b"", POLICY) == "empty"
    assert reason_of(decode_upload, b"x" * 20, ImagePolicy(max_bytes=10)) == "too_large"


def test_policy_from_settings():
    settings = Settings(max_image_bytes=123, max_image_pixels=456, url_timeout=1.5, allow_private_urls=True)
    assert ImagePolicy.from_settings(settings) == ImagePolicy(123, 456, 1.5, True)


# --------------------------------------------------------------------------- bad local files


def test_missing_directory_and_empty_file(tmp_path):
    assert reason_of(fetch_bytes, str(tmp_path / "nope.jpg"), POLICY) == "not_found"
    assert reason_of(fetch_bytes, str(tmp_path), POLICY) == "not_a_file"
    empty = write(tmp_path, "empty.jpg", b"")
    with pytest.raises(ImageError, match="empty.jpg") as info:
        load_image(empty, POLICY)
    assert info.value.reason == "empty"


def test_file_over_max_bytes_is_refused(tmp_path):
    path = write(tmp_path, "big.jpg", noise_jpeg())
    assert reason_of(fetch_bytes, path, ImagePolicy(max_bytes=1000)) == "too_large"


def test_truncated_jpeg_fails_instead_of_loading_half(tmp_path):
    data = noise_jpeg((128, 128))
    path = write(tmp_path, "cut.jpg", data[: len(data) * 2 // 3])
    assert reason_of(load_image, path, POLICY) == "truncated"


def test_truncated_png_fails(tmp_path):
    data = encode(Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64, 3), np.uint8)), "PNG")
    assert reason_of(load_image, write(tmp_path, "cut.png", data[: len(data) // 2]), POLICY) == "truncated"


def test_text_named_jpg_is_not_an_image(tmp_path):
    path = write(tmp_path, "notes.jpg", b"this is not a picture\n" * 10)
    with pytest.raises(ImageError, match="notes.jpg") as info:
        load_image(path, POLICY)
    assert info.value.reason == "not_an_image"


def test_exotic_formats_are_not_decoded():
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n"
    assert reason_of(decode_image, eps, "x.eps", POLICY) == "not_an_image"


def test_patched_header_bomb_is_refused_before_decoding():
    bomb = png_with_declared_size(200_000, 200_000)
    assert len(bomb) < 100
    assert reason_of(decode_image, bomb, "bomb.png", POLICY) == "decompression_bomb"


def test_highly_compressed_bomb_is_refused():
    # 36 Mpx of one colour compresses to a few kB; decoding it would take 36 MB.
    buf = io.BytesIO()
    Image.new("1", (6000, 6000)).save(buf, "PNG", optimize=True)
    assert len(buf.getvalue()) < 20_000
    assert reason_of(decode_image, buf.getvalue(), "bomb.png", POLICY) == "decompression_bomb"


def test_ordinary_image_over_pixel_limit(tmp_path):
    path = write(tmp_path, "photo.jpg", noise_jpeg((200, 200)))
    policy = ImagePolicy(max_pixels=10_000)
    with pytest.raises(ImageError, match="200x200") as info:
        load_image(path, policy)
    assert info.value.reason == "too_many_pixels"
    assert load_image(path, ImagePolicy(max_pixels=40_000))[0].size == (200, 200)


def test_errors_pickle_with_their_reason():
    import pickle

    err = pickle.loads(pickle.dumps(ImageError("http_404", "http://x/a.jpg", "HTTP 404")))
    assert (err.reason, err.source, str(err)) == ("http_404", "http://x/a.jpg", "http://x/a.jpg: HTTP 404")


# --------------------------------------------------------------------------- addresses


@pytest.mark.parametrize(
    "address,public",
    [
        ("8.8.8.8", True),
        ("2606:4700::1111", True),
        ("127.0.0.1", False),
        ("10.1.2.3", False),
        ("172.16.0.1", False),
        ("192.168.1.1", False),
        ("169.254.169.254", False),
        ("100.64.0.1", False),
        ("0.0.0.0", False),
        ("224.0.0.1", False),
        ("255.255.255.255", False),
        ("::1", False),
        ("fe80::1%eth0", False),
        ("fc00::1", False),
        ("::ffff:127.0.0.1", False),
        ("64:ff9b::a00:1", False),
        ("2002:7f00:1::", False),
        ("not-an-ip", False),
    ],
)
def test_public_address_rules(address, public):
    assert is_public_address(address) is public


# --------------------------------------------------------------------------- real HTTP server


@dataclass
class Server:
    base: str
    port: int
    hits: dict[str, int] = field(default_factory=dict)
    release: threading.Event = field(default_factory=threading.Event)


JPEG = red_jpeg()


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    state: Server

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # keep test output quiet
            pass

        def send_body(self, body: bytes, status: int = 200, length: bool = True) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "image/jpeg")
            if length:
                self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            path = self.path
            state.hits[path] = state.hits.get(path, 0) + 1
            if path == "/img.jpg":
                self.send_body(JPEG)
            elif path == "/slow.jpg":
                state.release.wait(30)  # set at teardown: no client timeout is ever outrun by this reply
                self.send_body(JPEG)
            elif path == "/huge-declared.jpg":
                self.send_response(200)
                self.send_header("Content-Length", "50000000")
                self.end_headers()
                self.wfile.write(b"\xff" * 1000)
            elif path == "/huge-stream.jpg":
                # No Content-Length: the body ends when the connection closes.
                self.send_response(200)
                self.send_header("Connection", "close")
                self.end_headers()
                try:
                    for _ in range(200):
                        self.wfile.write(b"\xff" * 65536)
                except OSError:
                    pass  # the client hung up at its byte cap, as it should
                self.close_connection = True
            elif path == "/flaky.jpg":
                if state.hits[path] == 1:
                    self.send_body(b"busy", status=503)
                else:
                    self.send_body(JPEG)
            elif path == "/redirect-local":
                self.send_response(302)
                self.send_header("Location", f"http://localhost:{state.port}/img.jpg")
                self.send_header("Content-Length", "0")
                self.end_headers()
            elif path == "/redirect-private":
                self.send_response(302)
                self.send_header("Location", f"http://127.0.0.1:{state.port}/img.jpg")
                self.send_header("Content-Length", "0")
                self.end_headers()
            elif path == "/text.jpg":
                self.send_body(b"<html>not found page</html>")
            else:
                self.send_body(b"missing", status=404)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    port = httpd.server_address[1]
    state = Server(base=f"http://127.0.0.1:{port}", port=port)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield state
    state.release.set()
    httpd.shutdown()
    httpd.server_close()


def test_url_loads_when_private_urls_are_allowed(server):
    img, raw = load_image(f"{server.base}/img.jpg", LOCAL)
    assert raw == JPEG and img.size == (64, 48)


def test_loopback_url_is_refused_by_default(server):
    before = server.hits.get("/img.jpg", 0)
    with pytest.raises(ImageError, match="127.0.0.1") as info:
        fetch_bytes(f"{server.base}/img.jpg", POLICY)
    assert info.value.reason == "private_address"
    assert "ALLOW_PRIVATE_URLS" in str(info.value)
    assert server.hits.get("/img.jpg", 0) == before  # refused before any request was sent


def test_localhost_name_is_refused_by_default(server):
    assert reason_of(fetch_bytes, f"http://localhost:{server.port}/img.jpg", POLICY) == "private_address"


def test_redirect_to_a_private_address_is_refused(server):
    trusted = ImagePolicy(url_timeout=2.0, retries=1, trusted_hosts=frozenset({"LocalHost"}))
    # The trusted name works, directly and through a redirect that stays on it...
    assert fetch_bytes(f"http://localhost:{server.port}/img.jpg", trusted) == JPEG
    assert fetch_bytes(f"http://localhost:{server.port}/redirect-local", trusted) == JPEG
    # ...but a hop to an untrusted private address is checked again and refused.
    url = f"http://localhost:{server.port}/redirect-private"
    with pytest.raises(ImageError) as info:
        fetch_bytes(url, trusted)
    assert info.value.reason == "private_address" and info.value.source == url


def test_http_404(server):
    with pytest.raises(ImageError, match="404") as info:
        fetch_bytes(f"{server.base}/gone.jpg", ImagePolicy(allow_private_urls=True, retries=3))
    assert info.value.reason == "http_404"
    assert server.hits["/gone.jpg"] == 1  # a 404 is final: no retries


def test_transient_5xx_is_retried(server):
    policy = ImagePolicy(allow_private_urls=True, url_timeout=2.0, retries=3)
    assert fetch_bytes(f"{server.base}/flaky.jpg", policy) == JPEG
    assert server.hits["/flaky.jpg"] == 2


def test_slow_server_times_out(server):
    # The image is only sent when this module's server shuts down (or after 30s), so a fetch that does not
    # give up at its own timeout gets it and fails this test: no wall-clock bound is needed to tell them apart.
    policy = ImagePolicy(allow_private_urls=True, url_timeout=0.3, retries=1)
    assert reason_of(fetch_bytes, f"{server.base}/slow.jpg", policy) == "timeout"


def test_oversize_bodies_are_cut_off(server):
    policy = ImagePolicy(allow_private_urls=True, max_bytes=100_000, retries=1)
    assert reason_of(fetch_bytes, f"{server.base}/huge-declared.jpg", policy) == "too_large"
    assert reason_of(fetch_bytes, f"{server.base}/huge-stream.jpg", policy) == "too_large"


def test_non_image_body_is_not_an_image(server):
    assert reason_of(load_image, f"{server.base}/text.jpg", LOCAL) == "not_an_image"


@pytest.mark.parametrize("url", ["ftp://example.com/a.jpg", "file:///etc/passwd", "gopher://x/y"])
def test_non_http_schemes_are_refused(url):
    assert reason_of(fetch_bytes, url, LOCAL) == "unsupported_scheme"


def test_concurrent_loads_from_threads(server, tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    path = write(tmp_path, "a.jpg", red_jpeg())
    sources = [path, f"{server.base}/img.jpg"] * 8
    with ThreadPoolExecutor(4) as pool:
        sizes = list(pool.map(lambda s: load_image(s, LOCAL)[0].size, sources))
    assert sizes == [(64, 48)] * 16


def test_concurrent_first_decodes_in_a_fresh_process(tmp_path):
    """Pillow loads its plugins on first use; threads decoding at once must never see a half-filled registry."""
    import subprocess
    import sys

    script = tmp_path / "race.py"
    script.write_text(
        "import io\n"
        "from concurrent.futures import ThreadPoolExecutor\n"
        "from indexer.images import ImagePolicy, ImageError, decode_image\n"
        "from PIL import Image\n"
        "buf = io.BytesIO(); Image.new('RGB', (32, 32), 'red').save(buf, 'JPEG'); data = buf.getvalue()\n"
        "p = ImagePolicy(max_bytes=10**7, max_pixels=10**7, url_timeout=1, allow_private_urls=False)\n"
        "def f(_):\n"
        "    try:\n"
        "        decode_image(data, 'x', p)\n"
        "        return 'ok'\n"
        "    except ImageError as e:\n"
        "        return e.reason\n"
        "with ThreadPoolExecutor(8) as ex:\n"
        "    print(sorted(set(ex.map(f, range(16)))))\n"
    )
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, cwd=Path(__file__).parents[1])
    assert out.stdout.strip() == "['ok']", out.stderr
