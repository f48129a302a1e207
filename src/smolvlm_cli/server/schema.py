"""A chat-completions request body -> a checked `ChatRequest`, or an `ApiError` in OpenAI's shape.

Only the shape is checked here (types, ranges, what is supported); images are fetched and
decoded in `images.py`, and the prompt's length is checked once it is tokenized (`app.py`).
Every refusal is an `ApiError`: `{"error": {"message", "type", "param", "code"}}` with its
HTTP status, the shape OpenAI's clients read `error.message` from.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from smolvlm_cli.options import DETAIL_LEVELS

# the roles the SmolVLM templates render; OpenAI's newer `developer` role is a system message
ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
MAX_STOP_STRINGS = 4  # as OpenAI

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    408: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    503: "unavailable_error",
}


class ApiError(Exception):
    """An error answer: HTTP `status`, OpenAI's error object and the answer's extra headers."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        type: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.type = type or _TYPES.get(status, "invalid_request_error")
        self.headers = headers

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


@dataclass
class ImageRef:
    """An image (or video) of a request: where it is and where the request named it."""

    url: str  # a data URI, an http(s) URL, a file:// URL or a path
    param: str  # where it was, e.g. "messages[0].content[1].image_url.url"
    detail: str | None = None  # OpenAI's low / auto / high (options.Tiling.for_detail)
    kind: str = "image"  # or "video" (a `video_url` part, vLLM's convention)

    @property
    def part(self) -> str:
        """The content part, e.g. "messages[0].content[1]": what errors name (never a server path)."""
        return self.param.removesuffix(f".{self.kind}_url.url")


def _detail(value: Any, where: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or value.lower() not in DETAIL_LEVELS:
        raise _bad(f"'{where}.image_url.detail' must be one of {', '.join(DETAIL_LEVELS)}", f"{where}.image_url.detail")
    return value.lower()


@dataclass
class ChatRequest:
    """What a request asks for. `messages` are Hugging Face chat messages whose image parts are
    `{"type": "image"}` placeholders, `images` the sources of those placeholders in order."""

    messages: list[dict[str, Any]]
    images: list[ImageRef]  # images and videos, in prompt order
    model: str | None = None
    stream: bool = False
    include_usage: bool = False
    max_tokens: int | None = None
    max_tokens_param: str = "max_tokens"  # the field it came from (errors name what was sent)
    sampling: dict[str, Any] = field(default_factory=dict)  # GenerationOptions fields given
    stop: list[str] = field(default_factory=list)
    detail: str | None = None  # the image parts' `detail` (one level per request), None: not given


def _bad(message: str, param: str | None, code: str = "invalid_value") -> ApiError:
    return ApiError(400, message, param=param, code=code)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (_is_int(value) or isinstance(value, float)) and math.isfinite(value)


def _int(body: dict, name: str, low: int, high: int | None = None) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if not _is_int(value):
        raise _bad(f"'{name}' must be an integer, not {json.dumps(value)[:40]}", name, "invalid_type")
    if value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise _bad(f"'{name}' must be {bound}, not {value}", name)
    return value


def _number(body: dict, name: str, low: float, high: float, low_open: bool = False) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if not _is_number(value):
        raise _bad(f"'{name}' must be a number, not {json.dumps(value)[:40]}", name, "invalid_type")
    if value > high or value < low or (low_open and value == low):
        raise _bad(f"'{name}' must be in {'(' if low_open else '['}{low:g}, {high:g}], not {value}", name)
    return float(value)


def _bool(body: dict, name: str) -> bool | None:
    value = body.get(name)
    if value is not None and not isinstance(value, bool):
        raise _bad(f"'{name}' must be true or false", name, "invalid_type")
    return value


def parse_json(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"the request body is not valid JSON ({exc})", code="invalid_json") from None
    except RecursionError:  # the client's error, not a 500 that SDKs would send three more times
        raise ApiError(400, "the request body's JSON is nested too deeply", code="invalid_json") from None
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object", code="invalid_json")
    return body


def _media_ref(part: dict, media: str, where: str, role: str) -> ImageRef:
    """An `image_url` / `video_url` part's source (`{"url": ..., "detail": ...}` or a bare URL)."""
    value = part.get(f"{media}_url")
    url = value.get("url") if isinstance(value, dict) else value
    if not isinstance(url, str) or not url:
        raise _bad(f"'{where}.{media}_url.url' must be a non-empty string", f"{where}.{media}_url.url", "invalid_type")
    if role != "user":
        raise _bad(f"{media}s are only accepted in user messages ('{where}' is in a {role} message)", where)
    detail = _detail(value.get("detail") if isinstance(value, dict) and media == "image" else None, where)
    return ImageRef(url, f"{where}.{media}_url.url", detail, kind=media)


def _content(content: Any, param: str, role: str, images: list[ImageRef]) -> list[dict[str, Any]]:
    """A message's content as Hugging Face parts; image_url parts become placeholders."""
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if not isinstance(content, list):
        raise _bad(f"'{param}' must be a string or a list of content parts", param, "invalid_type")
    if not content:  # the chat templates read its first part; "" (no text) is taken as it is
        raise _bad(f"'{param}' must not be empty", param)
    parts = []
    for j, part in enumerate(content):
        where = f"{param}[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            parts.append({"type": "text", "text": part["text"]})
        elif kind in ("image_url", "video_url"):
            media = kind.removesuffix("_url")
            images.append(_media_ref(part, media, where, role))
            parts.append({"type": media})
        elif kind in ("text", None):
            raise _bad(
                f'\'{where}\' must be {{"type": "text", "text": ...}} or '
                '{"type": "image_url", "image_url": {"url": ...}}',
                where,
                "invalid_type",
            )
        else:
            raise _bad(
                f"content parts of type {kind!r} are not supported (text, image_url and video_url are)",
                f"{where}.type",
                "unsupported_content",
            )
    return parts


def _messages(body: dict) -> tuple[list[dict[str, Any]], list[ImageRef]]:
    messages = body.get("messages")
    if messages is None:
        raise ApiError(400, "'messages' is required", param="messages", code="missing_required_parameter")
    if not isinstance(messages, list) or not messages:
        raise _bad("'messages' must be a non-empty list of messages", "messages", "invalid_type")
    out, images = [], []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise _bad(f"'{where}' must be an object with 'role' and 'content'", where, "invalid_type")
        role = message.get("role")
        if not isinstance(role, str) or role not in ROLES:  # a list or an object is no dict key
            raise _bad(
                f"'{where}.role' must be one of {', '.join(ROLES)}, not {json.dumps(role)[:40]}", f"{where}.role"
            )
        if message.get("content") is None:
            raise _bad(f"'{where}.content' is required", f"{where}.content", "missing_required_parameter")
        out.append(
            {"role": ROLES[role], "content": _content(message["content"], f"{where}.content", ROLES[role], images)}
        )
    if out[-1]["role"] == "assistant":
        raise _bad(
            "the last message must not be the assistant's (it would be answered by itself)",
            f"messages[{len(out) - 1}].role",
        )
    return out, images


def _stop(body: dict) -> list[str]:
    stop = body.get("stop")
    if stop is None:
        return []
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops):
        raise _bad("'stop' must be a non-empty string or a list of them", "stop", "invalid_type")
    if len(stops) > MAX_STOP_STRINGS:
        raise _bad(f"'stop' takes at most {MAX_STOP_STRINGS} strings", "stop")
    return stops


def _unsupported(body: dict) -> None:
    if _int(body, "n", 1) not in (None, 1):
        raise _bad("only n=1 is supported", "n", "unsupported_value")
    fmt = body.get("response_format")
    if fmt is not None and not (isinstance(fmt, dict) and fmt.get("type") == "text"):
        raise _bad(
            'response_format other than {"type": "text"} is not supported', "response_format", "unsupported_value"
        )
    for name in ("tools", "functions"):
        if body.get(name):
            raise _bad(f"'{name}' (tool calls) are not supported", name, "unsupported_value")
    for name in ("tool_choice", "function_call"):  # a client that needs a tool call must not get text
        if body.get(name) not in (None, "none"):
            raise _bad(f"'{name}' (tool calls) is not supported", name, "unsupported_value")
    for name in ("frequency_penalty", "presence_penalty"):
        if _number(body, name, -2.0, 2.0) not in (None, 0.0):
            raise _bad(f"'{name}' is not supported (repetition_penalty is)", name, "unsupported_value")
    if body.get("logprobs"):
        raise _bad("'logprobs' is not supported", "logprobs", "unsupported_value")
    # refused rather than ignored: a client must not get a reply made without them
    for name in ("top_logprobs", "audio", "prediction"):
        if body.get(name) is not None:
            raise _bad(f"'{name}' is not supported", name, "unsupported_parameter")
    if body.get("logit_bias"):
        raise _bad("'logit_bias' is not supported", "logit_bias", "unsupported_parameter")
    modalities = body.get("modalities")
    if modalities is not None and not (isinstance(modalities, list) and all(isinstance(m, str) for m in modalities)):
        raise _bad("'modalities' must be a list of strings", "modalities", "invalid_type")
    if modalities and set(modalities) != {"text"}:
        raise _bad('only the "text" modality is supported', "modalities", "unsupported_value")


def parse_chat_request(body: dict[str, Any], max_images: int) -> ChatRequest:
    """Check a chat-completions body; raises `ApiError` (400) on the first problem."""
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise _bad("'model' must be a string", "model", "invalid_type")
    stream = bool(_bool(body, "stream"))
    options = body.get("stream_options")
    if options is not None and not stream:  # as OpenAI
        raise _bad("'stream_options' is only allowed when 'stream' is true", "stream_options")
    options = options or {}
    if not isinstance(options, dict) or not isinstance(options.get("include_usage", False), bool):
        raise _bad(
            "'stream_options' must be an object like {\"include_usage\": true}", "stream_options", "invalid_type"
        )
    _unsupported(body)
    messages, images = _messages(body)
    if len(images) > max_images:
        raise ApiError(
            400,
            f"{len(images)} images and videos in one request; this server takes at most {max_images}",
            param="messages",
            code="too_many_images",
        )
    details = {ref.detail for ref in images if ref.detail is not None}
    if len(details) > 1:
        raise _bad("the images of one request take one detail level (low, auto or high)", "messages")
    max_tokens, max_tokens_param = _int(body, "max_completion_tokens", 1), "max_completion_tokens"
    if max_tokens is None:
        max_tokens, max_tokens_param = _int(body, "max_tokens", 1), "max_tokens"
    sampling = {
        "temperature": _number(body, "temperature", 0.0, 2.0),
        "top_p": _number(body, "top_p", 0.0, 1.0, low_open=True),
        "top_k": _int(body, "top_k", 0),
        "repetition_penalty": _number(body, "repetition_penalty", 0.0, 10.0, low_open=True),
        "seed": _int(body, "seed", -(2**63), 2**63 - 1),  # OpenAI's: a signed 64-bit integer
        "ignore_eos": _bool(body, "ignore_eos"),
    }  # llama-server's, for benchmarks
    if sampling["seed"] is not None and sampling["seed"] < 0:
        sampling["seed"] += 2**64  # numpy seeds are unsigned; OpenAI's may be negative
    return ChatRequest(
        messages,
        images,
        model=model,
        stream=stream,
        include_usage=bool(options.get("include_usage", False)) and stream,
        max_tokens=max_tokens,
        max_tokens_param=max_tokens_param,
        sampling={k: v for k, v in sampling.items() if v is not None},
        stop=_stop(body),
        detail=details.pop() if details else None,
    )
