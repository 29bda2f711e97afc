"""Builtin tiny models (`model.name: builtin:NAME`), made in code with fixed-seed random weights.

They exist for smoke runs, tests and CI on machines without the hub, not for quality. Each is materialized once
into a cache dir (atomically, so parallel workers never see half a model) and then loads by path like any
checkpoint, through plain `from_pretrained`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

from ftcli import report
from ftcli.paths import cache_dir, cache_root

# Bump when a builtin's weights, config or tokenizer change, so old caches are not reused.
BUILTIN_VERSION = 6
PAD, EOS, IM_START, IM_END = "<|pad|>", "<|endoftext|>", "<|im_start|>", "<|im_end|>"
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

IMAGE = "<image>"  # where a LLaVA prompt's image goes (the processor expands it into the image's tokens)
# ChatML whose message content may also be a list of {"type": "image"} / {"type": "text", "text"} items, as
# vision-language processors pass it.
CHATML_VISION_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}{{ '<image>' }}{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}{% endif %}{{ '<|im_end|>' + '\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# name -> (architecture, config kwargs, one-line description). initializer_range is raised from the usual 0.02
# so that adapters on a random model can reach confident logits (lm_head rows are not adapted by LoRA).
BUILTINS: dict[str, tuple[str, dict, str]] = {
    "tiny-llama": (
        "llama",
        dict(
            hidden_size=128,
            intermediate_size=256,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=4096,
            rms_norm_eps=1e-5,
            tie_word_embeddings=False,
            initializer_range=0.1,
        ),
        "LLaMA architecture, ~360K parameters, byte-level tokenizer with a ChatML template",
    ),
    "tiny-llama3": (
        "llama",
        dict(
            hidden_size=128,
            intermediate_size=256,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=16384,
            rms_norm_eps=1e-5,
            tie_word_embeddings=False,
            initializer_range=0.1,
            rope_parameters={
                "rope_type": "llama3",
                "rope_theta": 500000.0,
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8192,
            },
        ),
        "tiny-llama with Llama 3's rope (theta 500000, llama3 scaling): what interop checks a non-default rope with",
    ),
    "bench-llama": (
        "llama",
        dict(
            hidden_size=256,
            intermediate_size=688,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=4,
            max_position_embeddings=4096,
            rms_norm_eps=1e-5,
            tie_word_embeddings=False,
            initializer_range=0.1,
        ),
        "LLaMA architecture, ~3.1M parameters, the throughput benchmark's model",
    ),
    # The GIT family (task: caption): OPT ties its head to the input embeddings as opt-350m does; MPT uses ALiBi
    # and a boolean attention mask, so all three mask conventions are exercised.
    "tiny-opt": (
        "opt",
        dict(
            hidden_size=128,
            word_embed_proj_dim=128,
            ffn_dim=256,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=1024,
            tie_word_embeddings=True,
            init_std=0.1,
        ),
        "OPT architecture (tied head), ~430K parameters, byte-level tokenizer",
    ),
    "tiny-mpt": (
        "mpt",
        dict(
            d_model=128,
            n_heads=4,
            n_layers=2,
            expansion_ratio=2,
            max_seq_len=1024,
            initializer_range=0.1,
            tie_word_embeddings=False,
        ),
        "MPT architecture (ALiBi), ~460K parameters, byte-level tokenizer",
    ),
    "tiny-clip": (
        "clip_vision_model",
        dict(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            image_size=32,
            patch_size=8,
        ),
        "CLIP ViT vision encoder, 32x32 images in 16 patches, ~81K parameters (multimodal.vision_model)",
    ),
    "tiny-llava": (
        "llava",
        dict(
            vision_config=dict(
                hidden_size=64,
                intermediate_size=128,
                num_hidden_layers=2,
                num_attention_heads=4,
                image_size=32,
                patch_size=8,
            ),
            text_config=dict(
                hidden_size=128,
                intermediate_size=256,
                num_hidden_layers=2,
                num_attention_heads=4,
                num_key_value_heads=2,
                max_position_embeddings=4096,
                rms_norm_eps=1e-5,
                tie_word_embeddings=False,
                initializer_range=0.1,
            ),
            vision_feature_select_strategy="default",  # the 16 patch features, CLS dropped, as LLaVA-1.5
            vision_feature_layer=-1,
            projector_hidden_act="gelu",
        ),
        "LLaVA architecture (CLIP ViT 32x32 -> MLP projector -> LLaMA), ~470K parameters, for task: vlm",
    ),
}
VISION = {"clip_vision_model"}
VISION_LANGUAGE = {"llava"}


def is_builtin(name: str) -> bool:
    return name.startswith("builtin:")


def builtin_path(name: str) -> Path:
    """The local dir of a builtin model, materializing it on first use."""
    from ftcli.errors import RecipeError

    short = name.removeprefix("builtin:")
    if short not in BUILTINS:
        raise RecipeError(
            f"unknown builtin model {short!r}; builtins are {', '.join(BUILTINS)}", key="model.name"
        )
    target = cache_root() / "builtin" / f"{short}-v{BUILTIN_VERSION}"
    if not (target / "config.json").exists():
        cache_dir("builtin")
        tmp = Path(tempfile.mkdtemp(prefix=f".{short}-", dir=target.parent))
        try:
            report.phase(f"building {name} (first use; kept in {target.parent})")
            with _no_progress_bars():  # a library's "Writing model shards" bar is noise here
                _materialize(short, tmp)
            try:
                os.rename(tmp, target)
            except OSError:  # another process won the race: its copy is identical
                pass
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


@contextlib.contextmanager
def _no_progress_bars():
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()


def build_byte_tokenizer():
    """A byte-level BPE tokenizer: 256 byte tokens, one merge, 4 specials, and a ChatML chat template.

    Text tokenizes one token per byte. The single merge joins 0xC0 0xC1, two bytes that never occur in UTF-8, so it
    never fires; it is there because llama.cpp refuses a BPE vocabulary without merges."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    byte_chars = _bytes_to_unicode()
    vocab = {byte_chars[b]: b for b in range(256)}
    never = (byte_chars[0xC0], byte_chars[0xC1])
    vocab["".join(never)] = 256
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[never]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token=EOS, pad_token=PAD)
    tokenizer.add_special_tokens({"additional_special_tokens": [IM_START, IM_END]})
    tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


def _materialize(short: str, out: Path) -> None:
    import torch
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, GenerationConfig

    arch, kwargs, _ = BUILTINS[short]
    if arch in VISION:
        from transformers import CLIPImageProcessorPil

        size = kwargs["image_size"]
        with _seeded(torch):
            AutoModel.from_config(AutoConfig.for_model(arch, **kwargs), dtype=torch.float32).save_pretrained(
                out
            )
        CLIPImageProcessorPil(
            size={"shortest_edge": size}, crop_size={"height": size, "width": size}
        ).save_pretrained(out)
        return
    if arch in VISION_LANGUAGE:
        return _materialize_llava(kwargs, out)
    tokenizer = build_byte_tokenizer()
    ids = tokenizer.convert_tokens_to_ids
    config = AutoConfig.for_model(
        arch,
        vocab_size=len(tokenizer),
        bos_token_id=None,
        eos_token_id=ids(EOS),
        pad_token_id=ids(PAD),
        **kwargs,
    )
    with _seeded(torch):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    # A chat model stops at the end of its turn as well as at end-of-text.
    model.generation_config = GenerationConfig(eos_token_id=[ids(EOS), ids(IM_END)], pad_token_id=ids(PAD))
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    from ftcli.models.loadable import loadable_model_config, loadable_tokenizer_config

    loadable_tokenizer_config(
        out / "tokenizer_config.json"
    )  # a base like any other: transformers 4.x loads it
    loadable_model_config(out / "config.json")


def _materialize_llava(kwargs: dict, out: Path) -> None:
    """A LLaVA model and its processor (CLIP's Pillow image processor, the byte tokenizer with an <image> token,
    a ChatML template that places images), saved as llava-hf's checkpoints are."""
    import torch
    from transformers import (
        CLIPImageProcessorPil,
        CLIPVisionConfig,
        GenerationConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    tokenizer = build_byte_tokenizer()
    tokenizer.add_special_tokens({"additional_special_tokens": [IM_START, IM_END, IMAGE]})
    tokenizer.chat_template = CHATML_VISION_TEMPLATE
    ids = tokenizer.convert_tokens_to_ids
    vision = CLIPVisionConfig(**kwargs["vision_config"])
    text = LlamaConfig(
        vocab_size=len(tokenizer),
        bos_token_id=None,
        eos_token_id=ids(EOS),
        pad_token_id=ids(PAD),
        **kwargs["text_config"],
    )
    rest = {k: v for k, v in kwargs.items() if k not in ("vision_config", "text_config")}
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_index=ids(IMAGE), **rest)
    with _seeded(torch):
        model = LlavaForConditionalGeneration(config)
    model.generation_config = GenerationConfig(eos_token_id=[ids(EOS), ids(IM_END)], pad_token_id=ids(PAD))
    model.save_pretrained(out)
    size = vision.image_size
    LlavaProcessor(
        image_processor=CLIPImageProcessorPil(
            size={"shortest_edge": size}, crop_size={"height": size, "width": size}
        ),
        tokenizer=tokenizer,
        patch_size=vision.patch_size,
        vision_feature_select_strategy=config.vision_feature_select_strategy,
        num_additional_image_tokens=1,  # CLIP's CLS, which the "default" strategy drops again
        chat_template=CHATML_VISION_TEMPLATE,
    ).save_pretrained(out)
    from ftcli.models.loadable import loadable_model_config, loadable_tokenizer_config

    loadable_tokenizer_config(out / "tokenizer_config.json")
    loadable_model_config(out / "config.json")


@contextlib.contextmanager
def _seeded(torch):
    """Fixed weights without disturbing the caller's random state."""
    state = torch.random.get_rng_state()
    torch.manual_seed(0)
    try:
        yield
    finally:
        torch.random.set_rng_state(state)


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map (what ByteLevel pre-tokenization emits)."""
    keep = (
        list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    )
    chars, extra = {}, 0
    for b in range(256):
        if b in keep:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return chars
