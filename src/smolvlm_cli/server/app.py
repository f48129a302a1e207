"""The HTTP side: Starlette routes in OpenAI's chat-completions format over the `Scheduler`.

- `POST /v1/chat/completions`: streamed (server-sent events) or not;
- `GET /v1/models`, `GET /v1/models/{id}`, `GET /stats` (the scheduler's counters);
- `GET /health` (and `/v1/health`): public, no key.

Each also without `/v1` and with a trailing slash, served directly (a client does not re-POST
after a redirect). While the model loads (`create_loading_app`) each answers 503 `model_loading`.

A request is checked (`schema.py`), its images fetched and decoded and its prompt tokenized in
a worker thread (`images.py`, `Processor.prepare`), its length checked against the context, and
only then queued: every refusal before that point is an OpenAI-shaped error with its status,
and an error after a stream has begun is a last `data: {"error": ...}` event (`responses.py`). Requests are
logged on stderr, one line each once answered.
"""

from __future__ import annotations

import asyncio
import hmac
import time
from typing import Any

import anyio
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from smolvlm_cli.errors import SmolVLMError, VideoError, error_message
from smolvlm_cli.options import GenerationOptions
from smolvlm_cli.server.images import ScratchFolder, load_media
from smolvlm_cli.server.middleware import InternalErrors, RequestLog, error_response, log
from smolvlm_cli.server.responses import Reply, api_error_for
from smolvlm_cli.server.schema import ApiError, ChatRequest, ImageRef, parse_chat_request, parse_json
from smolvlm_cli.server.scheduler import Job, QueueFull, Scheduler
from smolvlm_cli.server.settings import ServerSettings

PUBLIC_PATHS = ("/health", "/v1/health")
# requests decoded and tokenized at once, beside the model's thread (as `batch`'s prefetch threads)
PREPARE_THREADS = 2
LOADING_RETRY_S = 5  # the Retry-After of a 503 while the model loads


def _unauthorized(message: str, code: str) -> ApiError:
    return ApiError(401, message, code=code, headers={"WWW-Authenticate": "Bearer"})  # RFC 7235: a 401 names it


class ChatServer:
    """The routes' state: the model, its scheduler, the settings and the default options."""

    def __init__(self, vlm: Any, settings: ServerSettings, defaults: GenerationOptions | None = None):
        self.vlm, self.settings = vlm, settings
        self.defaults = defaults or GenerationOptions()
        self.model_id = settings.model_id or str(getattr(vlm, "model_id", "") or "smolvlm")
        self.created = int(time.time())
        model_context = vlm.config.max_position_embeddings
        if (settings.max_request_tokens or 0) > model_context:  # rows would outgrow the KV cache mid-batch
            raise SmolVLMError(
                f"max request tokens {settings.max_request_tokens} is more than the model's context "
                f"({model_context} tokens)",
                hint=f"give --max-request-tokens {model_context} or less, or leave it out",
            )
        self.context = settings.max_request_tokens or model_context
        self.scheduler = Scheduler(vlm, settings.max_batch, settings.max_queue, settings.feature_cache_tiles)
        self._prepare_threads: anyio.CapacityLimiter | None = None
        # Requests whose body is being read or prepared (decoded images, probed videos): at most
        # what the scheduler could take, so a burst of large uploads cannot hold many bodies of
        # up to max_body_bytes each in memory at once. Counted in the event loop only.
        self._intake = 0

    # -- checks -----------------------------------------------------------------------------------
    def check_key(self, request: Request) -> None:
        keys = self.settings.api_keys
        if not keys:
            return
        scheme, _, credentials = request.headers.get("authorization", "").strip().partition(" ")
        bearer = scheme.lower() == "bearer"
        given = credentials.strip() if bearer else request.headers.get("x-api-key", "")
        if not given and scheme and not bearer:  # e.g. a browser's Basic: not "no key given"
            raise _unauthorized(
                f"the Authorization header's scheme {scheme!r} is not accepted: use 'Authorization: Bearer <key>'",
                "invalid_api_key",
            )
        if not given:
            raise _unauthorized("no API key given: send 'Authorization: Bearer <key>'", "missing_api_key")
        # every key compared, in constant time each: no timing hint of which one nearly matched
        if not sum(hmac.compare_digest(given.encode(), key.encode()) for key in keys):
            raise _unauthorized("incorrect API key", "invalid_api_key")

    def check_model(self, name: str | None) -> None:
        if name is not None and name not in (self.model_id, self.model_id.rstrip("/").rsplit("/", 1)[-1]):
            raise ApiError(
                404,
                f"the model {name!r} does not exist here; this server runs {self.model_id!r}",
                param="model",
                code="model_not_found",
            )

    async def read_body(self, request: Request) -> bytes:
        limit, timeout = self.settings.max_body_bytes, self.settings.body_timeout_s
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > limit:
            raise ApiError(
                413, f"the request body is {length} bytes; this server takes at most {limit}", code="request_too_large"
            )
        encoding = request.headers.get("content-encoding", "")
        encodings = {e.strip().lower() for e in encoding.split(",")} - {"", "identity"}
        if encodings:  # else its compressed bytes would be "invalid JSON"
            raise ApiError(
                415,
                f"the request body is {', '.join(sorted(encodings))}-encoded; this server takes uncompressed bodies "
                "only (no Content-Encoding)",
                code="unsupported_content_encoding",
                headers={"Accept-Encoding": "identity"},
            )
        chunks, size = [], 0
        # a deadline for the whole body: a client that stops sending would hold its intake slot forever
        with anyio.move_on_after(timeout) as deadline:
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise ApiError(413, f"the request body is over {limit} bytes", code="request_too_large")
                chunks.append(chunk)
        if deadline.cancelled_caught:
            raise ApiError(
                408,
                f"the request body did not arrive within {timeout:g} s",
                code="request_timeout",
                headers={"Connection": "close"},  # the rest of the body may still come: no next request
            )
        return b"".join(chunks)

    def prepare(self, raw: bytes, scratch: ScratchFolder) -> tuple[ChatRequest, Any]:
        """The request checked, its images decoded, its videos probed and its prompt tokenized
        (in a worker thread: a large body's JSON and base64, PIL and the tokenizer would stall
        the event loop)."""
        req = parse_chat_request(parse_json(raw), self.settings.max_images)
        self.check_model(req.model)
        media = load_media(req.images, self.settings, scratch)
        media = [self._video(m, ref) if ref.kind == "video" else m for m, ref in zip(media, req.images)]
        try:
            return req, self.vlm.prepare(media, messages=req.messages, tiling=req.detail or self.settings.tiling)
        except VideoError as exc:
            raise api_error_for(exc) from None
        except (ValueError, SmolVLMError) as exc:
            raise ApiError(400, error_message(exc), param="messages", code="invalid_messages") from None

    def _video(self, path: str, ref: ImageRef) -> Any:
        """A video probed and sampled, named in its errors by its part: its path may be the
        server's temporary folder or its --allow-local-files root."""
        try:
            return self.vlm.processor.open_video(path, label=ref.part)
        except VideoError as exc:
            message = error_message(exc).replace(path, ref.part)
            message = message if ref.part in message else f"{ref.part}: {message}"  # e.g. no PyAV
            raise ApiError(400, message, param=ref.part, code="invalid_video") from None

    def options(self, req: ChatRequest, prompt_tokens: int) -> GenerationOptions:
        room = self.context - prompt_tokens
        if room < 1:
            raise ApiError(
                400,
                f"the prompt is {prompt_tokens} tokens; this server's context is {self.context} tokens",
                param="messages",
                code="context_length_exceeded",
            )
        if req.max_tokens is not None and req.max_tokens > room:
            raise ApiError(
                400,
                f"{prompt_tokens} prompt tokens + {req.max_tokens_param} {req.max_tokens} exceed this "
                f"server's context of {self.context} tokens",
                param=req.max_tokens_param,
                code="context_length_exceeded",
            )
        wanted = req.max_tokens or min(self.defaults.max_new_tokens, room)
        try:
            return self.defaults.updated(max_new_tokens=wanted, **req.sampling)
        except ValueError as exc:
            raise ApiError(400, str(exc), code="invalid_value") from None

    # -- routes -----------------------------------------------------------------------------------
    async def health(self, request: Request) -> Response:
        s = self.scheduler
        return JSONResponse(
            {
                "status": "ok",
                "model": self.model_id,
                "running": s.running,
                "waiting": s.waiting,
                "max_batch": s.max_batch,
                "max_queue": s.max_queue,
            }
        )

    async def stats(self, request: Request) -> Response:
        self.check_key(request)
        s = self.scheduler
        return JSONResponse({**s.stats.as_dict(), "running": s.running, "waiting": s.waiting})

    def _model_card(self) -> dict[str, Any]:
        return {"id": self.model_id, "object": "model", "created": self.created, "owned_by": "smolvlm-cli"}

    async def models(self, request: Request) -> Response:
        self.check_key(request)
        return JSONResponse({"object": "list", "data": [self._model_card()]})

    async def model(self, request: Request) -> Response:
        name = request.path_params["name"].removesuffix("/")
        if not name:  # `/v1/models/`: the list
            return await self.models(request)
        self.check_key(request)
        self.check_model(name)
        return JSONResponse(self._model_card())

    async def chat(self, request: Request) -> Response:
        self.check_key(request)
        capacity = self.settings.max_batch + self.settings.max_queue
        if self._intake >= capacity:
            raise ApiError(
                503,
                f"the server is busy ({self._intake} requests being received); retry later",
                code="server_overloaded",
            )
        if self._prepare_threads is None:  # made in the event loop (anyio needs one)
            self._prepare_threads = anyio.CapacityLimiter(PREPARE_THREADS)
        scratch = ScratchFolder()
        self._intake += 1
        try:
            try:
                raw = await self.read_body(request)
                req, prepared = await anyio.to_thread.run_sync(
                    self.prepare, raw, scratch, limiter=self._prepare_threads
                )
            finally:
                self._intake -= 1
            response = await self._answer(request, req, prepared)
        except ClientDisconnect:  # hung up mid-upload: nobody to answer, nothing went wrong here
            scratch.cleanup()
            return Response(status_code=499)
        except BaseException:
            scratch.cleanup()
            raise
        response.background = BackgroundTask(scratch.cleanup)  # once the answer is out (or abandoned)
        return response

    async def _answer(self, request: Request, req: ChatRequest, prepared: Any) -> Response:
        opts = self.options(req, len(prepared.input_ids))
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()

        def emit(kind: str, value: Any) -> None:  # the model's thread
            try:
                loop.call_soon_threadsafe(events.put_nowait, (kind, value))
            except RuntimeError:  # the event loop has closed: nobody is listening
                pass

        try:
            job = self.scheduler.submit(Job(prepared, opts, emit, stops=req.stop))
        except QueueFull as exc:
            raise ApiError(503, f"the server is busy ({exc}); retry later", code="server_overloaded") from None
        reply = Reply(self.model_id, self.scheduler, req, job, events, request)
        return reply.stream() if req.stream else await reply.whole()


def create_app(vlm: Any, settings: ServerSettings, defaults: GenerationOptions | None = None) -> Starlette:
    """The ASGI app serving `vlm`; its scheduler thread runs from start-up to shutdown."""
    return create_loading_app(settings, ChatServer(vlm, settings, defaults))


def create_loading_app(settings: ServerSettings, server: ChatServer | None = None) -> Starlette:
    """The app of `server`; while it is None (the model loading) every route answers 503
    `model_loading` with Retry-After, as llama-server. The CLI serves it from before the load
    and sets `app.state.server` (its scheduler started) once the model is in; a server given
    here has its scheduler started and stopped by the app's lifespan."""

    async def api_error(request: Request, exc: ApiError) -> Response:
        request.scope.setdefault("state", {})["log_note"] = f"{exc.code or exc.type}: {exc.message}"
        return error_response(exc, {"Retry-After": "1"} if exc.status == 503 else None)

    async def http_error(request: Request, exc: HTTPException) -> Response:
        return error_response(  # with the exception's headers: a 405's Allow
            ApiError(exc.status_code, str(exc.detail), code="not_found" if exc.status_code == 404 else None),
            getattr(exc, "headers", None),
        )

    async def unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unexpected error on %s", request.url.path)
        return error_response(ApiError(500, f"internal error: {error_message(exc)}", code="internal_error"))

    def lifespan(app):
        class _Life:
            async def __aenter__(self):
                if app.state.server is not None:
                    app.state.server.scheduler.start()

            async def __aexit__(self, *exc):
                if app.state.server is not None:
                    await run_in_threadpool(app.state.server.scheduler.close)

        return _Life()

    def route(name: str):
        async def endpoint(request: Request) -> Response:
            if app.state.server is None:
                raise ApiError(
                    503, "Loading model", code="model_loading", headers={"Retry-After": str(LOADING_RETRY_S)}
                )
            return await getattr(app.state.server, name)(request)

        return endpoint

    def routes(path: str, name: str, **kwargs) -> list[Route]:  # both spellings, no redirect
        return [Route(path, route(name), **kwargs), Route(f"{path}/", route(name), **kwargs)]

    middleware = [Middleware(RequestLog)]
    if settings.cors_origins:
        middleware.append(
            Middleware(
                CORSMiddleware,
                allow_origins=list(settings.cors_origins),
                allow_methods=["GET", "POST", "OPTIONS"],
                allow_headers=["*"],
            )
        )
    middleware.append(Middleware(InternalErrors))  # innermost: its 500 is logged and has CORS
    app = Starlette(
        routes=[
            *(r for prefix in ("/v1", "") for r in routes(f"{prefix}/chat/completions", "chat", methods=["POST"])),
            *(r for prefix in ("/v1", "") for r in routes(f"{prefix}/models", "models")),
            *(Route(f"{prefix}/models/{{name:path}}", route("model")) for prefix in ("/v1", "")),
            *routes("/stats", "stats"),
            *(r for path in PUBLIC_PATHS for r in routes(path, "health")),
        ],
        middleware=middleware,
        lifespan=lifespan,
        exception_handlers={ApiError: api_error, HTTPException: http_error, Exception: unexpected},
    )
    app.router.redirect_slashes = False  # a POST redirected is a GET or a failure for many clients
    app.state.server = server
    return app
