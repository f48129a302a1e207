"""ONNX Runtime backend: vision encoder, token embeddings and a KV-cached decoder.

Loads the three graphs of a Hugging Face `onnx/` folder (ours or Hugging Face's own), one dtype
per component. Input names and dtypes are read from the sessions, never assumed: fp16 graphs
take float16 caches, and decoders that derive positions from the mask have no `position_ids`.

Decoders exported by our GroupQueryAttention builder (metadata `smolvlm.decoder_style = gqa`)
run through IO binding over shared, preallocated KV buffers (`SharedBufferDecoder`); every other
graph of the official contract runs through the plain numpy loop (`ConcatDecoder`). Both can
also decode several replies per step (`new_rows`: `onnx_rows.py`). Sessions
come from the optimized-graph cache of `onnx_session.py`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from smolvlm_cli.backends.onnx_rows import ConcatRows, SharedKVRows
from smolvlm_cli.backends.onnx_decoder import ConcatDecoder, OnnxState, SharedBufferDecoder, SharedKVState
from smolvlm_cli.backends.onnx_session import (
    ORT_TYPES,
    default_threads,
    load_session,
    model_metadata,
)
from smolvlm_cli.builder.layout import DECODER_STYLE_KEY
from smolvlm_cli.config import ModelConfig
from smolvlm_cli.dtypes import format_dtype, onnx_files, resolve_dtype
from smolvlm_cli.errors import ConfigError

__all__ = ["OnnxBackend", "OnnxState", "SharedKVState", "default_threads"]

_PAST_PREFIX, _PRESENT_PREFIX = "past_key_values.", "present."


class OnnxBackend:
    name = "onnx"

    def __init__(
        self,
        model_dir: str | Path,
        config: ModelConfig,
        dtype: str | None = None,
        threads: int | None = None,
        *,
        shared_kv: bool | None = None,
        cache: bool = True,
        notice: Callable[[str], None] = lambda _m: None,
    ):
        """`shared_kv=None` uses shared KV buffers whenever the decoder supports them; False forces
        the plain numpy loop (for comparisons). `cache=False` skips the optimized-graph cache.
        `notice` hears one line when the graphs are first optimized for this machine."""
        self.config = config
        self.model_dir = Path(model_dir)
        self.dtypes = resolve_dtype(dtype, self.model_dir)
        self.dtype = format_dtype(self.dtypes)
        files = onnx_files(self.dtypes)
        told: list[bool] = []

        def writing() -> None:  # seconds of silence otherwise, after "Built the graphs" when piped
            if not told:
                told.append(True)
                notice("optimizing the graphs for this machine, once (later loads take about a second)")

        self.embed = load_session(self.model_dir / files["embed"], threads, cache=cache, writing=writing)
        self.decoder = load_session(self.model_dir / files["decoder"], threads, cache=cache, writing=writing)
        self.vision = load_session(self.model_dir / files["vision"], threads, cache=cache, writing=writing)
        self._check_contract(files)
        self.decoder_style = model_metadata(self.decoder).get(DECODER_STYLE_KEY, "official")
        c = config
        past_names = self._past_names
        if shared_kv is None:
            shared_kv = self.decoder_style == "gqa"
        if shared_kv:
            self.runner = SharedBufferDecoder(
                self.decoder,
                self.embed,
                past_names,
                self._present_for,
                c.num_key_value_heads,
                c.head_dim,
                c.hidden_size,
                c.vocab_size,
                c.max_position_embeddings,
                ORT_TYPES,
            )
        else:
            self.runner = ConcatDecoder(
                self.decoder, past_names, self._present_for, c.num_key_value_heads, c.head_dim, ORT_TYPES
            )

    def _check_contract(self, files: dict[str, str]) -> None:
        """Fail at load time, with the file named, when a graph does not fit the config."""
        dec_inputs = {i.name: i for i in self.decoder.get_inputs()}
        self._past_names = [n for n in dec_inputs if n.startswith(_PAST_PREFIX)]
        missing = {"inputs_embeds", "attention_mask"} - dec_inputs.keys()
        expected_pasts = 2 * self.config.num_hidden_layers
        if missing or len(self._past_names) != expected_pasts:
            raise ConfigError(
                f"{files['decoder']} does not match config.json: expected inputs_embeds, attention_mask "
                f"and {expected_pasts} past_key_values inputs, found {sorted(dec_inputs)[:6]}...",
                hint="the ONNX files and config.json come from different models",
            )
        # [batch, kv_heads, past, head_dim]: graphs fix the two model dimensions; a mismatch would
        # only surface as an onnxruntime shape error at the first decoder run
        expected_kv = (self.config.num_key_value_heads, self.config.head_dim)
        for name in self._past_names:
            shape = dec_inputs[name].shape
            dims = (shape[1], shape[3]) if len(shape) == 4 else (None, None)
            if len(shape) != 4 or any(isinstance(d, int) and d != e for d, e in zip(dims, expected_kv)):
                raise ConfigError(
                    f"{files['decoder']} does not match config.json: its KV cache {name} is shaped "
                    f"{shape}, but config.json has {expected_kv[0]} key/value heads of size "
                    f"{expected_kv[1]}",
                    hint="the ONNX files and config.json come from different models",
                )
        self._present_for = {
            _PAST_PREFIX + o.name[len(_PRESENT_PREFIX) :]: o.name
            for o in self.decoder.get_outputs()
            if o.name.startswith(_PRESENT_PREFIX)
        }
        if set(self._present_for) != set(self._past_names):
            raise ConfigError(f"{files['decoder']}: present.* outputs do not match past_key_values.* inputs")
        vis_inputs = {i.name: i for i in self.vision.get_inputs()}
        if "pixel_values" not in vis_inputs:
            raise ConfigError(f"{files['vision']} has no pixel_values input")
        self._pixel_dtype = ORT_TYPES.get(vis_inputs["pixel_values"].type, np.float32)
        mask = vis_inputs.get("pixel_attention_mask")
        self._pixel_mask_dtype = ORT_TYPES.get(mask.type, np.bool_) if mask is not None else None
        self._embed_input = self.embed.get_inputs()[0].name

    # -- vision -----------------------------------------------------------------------------
    def encode_images(self, pixel_values: np.ndarray, pixel_attention_mask: np.ndarray) -> np.ndarray:
        # One tile per call: a 13-tile call was ~25% slower and held 2.4 GB (see the reference notes);
        # 4 one-tile images in one call were no faster than 4 calls (fp32 and int8, 256M model), and
        # an int8 call's results depend on the other tiles (per-tensor activation quantization).
        features = []
        for tile, mask in zip(pixel_values, pixel_attention_mask):
            feeds = {"pixel_values": tile[None, None].astype(self._pixel_dtype, copy=False)}
            if self._pixel_mask_dtype is not None:
                feeds["pixel_attention_mask"] = mask[None, None].astype(self._pixel_mask_dtype, copy=False)
            (out,) = self.vision.run(None, feeds)
            features.append(out.reshape(-1, out.shape[-2], out.shape[-1]))
        return np.concatenate(features).astype(np.float32, copy=False)

    # -- decoder ----------------------------------------------------------------------------
    def new_state(self) -> OnnxState | SharedKVState:
        return self.runner.new_state()

    def embed_tokens(self, input_ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(input_ids, dtype=np.int64).reshape(1, -1)
        (embeds,) = self.embed.run(None, {self._embed_input: ids})
        return embeds

    def forward(
        self, state: OnnxState | SharedKVState, input_ids: np.ndarray, image_features: np.ndarray | None = None
    ) -> np.ndarray:
        ids = np.asarray(input_ids, dtype=np.int64).reshape(-1)
        if self.runner.shared and len(ids) == 1 and image_features is None:
            return self.runner.step(state, int(ids[0]))
        return self.runner.run(state, self._prompt_embeds(ids, image_features))

    def _prompt_embeds(self, ids: np.ndarray, image_features: np.ndarray | None) -> np.ndarray:
        embeds = self.embed_tokens(ids)
        if image_features is not None and len(image_features):
            positions = np.flatnonzero(ids == self.config.image_token_id)
            if len(positions) != len(image_features):
                raise ValueError(
                    f"{len(positions)} image tokens in the prompt but {len(image_features)} image feature rows"
                )
            embeds[0, positions] = image_features
        return embeds

    # -- batched decoding (see onnx_rows.py) ---------------------------------------------------
    def new_rows(self, rows: int) -> SharedKVRows | ConcatRows:
        """Empty `DecoderRows` for up to `rows` replies whose decode steps run together."""
        if self.runner.shared:
            c = self.config
            return SharedKVRows(self.runner, rows, c.hidden_size, c.vocab_size, self._prompt_embeds)
        return ConcatRows(self.runner, rows, self._prompt_embeds, self._embed_step_tokens)

    def _embed_step_tokens(self, ids: np.ndarray) -> np.ndarray:
        (embeds,) = self.embed.run(None, {self._embed_input: ids})
        return embeds
