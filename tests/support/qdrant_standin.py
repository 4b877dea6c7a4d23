"""A Qdrant server stand-in: real HTTP on 127.0.0.1, qdrant-client's in-process engine behind it.

There is no Qdrant binary here, so :class:`QdrantStandIn` speaks the part of Qdrant's REST API that
``QdrantStore`` uses through ``QdrantClient(url=...)``. Each request body is parsed into the same
``qdrant_client.http.models`` request model the remote client serialised, handed to the matching method
of a ``QdrantClient(":memory:")``, and the answer is sent back in Qdrant's envelope. The remote client
therefore does its real work (serialising, HTTP, parsing responses, raising on errors) against answers
computed by qdrant-client's own local mode.

The server can be stopped and started again on the same port while the in-process client, and so the
data, lives on: a store sees a server that went away and came back. :meth:`QdrantStandIn.vanish_after`
makes it go away in the middle of a request, as a crashed server would.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from pydantic import TypeAdapter
from pydantic_core import to_jsonable_python
from qdrant_client import QdrantClient
from qdrant_client.http import models as m

Handler = Callable[[QdrantClient, str, Any], Any]
_INSERT = TypeAdapter(m.PointInsertOperations)
_SELECTOR = TypeAdapter(m.PointsSelector)
# REST field name -> keyword of the client method, where they differ
_RENAMES = {"vectors": "vectors_config", "sparse_vectors": "sparse_vectors_config"}


def _config_kwargs(model: m.CreateCollection | m.UpdateCollection) -> dict[str, Any]:
    return {_RENAMES.get(k, k): getattr(model, k) for k in model.model_fields_set}


def _create_collection(client: QdrantClient, name: str, body: Any) -> Any:
    return client.create_collection(name, **_config_kwargs(m.CreateCollection.model_validate(body)))


def _update_collection(client: QdrantClient, name: str, body: Any) -> Any:
    return client.update_collection(name, **_config_kwargs(m.UpdateCollection.model_validate(body)))


def _create_index(client: QdrantClient, name: str, body: Any) -> Any:
    req = m.CreateFieldIndex.model_validate(body)
    return client.create_payload_index(name, field_name=req.field_name, field_schema=req.field_schema)


def _upsert(client: QdrantClient, name: str, body: Any) -> Any:
    req = _INSERT.validate_python(body)
    points = req.points if isinstance(req, m.PointsList) else req.batch
    return client.upsert(name, points=points, update_filter=req.update_filter, update_mode=req.update_mode)


def _retrieve(client: QdrantClient, name: str, body: Any) -> Any:
    req = m.PointRequest.model_validate(body)
    # None means the server's defaults: the whole payload, no vectors
    with_payload = True if req.with_payload is None else req.with_payload
    return client.retrieve(name, ids=req.ids, with_payload=with_payload, with_vectors=req.with_vector or False)


def _scroll(client: QdrantClient, name: str, body: Any) -> Any:
    req = m.ScrollRequest.model_validate(body)
    points, next_offset = client.scroll(
        name,
        scroll_filter=req.filter,
        limit=req.limit or 10,
        order_by=req.order_by,
        offset=req.offset,
        with_payload=True if req.with_payload is None else req.with_payload,
        with_vectors=req.with_vector or False,
    )
    return m.ScrollResult(points=points, next_page_offset=next_offset)


def _count(client: QdrantClient, name: str, body: Any) -> Any:
    req = m.CountRequest.model_validate(body)
    return client.count(name, count_filter=req.filter, exact=True if req.exact is None else req.exact)


# (method, path pattern) -> handler(client, collection name, JSON body)
ROUTES: dict[tuple[str, str], Handler] = {
    # the in-process engine knows no cluster; a single-node server answers like this
    ("GET", r"/cluster"): lambda client, name, body: m.ClusterStatusOneOf(status="disabled"),
    ("GET", r"/collections/(?P<name>[^/]+)/exists"): lambda client, name, body: m.CollectionExistence(
        exists=client.collection_exists(name)
    ),
    ("GET", r"/collections/(?P<name>[^/]+)"): lambda client, name, body: client.get_collection(name),
    ("PUT", r"/collections/(?P<name>[^/]+)"): _create_collection,
    ("PATCH", r"/collections/(?P<name>[^/]+)"): _update_collection,
    ("PUT", r"/collections/(?P<name>[^/]+)/index"): _create_index,
    ("PUT", r"/collections/(?P<name>[^/]+)/points"): _upsert,
    ("POST", r"/collections/(?P<name>[^/]+)/points"): _retrieve,
    ("POST", r"/collections/(?P<name>[^/]+)/points/delete"): lambda client, name, body: client.delete(
        name, points_selector=_SELECTOR.validate_python(body)
    ),
    ("POST", r"/collections/(?P<name>[^/]+)/points/count"): _count,
    ("POST", r"/collections/(?P<name>[^/]+)/points/scroll"): _scroll,
    ("POST", r"/collections/(?P<name>[^/]+)/points/query/batch"): lambda client, name, body: client.query_batch_points(
        name, requests=m.QueryRequestBatch.model_validate(body).searches
    ),
}
_COMPILED = [(method, re.compile(pattern), fn) for (method, pattern), fn in ROUTES.items()]


class QdrantStandIn:
    """A stoppable, restartable HTTP server in a thread, speaking Qdrant's REST API over ``client``."""

    def __init__(self, client: QdrantClient | None = None, port: int = 0) -> None:
        self.client = client or QdrantClient(":memory:")
        self.port = port
        self.seen: list[tuple[str, str]] = []  # (method, path) of every request, answered or not
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        # the in-process engine is not thread-safe, and the store upserts from several threads
        self._engine_lock = threading.Lock()
        self._state_lock = threading.Lock()
        self._answers_left: int | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._server is not None

    def start(self) -> QdrantStandIn:
        """Listen on the port it had before (a free one the first time): accepting once this returns."""
        with self._state_lock:
            if self._server is not None:
                raise RuntimeError("the stand-in is already running")
            self._answers_left = None
            self._server = ThreadingHTTPServer(("127.0.0.1", self.port), self._handler_class())
            self.port = self._server.server_address[1]
            self._thread = threading.Thread(
                target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="qdrant-standin", daemon=True
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        """Close the listening socket: from here on, connecting is refused. The data stays."""
        with self._state_lock:
            server, thread, self._server, self._thread = self._server, self._thread, None, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if thread is not None and thread is not threading.current_thread():
            thread.join(10)

    def vanish_after(self, answers: int) -> None:
        """Answer ``answers`` more requests; on the next one stop, and drop its connection unanswered."""
        with self._state_lock:
            self._answers_left = answers

    def close(self) -> None:
        self.stop()
        self.client.close()

    def __enter__(self) -> QdrantStandIn:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- serving --------------------------------------------------------------------------------

    def _should_vanish(self) -> bool:
        with self._state_lock:
            if self._answers_left is None:
                return False
            if self._answers_left > 0:
                self._answers_left -= 1
                return False
            return True

    def _dispatch(self, method: str, path: str, body: Any) -> tuple[int, dict[str, Any]]:
        for route_method, pattern, fn in _COMPILED:
            match = pattern.fullmatch(path)
            if route_method == method and match:
                try:
                    with self._engine_lock:
                        result = fn(self.client, match.groupdict().get("name", ""), body)
                except ValueError as e:  # pydantic's ValidationError too: what the engine refuses, a server refuses
                    return 400, {"status": {"error": f"Bad request: {e}"}, "time": 0.0}
                except Exception as e:
                    return 500, {"status": {"error": f"Service internal error: {e!r}"}, "time": 0.0}
                result = to_jsonable_python(result, by_alias=True)
                return 200, {"result": result, "status": "ok", "time": 0.0}
        return 404, {"status": {"error": f"stand-in does not serve {method} {path}"}, "time": 0.0}

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        standin = self

        class Handler(BaseHTTPRequestHandler):
            # One request per connection, so none outlives a stop(). Nothing is lost: qdrant-client keeps
            # no connections alive to 127.0.0.1 anyway.
            protocol_version = "HTTP/1.0"

            def _serve(self) -> None:
                path = self.path.split("?", 1)[0]
                standin.seen.append((self.command, path))
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                if standin._should_vanish():
                    standin.stop()
                    self.close_connection = True
                    return
                status, doc = standin._dispatch(self.command, path, json.loads(raw) if raw else None)
                data = json.dumps(doc).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_PATCH = do_DELETE = _serve

            def log_message(self, *args: Any) -> None:
                pass

        return Handler
