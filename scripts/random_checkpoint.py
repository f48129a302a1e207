#!/usr/bin/env python
"""Build a SmolVLM checkpoint with seeded random weights from a model's config/tokenizer files.

    scripts/random_checkpoint.py CONFIG_DIR OUT_DIR [--tiny] [--seed N] [--arch 2.2b]
                                 [--numpy [--dtype bf16|fp16|fp32] [--shards N]]

CONFIG_DIR is a model directory in the Hugging Face layout (no weights needed). OUT_DIR gets
the safetensors weights plus copies of every non-weight file. --tiny shrinks the transformer
stacks (2 layers, hidden 64) but keeps the tile geometry, vocabulary and special tokens.
--arch 2.2b first turns a SmolVLM2 folder's config into the SmolVLM2-2.2B-like one
(`write_2_2b_config`: 384-px tiles, scale 3, SigLIP-so400m, SmolLM2-1.7B).

Two writers:
- torch (the default when torch is installed): transformers builds the model with its own
  initialisation and saves it, fp32, in one file. Needs the `export` extra.
- --numpy (automatic without torch): tensor names and shapes are computed from config.json
  exactly as transformers saves them (the untied `lm_head.weight` included), and each tensor is
  generated and written straight to safetensors, in chunks, so a 2.2B checkpoint takes well
  under 1 GB of memory. Values: normal * 0.02 for matrices and embeddings, ones for norm
  weights, zeros for biases, each tensor seeded from (seed, its name) so that sharding does not
  change them. --dtype bf16 (the default: the Hub's checkpoints are bf16), fp16 or fp32;
  --shards N writes `model-0000X-of-0000N.safetensors` and `model.safetensors.index.json` in the
  Hub's format.
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import sys
import time
import zlib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _script_common import fail, log  # noqa: E402

ST_DTYPES = {"bf16": ("BF16", 2, "bfloat16"), "fp16": ("F16", 2, "float16"), "fp32": ("F32", 4, "float32")}
CHUNK = 1 << 22  # elements generated at once (16 MB of float32): memory stays flat


# -- tensor list ------------------------------------------------------------------------------------


def checkpoint_tensors(arch) -> list[tuple[str, tuple[int, ...], str]]:
    """(name, shape, init) of every tensor transformers saves for this SmolVLM / Idefics3 model,
    in module order; init is "normal", "ones" or "zeros"."""
    v, t = arch.vision, arch.text
    out: list[tuple[str, tuple[int, ...], str]] = []

    def linear(name: str, n_out: int, n_in: int, bias: bool) -> None:
        out.append((f"{name}.weight", (n_out, n_in), "normal"))
        if bias:
            out.append((f"{name}.bias", (n_out,), "zeros"))

    def layer_norm(name: str, size: int, bias: bool = True) -> None:
        out.append((f"{name}.weight", (size,), "ones"))
        if bias:
            out.append((f"{name}.bias", (size,), "zeros"))

    emb = "model.vision_model.embeddings."
    out.append((emb + "patch_embedding.weight", (v.hidden_size, v.num_channels, v.patch_size, v.patch_size), "normal"))
    out.append((emb + "patch_embedding.bias", (v.hidden_size,), "zeros"))
    out.append((emb + "position_embedding.weight", (v.patches_per_side**2, v.hidden_size), "normal"))
    for i in range(v.num_layers):
        p = f"model.vision_model.encoder.layers.{i}."
        for proj in ("k", "v", "q"):
            linear(f"{p}self_attn.{proj}_proj", v.hidden_size, v.hidden_size, True)
        linear(f"{p}self_attn.out_proj", v.hidden_size, v.hidden_size, True)
        layer_norm(p + "layer_norm1", v.hidden_size)
        linear(p + "mlp.fc1", v.intermediate_size, v.hidden_size, True)
        linear(p + "mlp.fc2", v.hidden_size, v.intermediate_size, True)
        layer_norm(p + "layer_norm2", v.hidden_size)
    layer_norm("model.vision_model.post_layernorm", v.hidden_size)
    # the connector: pixel shuffle (scale^2 patches side by side) then one Linear without bias
    linear("model.connector.modality_projection.proj", t.hidden_size, v.hidden_size * arch.scale_factor**2, False)

    out.append(("model.text_model.embed_tokens.weight", (t.vocab_size, t.hidden_size), "normal"))
    q, kv = t.num_heads * t.head_dim, t.num_kv_heads * t.head_dim
    for i in range(t.num_layers):
        p = f"model.text_model.layers.{i}."
        for proj, n_out in (("q", q), ("k", kv), ("v", kv)):
            linear(f"{p}self_attn.{proj}_proj", n_out, t.hidden_size, False)
        linear(f"{p}self_attn.o_proj", t.hidden_size, q, False)
        linear(f"{p}mlp.gate_proj", t.intermediate_size, t.hidden_size, False)
        linear(f"{p}mlp.up_proj", t.intermediate_size, t.hidden_size, False)
        linear(f"{p}mlp.down_proj", t.hidden_size, t.intermediate_size, False)
        layer_norm(p + "input_layernorm", t.hidden_size, bias=False)
        layer_norm(p + "post_attention_layernorm", t.hidden_size, bias=False)
    layer_norm("model.text_model.norm", t.hidden_size, bias=False)
    if not arch.tie_word_embeddings:  # a tied head is not saved: transformers re-ties it on load
        linear("lm_head", t.vocab_size, t.hidden_size, False)
    return out


def _count(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def split_shards(tensors: list, itemsize: int, shards: int) -> list[list]:
    """`shards` consecutive groups (module order, like the Hub's shards) of about equal bytes;
    a group opens when the bytes so far pass its share, or when the tensors left are needed to
    give every remaining group one."""
    sizes = [_count(s) * itemsize for _, s, _ in tensors]
    total, done = sum(sizes), 0
    groups: list[list] = [[]]
    for i, (tensor, size) in enumerate(zip(tensors, sizes)):
        still = shards - len(groups)  # groups yet to open
        if groups[-1] and still and (done >= total * len(groups) / shards or len(tensors) - i <= still):
            groups.append([])
        groups[-1].append(tensor)
        done += size
    return groups


# -- safetensors writer -----------------------------------------------------------------------------


def _encode(x, dtype: str):
    import numpy as np

    if dtype == "fp32":
        return x
    if dtype == "fp16":
        return x.astype(np.float16)
    # bf16: the high 16 bits of the float32, rounded to nearest even like torch's conversion
    u = x.view(np.uint32)
    return ((u + (0x7FFF + ((u >> 16) & 1))) >> 16).astype(np.uint16)


def _chunks(name: str, shape: tuple[int, ...], init: str, seed: int, dtype: str):
    import numpy as np

    n = _count(shape)
    if init != "normal":
        yield _encode(np.full(n, 1.0 if init == "ones" else 0.0, np.float32), dtype)
        return
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    for start in range(0, n, CHUNK):
        x = rng.standard_normal(min(CHUNK, n - start), dtype=np.float32)
        x *= 0.02
        yield _encode(x, dtype)


def write_safetensors(path: Path, tensors: list, dtype: str, seed: int, progress=None) -> int:
    """Write one safetensors file tensor by tensor (8-byte LE header length, JSON header padded
    to 8 bytes like the reference writer, then the raw bytes); returns the data bytes."""
    st_dtype, itemsize, _ = ST_DTYPES[dtype]
    header: dict = {"__metadata__": {"format": "pt"}}  # transformers refuses files without it
    offset = 0
    for name, shape, _ in tensors:
        size = _count(shape) * itemsize
        header[name] = {"dtype": st_dtype, "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    partial = path.with_name(f".{path.name}.partial")  # a killed run leaves no valid-looking file
    with open(partial, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        for name, shape, init in tensors:
            for chunk in _chunks(name, shape, init, seed, dtype):
                f.write(chunk.data)
            if progress:
                progress(_count(shape) * itemsize)
    os.replace(partial, path)
    return offset


def write_numpy_checkpoint(out_dir: Path, dtype: str = "bf16", shards: int = 1, seed: int = 0) -> list[Path]:
    """Random weights for the config.json already in `out_dir`; returns the files written."""
    from smolvlm_cli.builder.architecture import Architecture

    arch = Architecture.from_dir(out_dir)
    tensors = checkpoint_tensors(arch)
    itemsize = ST_DTYPES[dtype][1]
    for stale in [*out_dir.glob("*.safetensors"), out_dir / "model.safetensors.index.json"]:
        stale.unlink(missing_ok=True)  # never mix an older layout's files with the new ones
    total = sum(_count(s) for _, s, _ in tensors) * itemsize
    written = [0, 0]

    def progress(nbytes: int) -> None:
        written[0] += nbytes
        if written[0] * 10 // total > written[1]:
            written[1] = written[0] * 10 // total
            log(f"  {written[0] / 2**30:.2f} / {total / 2**30:.2f} GiB")

    groups = split_shards(tensors, itemsize, shards)
    if len(groups) == 1:
        write_safetensors(out_dir / "model.safetensors", tensors, dtype, seed, progress)
        return [out_dir / "model.safetensors"]
    files, weight_map = [], {}
    for k, group in enumerate(groups, 1):
        path = out_dir / f"model-{k:05d}-of-{len(groups):05d}.safetensors"
        write_safetensors(path, group, dtype, seed, progress)
        files.append(path)
        weight_map.update({name: path.name for name, _, _ in group})
    index = out_dir / "model.safetensors.index.json"
    n_params = sum(_count(s) for _, s, _ in tensors)
    index.write_text(
        json.dumps(
            {
                "metadata": {"total_parameters": n_params, "total_size": total},
                "weight_map": dict(sorted(weight_map.items())),
            },
            indent=2,
        )
        + "\n",
        encoding="utf-8",
    )
    return [*files, index]


def write_numpy_config(config_dir: Path, out_dir: Path, dtype: str, tiny: bool, arch_22b: bool) -> None:
    """config.json and the other non-weight files, the dtype recorded as transformers would."""
    from smolvlm_cli.export.checkpoint import _random_config, copy_config_files, write_2_2b_config

    if arch_22b:
        write_2_2b_config(config_dir, out_dir)
    else:
        copy_config_files(config_dir, out_dir)
    config = _random_config(json.loads((out_dir / "config.json").read_text(encoding="utf-8")), tiny)
    for section in (config, config["text_config"], config["vision_config"]):
        section["torch_dtype"] = ST_DTYPES[dtype][2]
    (out_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")


# -- command line -----------------------------------------------------------------------------------


def _has_torch() -> bool:
    import importlib.util

    return importlib.util.find_spec("torch") is not None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config_dir", type=Path, help="model directory with config.json etc.")
    parser.add_argument("out_dir", type=Path, help="where to write the checkpoint")
    parser.add_argument("--tiny", action="store_true", help="2-layer, 64-wide test model")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument(
        "--arch", choices=("2.2b",), help="2.2b: the SmolVLM2-2.2B-like config (CONFIG_DIR must be a SmolVLM2 folder)"
    )
    parser.add_argument(
        "--numpy", action="store_true", help="the torch-free streaming writer (automatic when torch is not installed)"
    )
    parser.add_argument("--dtype", choices=tuple(ST_DTYPES), help="numpy writer only (default bf16)")
    parser.add_argument("--shards", type=int, default=1, help="numpy writer only: number of files")
    args = parser.parse_args(argv)

    if not args.config_dir.is_dir():
        return fail(f"{args.config_dir} is not a directory")
    if not (args.config_dir / "config.json").is_file():
        return fail(
            f"config.json not found in {args.config_dir}",
            hint="pass a SmolVLM model directory in the Hugging Face layout",
        )
    if args.out_dir.exists() and not args.out_dir.is_dir():
        return fail(f"{args.out_dir} exists and is not a directory")
    if args.shards < 1:
        return fail(f"--shards must be at least 1, not {args.shards}")
    use_numpy = args.numpy or not _has_torch()
    if not use_numpy and (args.dtype or args.shards != 1):
        return fail("--dtype and --shards are options of the numpy writer", hint="add --numpy")

    from smolvlm_cli.errors import SmolVLMError

    started = time.perf_counter()
    what = f"{'tiny ' if args.tiny else ''}{'2.2B-like ' if args.arch else ''}random checkpoint"
    try:
        if use_numpy:
            dtype = args.dtype or "bf16"
            log(f"writing a {what} of {args.config_dir} with numpy ({dtype}, {args.shards} file(s), seed {args.seed})")
            args.out_dir.mkdir(parents=True, exist_ok=True)
            write_numpy_config(args.config_dir, args.out_dir, dtype, args.tiny, args.arch == "2.2b")
            write_numpy_checkpoint(args.out_dir, dtype, args.shards, args.seed)
        else:
            from smolvlm_cli.export.checkpoint import make_random_checkpoint, write_2_2b_config

            log(f"building a {what} of {args.config_dir} with transformers (seed {args.seed})")
            source = args.config_dir
            if args.arch == "2.2b":
                source = write_2_2b_config(args.config_dir, args.out_dir)
            make_random_checkpoint(source, args.out_dir, tiny=args.tiny, seed=args.seed)
    except ImportError as exc:
        return fail(f"cannot import the writer: {exc}", hint="pip install 'smolvlm-cli[export]', or use --numpy")
    except SmolVLMError as exc:
        return fail(exc.message, exc.hint)
    except (OSError, ValueError, KeyError) as exc:
        return fail(f"{type(exc).__name__}: {exc}")
    files = [p for p in args.out_dir.iterdir() if p.is_file()]
    from smolvlm_cli.cli.output import files_table

    # as `smolvlm export`: the table is status (stderr), the folder the result (stdout)
    print(files_table(args.out_dir, files, time.perf_counter() - started, what="checkpoint written"), file=sys.stderr)
    print(args.out_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
