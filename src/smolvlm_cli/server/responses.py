"""One request's answer in OpenAI's chat-completions shape, from the scheduler's events: one
JSON response, or server-sent events (a chunk per delta, the usage, `[DONE]`). A failure after a
stream has begun is its last event; a client that leaves cancels its job."""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from typing import Any

import anyio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from smolvlm_cli.errors import ImageError, VideoError, error_message
from smolvlm_cli.server.schema import ApiError, ChatRequest
from smolvlm_cli.server.scheduler import Job, Scheduler

_PART = re.compile(r"messages\[\d+\]\.content\[\d+\]")


class Reply:
    """One answer on its way out: streamed as chunks, or collected into one response."""

    def __init__(
        self, model_id: str, scheduler: Scheduler, req: ChatRequest, job: Job, events: asyncio.Queue, request: Request
    ):
        self.model_id, self.scheduler = model_id, scheduler
        self.req, self.job, self.events, self.request = req, job, events, request
        self.id = f"chatcmpl-{uuid.uuid4().hex}"
        self.created = int(time.time())

    def _head(self, obj: str) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": obj,
            "created": self.created,
            "model": self.model_id,
            "system_fingerprint": None,
        }

    def _usage(self, result: dict[str, Any]) -> dict[str, int]:
        prompt, completion = result["prompt_tokens"], result["completion_tokens"]
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    def _note(self, result: dict[str, Any]) -> None:
        self.request.scope.setdefault("state", {})["log_note"] = (
            f"{'stream ' if self.req.stream else ''}{result['prompt_tokens']}+{result['completion_tokens']} "
            f"tokens ({result['finish_reason']}), first token {result['timings']['ttft_ms'] / 1000:.3f} s"
        )

    def _cancel(self) -> None:
        self.job.cancel()
        self.scheduler.wake()

    async def whole(self) -> Response:
        parts: list[str] = []
        kind, result = "", None
        async with anyio.create_task_group() as group:

            async def watch() -> None:  # the client hung up: its row is freed at once
                while (await self.request.receive())["type"] != "http.disconnect":
                    pass
                self._cancel()
                group.cancel_scope.cancel()

            group.start_soon(watch)
            while True:
                kind, result = await self.events.get()
                if kind != "delta":
                    break
                parts.append(result)
            group.cancel_scope.cancel()
        if kind == "error":
            raise api_error_for(result)
        if kind != "done":
            return Response(status_code=499)  # nobody to send it to
        self._note(result)
        return JSONResponse(
            {
                **self._head("chat.completion"),
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "".join(parts)},
                        "logprobs": None,
                        "finish_reason": result["finish_reason"],
                    }
                ],
                "usage": self._usage(result),
                "timings": result["timings"],
            }
        )

    def _chunk(self, delta: dict[str, Any], finish: str | None = None, **extra: Any) -> str:
        chunk = {
            **self._head("chat.completion.chunk"),
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
            **({"usage": None} if self.req.include_usage else {}),  # as OpenAI: the last chunk has it
            **extra,
        }
        return f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n"

    def stream(self) -> StreamingResponse:
        async def events():
            done = False
            try:
                yield self._chunk({"role": "assistant", "content": ""})
                while True:
                    kind, value = await self.events.get()
                    if kind == "delta":
                        yield self._chunk({"content": value})
                    elif kind == "error":  # the last event: no [DONE] after it
                        done = True
                        yield f"data: {json.dumps(api_error_for(value).body())}\n\n"
                        return
                    else:
                        done = True
                        self._note(value)
                        yield self._chunk({}, value["finish_reason"], timings=value["timings"])
                        if self.req.include_usage:
                            yield f"data: {json.dumps({**self._head('chat.completion.chunk'), 'choices': [], 'usage': self._usage(value)})}\n\n"
                        break
                yield "data: [DONE]\n\n"
            finally:
                if not done:  # the client went away (the task was cancelled): free the row
                    self._cancel()

        return StreamingResponse(
            events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        )


def api_error_for(exc: BaseException) -> ApiError:
    """The answer to a request the model thread could not finish: a video or image that only
    failed to decode there (a truncated clip passes the probe) is the client's 400, so SDKs do
    not retry it as they retry a 5xx; anything else is the model's 500."""
    if isinstance(exc, VideoError):  # named by its part (`ChatServer._video`), never its path
        part = _PART.search(error_message(exc))
        return ApiError(400, error_message(exc), param=part[0] if part else "messages", code="invalid_video")
    if isinstance(exc, ImageError):
        return ApiError(400, error_message(exc), param="messages", code="invalid_image")
    return ApiError(500, f"the model failed: {error_message(exc)}", code="model_error")
