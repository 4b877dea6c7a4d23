"""``openai:gpt-image-1@URL`` against a local HTTP server that speaks the images-edit API, via the real client."""

from __future__ import annotations

import base64
import io
import json
import threading
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from PIL import Image

from generation import GeneratorError, GeneratorSettings, RequestError, VariantCache, VaryRequest, make_generator, vary
from indexer import resolve_device


class ImagesAPI(BaseHTTPRequestHandler):
    """POST /v1/images/edits: returns n copies of the uploaded image, each tinted by its index."""

    received: list[dict] = []
    status = 200

    def do_POST(self):  # noqa: N802 (http.server's name)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        message = BytesParser(policy=HTTP).parsebytes(
            f"Content-Type: {self.headers['Content-Type']}\r\n\r\n".encode() + body
        )
        fields, files = {}, {}
        for part in message.iter_parts():
            name = part.get_param("name", header="content-disposition")
            if part.get_filename():
                files[name] = part.get_payload(decode=True)
            else:
                fields[name] = part.get_content().strip()
        type(self).received.append({"path": self.path, "auth": self.headers.get("Authorization"), **fields})
        if self.status != 200 or self.path != "/v1/images/edits":
            return self._reply(self.status if self.path == "/v1/images/edits" else 404, {"error": {"message": "no"}})
        source = Image.open(io.BytesIO(files["image"])).convert("RGB")
        data = []
        for i in range(int(fields.get("n", 1))):
            tinted = Image.blend(source, Image.new("RGB", source.size, (0, 0, 255 - 40 * i)), 0.5)
            buf = io.BytesIO()
            tinted.save(buf, format="PNG")
            data.append({"b64_json": base64.b64encode(buf.getvalue()).decode()})
        self._reply(200, {"created": 1, "data": data})

    def _reply(self, code, payload):
        raw = json.dumps(payload).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    ImagesAPI.received, ImagesAPI.status = [], 200
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), ImagesAPI)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    httpd.shutdown()
    httpd.server_close()


def generator_for(url, tmp_path, **kw):
    settings = GeneratorSettings(data_dir=tmp_path, generator=f"openai:gpt-image-1@{url}", **kw)
    return make_generator(settings, resolve_device("cpu"))


def product(size=(64, 48)):
    img = Image.new("RGB", size, "white")
    img.paste((200, 20, 20), (10, 10, size[0] - 10, size[1] - 10))
    return img


def test_images_edit_returns_the_variants(server, tmp_path):
    gen = generator_for(server, tmp_path, generator_api_key="sk-test")
    out = gen.generate(VaryRequest(product(), "in navy blue leather", n=3, style=0.9, structure=0.9))
    assert len(out) == 3 and all(g.seed is None for g in out)
    # The reference was padded square, and each returned image is decoded as sent.
    assert out[0].image.size == (64, 64)
    assert not np.array_equal(np.asarray(out[0].image), np.asarray(out[1].image))
    sent = ImagesAPI.received[-1]
    assert sent["model"] == "gpt-image-1" and sent["n"] == "3" and sent["auth"] == "Bearer sk-test"
    assert "in navy blue leather" in sent["prompt"] and "exact shape" in sent["prompt"]
    assert sent["input_fidelity"] == "high" and sent["size"] == "1536x1024"


def test_knobs_and_cache(server, tmp_path):
    gen = generator_for(server, tmp_path)
    req = VaryRequest(product((48, 64)), "in green", n=1, style=0.2, structure=0.1)
    d = gen.describe(req)
    assert d["size"] == "1024x1536" and d["input_fidelity"] == "low" and "may change" in d["prompt"]
    assert d["backend"] == "openai" and d["models"] == {"base": "gpt-image-1"} and d["seed"] is None
    cache = VariantCache(tmp_path / "variants")
    assert not vary(gen, req, cache=cache).cached
    assert vary(gen, req, cache=cache).cached
    assert len(ImagesAPI.received) == 1


def test_api_failures_are_clear_errors(server, tmp_path):
    gen = generator_for(server, tmp_path)
    ImagesAPI.status = 400
    with pytest.raises(GeneratorError, match="answered 400"):
        gen.generate(VaryRequest(product(), "in red", n=1))
    with pytest.raises(RequestError, match="at most 10"):
        generator_for(server, tmp_path, max_variants=20).generate(VaryRequest(product(), "in red", n=11))


def test_a_key_is_needed_for_the_real_api(tmp_path, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    gen = make_generator(GeneratorSettings(data_dir=tmp_path, generator="openai:gpt-image-1"), resolve_device("cpu"))
    with pytest.raises(GeneratorError, match="LOOKALIKE_GENERATOR_API_KEY or OPENAI_API_KEY"):
        gen.generate(VaryRequest(product(), "in red", n=1))
