"""`smolvlm export`: our built graphs and the traced Hub-contract ones, ONNX Runtime vs
transformers, variants, scripts.

Runs on tiny random checkpoints of both formats (smolvlm = SmolVLM2, idefics3 = SmolVLM). The
builder's step-by-step parity on every architecture is in test_builder.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import torch
import onnx

from conftest import Killed  # noqa: E402
from model_fixtures import TINY_MODEL_NAMES, source_dir, tiny_preprocessor_config  # noqa: E402
from smolvlm_cli.config import ModelConfig  # noqa: E402
from smolvlm_cli.dtypes import DTYPE_SUFFIXES  # noqa: E402
from smolvlm_cli.export import check as chk  # noqa: E402
from smolvlm_cli.builder.text import past_names  # noqa: E402
from smolvlm_cli.errors import ExportError  # noqa: E402
from smolvlm_cli.export.traced import export_traced_graph, load_torch_model  # noqa: E402

pytestmark = pytest.mark.slow  # ONNX exports and exporter subprocesses

ALL_DTYPES = ("fp32", "fp16", "int8", "q4")
GRAPHS = ("vision_encoder", "embed_tokens", "decoder_model_merged")
SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
FLOAT, FLOAT16, INT64, BOOL = (
    onnx.TensorProto.FLOAT,
    onnx.TensorProto.FLOAT16,
    onnx.TensorProto.INT64,
    onnx.TensorProto.BOOL,
)


STYLES = ("fast", "official")


@pytest.fixture(
    scope="module", params=[(n, s) for s in STYLES for n in TINY_MODEL_NAMES], ids=lambda p: f"{p[0]}-{p[1]}"
)
def exported_style(request, tiny_onnx_dir) -> tuple[Path, str]:
    """(model dir, style): every dtype of both formats, in both export styles."""
    name, style = request.param
    return tiny_onnx_dir(name, ALL_DTYPES, style=style), style


@pytest.fixture(scope="module")
def exported(exported_style) -> Path:
    return exported_style[0]


def _only(exported_style, style: str) -> None:
    if exported_style[1] != style:
        pytest.skip(f"{style}-style graphs only")


_TORCH_MODELS: dict[Path, object] = {}


def torch_model(model_dir: Path):
    if model_dir not in _TORCH_MODELS:
        _TORCH_MODELS[model_dir] = load_torch_model(model_dir)
    return _TORCH_MODELS[model_dir]


def graph(model_dir: Path, name: str, dtype: str = "fp32") -> Path:
    return model_dir / "onnx" / f"{name}{DTYPE_SUFFIXES[dtype]}.onnx"


def _io(values) -> list[tuple[str, int, list]]:
    out = []
    for v in values:
        t = v.type.tensor_type
        out.append((v.name, t.elem_type, [d.dim_param or d.dim_value for d in t.shape.dim]))
    return out


def expected_io(c: ModelConfig, name: str, dtype: str, style: str = "official"):
    b, s = "batch_size", "sequence_length"
    if name == "vision_encoder":
        return (
            [
                ("pixel_values", FLOAT, [b, "num_images", 3, "height", "width"]),
                ("pixel_attention_mask", BOOL, [b, "num_images", "height", "width"]),
            ],
            [("image_features", FLOAT, ["num_tiles", "tokens_per_tile", c.hidden_size])],
        )
    if name == "embed_tokens":
        return ([("input_ids", INT64, [b, s])], [("inputs_embeds", FLOAT, [b, s, c.hidden_size])])
    cache = FLOAT16 if dtype == "fp16" else FLOAT
    kv = [c.num_key_value_heads, c.head_dim]
    pasts = [(n, cache, [b, kv[0], "past_sequence_length", kv[1]]) for n in past_names(c.num_hidden_layers)]
    if style == "fast":  # GroupQueryAttention: positions from the mask, last position's logits only
        total = "total_sequence_length"
        presents = [(n.replace("past_key_values.", "present."), cache, [b, kv[0], total, kv[1]]) for n, _, _ in pasts]
        return (
            [("inputs_embeds", FLOAT, [b, s, c.hidden_size]), ("attention_mask", INT64, [b, total]), *pasts],
            [("logits", FLOAT, [b, 1, c.vocab_size]), *presents],
        )
    presents = [
        (n.replace("past_key_values.", "present."), cache, [b, kv[0], "past_sequence_length + sequence_length", kv[1]])
        for n, _, _ in pasts
    ]
    return (
        [
            ("inputs_embeds", FLOAT, [b, s, c.hidden_size]),
            ("attention_mask", INT64, [b, "past_sequence_length + sequence_length"]),
            ("position_ids", INT64, [b, s]),
            *pasts,
        ],
        [("logits", FLOAT, [b, s, c.vocab_size]), *presents],
    )


# -- the graph contract --------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_graphs_have_the_official_names_dtypes_and_axes(exported_style, dtype):
    exported, style = exported_style
    config = ModelConfig.from_dir(exported)
    for name in GRAPHS:
        path = graph(exported, name, dtype)
        assert path.is_file(), path
        proto = onnx.load(str(path), load_external_data=False)
        inputs, outputs = expected_io(config, name, dtype, style)
        assert _io(proto.graph.input) == inputs, path.name
        assert _io(proto.graph.output) == outputs, path.name
        sess = chk.session(path)  # loads in ONNX Runtime
        assert [i.name for i in sess.get_inputs()] == [n for n, _, _ in inputs]


def test_fast_graphs_say_what_they_are(exported_style):
    """The runtime picks its decoder loop from this metadata (shared KV buffers for GQA graphs)."""
    exported, style = exported_style
    meta = {
        name: {p.key: p.value for p in onnx.load(str(graph(exported, name)), load_external_data=False).metadata_props}
        for name in ("vision_encoder", "decoder_model_merged")
    }
    if style == "fast":
        assert meta["decoder_model_merged"] == {"smolvlm.decoder_style": "gqa", "smolvlm.logits": "last"}
        assert meta["vision_encoder"] == {"smolvlm.vision_style": "fused"}
        for dtype in ("int8", "q4", "fp16"):  # the variants keep it
            props = onnx.load(str(graph(exported, "decoder_model_merged", dtype)), load_external_data=False)
            assert {p.key: p.value for p in props.metadata_props}.get("smolvlm.decoder_style") == "gqa"
    else:
        assert meta == {"vision_encoder": {}, "decoder_model_merged": {}}


def test_export_copies_every_config_file(exported):
    for src in source_dir(exported.name).iterdir():
        if src.name == "preprocessor_config.json":  # the tiny models' resize target differs
            ours = json.loads((exported / src.name).read_text())
            assert ours == tiny_preprocessor_config(json.loads(src.read_text()))
        elif src.name != "config.json":
            assert (exported / src.name).read_bytes() == src.read_bytes(), src.name
    assert ModelConfig.from_dir(exported).image_seq_len == 64


# -- fp32 graphs vs transformers -----------------------------------------------------------------


def test_vision_matches_transformers_with_partial_and_padding_tiles(exported):
    model = torch_model(exported)
    pixels, mask = chk.vision_inputs(model, seed=1)  # full tile, partial mask, padding tile
    ref = chk.vision_reference(model, pixels, mask)
    assert ref.shape == (2, 64, model.config.text_config.hidden_size)
    sess = chk.session(graph(exported, "vision_encoder"))
    (feats,) = sess.run(None, {"pixel_values": pixels.numpy(), "pixel_attention_mask": mask.numpy()})
    assert feats.shape == (3, 64, ref.shape[-1])
    assert np.isfinite(feats).all()
    np.testing.assert_allclose(feats[:2], ref, atol=1e-4)
    # batch_size x num_images is just a flattening: a [2, 2] call equals per-tile calls
    batch = torch.cat([pixels[:, :2], pixels[:, :2].flip(1)])
    batch_mask = torch.cat([mask[:, :2], mask[:, :2].flip(1)])
    (both,) = sess.run(None, {"pixel_values": batch.numpy(), "pixel_attention_mask": batch_mask.numpy()})
    np.testing.assert_allclose(both, np.concatenate([feats[:2], feats[1::-1]]), atol=1e-5)


def test_embed_tokens_is_exact(exported):
    model = torch_model(exported)
    ids = np.random.default_rng(1).integers(0, model.config.text_config.vocab_size, (3, 7))
    (emb,) = chk.session(graph(exported, "embed_tokens")).run(None, {"input_ids": ids})
    with torch.no_grad():
        ref = model.get_input_embeddings()(torch.from_numpy(ids)).numpy()
    np.testing.assert_array_equal(emb, ref)


def _dims(model):
    t = model.config.text_config
    return int(t.num_hidden_layers), int(t.num_key_value_heads), int(t.head_dim)


def test_decoder_prefill_and_decode_match_transformers(exported_style):
    exported, style = exported_style
    model = torch_model(exported)
    prompt = np.random.default_rng(2).integers(3, model.config.text_config.vocab_size, (1, 12))
    tokens, ref = chk.decoder_reference(model, prompt, steps=5)
    logits = chk.run_decoder(
        chk.session(graph(exported, "decoder_model_merged")),
        chk.session(graph(exported, "embed_tokens")),
        tokens,
        *_dims(model),
    )
    # the fast decoder returns only the last position's logits (a 12-token prefill gives one row)
    assert [x.shape[1] for x in logits] == [12 if style == "official" else 1, 1, 1, 1, 1, 1]
    for got, want in zip(logits, ref):
        np.testing.assert_allclose(got, want[:, -got.shape[1] :], atol=1e-4)
    assert [int(x[0, -1].argmax()) for x in logits[:-1]] == [int(t[0, 0]) for t in tokens[1:]]


def _greedy(dec, embeds_fn, ids: np.ndarray, mask: np.ndarray, steps: int, layers, kv, hd):
    """Batched greedy decoding over left-padded prompts; returns per-call logits."""
    batch = ids.shape[0]
    pasts = {n: np.zeros((batch, kv, 0, hd), np.float32) for n in past_names(layers)}
    outs = [o.name for o in dec.get_outputs()]
    positions = np.clip(mask.cumsum(-1) - 1, 0, None)
    chunk, result = ids, []
    for _ in range(steps + 1):
        seq = chunk.shape[1]
        feeds = {
            "inputs_embeds": embeds_fn(chunk),
            "attention_mask": mask,
            "position_ids": positions[:, -seq:],
            **pasts,
        }
        out = dict(zip(outs, dec.run(None, feeds)))
        pasts = {n: out["present." + n[len("past_key_values.") :]] for n in pasts}
        result.append(out["logits"])
        chunk = out["logits"][:, -1:].argmax(-1)
        mask = np.concatenate([mask, np.ones((batch, 1), np.int64)], axis=1)
        positions = np.concatenate([positions, positions[:, -1:] + 1], axis=1)
    return result


def test_decoder_batch_with_left_padding_equals_single_runs(exported_style):
    _only(exported_style, "official")  # GroupQueryAttention takes right-padded batches only
    exported = exported_style[0]
    model = torch_model(exported)
    dims = _dims(model)
    dec = chk.session(graph(exported, "decoder_model_merged"))
    emb = chk.session(graph(exported, "embed_tokens"))

    def embeds(x):
        return emb.run(None, {"input_ids": x.astype(np.int64)})[0]

    rng = np.random.default_rng(3)
    long, short = rng.integers(3, 49000, (1, 10)), rng.integers(3, 49000, (1, 6))
    ids = np.concatenate([long, np.concatenate([np.full((1, 4), 2), short], axis=1)])
    mask = np.ones((2, 10), np.int64)
    mask[1, :4] = 0
    batched = _greedy(dec, embeds, ids, mask, 3, *dims)
    for row, prompt in enumerate((long, short)):
        single = _greedy(dec, embeds, prompt, np.ones(prompt.shape, np.int64), 3, *dims)
        np.testing.assert_allclose(batched[0][row, -prompt.shape[1] :], single[0][0], atol=1e-4)
        for got, want in zip(batched[1:], single[1:]):
            np.testing.assert_allclose(got[row], want[0], atol=1e-4)


def test_check_export_reports_and_raises(exported_style):
    _only(exported_style, "fast")
    exported = exported_style[0]
    model = torch_model(exported)
    fp32 = {g: graph(exported, g) for g in GRAPHS}
    messages: list[str] = []
    diffs, fidelity = chk.check_export(
        model, fp32, {"int8": {g: graph(exported, g, "int8") for g in GRAPHS}}, log=messages.append
    )
    assert set(diffs) == set(GRAPHS) and max(diffs.values()) < 1e-4
    assert set(fidelity) == {f"{g}_int8" for g in GRAPHS}
    assert any("fidelity decoder_model_merged_int8" in m for m in messages)
    with pytest.raises(ExportError, match="vision_encoder differs"):
        chk.check_export(model, fp32, {}, log=messages.append, tolerance=0.0)


# -- quantized and half-precision variants ---------------------------------------------------------

COSINE_FLOOR = {"fp16": 0.999, "int8": 0.99, "q4": 0.9}  # q4 on random Gaussian weights loses a lot


@pytest.mark.parametrize("dtype", ("fp16", "int8", "q4"))
def test_variants_load_and_stay_close_to_fp32(exported, dtype):
    model = torch_model(exported)  # both styles: the quantizers must handle the fused operators
    dims = _dims(model)
    prompt = np.random.default_rng(4).integers(3, 49000, (1, 10))
    tokens, _ = chk.decoder_reference(model, prompt, steps=3)
    ref = chk.run_decoder(
        chk.session(graph(exported, "decoder_model_merged")),
        chk.session(graph(exported, "embed_tokens")),
        tokens,
        *dims,
    )
    dec = chk.session(graph(exported, "decoder_model_merged", dtype))
    got = chk.run_decoder(dec, chk.session(graph(exported, "embed_tokens", dtype)), tokens, *dims)
    flat_ref = np.concatenate([x[0] for x in ref])
    flat = np.concatenate([x[0] for x in got])
    assert np.isfinite(flat).all()
    assert chk.cosine(flat, flat_ref) > COSINE_FLOOR[dtype]
    pixels, mask = chk.vision_inputs(model)
    feeds = {"pixel_values": pixels.numpy(), "pixel_attention_mask": mask.numpy()}
    (vis_ref,) = chk.session(graph(exported, "vision_encoder")).run(None, feeds)
    (vis,) = chk.session(graph(exported, "vision_encoder", dtype)).run(None, feeds)
    assert np.isfinite(vis).all()
    assert chk.cosine(vis[:2], vis_ref[:2]) > COSINE_FLOOR[dtype]
    cache_type = {i.name: i.type for i in dec.get_inputs()}["past_key_values.0.key"]
    assert cache_type == ("tensor(float16)" if dtype == "fp16" else "tensor(float)")


def test_graphs_above_the_protobuf_limit_use_one_onnx_data_file(tmp_path, monkeypatch, tiny_checkpoints):
    import smolvlm_cli.builder.onnx_writer as onnx_writer
    from smolvlm_cli.export.onnx_export import export_onnx

    monkeypatch.setattr(onnx_writer, "_TWO_GB", 1_000_000)  # pretend every graph is large
    result = export_onnx(
        tiny_checkpoints[TINY_MODEL_NAMES[0]], tmp_path, ("fp32", "int8"), check=True, log=lambda _m: None
    )
    names = sorted(p.name for p in (tmp_path / "onnx").iterdir())
    assert "decoder_model_merged.onnx_data" in names and "decoder_model_merged_int8.onnx_data" in names
    assert not any(n.endswith(".data") for n in names)  # the quantizers' own naming is rewritten
    assert max(result["diffs"].values()) < 1e-4
    assert result["files"]["onnx/decoder_model_merged.onnx"] > 10_000_000  # counts the data file


def test_check_without_fp32_builds_each_fp32_graph_once(tmp_path, tiny_checkpoints, monkeypatch):
    """The check compares the fp32 graphs the variants were quantized from: not a second build
    (for a 2.2B model, minutes and GBs)."""
    from smolvlm_cli.builder import build
    from smolvlm_cli.export.onnx_export import export_onnx

    built = []
    real = build._build_fp32
    monkeypatch.setattr(
        build, "_build_fp32", lambda component, *rest: (built.append(component), real(component, *rest))
    )
    result = export_onnx(tiny_checkpoints[TINY_MODEL_NAMES[0]], tmp_path, ("int8",), check=True, log=lambda _m: None)
    assert sorted(built) == sorted(("vision", "embed", "decoder"))
    assert set(result["diffs"]) == set(GRAPHS) and max(result["diffs"].values()) < 1e-4
    assert sorted(p.name for p in (tmp_path / "onnx").glob("*.onnx")) == [f"{g}_int8.onnx" for g in sorted(GRAPHS)]
    assert not any(p.name.startswith(".") for p in tmp_path.rglob("*"))  # the fp32 scratch is gone


# -- geometry from the config: the 2.2B models' 384-px tiles, patch 14, scale 3 ----------------------


@pytest.mark.parametrize("vision_style", ["fused", "plain"])
def test_vision_geometry_comes_from_the_config(tmp_path, vision_style):
    from smolvlm_cli.builder.build import build_graphs

    src = tmp_path / "src"
    src.mkdir()
    for path in source_dir("SmolVLM-256M-Instruct").iterdir():
        (src / path.name).write_bytes(path.read_bytes())
    config = json.loads((src / "config.json").read_text())
    config["scale_factor"] = 3
    config["vision_config"].update(image_size=384, patch_size=14)
    (src / "config.json").write_text(json.dumps(config))
    from smolvlm_cli.export.checkpoint import make_random_checkpoint

    ckpt = make_random_checkpoint(src, tmp_path / "ckpt", tiny=True)
    model = load_torch_model(ckpt)
    pixels, mask = chk.vision_inputs(model)
    ref = chk.vision_reference(model, pixels, mask)
    assert ref.shape[1] == 81  # (384 // 14) ** 2 / 3 ** 2
    path = tmp_path / "vision_encoder.onnx"
    if vision_style == "fused":
        build_graphs(ckpt, tmp_path, [("vision", "fp32")])
    else:
        export_traced_graph(model, "vision_encoder", path)
    (feats,) = chk.session(path).run(None, {"pixel_values": pixels.numpy(), "pixel_attention_mask": mask.numpy()})
    np.testing.assert_allclose(feats[:2], ref, atol=1e-4)


# -- random checkpoints ------------------------------------------------------------------------------


def test_random_checkpoint_round_trips_and_is_seeded(tmp_path, tiny_checkpoints):
    from safetensors.numpy import load_file
    from transformers import AutoConfig

    from smolvlm_cli.export.checkpoint import make_random_checkpoint

    name = "SmolVLM2-256M-Video-Instruct"
    ckpt = tiny_checkpoints[name]
    config = AutoConfig.from_pretrained(ckpt)
    assert (config.text_config.num_hidden_layers, config.text_config.head_dim) == (2, 16)
    assert config.dtype == torch.float32 and config.text_config.dtype == torch.float32
    assert ModelConfig.from_dir(ckpt).image_seq_len == 64
    for src in source_dir(name).iterdir():
        assert (ckpt / src.name).is_file()
    again = make_random_checkpoint(source_dir(name), tmp_path / "same", tiny=True, seed=0)
    other = make_random_checkpoint(source_dir(name), tmp_path / "other", tiny=True, seed=1)
    a, b, c = (load_file(p / "model.safetensors") for p in (ckpt, again, other))
    key = "model.text_model.layers.0.self_attn.q_proj.weight"
    np.testing.assert_array_equal(a[key], b[key])
    assert not np.array_equal(a[key], c[key])


@pytest.mark.parametrize("name", TINY_MODEL_NAMES)
def test_random_weights_give_varied_greedy_tokens(tiny_checkpoints, name):
    model = torch_model(tiny_checkpoints[name])
    ids = torch.tensor([[1, 11126, 42, 2000, 5000, 77]])
    with torch.no_grad():
        out = model.generate(input_ids=ids, max_new_tokens=12, do_sample=False)
        logits = model(input_ids=ids).logits
    assert torch.isfinite(logits).all()
    assert len(set(out[0, ids.shape[1] :].tolist())) >= 3


def test_hub_ids_fetch_weights_and_configs_but_no_onnx(monkeypatch, tiny_checkpoints):
    import smolvlm_cli.hub as hub
    from smolvlm_cli.export.onnx_export import resolve_source

    calls = []
    local = tiny_checkpoints[TINY_MODEL_NAMES[0]]
    monkeypatch.setattr(
        hub, "_snapshot", lambda repo, patterns, _progress: calls.append((repo, patterns)) or str(local)
    )
    assert resolve_source("HuggingFaceTB/SmolVLM2-256M-Video-Instruct") == local
    ((repo, patterns),) = calls
    assert repo == "HuggingFaceTB/SmolVLM2-256M-Video-Instruct"
    assert "*.safetensors" in patterns and "*.json" in patterns and "*.txt" in patterns
    assert not any("onnx" in p for p in patterns)


# -- scripts -------------------------------------------------------------------------------------------


def _script(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize(
    "argv",
    [
        ("export_onnx.py", "/nonexistent/model", "OUT"),
        ("export_onnx.py", "FIXTURE", "OUT", "--dtype", "fp32,int3"),
        ("export_onnx.py", "FIXTURE", "OUT"),  # no weights
        ("random_checkpoint.py", "/nonexistent/config", "OUT"),
        ("random_checkpoint.py", "EMPTY", "OUT"),  # no config.json
    ],
)
def test_scripts_fail_with_one_error_line(tmp_path, argv):
    subs = {"OUT": str(tmp_path / "out"), "FIXTURE": str(source_dir(TINY_MODEL_NAMES[0])), "EMPTY": str(tmp_path)}
    proc = _script(str(SCRIPTS / argv[0]), *(subs.get(a, a) for a in argv[1:]))
    if "--dtype" in argv:  # a usage error, as a bad --dtype is for every command
        assert proc.returncode == 2 and "Invalid value for '--dtype': unknown dtype 'int3'" in proc.stderr
        return
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.startswith("Error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()


def test_a_killed_export_leaves_no_graph_that_looks_finished(tmp_path, tiny_checkpoints, monkeypatch):
    """Killed while the quantizer rewrites a graph (a torn file): `export` again into the same
    folder builds it anew. Graphs used to be written in place, and an existing file counted as
    done, so the torn graph was kept, marked ours, and failed at every load."""
    from smolvlm_cli.builder import build
    from smolvlm_cli.export.onnx_export import export_onnx

    real = build.make_variant

    def killed_mid_rewrite(component, dtype, src, dst):
        real(component, dtype, src, dst)
        Path(dst).write_bytes(Path(dst).read_bytes()[:100])
        raise Killed

    out = tmp_path / "out"
    checkpoint = tiny_checkpoints[TINY_MODEL_NAMES[0]]
    with monkeypatch.context() as patch, pytest.raises(Killed):
        patch.setattr(build, "make_variant", killed_mid_rewrite)
        export_onnx(checkpoint, out, ("int8",), log=lambda _m: None)
    assert not out.exists()  # the scratch went with the kill, and the new folder with it
    # ... unless a SIGKILL skipped that cleanup: such scratch folders go at the next export
    import os
    import time

    from smolvlm_cli.builder.layout import ABANDONED_AFTER_S

    left = [out / ".fp32-killed", out / "onnx" / ".fp32-killed"]
    for folder in left:
        folder.mkdir(parents=True)
        (folder / "vision_encoder.onnx").write_bytes(b"partial")
        os.utime(folder, (time.time() - ABANDONED_AFTER_S - 60,) * 2)
    export_onnx(checkpoint, out, ("int8",), log=lambda _m: None)
    assert not any(folder.exists() for folder in left)
    for name in GRAPHS:  # whole: the torn file was 100 bytes
        assert onnx.load(str(out / "onnx" / f"{name}_int8.onnx")).graph.node


def test_export_into_an_earlier_export_replaces_it(tmp_path, tiny_checkpoints):
    """Graphs already in the folder were kept and marked ours: exporting another checkpoint
    (or the same one after a fine-tune) into it left the old weights under the new config.
    Now the folder holds exactly this export's variants; a checkpoint without a tokenizer is
    refused before anything is written."""
    import shutil

    from smolvlm_cli.errors import ConfigError
    from smolvlm_cli.export.onnx_export import export_onnx

    from model_fixtures import build_tiny_checkpoint

    first = tiny_checkpoints[TINY_MODEL_NAMES[0]]
    second = build_tiny_checkpoint(TINY_MODEL_NAMES[0], tmp_path / "fine-tuned", seed=1)  # other weights
    out = tmp_path / "out"
    export_onnx(first, out, ("fp32", "int8"), log=lambda _m: None)
    export_onnx(second, out, ("fp32",), log=lambda _m: None)
    fresh = tmp_path / "fresh"
    export_onnx(second, fresh, ("fp32",), log=lambda _m: None)
    for name in GRAPHS:  # the second checkpoint's graphs, byte for byte (not the first's)
        data = (out / "onnx" / f"{name}.onnx_data").read_bytes()
        assert data == (fresh / "onnx" / f"{name}.onnx_data").read_bytes()
    assert not list((out / "onnx").glob("*_int8.onnx*"))  # the first export's other variant went
    assert json.loads((out / "onnx" / "smolvlm-graphs.json").read_text())["dtypes"] == ["fp32"]
    assert (out / "config.json").read_bytes() == (second / "config.json").read_bytes()

    no_tokenizer = shutil.copytree(first, tmp_path / "no-tokenizer")
    (no_tokenizer / "tokenizer.json").unlink()
    with pytest.raises(ConfigError, match="no tokenizer.json"):
        export_onnx(no_tokenizer, tmp_path / "never", ("fp32",), log=lambda _m: None)
    assert not (tmp_path / "never").exists()


def test_official_style_writes_the_hub_contract(tmp_path, tiny_checkpoints):
    from smolvlm_cli.export.onnx_export import export_onnx

    out = tmp_path / "out"
    export_onnx(tiny_checkpoints[TINY_MODEL_NAMES[0]], out, ("fp32",), style="official", log=lambda _m: None)
    config = ModelConfig.from_dir(out)
    proto = onnx.load(str(graph(out, "decoder_model_merged")), load_external_data=False)
    assert _io(proto.graph.input) == expected_io(config, "decoder_model_merged", "fp32", "official")[0]
    assert not (out / "onnx" / "smolvlm-graphs.json").exists()  # not ours: the runtime may rebuild


def test_export_script_writes_only_the_asked_variants(tmp_path, tiny_checkpoints):
    out = tmp_path / "out"
    proc = _script(
        str(SCRIPTS / "export_onnx.py"),
        str(tiny_checkpoints[TINY_MODEL_NAMES[1]]),
        str(out),
        "--dtype",
        "int8",
        "--check",
    )
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in (out / "onnx").glob("*.onnx*")) == [f"{g}_int8.onnx" for g in sorted(GRAPHS)]
    assert json.loads((out / "onnx" / "smolvlm-graphs.json").read_text())["dtypes"] == ["int8"]
    assert not any(p.name.startswith(".") for p in out.iterdir())  # fp32 scratch removed
    assert "check decoder_model_merged.onnx" in proc.stderr and "fidelity" in proc.stderr
    assert "onnx/decoder_model_merged_int8.onnx" in proc.stderr
    assert proc.stdout == f"{out}\n"  # stdout: only the result
    # #19 item 9 (the script is `smolvlm export`): no transformers warnings, one 'export done',
    # the fidelity figure explained
    assert proc.stderr.count("export done") == 1
    assert "Warning" not in proc.stderr and "deprecated" not in proc.stderr and "Traceback" not in proc.stderr
    assert "same top-1 token as fp32" in proc.stderr and "near-ties" in proc.stderr


def test_export_command_prints_the_folder_and_the_backend_runs_it(tmp_path, tiny_checkpoints):
    from smolvlm_cli import SmolVLM

    out = tmp_path / "exported"
    proc = subprocess.run(
        [sys.executable, "-m", "smolvlm_cli", "export", str(tiny_checkpoints[TINY_MODEL_NAMES[0]]), str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"{out}\n"  # stdout: only the result
    assert "export done" in proc.stderr and "decoder_model_merged_int8.onnx" in proc.stderr
    assert sorted(p.name for p in (out / "onnx").glob("*.onnx")) == sorted(
        [f"{g}.onnx" for g in GRAPHS] + [f"{g}_int8.onnx" for g in GRAPHS]
    )  # default fp32,int8
    vlm = SmolVLM.from_pretrained(out)
    assert vlm.backend.name == "onnx" and vlm.backend.dtype == "int8"
    assert vlm.backend.decoder_style == "gqa"


def test_export_needs_no_torch_but_check_does(tmp_path, tiny_checkpoints):
    def run(*extra):
        code = (
            "import sys; sys.modules['torch'] = None; sys.modules['transformers'] = None\n"
            "from smolvlm_cli.cli.main import main\n"
            f"main(['export', {str(tiny_checkpoints[TINY_MODEL_NAMES[0]])!r}, {str(tmp_path / 'o')!r}"
            f"{''.join(', ' + repr(e) for e in extra)}])"
        )
        return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)

    checked = run("--check")
    assert checked.returncode == 1 and checked.stdout == ""
    assert checked.stderr.startswith("Error: --check needs torch") and "Traceback" not in checked.stderr
    assert "pip install 'smolvlm-cli[export]'" in checked.stderr
    plain = run("--dtype", "fp32")
    assert plain.returncode == 0, plain.stderr
    assert plain.stdout == f"{tmp_path / 'o'}\n"
    assert (tmp_path / "o" / "onnx" / "decoder_model_merged.onnx").is_file()
