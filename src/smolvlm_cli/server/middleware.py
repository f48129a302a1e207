"""The app's ASGI middlewares: the request log (one stderr line per request) and the innermost
handler that turns an unexpected error into OpenAI's 500 answer."""

from __future__ import annotations

import logging
import time

from starlette.requests import ClientDisconnect
from starlette.responses import JSONResponse

from smolvlm_cli.errors import error_message
from smolvlm_cli.server.schema import ApiError

log = logging.getLogger("smolvlm.server")


def error_response(exc: ApiError, headers: dict[str, str] | None = None) -> JSONResponse:
    """`exc` as its JSON answer, with `headers` unless it sets them itself."""
    return JSONResponse(exc.body(), status_code=exc.status, headers={**(headers or {}), **(exc.headers or {})})


class RequestLog:
    """ASGI middleware: one stderr line per request once its answer is complete."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started, status, complete = time.perf_counter(), [0], [False]

        async def logged_send(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                complete[0] = True
            await send(message)

        hung_up = False
        try:
            await self.app(scope, receive, logged_send)
            hung_up = bool(status[0]) and not complete[0]  # a stream the client left (Starlette stops it)
        except (ClientDisconnect, OSError):
            hung_up = True
            raise
        finally:
            client = scope.get("client") or ("-", 0)
            note = scope.get("state", {}).get("log_note", "")
            if hung_up:  # 499 as for a request left before its answer: its status was never all sent
                status[0], note = 499, note or "the client hung up mid-answer"
            log.info(
                "%s %s %s %s %.3f s%s",
                client[0],
                scope["method"],
                scope["path"],
                status[0] or "-",
                time.perf_counter() - started,
                f" {note}" if note else "",
            )


class InternalErrors:
    """ASGI middleware, innermost: an unexpected error becomes the 500 JSON answer here, so the
    request log sees its status and CORS adds its headers (Starlette's own handler answers
    outside every middleware). An error after the answer began is left to the server."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = [False]

        async def tracked_send(message):
            started[0] = started[0] or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracked_send)
        except Exception as exc:  # noqa: BLE001 - any failure is the client's 500, one log line
            if started[0]:
                raise
            log.exception("unexpected error on %s", scope["path"])
            message = f"internal error: {error_message(exc)}"
            scope.setdefault("state", {})["log_note"] = f"internal_error: {message}"
            await error_response(ApiError(500, message, code="internal_error"))(scope, receive, send)
