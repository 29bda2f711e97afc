"""What transformers 5 writes that other loaders read differently, made readable by all of them: transformers 4.x
(still what many servers and llama.cpp's HF converter pin) and 5.x read the same model from every dir ftcli writes
(run dirs, merged/, exports, and the builtin bases). Found by bench/interop.py; plain JSON edits, no torch."""

from __future__ import annotations

import json
from pathlib import Path


def loadable_tokenizer_config(config_file: Path) -> None:
    """What transformers 5 writes that transformers 4.x (and tools pinned to it, such as llama.cpp's converter)
    reads otherwise: its own class name (TokenizersBackend; the fast-tokenizer class both know reads the
    same files), and `extra_special_tokens` as a list (4.x wants a dict there, and reads the list as
    `additional_special_tokens`, which 5.x still accepts); and, for that class, no `model_input_names` (4.x then
    adds token_type_ids). Found by bench/interop.py."""
    if not config_file.exists():
        return
    config = json.loads(config_file.read_text())
    before = dict(config)
    if config.get("tokenizer_class") == "TokenizersBackend":
        config["tokenizer_class"] = "PreTrainedTokenizerFast"
    if isinstance(config.get("extra_special_tokens"), list):
        config["additional_special_tokens"] = config.pop("extra_special_tokens")
    if config.get("tokenizer_class") == "PreTrainedTokenizerFast" and "model_input_names" not in config:
        # 4.x's PreTrainedTokenizerFast then returns token_type_ids, which generate() on a causal LM refuses.
        config["model_input_names"] = ["input_ids", "attention_mask"]
    if config != before:
        config_file.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")


def loadable_model_config(config_file: Path) -> None:
    """config.json as every loader reads it: the KV cache on (training turned it off), and the keys transformers
    4.x reads where transformers 5 writes them elsewhere: rope_theta and rope_scaling (5: inside
    rope_parameters), torch_dtype (5: dtype). Without them 4.x, and llama.cpp's HF converter, silently fall back to
    rope_theta 10000: a Llama 3 (500000) or Qwen2.5 (1e6) model then gives other logits and other text."""
    if not config_file.exists():
        return
    config = json.loads(config_file.read_text())
    config["use_cache"] = True
    for section in (config, config.get("text_config")):
        params = section.get("rope_parameters") if isinstance(section, dict) else None
        if (
            not isinstance(params, dict) or "rope_type" not in params
        ):  # (per-layer-type rope: left as written)
            continue
        if "rope_theta" in params:
            section["rope_theta"] = params["rope_theta"]
        if "partial_rotary_factor" in params:
            section["partial_rotary_factor"] = params["partial_rotary_factor"]
        scaling = {k: v for k, v in params.items() if k not in ("rope_theta", "partial_rotary_factor")}
        section["rope_scaling"] = scaling if scaling.get("rope_type") != "default" else None
    if "dtype" in config:
        config["torch_dtype"] = config["dtype"]
    config_file.write_text(json.dumps(config, indent=2) + "\n")
