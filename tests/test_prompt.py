"""Chat template rendering, image-token expansion and prompt ids against transformers.

transformers is the independent reference: its tokenizer's `apply_chat_template`, the pure
`get_image_prompt_string` helper, the tokenizer call its processor makes and, where it can be
built without torchvision, the whole processor (SmolVLMProcessor / Idefics3Processor).
"""

from __future__ import annotations

import json
import shutil
import warnings
from functools import lru_cache
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

import transformers

from conftest import MODEL_NAMES, fixture_dir, special_id, special_ids  # noqa: E402
from smolvlm_cli.config import ModelConfig  # noqa: E402
from smolvlm_cli.errors import ConfigError  # noqa: E402
from smolvlm_cli.prompt import (  # noqa: E402
    FAKE_IMAGE_TOKEN,
    GLOBAL_IMAGE_TOKEN,
    IMAGE_TOKEN,
    END_OF_UTTERANCE_TOKEN,
    ChatTemplate,
    build_messages,
    count_image_tokens,
    expand_image_tokens,
    image_prompt_string,
    row_col_token,
)
from smolvlm_cli.tokenizer import Tokenizer  # noqa: E402

GRIDS = [(0, 0), (1, 2), (2, 1), (3, 4), (4, 4)]


@lru_cache(maxsize=None)
def hf_tokenizer(path: str):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return transformers.AutoTokenizer.from_pretrained(path)


@lru_cache(maxsize=None)
def our_tokenizer(path: str) -> Tokenizer:
    return Tokenizer.from_dir(path)


@lru_cache(maxsize=None)
def our_template(path: str) -> ChatTemplate:
    return ChatTemplate.from_dir(path)


def _img(kind="image"):
    return {"type": kind}


def _text(s):
    return {"type": "text", "text": s}


CONVERSATIONS = {
    "single_image": [{"role": "user", "content": [_img(), _text("Describe this image.")]}],
    "two_images": [{"role": "user", "content": [_img(), _img(), _text("What differs?")]}],
    "image_after_text": [{"role": "user", "content": [_text("Look: "), _img(), _text(" and tell me.")]}],
    "text_only": [{"role": "user", "content": [_text("Write a haiku about CPUs.")]}],
    "multi_turn": [
        {"role": "user", "content": [_img(), _text("What is this?")]},
        {"role": "assistant", "content": [_text(" A cat on a sofa.")]},
        {"role": "user", "content": [_text("And its colour?")]},
        {"role": "assistant", "content": [_text("Orange.")]},
        {"role": "user", "content": [_img(), _text("Same cat?")]},
    ],
    "system_and_unicode": [
        {"role": "system", "content": [_text("Answer briefly.\n  Indented {{ not jinja }} ")]},
        {"role": "user", "content": [_text("Qu'est-ce que c'est ? 日本語 🙂\n\n")]},
    ],
}


@pytest.mark.parametrize("add_generation_prompt", [True, False])
@pytest.mark.parametrize("case", sorted(CONVERSATIONS))
def test_render_matches_transformers(model_files, case, add_generation_prompt):
    messages = CONVERSATIONS[case]
    ref = hf_tokenizer(str(model_files)).apply_chat_template(
        messages, tokenize=False, add_generation_prompt=add_generation_prompt
    )
    ours = our_template(str(model_files)).render(messages, add_generation_prompt=add_generation_prompt)
    assert ours == ref
    assert ours.count(IMAGE_TOKEN) == sum(p["type"] == "image" for m in messages for p in m["content"])


def test_render_default_adds_generation_prompt(model_files):
    text = our_template(str(model_files)).render(CONVERSATIONS["single_image"])
    assert text == "<|im_start|>User:<image>Describe this image.<end_of_utterance>\nAssistant:"


def test_string_content_is_normalized(model_files):
    """A plain string content renders as one text part. (transformers' tokenizer renders a bare
    string as nothing: the template iterates over the content's parts.)"""
    as_strings = [
        {"role": "user", "content": "Hello there"},
        {"role": "assistant", "content": " Hi!"},
        {"role": "user", "content": "How are you?"},
    ]
    as_parts = [{"role": m["role"], "content": [_text(m["content"])]} for m in as_strings]
    ref = hf_tokenizer(str(model_files)).apply_chat_template(as_parts, tokenize=False, add_generation_prompt=True)
    assert our_template(str(model_files)).render(as_strings) == ref
    assert "Hello there" in ref


def test_media_values_and_none_keys_do_not_change_the_prompt(model_files):
    from PIL import Image

    pil = Image.new("RGB", (8, 8))
    rich = [
        {
            "role": "user",
            "name": None,
            "content": [
                {"type": "image", "image": pil},
                {"type": "image", "path": "/tmp/x.png"},
                {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
                _text("Compare."),
            ],
        }
    ]
    plain = [{"role": "user", "content": [_img(), _img(), _img(), _text("Compare.")]}]
    tpl = our_template(str(model_files))
    assert (
        tpl.render(rich)
        == tpl.render(plain)
        == hf_tokenizer(str(model_files)).apply_chat_template(plain, tokenize=False, add_generation_prompt=True)
    )


def test_build_messages(model_files):
    messages = build_messages("What is in the box?", 2)
    assert messages == [
        {
            "role": "user",
            "content": [{"type": "image"}, {"type": "image"}, {"type": "text", "text": "What is in the box?"}],
        }
    ]
    assert messages[0]["content"][0] is not messages[0]["content"][1]
    ref = hf_tokenizer(str(model_files)).apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert our_template(str(model_files)).render(messages) == ref
    assert build_messages("hi", 0) == [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]


# -- expansion ------------------------------------------------------------------------------------


def _ref_expand(text: str, grids, seq_len: int) -> str:
    from transformers.models.smolvlm.processing_smolvlm import get_image_prompt_string

    pieces = text.split(IMAGE_TOKEN)
    assert len(pieces) == len(grids) + 1
    out = pieces[0]
    for (r, c), rest in zip(grids, pieces[1:]):
        out += (
            get_image_prompt_string(
                r,
                c,
                seq_len,
                fake_token_around_image=FAKE_IMAGE_TOKEN,
                image_token=IMAGE_TOKEN,
                global_image_token=GLOBAL_IMAGE_TOKEN,
            )
            + rest
        )
    return out


@pytest.mark.parametrize("grid", GRIDS)
def test_expansion_matches_get_image_prompt_string(model_files, grid):
    from transformers.models.idefics3.processing_idefics3 import Idefics3Processor
    from transformers.models.smolvlm.processing_smolvlm import get_image_prompt_string

    seq = ModelConfig.from_dir(model_files).image_seq_len
    ref = get_image_prompt_string(
        *grid,
        seq,
        fake_token_around_image=FAKE_IMAGE_TOKEN,
        image_token=IMAGE_TOKEN,
        global_image_token=GLOBAL_IMAGE_TOKEN,
    )
    # Idefics3 (SmolVLM-256M-Instruct) has its own copy of the rule, as a processor method
    idefics3 = SimpleNamespace(
        fake_image_token=FAKE_IMAGE_TOKEN,
        image_token=IMAGE_TOKEN,
        global_image_tag=GLOBAL_IMAGE_TOKEN,
        image_seq_len=seq,
    )
    assert ref == Idefics3Processor.replace_image_token(idefics3, {"rows": [[grid[0]]], "cols": [[grid[1]]]}, 0)
    assert image_prompt_string(*grid, seq) == ref
    prompt = our_template(str(model_files)).render(CONVERSATIONS["single_image"])
    expanded = expand_image_tokens(prompt, [grid], seq)
    assert expanded == prompt.replace(IMAGE_TOKEN, ref)
    assert expanded.count(IMAGE_TOKEN) == count_image_tokens(*grid, seq)
    # an 81-token (2.2B-style) expansion follows the same rule
    assert image_prompt_string(*grid, 81) == get_image_prompt_string(
        *grid,
        81,
        fake_token_around_image=FAKE_IMAGE_TOKEN,
        image_token=IMAGE_TOKEN,
        global_image_token=GLOBAL_IMAGE_TOKEN,
    )


def test_expansion_of_several_images_in_order(model_files):
    seq = ModelConfig.from_dir(model_files).image_seq_len
    prompt = our_template(str(model_files)).render(
        CONVERSATIONS["multi_turn"]
        + [
            {"role": "assistant", "content": [_text("Yes.")]},
            {"role": "user", "content": [_img(), _img(), _img(), _text("Three more.")]},
        ]
    )
    grids = [(2, 1), (0, 0), (3, 4), (1, 2), (4, 4)]
    assert expand_image_tokens(prompt, grids, seq) == _ref_expand(prompt, grids, seq)
    assert expand_image_tokens(prompt, grids, seq).count(IMAGE_TOKEN) == sum(
        count_image_tokens(r, c, seq) for r, c in grids
    )


def test_expansion_errors():
    with pytest.raises(ValueError, match="2 <image> placeholder"):
        expand_image_tokens("a<image>b<image>", [(0, 0)], 64)
    with pytest.raises(ValueError, match="0 <image> placeholder"):
        expand_image_tokens("no images", [(1, 1)], 64)
    assert expand_image_tokens("no images", [], 64) == "no images"
    for bad in [(0, 2), (3, 0), (-1, 2)]:
        with pytest.raises(ValueError, match="invalid image grid"):
            expand_image_tokens("<image>", [bad], 64)
        with pytest.raises(ValueError):
            count_image_tokens(*bad, 64)


def test_count_image_tokens():
    assert count_image_tokens(0, 0, 64) == 64
    assert count_image_tokens(3, 4, 64) == 13 * 64 == 832
    assert count_image_tokens(4, 4, 64) == 1088
    assert count_image_tokens(2, 2, 81) == 5 * 81


def test_token_constants_are_in_the_vocabulary(model_files):
    ours, ref = our_tokenizer(str(model_files)), hf_tokenizer(str(model_files))
    config = ModelConfig.from_dir(model_files)
    assert ours.token_to_id(IMAGE_TOKEN) == config.image_token_id == ref.convert_tokens_to_ids(IMAGE_TOKEN)
    names = ("image_token", "fake_image_token", "global_image_token", "end_of_utterance_token")
    assert tuple(ours.special_tokens.get(name) for name in names) == (
        IMAGE_TOKEN,
        FAKE_IMAGE_TOKEN,
        GLOBAL_IMAGE_TOKEN,
        END_OF_UTTERANCE_TOKEN,
    )
    tokens = [IMAGE_TOKEN, FAKE_IMAGE_TOKEN, GLOBAL_IMAGE_TOKEN, END_OF_UTTERANCE_TOKEN]
    tokens += [row_col_token(r, c) for r in range(1, 7) for c in range(1, 7)]
    ids = [ours.token_to_id(t) for t in tokens]
    assert None not in ids and len(set(ids)) == len(ids)
    assert ids == ref.convert_tokens_to_ids(tokens)
    for token, token_id in zip(tokens, ids):
        assert ours.encode(token) == [token_id]  # each marker is one token
        assert token_id in special_ids(ours)


# -- prompt ids -----------------------------------------------------------------------------------


def test_input_ids_match_the_processor_tokenization(model_files):
    """Same expanded text -> same ids as the tokenizer call transformers' processor makes."""
    seq = ModelConfig.from_dir(model_files).image_seq_len
    ref_tok, ours = hf_tokenizer(str(model_files)), our_tokenizer(str(model_files))
    cases = [(CONVERSATIONS["single_image"], [g]) for g in GRIDS]
    cases.append((CONVERSATIONS["two_images"], [(3, 4), (0, 0)]))
    cases.append((CONVERSATIONS["multi_turn"], [(1, 2), (4, 4)]))
    cases.append((CONVERSATIONS["image_after_text"], [(2, 1)]))
    cases.append((CONVERSATIONS["text_only"], []))
    cases.append((CONVERSATIONS["system_and_unicode"], []))
    for messages, grids in cases:
        text = _ref_expand(
            ref_tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True), grids, seq
        )
        ref_ids = ref_tok(text)["input_ids"]  # what ProcessorMixin.__call__ does (add_special_tokens=True)
        assert ref_tok(text, add_special_tokens=False)["input_ids"] == ref_ids  # nothing added
        ours_text = expand_image_tokens(our_template(str(model_files)).render(messages), grids, seq)
        assert ours_text == text
        assert ours.encode(ours_text) == ref_ids
        assert ours.encode(ours_text, add_special_tokens=False) == ref_ids
        image_ids = [i for i in ref_ids if i == ours.image_token_id]
        assert len(image_ids) == sum(count_image_tokens(r, c, seq) for r, c in grids)
        assert ref_ids[0] == special_id(ours, "bos_token")  # from the template, not added by the tokenizer


@lru_cache(maxsize=None)
def hf_processor(path: str):
    """The real processor class built from its parts (AutoProcessor needs torchvision)."""
    name = Path(path).name
    config = ModelConfig.from_dir(path)
    tok = hf_tokenizer(path)
    if "SmolVLM2" in name:
        from transformers.models.smolvlm import processing_smolvlm
        from transformers.models.smolvlm.image_processing_pil_smolvlm import SmolVLMImageProcessorPil

        class ImagesOnlySmolVLMProcessor(processing_smolvlm.SmolVLMProcessor):
            # no torchvision: no video processor to type-check (videos are never passed)
            def check_argument_for_proper_class(self, argument_name, argument):
                if argument_name == "video_processor":
                    return None
                return super().check_argument_for_proper_class(argument_name, argument)

        if processing_smolvlm.num2words is None:  # only used for video prompts
            processing_smolvlm.num2words = str
        return ImagesOnlySmolVLMProcessor(
            image_processor=SmolVLMImageProcessorPil.from_pretrained(path),
            tokenizer=tok,
            video_processor=None,
            image_seq_len=config.image_seq_len,
        )
    from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil
    from transformers.models.idefics3.processing_idefics3 import Idefics3Processor

    return Idefics3Processor(
        image_processor=Idefics3ImageProcessorPil.from_pretrained(path),
        tokenizer=tok,
        image_seq_len=config.image_seq_len,
    )


def test_input_ids_match_the_full_processor(model_files):
    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        processor = hf_processor(str(model_files))  # the reference: no skipping when it breaks
    rng = np.random.default_rng(0)
    images = [
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in [(700, 300), (300, 1000), (64, 64)]
    ]
    messages = [
        {"role": "user", "content": [_img(), _text("Compare these"), _img()]},
        {"role": "assistant", "content": [_text(" Two photos.")]},
        {"role": "user", "content": [_img(), _text("And this one? 2024 🙂")]},
    ]
    size = {"longest_edge": 1536}  # smaller than the default 2048: faster, still split
    text = hf_tokenizer(str(model_files)).apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    out = processor(text=[text], images=[images], images_kwargs={"size": size})
    info = processor.image_processor(images=[images], return_row_col_info=True, size=size)
    grids = list(zip(info["rows"][0], info["cols"][0]))
    assert len(set(grids)) == 3 and (0, 0) not in grids
    ours_text = expand_image_tokens(
        our_template(str(model_files)).render(messages), grids, ModelConfig.from_dir(model_files).image_seq_len
    )
    ref_ids = [int(i) for i in np.asarray(out["input_ids"]).reshape(-1)]
    assert our_tokenizer(str(model_files)).encode(ours_text) == ref_ids
    # and one unsplit image
    out = processor(
        text=[our_template(str(model_files)).render(build_messages("Hi", 1))],
        images=[[images[2]]],
        images_kwargs={"do_image_splitting": False},
    )
    ours_text = expand_image_tokens(
        our_template(str(model_files)).render(build_messages("Hi", 1)),
        [(0, 0)],
        ModelConfig.from_dir(model_files).image_seq_len,
    )
    assert our_tokenizer(str(model_files)).encode(ours_text) == [
        int(i) for i in np.asarray(out["input_ids"]).reshape(-1)
    ]


# -- where the template comes from ----------------------------------------------------------------

JSON_TPL = "{% for m in messages %}J:{{ m['content'][0]['text'] }}{% endfor %}"
JINJA_TPL = "{% for m in messages %}\n  K:{{ m['content'][0]['text'] }}\n{% endfor %}{{ eos_token }}"
TOKCFG_TPL = "T:{{ messages[0]['content'][0]['text'] }}{{ bos_token }}"


def _model_dir(tmp_path: Path, *, json_tpl=None, jinja_tpl=None, tokcfg_tpl=None, proc_tpl=None) -> Path:
    src = fixture_dir(MODEL_NAMES[0])
    d = tmp_path / "model"
    d.mkdir(parents=True)
    for name in ("tokenizer.json", "special_tokens_map.json", "preprocessor_config.json", "config.json"):
        shutil.copyfile(src / name, d / name)
    tokcfg = json.loads((src / "tokenizer_config.json").read_text())
    tokcfg.pop("chat_template")
    if tokcfg_tpl is not None:
        tokcfg["chat_template"] = tokcfg_tpl
    (d / "tokenizer_config.json").write_text(json.dumps(tokcfg))
    proc = json.loads((src / "processor_config.json").read_text())
    if proc_tpl is not None:
        proc["chat_template"] = proc_tpl
    (d / "processor_config.json").write_text(json.dumps(proc))
    if json_tpl is not None:
        (d / "chat_template.json").write_text(json.dumps({"chat_template": json_tpl}))
    if jinja_tpl is not None:
        (d / "chat_template.jinja").write_text(jinja_tpl)
    return d


def _ref_processor_template(d: Path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        processor_dict, _ = transformers.ProcessorMixin.get_processor_dict(str(d))
    return processor_dict.get("chat_template")


def test_template_precedence_matches_transformers(tmp_path):
    msgs = [{"role": "user", "content": [_text("x")]}]
    cases = [
        (dict(json_tpl=JSON_TPL, jinja_tpl=JINJA_TPL, tokcfg_tpl=TOKCFG_TPL), JSON_TPL),
        (dict(jinja_tpl=JINJA_TPL, tokcfg_tpl=TOKCFG_TPL), JINJA_TPL),
        (dict(proc_tpl=TOKCFG_TPL, json_tpl=JSON_TPL), TOKCFG_TPL),
    ]
    for i, (files, expected) in enumerate(cases):
        d = _model_dir(tmp_path / str(i), **files)
        tpl = ChatTemplate.from_dir(d)
        assert tpl.source == expected == _ref_processor_template(d)
    # no processor-level template: the tokenizer's (chat_template.jinja wins over tokenizer_config.json)
    d = _model_dir(tmp_path / "tok", tokcfg_tpl=TOKCFG_TPL)
    assert _ref_processor_template(d) is None
    ref = hf_tokenizer(str(d))
    assert ChatTemplate.from_dir(d).source == ref.chat_template == TOKCFG_TPL
    assert ChatTemplate.from_dir(d).render(msgs) == ref.apply_chat_template(msgs, tokenize=False) == "T:x<|im_start|>"
    # trim_blocks / lstrip_blocks and the special-token variables, as transformers renders them
    d = _model_dir(tmp_path / "jinja", jinja_tpl=JINJA_TPL)
    ref = hf_tokenizer(str(d))
    two = msgs + [{"role": "assistant", "content": "y"}]
    assert (
        ChatTemplate.from_dir(d).render(two)
        == ref.apply_chat_template([msgs[0], {"role": "assistant", "content": [_text("y")]}], tokenize=False)
        == "  K:x\n  K:y\n<end_of_utterance>"
    )


def test_template_dicts_pick_default(tmp_path):
    d = _model_dir(tmp_path, tokcfg_tpl=[{"name": "default", "template": "D"}, {"name": "tool_use", "template": "U"}])
    assert ChatTemplate.from_dir(d).source == "D"
    (d / "chat_template.json").write_text(json.dumps({"chat_template": {"other": "O"}}))
    with pytest.raises(ConfigError, match="default"):
        ChatTemplate.from_dir(d)


def test_template_errors(tmp_path):
    d = _model_dir(tmp_path)
    with pytest.raises(ConfigError, match="no chat template"):
        ChatTemplate.from_dir(d)
    (d / "chat_template.json").write_text("{not json")
    with pytest.raises(ConfigError, match="chat_template.json"):
        ChatTemplate.from_dir(d)
    (d / "chat_template.json").write_text(json.dumps({"template": "x"}))
    with pytest.raises(ConfigError, match="chat_template.json"):
        ChatTemplate.from_dir(d)
    (d / "chat_template.json").write_text(json.dumps({"chat_template": "{% for %}"}))
    with pytest.raises(ConfigError, match="chat_template.json"):
        ChatTemplate.from_dir(d)
    tpl = ChatTemplate("{% if messages[0]['role'] != 'user' %}{{ raise_exception('first must be user') }}{% endif %}ok")
    assert tpl.render([{"role": "user", "content": "a"}]) == "ok"
    with pytest.raises(ValueError, match="first must be user"):
        tpl.render([{"role": "assistant", "content": "a"}])
    with pytest.raises(ValueError):
        tpl.render([])
    with pytest.raises(ValueError):
        tpl.render(["not a message"])
    with pytest.raises(ValueError, match="unsafe"):  # jinja2's sandbox: no class internals
        ChatTemplate("{{ messages.__class__.__mro__ }}").render([{"role": "user", "content": "a"}])
    with pytest.raises(ValueError):  # the sandbox refuses to mutate
        ChatTemplate("{{ messages.append(1) }}").render([{"role": "user", "content": "a"}])


def test_template_environment_extras():
    tpl = ChatTemplate(
        "{% set ns = namespace(n=0) %}{% for m in messages %}{% if loop.index > 1 %}{% break %}"
        "{% endif %}{% set ns.n = ns.n + 1 %}{% generation %}{{ m['content'][0]['text'] }}"
        "{% endgeneration %}{% endfor %}|{{ ns.n }}|{{ {'k': 'é<'} | tojson }}|{{ dict(a=1)['a'] }}"
        "|{{ strftime_now('%Y') | length }}"
    )
    assert tpl.render([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]) == 'a|1|{"k": "é<"}|1|4'
    with pytest.raises(ValueError):
        ChatTemplate("{% set ns = namespace(_x=1) %}").render([{"role": "user", "content": "a"}])
