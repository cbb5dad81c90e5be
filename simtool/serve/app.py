"""The FastAPI application: OpenAI-compatible ``/v1/embeddings``, ``/v1/models``, ``/health``, ``/metrics``;
with an index, ``/v1/search`` and ``/v1/documents`` (see :mod:`simtool.serve.index_service`).

Errors are OpenAI-shaped JSON: ``{"error": {"message", "type", "param", "code"}}``. Request bodies are
read with a byte cap before they are parsed, so an oversized body costs at most ``max_body_bytes``.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import json
import logging
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from simtool.embedder import Embedder
from simtool.errors import IndexDirError, SimtoolError
from simtool.integrations import require
from simtool.retriever import search_json
from simtool.serve.batcher import DynamicBatcher, QueueFullError
from simtool.serve.config import ServeConfig
from simtool.serve.index_service import IndexService, RequestError, parse_delete, parse_documents, parse_search
from simtool.serve.metrics import Metrics

require("fastapi", "serve")
from fastapi import FastAPI, Request  # noqa: E402
from fastapi.responses import JSONResponse, PlainTextResponse, Response  # noqa: E402
from starlette.types import ASGIApp, Message, Receive, Scope, Send  # noqa: E402

log = logging.getLogger(__name__)

CONFIG_ENV = "SIMTOOL_SERVE_CONFIG"  # how `--workers N` hands the config to each worker process
INLINE_COUNT_CHARS = 20_000  # shorter inputs are tokenised on the event loop: cheaper than a thread hop
ROUTES = ("/v1/embeddings", "/v1/search", "/v1/documents", "/v1/models", "/health", "/metrics")
NO_INDEX = "this server was started without an index (simtool serve --index-dir DIR); it serves /v1/embeddings only"


class ApiError(RequestError):
    """A request refused with an OpenAI-shaped JSON error."""

    @property
    def message(self) -> str:
        return str(self)

    def response(self) -> JSONResponse:
        return error_response(self)


def error_response(e: RequestError) -> JSONResponse:
    kind = {401: "authentication_error", 429: "rate_limit_error"}.get(e.status, "invalid_request_error")
    if e.status >= 500:
        kind = "server_error"
    body = {"error": {"message": str(e), "type": kind, "param": e.param, "code": e.code}}
    return JSONResponse(body, status_code=e.status)


def _json(body: Any) -> Response:
    return Response(json.dumps(body, separators=(",", ":"), ensure_ascii=False), media_type="application/json")


async def read_json(request: Request, limit: int) -> Any:
    """The body parsed as JSON; 413 past ``limit`` bytes (declared or streamed), 422 when it is not JSON."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"request body is {declared} bytes; the limit is {limit}", code="body_too_large")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise ApiError(413, f"request body exceeds {limit} bytes", code="body_too_large")
    try:
        return json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ApiError(422, f"request body is not valid JSON: {e}", code="invalid_json") from None


def parse_embedding_request(body: Any, config: ServeConfig) -> tuple[list[str], str, int | None]:
    """``(texts, encoding_format, dimensions)`` from an OpenAI embeddings request, or an ApiError."""
    if not isinstance(body, dict):
        raise ApiError(422, "request body must be a JSON object")
    raw = body.get("input")
    if isinstance(raw, str):
        texts = [raw]
    elif isinstance(raw, list) and raw and all(isinstance(t, str) for t in raw):
        texts = raw
    elif isinstance(raw, list) and raw and all(isinstance(t, (int, list)) for t in raw):
        raise ApiError(422, "input as token ids is not supported; send text", param="input")
    else:
        raise ApiError(422, "input must be a string or a non-empty list of strings", param="input")
    if len(texts) > config.max_inputs:
        raise ApiError(
            413,
            f"input has {len(texts)} texts; the limit is {config.max_inputs}",
            param="input",
            code="too_many_inputs",
        )
    for i, t in enumerate(texts):
        if len(t) > config.max_text_chars:
            raise ApiError(
                413,
                f"input[{i}] has {len(t)} characters; the limit is {config.max_text_chars}",
                param="input",
                code="text_too_long",
            )
        if not t.strip():
            raise ApiError(422, f"input[{i}] is empty", param="input")
    fmt = body.get("encoding_format") or "float"
    if fmt not in ("float", "base64"):
        raise ApiError(422, f"encoding_format must be 'float' or 'base64', got {fmt!r}", param="encoding_format")
    dims = body.get("dimensions")
    if dims is not None and (not isinstance(dims, int) or isinstance(dims, bool)):
        raise ApiError(422, f"dimensions must be an integer, got {dims!r}", param="dimensions")
    return texts, fmt, dims


class Guard:
    """ASGI middleware: the API key check, then per-route request counts and latencies for ``/metrics``.

    Plain ASGI rather than ``@app.middleware("http")``, whose per-request task and streams cost more than the
    encode of a sentence on a batched server.
    """

    def __init__(self, app: ASGIApp, *, key: bytes, metrics: Metrics) -> None:
        self.app, self.key, self.metrics = app, key, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        path: str = scope["path"]
        route = path if path in ROUTES else "other"
        if self.key and path != "/health":
            given = next((v for k, v in scope["headers"] if k == b"authorization"), b"")
            token = given[7:] if given[:7].lower() == b"bearer " else b""
            if not hmac.compare_digest(token, self.key):
                wrong = ApiError(401, "missing or wrong API key (Authorization: Bearer KEY)", code="invalid_api_key")
                await wrong.response()(scope, receive, send)
                self.metrics.request(route, scope["method"], 401, time.perf_counter() - started)
                return
        status = 500  # what the client gets if the app fails before it starts a response

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            self.metrics.request(route, scope["method"], status, time.perf_counter() - started)


def create_app(embedder: Embedder, config: ServeConfig, metrics: Metrics | None = None) -> FastAPI:
    """The service over ``embedder``; the batcher starts with the app and drains when it stops. An embedder
    loaded from an index (:meth:`Embedder.from_index`) also serves that index's search and documents."""
    metrics = metrics or Metrics()
    state: dict[str, DynamicBatcher] = {}
    service = (
        None
        if embedder.index_dir is None
        else IndexService(embedder, embedder.index_dir, encode_batch_size=config.encode_batch_size)
    )

    def encode(texts: list[str], dimensions: int | None) -> Any:
        return embedder.encode(texts, batch_size=config.encode_batch_size, dimensions=dimensions)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        state["batcher"] = DynamicBatcher(
            encode,
            max_batch_tokens=config.max_batch_tokens,
            max_wait_ms=config.max_wait_ms,
            max_queue=config.max_queue,
            enabled=config.batching,
            metrics=metrics,
        )
        log.info("serving %s (dim %d) batching=%s", embedder.name, embedder.dim, config.batching)
        yield
        # uvicorn has let the in-flight requests finish by now; anything still queued is encoded before exit.
        await asyncio.to_thread(state["batcher"].close)
        if service is not None:
            service.close()

    app = FastAPI(title="simtool", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)

    app.add_middleware(Guard, key=(config.api_key or "").encode(), metrics=metrics)

    @app.exception_handler(RequestError)
    async def api_error(_: Request, e: RequestError) -> JSONResponse:
        return error_response(e)

    async def batched_encode(texts: list[str], dims: int | None) -> tuple[Any, int]:
        """``(vectors, tokens)`` through the dynamic batcher: ``(len(texts), d)`` float32, reducers applied."""
        if sum(map(len, texts)) <= INLINE_COUNT_CHARS:
            counts = embedder.count_tokens(texts)
        else:
            counts = await asyncio.to_thread(embedder.count_tokens, texts)
        tokens = sum(counts)
        try:
            future = state["batcher"].submit(texts, tokens, dims)
        except QueueFullError as e:
            metrics.reject("queue_full")
            raise ApiError(429, str(e), code="queue_full") from None
        return await asyncio.wrap_future(future), tokens

    def need_index() -> IndexService:
        if service is None:
            raise ApiError(404, NO_INDEX, code="no_index")
        return service

    @app.post("/v1/embeddings")
    async def embeddings(request: Request) -> Response:
        texts, fmt, dims = parse_embedding_request(await read_json(request, config.max_body_bytes), config)
        if service is not None and service.stale():  # vectors follow the index's current reducers
            await asyncio.to_thread(service.refresh_if_changed)
        try:
            embedder.check_dimensions(dims)
        except SimtoolError as e:
            raise ApiError(400, str(e), param="dimensions", code="dimensions_not_supported") from None
        vectors, tokens = await batched_encode(texts, dims)
        if fmt == "base64":
            items: list[Any] = [base64.b64encode(v.astype("<f4").tobytes()).decode() for v in vectors]
        else:
            items = vectors.tolist()
        data = [{"object": "embedding", "index": i, "embedding": e} for i, e in enumerate(items)]
        body = {
            "object": "list",
            "data": data,
            "model": embedder.name,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
        return Response(json.dumps(body, separators=(",", ":")), media_type="application/json")

    @app.post("/v1/search")
    async def search(request: Request) -> Response:
        index = need_index()
        req = parse_search(
            await read_json(request, config.max_body_bytes),
            max_queries=config.max_inputs,
            max_chars=config.max_text_chars,
            max_k=config.max_k,
        )
        if index.stale():  # refresh before encoding: a new generation may carry new reducers
            await asyncio.to_thread(index.refresh_if_changed)
        vectors, _ = await batched_encode(req.queries, None)
        hits = await asyncio.to_thread(index.search, vectors, req.k, req.filter)
        results = [search_json(q, h) for q, h in zip(req.queries, hits, strict=True)]
        return _json({"data": results} if req.batch else results[0])

    async def write(parsed: Any) -> Response:
        index = need_index()
        try:
            return _json(await asyncio.to_thread(index.write, parsed))
        except IndexDirError as e:  # another process holds the writer lock past its timeout, or the index broke
            raise ApiError(503, str(e), code="index_unavailable") from None
        except RequestError:
            raise
        except SimtoolError as e:
            raise ApiError(422, str(e), param="documents") from None

    @app.post("/v1/documents")
    async def add_documents(request: Request) -> Response:
        need_index()
        body = await read_json(request, config.max_body_bytes)
        return await write(parse_documents(body, max_docs=config.max_inputs, max_chars=config.max_text_chars))

    @app.delete("/v1/documents")
    async def delete_documents(request: Request) -> Response:
        need_index()
        return await write(parse_delete(await read_json(request, config.max_body_bytes), max_ids=config.max_inputs))

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {
            "object": "list",
            "data": [
                {
                    "id": embedder.name,
                    "object": "model",
                    "created": 0,
                    "owned_by": "simtool",
                    "dimensions": embedder.dim,
                    "truncatable": embedder.truncatable,
                }
            ],
        }

    @app.get("/health")
    async def health() -> dict[str, Any]:
        out: dict[str, Any] = {"status": "ok", "model": embedder.name, "backend": embedder.backend}
        if service is not None:
            out["index_generation"] = service.retriever.generation
        return out

    @app.get("/metrics")
    async def prometheus() -> PlainTextResponse:
        return PlainTextResponse(metrics.render(), media_type="text/plain; version=0.0.4")

    return app


def load_embedder(config: ServeConfig) -> Embedder:
    if config.index_dir is not None:
        return Embedder.from_index(config.index_dir, device=config.device, backend=config.backend)
    return Embedder.from_model(config.model, device=config.device, backend=config.backend or "torch")


def app_from_env() -> FastAPI:
    """The app factory each ``--workers`` process calls: the config arrives as JSON in the environment."""
    config = ServeConfig.from_json(os.environ[CONFIG_ENV])
    return create_app(load_embedder(config), config)
