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

from ftcli.paths import cache_dir, cache_root

# Bump when a builtin's weights, config or tokenizer change, so old caches are not reused.
BUILTIN_VERSION = 5
PAD, EOS, IM_START, IM_END = "<|pad|>", "<|endoftext|>", "<|im_start|>", "<|im_end|>"
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
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
}
VISION = {"clip_vision_model"}


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
            _materialize(short, tmp)
            try:
                os.rename(tmp, target)
            except OSError:  # another process won the race: its copy is identical
                pass
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


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
