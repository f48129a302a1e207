"""`Tokenizer`: the model's tokenizer.json through the `tokenizers` library, without transformers.

Gives the ids transformers' processor gives for the same (expanded) prompt text, the text
`tokenizer.decode` gives for the same ids, and an incremental detokenizer for streaming output.

What transformers 5.x does on loading, and what this module mirrors:

- tokenizer.json is the tokenizer. Its `post_processor` is kept when it has one; when it is null
  transformers installs an empty template (its `add_bos_token`/`add_eos_token` keys are dropped
  once tokenizer.json exists), so `encode` with or without special tokens gives the same ids for
  the SmolVLM tokenizers: no BOS is prepended (the chat template writes `<|im_start|>` itself).
- Special token names (bos/eos/unk/pad) come from tokenizer_config.json. special_tokens_map.json
  is read only when tokenizer_config.json has no `added_tokens_decoder` (then its keys win), as
  in transformers. The model-specific names (`image_token`, `fake_image_token`,
  `global_image_token`, `end_of_utterance_token`) come from tokenizer_config.json's top level or
  its `extra_special_tokens`, else the defaults SmolVLM's processors fall back to.
- For a `GPT2Tokenizer` class (SmolVLM-256M-Instruct) transformers 5.23 replaces the
  pre-tokenizer (dropping the `Digits` splitter). For this vocabulary that changes no ids: no
  merge joins a number character to anything. The tests check it against transformers.
- `decode(skip_special_tokens=True)` drops every added token flagged `special` in tokenizer.json
  (all 145 here, including `<image>`, `<row_r_col_c>` and the reserved ones), like transformers.
  `clean_up_tokenization_spaces` is false in these configs (and transformers ignores it for BPE).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import tokenizers
from tokenizers.decoders import DecodeStream as _LibDecodeStream

from smolvlm_cli.config import read_json
from smolvlm_cli.errors import ConfigError
from smolvlm_cli.jsontext import LONE_SURROGATE

TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
SPECIAL_TOKENS_MAP_FILE = "special_tokens_map.json"

# The standard special-token attributes transformers passes to chat templates.
STANDARD_SPECIAL_TOKENS = ("bos_token", "eos_token", "unk_token", "pad_token")
# SmolVLM's own names and the defaults its processors use when the tokenizer files lack them.
MODEL_SPECIAL_TOKEN_DEFAULTS = {
    "image_token": "<image>",
    "fake_image_token": "<fake_token_around_image>",
    "global_image_token": "<global-img>",
    "end_of_utterance_token": "<end_of_utterance>",
}

_REPLACEMENT_CHAR = "\ufffd"


def _token_content(value: Any, source: str = TOKENIZER_CONFIG_FILE) -> str | None:
    """A special token as tokenizer_config/special_tokens_map store it: a string or an AddedToken dict."""
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    raise ConfigError(f"{source}: unexpected special token entry {value!r}")


def read_special_tokens(model_dir: str | Path) -> dict[str, str]:
    """The named special tokens of a model directory as transformers resolves them:
    `bos_token`, `eos_token`, `unk_token`, `pad_token` (those that are set) and the SmolVLM names
    `image_token`, `fake_image_token`, `global_image_token`, `end_of_utterance_token`
    (always set: the processors' defaults apply)."""
    model_dir = Path(model_dir)
    config = read_json(model_dir / TOKENIZER_CONFIG_FILE, required=False)
    values: dict[str, Any] = {k: config.get(k) for k in STANDARD_SPECIAL_TOKENS}
    extra: dict[str, Any] = {}
    source = TOKENIZER_CONFIG_FILE
    if isinstance(config.get("extra_special_tokens"), dict):
        extra.update(config["extra_special_tokens"])
    for key in MODEL_SPECIAL_TOKEN_DEFAULTS:
        if config.get(key) is not None:
            extra[key] = config[key]
    if "added_tokens_decoder" not in config:
        # Legacy layout: special_tokens_map.json is merged over tokenizer_config.json.
        legacy = read_json(model_dir / SPECIAL_TOKENS_MAP_FILE, required=False)
        if legacy:
            source = f"{TOKENIZER_CONFIG_FILE} / {SPECIAL_TOKENS_MAP_FILE}"
        for key, value in legacy.items():
            if key in STANDARD_SPECIAL_TOKENS:
                values[key] = value
            elif key in MODEL_SPECIAL_TOKEN_DEFAULTS:
                extra[key] = value
            elif key == "extra_special_tokens" and isinstance(value, dict):
                extra.update(value)
    tokens = {k: _token_content(v, source) for k, v in values.items() if v is not None}
    for key, default in MODEL_SPECIAL_TOKEN_DEFAULTS.items():
        tokens[key] = _token_content(extra.get(key), source) or default
    for key, value in extra.items():  # other model-specific names, e.g. a video token
        if key not in tokens and isinstance(value, (str, dict)):
            tokens[key] = _token_content(value, source)
    return tokens


class Tokenizer:
    """Encode prompts and decode generated ids like transformers, on the `tokenizers` library.

    `vocab_size` counts the added tokens (49280 for SmolVLM-256M/500M: the logits' width), unlike
    transformers' `tokenizer.vocab_size` (49152, the base vocabulary only; its `len()` is 49280).
    """

    def __init__(self, tokenizer: tokenizers.Tokenizer, special_tokens: dict[str, str] | None = None):
        self._tokenizer = tokenizer
        self.special_tokens: dict[str, str] = dict(MODEL_SPECIAL_TOKEN_DEFAULTS)
        self.special_tokens.update(special_tokens or {})

    @classmethod
    def from_dir(cls, model_dir: str | Path) -> Tokenizer:
        """Load tokenizer.json (required) and the special-token names from tokenizer_config.json
        (and special_tokens_map.json in the legacy layout) of a model directory."""
        model_dir = Path(model_dir)
        path = model_dir / TOKENIZER_FILE
        if not path.is_file():
            raise ConfigError(
                f"{TOKENIZER_FILE} not found in {model_dir}",
                hint="smolvlm-cli needs the fast tokenizer file (tokenizer.json) "
                "of the model, as published on the Hugging Face Hub",
            )
        try:
            tokenizer = tokenizers.Tokenizer.from_file(str(path))
        except Exception as exc:  # the library raises a bare Exception on malformed files
            raise ConfigError(f"{path} is not a valid tokenizer file: {exc}") from exc
        return cls(tokenizer, read_special_tokens(model_dir))

    # -- encoding / decoding ----------------------------------------------------------------

    @property
    def backend(self) -> tokenizers.Tokenizer:
        """The underlying `tokenizers.Tokenizer`."""
        return self._tokenizer

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of `text`, as transformers' processor tokenizes its expanded prompt text.

        Special-token strings in the text (`<|im_start|>`, `<image>`, `<row_1_col_2>`, ...) become
        their ids. `add_special_tokens` applies tokenizer.json's post-processor, which adds
        nothing for the SmolVLM tokenizers (the processor passes True, its chat-template path False).
        """
        if LONE_SURROGATE.search(text):  # undecodable bytes of argv / stdin (surrogateescape)
            try:
                text = text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
            except UnicodeEncodeError:  # a lone surrogate that is no escaped byte
                text = LONE_SURROGATE.sub(_REPLACEMENT_CHAR, text)
        return self._tokenizer.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        """Text of `ids` (equal to transformers' `tokenizer.decode` with the same flag)."""
        return self._tokenizer.decode(_as_ids(ids), skip_special_tokens=skip_special_tokens)

    def stream(self, skip_special_tokens: bool = True) -> StreamDecoder:
        """An incremental detokenizer: feed generated ids one by one with `.put(id)`."""
        return StreamDecoder(self, skip_special_tokens=skip_special_tokens)

    # -- vocabulary -------------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        """Number of ids, added tokens included (the model's logits width for SmolVLM)."""
        return self._tokenizer.get_vocab_size(with_added_tokens=True)

    def __len__(self) -> int:
        return self.vocab_size

    def token_to_id(self, token: str) -> int | None:
        return self._tokenizer.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        return self._tokenizer.id_to_token(int(token_id))

    def get_vocab(self) -> dict[str, int]:
        return self._tokenizer.get_vocab(with_added_tokens=True)

    # -- named special tokens ---------------------------------------------------------------

    @property
    def image_token(self) -> str:
        return self.special_tokens["image_token"]

    @property
    def image_token_id(self) -> int | None:
        return self._tokenizer.token_to_id(self.image_token)


def _as_ids(ids: Iterable[int]) -> list[int]:
    return [int(i) for i in ids]  # numpy arrays / numpy ints -> Python ints


class StreamDecoder:
    """Incremental detokenizer built on `tokenizers.decoders.DecodeStream`.

    `put(id)` returns the text the id completes ("" while a multibyte character is split across
    tokens: byte-level BPE cuts emoji, CJK and accented letters into byte tokens). No delta ends
    in a broken character. The deltas concatenate to `decode(ids)`, except for a tail that stays
    incomplete (or ends in a real U+FFFD): `flush()` returns it (as decode would, with U+FFFD)
    and starts a new segment, so `"".join(puts) + flush() == decode(all ids)`.
    A reply's first delta usually starts with a space (the template ends with `Assistant:`).
    """

    def __init__(self, tokenizer: Tokenizer, skip_special_tokens: bool = True):
        self._tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self._reset()

    def _reset(self) -> None:
        self._stream: _LibDecodeStream | None = _LibDecodeStream(skip_special_tokens=self.skip_special_tokens)
        self._ids: list[int] = []  # since the last flush
        self._emitted: list[str] = []

    @property
    def ids(self) -> list[int]:
        """Ids put since the last flush."""
        return list(self._ids)

    @property
    def text(self) -> str:
        """Text returned since the last flush."""
        return "".join(self._emitted)

    def put(self, token_id: int) -> str:
        token_id = int(token_id)
        self._ids.append(token_id)
        delta = None
        if self._stream is not None:
            try:
                delta = self._stream.step(self._tokenizer.backend, token_id)
            except Exception:
                # DecodeStream refuses when a window's text does not extend its prefix; the
                # library's own invariant, never seen with byte-level BPE. Decode whole instead.
                self._stream = None
        if self._stream is None:
            delta = self._full_decode_delta()
        if delta:
            self._emitted.append(delta)
            return delta
        return ""

    def _full_decode_delta(self) -> str | None:
        full = self._tokenizer.decode(self._ids, skip_special_tokens=self.skip_special_tokens)
        done = self.text
        if full.endswith(_REPLACEMENT_CHAR) or len(full) <= len(done) or not full.startswith(done):
            return None
        return full[len(done) :]

    def flush(self) -> str:
        """The rest of decode(ids) not returned yet (an incomplete trailing character decodes to
        U+FFFD, as in one-shot decode); then start afresh."""
        full = self._tokenizer.decode(self._ids, skip_special_tokens=self.skip_special_tokens)
        done = self.text
        rest = full[len(done) :] if full.startswith(done) else ""
        self._reset()
        return rest
