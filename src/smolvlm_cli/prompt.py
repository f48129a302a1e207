"""Chat template rendering and image-token expansion, as transformers' SmolVLM processor does them.

`ChatTemplate.render(messages)` turns Hugging Face chat messages into the prompt text, e.g.
`<|im_start|>User:<image>Describe this image.<end_of_utterance>\\nAssistant:` (no space after
`User:` when the content starts with an image, `User: ` otherwise). `expand_image_tokens` then
replaces each `<image>` placeholder with the markers and `image_seq_len` image tokens per tile of
that image's grid, exactly like `transformers.models.smolvlm.processing_smolvlm.get_image_prompt_string`.

The template runs in jinja2's immutable sandbox with the environment transformers builds
(`trim_blocks`, `lstrip_blocks`, loop controls, `raise_exception`, `tojson`, `strftime_now`,
`{% generation %}` blocks rendered as plain text). jinja2 is imported on first use.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

from smolvlm_cli.config import read_json
from smolvlm_cli.errors import ConfigError

IMAGE_TOKEN = "<image>"
FAKE_IMAGE_TOKEN = "<fake_token_around_image>"
GLOBAL_IMAGE_TOKEN = "<global-img>"
END_OF_UTTERANCE_TOKEN = "<end_of_utterance>"
ROW_COL_TOKEN = "<row_{row}_col_{col}>"  # 1-based; the vocabularies hold rows and cols 1..6
VIDEO_TOKEN = "<video>"  # a placeholder of the rendered text only: never in the vocabulary

# transformers' SmolVLM processor renders any conversation holding a video with its own template
# (the models' chat_template.json has no video branch): the image template plus `<video>` parts.
# `User:` has no space after it only when the message starts with an image.
VIDEO_CHAT_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{ message['role'] | capitalize }}"
    "{% if message['content'][0]['type'] == 'image' %}:{% else %}: {% endif %}"
    "{% for part in message['content'] %}"
    "{% if part['type'] == 'text' %}{{ part['text'] }}"
    "{% elif part['type'] == 'image' %}<image>"
    "{% elif part['type'] == 'video' %}<video>{% endif %}"
    "{% endfor %}<end_of_utterance>\n{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)


def row_col_token(row: int, col: int) -> str:
    """The marker of the tile at 1-based (row, col), e.g. `<row_1_col_2>`."""
    return ROW_COL_TOKEN.format(row=row, col=col)


# Where transformers looks for a template, highest precedence first: the processor's sources
# (processor_config.json's key, then the legacy chat_template.json, then chat_template.jinja),
# then the tokenizer's (chat_template.jinja, then tokenizer_config.json's key).
PROCESSOR_CONFIG_FILE = "processor_config.json"
CHAT_TEMPLATE_JSON_FILE = "chat_template.json"
CHAT_TEMPLATE_JINJA_FILE = "chat_template.jinja"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"


# -- image-token expansion ----------------------------------------------------------------------


def _check_grid(rows: int, cols: int) -> tuple[int, int]:
    rows, cols = int(rows), int(cols)
    if rows < 0 or cols < 0 or (rows == 0) != (cols == 0):
        raise ValueError(f"invalid image grid {rows}x{cols}: (0, 0) (not split) or rows, cols >= 1")
    return rows, cols


def image_prompt_string(
    rows: int,
    cols: int,
    image_seq_len: int,
    *,
    image_token: str = IMAGE_TOKEN,
    fake_token: str = FAKE_IMAGE_TOKEN,
    global_token: str = GLOBAL_IMAGE_TOKEN,
) -> str:
    """The text that replaces one `<image>` for an image cut into rows x cols tiles ((0, 0): one
    unsplit tile): per tile `<fake_token_around_image><row_r_col_c>` + image tokens, a newline
    after each row, then `\\n` and the global tile `<fake_token_around_image><global-img>` +
    image tokens + `<fake_token_around_image>`."""
    rows, cols = _check_grid(rows, cols)
    tile = image_token * image_seq_len
    glob = f"{fake_token}{global_token}{tile}{fake_token}"
    if rows == 0:
        return glob
    parts = []
    for r in range(1, rows + 1):
        parts.extend(f"{fake_token}{row_col_token(r, c)}{tile}" for c in range(1, cols + 1))
        parts.append("\n")
    parts.append("\n")
    parts.append(glob)
    return "".join(parts)


def expand_image_tokens(
    prompt: str,
    grids: Sequence[tuple[int, int]],
    image_seq_len: int,
    *,
    image_token: str = IMAGE_TOKEN,
    fake_token: str = FAKE_IMAGE_TOKEN,
    global_token: str = GLOBAL_IMAGE_TOKEN,
) -> str:
    """Replace the i-th `<image>` of a rendered prompt with the expansion for `grids[i]`
    ((rows, cols) of its tiles; (0, 0) = not split)."""
    pieces = prompt.split(image_token)
    if len(pieces) - 1 != len(grids):
        raise ValueError(
            f"the prompt has {len(pieces) - 1} {image_token} placeholder(s) but {len(grids)} image grid(s) were given"
        )
    out = [pieces[0]]
    for (rows, cols), rest in zip(grids, pieces[1:]):
        out.append(
            image_prompt_string(
                rows, cols, image_seq_len, image_token=image_token, fake_token=fake_token, global_token=global_token
            )
        )
        out.append(rest)
    return "".join(out)


def expand_video_tokens(prompt: str, videos: Sequence[Any], image_seq_len: int) -> str:
    """Replace the i-th `<video>` of a rendered prompt with the frames of `videos[i]` (a
    `SampledVideo`): the intro, a timestamped single-tile image per frame, a blank line."""
    from smolvlm_cli.video.sampling import video_prompt_string

    pieces = prompt.split(VIDEO_TOKEN)
    if len(pieces) - 1 != len(videos):
        raise ValueError(
            f"the prompt has {len(pieces) - 1} {VIDEO_TOKEN} placeholder(s) but {len(videos)} video(s) were given"
        )
    frame = image_prompt_string(0, 0, image_seq_len)
    out = [pieces[0]]
    for video, rest in zip(videos, pieces[1:]):
        out.append(video_prompt_string(video.times, video.duration, frame))
        out.append(rest)
    return "".join(out)


def has_video(messages: Sequence[Mapping[str, Any]]) -> bool:
    """Whether a (normalized) conversation holds a video part: it then renders with
    `VIDEO_CHAT_TEMPLATE`, as transformers does."""
    return any(
        isinstance(part, Mapping) and part.get("type") == "video"
        for message in messages
        for part in (message.get("content") or ())
    )


def count_image_tokens(rows: int, cols: int, image_seq_len: int) -> int:
    """Number of `<image>` tokens (= rows of image features) one image of this grid takes."""
    rows, cols = _check_grid(rows, cols)
    return (rows * cols + 1) * image_seq_len


def build_messages(prompt: str, num_images: int | Sequence[str], system: str | None = None) -> list[dict[str, Any]]:
    """One user turn: `num_images` image placeholders (or one placeholder per kind of a list of
    "image" / "video"), then the text (after a system turn when `system` is given)."""
    kinds = ["image"] * num_images if isinstance(num_images, int) else list(num_images)
    content: list[dict[str, Any]] = [{"type": kind} for kind in kinds]
    content.append({"type": "text", "text": prompt})
    return [*system_messages(system), {"role": "user", "content": content}]


def system_messages(system: str | None) -> list[dict[str, Any]]:
    """The system turn for `system` (none when it is empty)."""
    return [{"role": "system", "content": [{"type": "text", "text": system}]}] if system else []


# -- chat template --------------------------------------------------------------------------------


def _plain(value: Any) -> Any:
    """What transformers lets a template see: plain JSON-like data; other objects (images,
    arrays) become an inert `<TypeName>` string. Templates only test media keys for presence."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, int):
        return int.__int__(value)
    if isinstance(value, float):
        return float.__float__(value)
    if isinstance(value, Mapping):
        return {_plain(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_plain(v) for v in value)
    if hasattr(value, "item") and type(value).__module__ == "numpy":  # numpy scalars
        return _plain(value.item())
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    return f"<{type(value).__name__}>"


def normalize_messages(messages: Sequence[Mapping[str, Any]], *, plain: bool = True) -> list[dict[str, Any]]:
    """Messages as the SmolVLM template expects them: keys set to None dropped (as transformers
    does), string content turned into `[{"type": "text", "text": s}]` (the template iterates
    over the content's parts: transformers renders a bare string as nothing at all), OpenAI
    `image_url` parts turned into `image` parts (as transformers' processor does).

    `plain`: other objects (PIL images, bytes, paths) become inert `<TypeName>` strings, what a
    template may see; False keeps them, for collecting the media given inline."""
    if isinstance(messages, Mapping) or isinstance(messages, str):
        raise ValueError("messages must be a list of {'role': ..., 'content': ...} dicts")
    out = []
    for message in messages:
        if not isinstance(message, Mapping):
            raise ValueError(f"chat messages must be dicts, not {type(message).__name__}: {message!r}")
        message = {k: v for k, v in message.items() if v is not None}
        content = message.get("content")
        if isinstance(content, str):
            message["content"] = [{"type": "text", "text": content}]
        elif isinstance(content, Sequence):
            parts = []
            for part in content:
                if isinstance(part, str):
                    part = {"type": "text", "text": part}
                elif isinstance(part, Mapping) and part.get("type") == "image_url" and "image_url" in part:
                    url = part["image_url"]
                    url = url.get("url", "") if isinstance(url, Mapping) else url
                    part = {**{k: v for k, v in part.items() if k != "image_url"}, "type": "image", "url": url}
                parts.append(part)
            message["content"] = parts
        out.append(_plain(message) if plain else message)
    return out


@lru_cache(maxsize=16)
def _compile(source: str):
    import jinja2
    import jinja2.ext
    import jinja2.nodes
    import jinja2.utils
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class GenerationBlock(jinja2.ext.Extension):
        """`{% generation %}...{% endgeneration %}` (assistant-mask markers): rendered as is."""

        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_render"), [], [], body).set_lineno(lineno)

        def _render(self, caller):
            return caller()

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    def strftime_now(fmt):
        return datetime.now().strftime(fmt)

    class TemplateDict:  # `dict(...)` without the class itself (no attribute games)
        def __call__(self, *args, **kwargs):
            return dict(*args, **kwargs)

        def fromkeys(self, *args, **kwargs):
            return dict.fromkeys(*args, **kwargs)

    class TemplateNamespace(jinja2.utils.Namespace):  # no underscore-prefixed attributes
        def __init__(*args, **kwargs):
            self, args = args[0], args[1:]
            attrs = dict(*args, **kwargs)
            for name in attrs:
                TemplateNamespace._check_name(name)
            jinja2.utils.Namespace.__init__(self, attrs)

        def __setitem__(self, name, value):
            TemplateNamespace._check_name(name)
            jinja2.utils.Namespace.__setitem__(self, name, value)

        @staticmethod
        def _check_name(name):
            if isinstance(name, str) and name.startswith("_"):
                raise jinja2.exceptions.SecurityError(
                    f"chat templates cannot set underscore-prefixed attributes ({name!r})"
                )

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[GenerationBlock, jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    env.globals["dict"] = TemplateDict()
    env.globals["namespace"] = TemplateNamespace
    return env.from_string(source)


class ChatTemplate:
    """A model's jinja chat template, rendered like transformers' `apply_chat_template`."""

    def __init__(self, source: str, special_tokens: Mapping[str, str] | None = None, origin: str = "chat template"):
        import jinja2

        self.source = source
        self.origin = origin
        # transformers passes the tokenizer's special tokens (bos_token, eos_token, ...) to templates.
        self.special_tokens = dict(special_tokens or {})
        try:
            self._template = _compile(source)
        except jinja2.exceptions.TemplateError as exc:
            raise ConfigError(f"{origin}: invalid jinja template: {exc}") from exc

    @classmethod
    def from_dir(cls, model_dir: str | Path) -> ChatTemplate:
        """The template transformers would use for this model directory: processor_config.json's
        `chat_template`, else chat_template.json, else chat_template.jinja, else the
        `chat_template` of tokenizer_config.json. A template dict/list picks its "default"."""
        from smolvlm_cli.tokenizer import read_special_tokens

        model_dir = Path(model_dir)
        source, origin = cls._find(model_dir)
        return cls(source, read_special_tokens(model_dir), origin=origin)

    @staticmethod
    def _find(model_dir: Path) -> tuple[str, str]:
        proc = read_json(model_dir / PROCESSOR_CONFIG_FILE, required=False)
        if proc.get("chat_template") is not None:
            return _pick_default(proc["chat_template"], PROCESSOR_CONFIG_FILE), PROCESSOR_CONFIG_FILE
        path = model_dir / CHAT_TEMPLATE_JSON_FILE
        if path.is_file():
            data = read_json(path)
            if "chat_template" not in data:
                raise ConfigError(f"{path} has no 'chat_template' key")
            return _pick_default(data["chat_template"], CHAT_TEMPLATE_JSON_FILE), CHAT_TEMPLATE_JSON_FILE
        path = model_dir / CHAT_TEMPLATE_JINJA_FILE
        if path.is_file():
            try:
                return path.read_text(encoding="utf-8"), CHAT_TEMPLATE_JINJA_FILE
            except (OSError, UnicodeDecodeError) as exc:
                raise ConfigError(f"cannot read {path}: {exc}") from exc
        tok = read_json(model_dir / TOKENIZER_CONFIG_FILE, required=False)
        if tok.get("chat_template") is not None:
            return _pick_default(tok["chat_template"], TOKENIZER_CONFIG_FILE), TOKENIZER_CONFIG_FILE
        raise ConfigError(
            f"no chat template in {model_dir}",
            hint=f"expected {CHAT_TEMPLATE_JSON_FILE}, {CHAT_TEMPLATE_JINJA_FILE} or a "
            f"'chat_template' key in {TOKENIZER_CONFIG_FILE}",
        )

    def render(self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True, **kwargs: Any) -> str:
        """The prompt text of `messages` (Hugging Face chat format; content as a list of
        `{"type": "image"}` / `{"type": "text", "text": ...}` parts, or a plain string).
        `add_generation_prompt` appends `Assistant:`. Extra kwargs reach the template."""
        import jinja2

        chat = normalize_messages(messages)
        if not chat:
            raise ValueError("cannot render an empty conversation")
        variables = {**self.special_tokens, **_plain(kwargs)}
        try:
            return self._template.render(
                messages=chat, tools=None, documents=None, add_generation_prompt=add_generation_prompt, **variables
            )
        except jinja2.exceptions.TemplateError as exc:
            raise ValueError(f"the chat template rejected the messages: {exc}") from exc
        except Exception as exc:  # noqa: BLE001 - a template's own bug: {% include %} without a
            # loader (TypeError), a sandbox range limit (OverflowError), 1/0, ...
            raise ValueError(f"the chat template ({self.origin}) failed: {type(exc).__name__}: {exc}") from exc


def _pick_default(value: Any, origin: str) -> str:
    if isinstance(value, list):  # tokenizer_config.json's [{"name": ..., "template": ...}]
        try:
            value = {item["name"]: item["template"] for item in value}
        except (TypeError, KeyError) as exc:
            raise ConfigError(f"{origin}: malformed chat_template list") from exc
    if isinstance(value, dict):
        if "default" not in value:
            raise ConfigError(f"{origin}: several chat templates but none named 'default'")
        value = value["default"]
    if not isinstance(value, str):
        raise ConfigError(f"{origin}: chat_template must be a string, not {type(value).__name__}")
    return value
