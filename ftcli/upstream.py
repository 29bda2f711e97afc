"""Every place ftcli relies on a library internal that has no public switch, in one module: what it is, why, and
what ftcli needs of it. tests/test_upstream.py checks each one is still there as ftcli uses it, so an upgrade that
moves one fails loudly in CI instead of quietly in a run. Checked against transformers 5.24, TRL 1.16,
bitsandbytes 0.50.

Everything else ftcli calls is public API.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

# --- transformers.Trainer ------------------------------------------------------------------------------------


def trainer_class(base: type, *mixins: type) -> type:
    """`base` (a transformers/TRL Trainer class) with ftcli's atomic checkpoints and any `mixins` ahead of it."""
    return type(base.__name__, (*mixins, AtomicCheckpoints, base), {})


class AtomicCheckpoints:
    """Hooks Trainer._save_checkpoint and Trainer._get_output_dir (private: there is no public way to choose where
    one checkpoint is written). While checkpoint-N is saved, the Trainer's output dir is a staging dir, so whatever
    it writes (model, optimizer, scheduler, scaler, every process's RNG state, trainer_state.json last, what TRL's
    overrides add) lands in <staging>/checkpoint-N, renamed into place once whole: a kill during a save never
    leaves a broken newest checkpoint. Rotation (transformers.trainer_utils.rotate_checkpoints) then runs on the
    real dir."""

    _staging: str | None = None

    def _get_output_dir(self, trial) -> str:
        return self._staging or super()._get_output_dir(trial)

    def _save_checkpoint(self, model, trial) -> None:
        from transformers.trainer_utils import rotate_checkpoints

        from ftcli.run_dir import staging_dir

        run_dir = Path(super()._get_output_dir(trial))
        staging = staging_dir(run_dir, self.state.global_step)
        name = f"checkpoint-{self.state.global_step}"
        staged, final = staging / name, run_dir / name
        self._staging = str(staging)
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self._staging = None
        if self.state.best_model_checkpoint == str(staged):  # it was recorded where it was being written
            self.state.best_model_checkpoint = str(final)
            if self.args.should_save:
                self.state.save_to_json(str(staged / "trainer_state.json"))
        self.accelerator.wait_for_everyone()  # each process writes its own RNG state (and shards) into staging
        if not self.args.should_save:
            return
        if final.exists():  # an incomplete checkpoint-N written in place by an older version
            shutil.rmtree(final)
        os.replace(staged, final)
        staging.rmdir()
        rotate_checkpoints(
            output_dir=str(run_dir),
            save_total_limit=self.args.save_total_limit,
            best_model_checkpoint=self.state.best_model_checkpoint,
            use_mtime=True,
        )


class TrainedTensorsOnly:
    """Hooks Trainer._save and Trainer._load_from_checkpoint (private: how a model is written and read back) so a
    GIT run's checkpoints hold its trained tensors by name, not copies of both frozen base models."""

    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        from ftcli.models.multimodal import save_trained

        if not self.args.should_save:
            return
        path = Path(output_dir or self.args.output_dir)
        path.mkdir(parents=True, exist_ok=True)
        save_trained(self.accelerator.unwrap_model(self.model), path)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        from ftcli.models.multimodal import load_trained

        load_trained(
            self.accelerator.unwrap_model(model or self.model), Path(resume_from_checkpoint), key="--resume"
        )


# --- TRL -----------------------------------------------------------------------------------------------------


class PreparedPairs:
    """Hooks the preference trainers' _prepare_dataset (private; TRL skips it only for vision datasets): ftcli hands
    them prompt/chosen/rejected ids it tokenized, templated and length-checked itself. A task that needs a last
    step of its own (KTO's KL pairs) defines `pairs_ready(dataset, args)`."""

    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        return self.pairs_ready(dataset, args)

    def pairs_ready(self, dataset, args):
        return dataset


class TokenizedPairRows:
    """Hooks tokenize_row of TRL's experimental ORPO and CPO trainers (public, but their only way in is text they
    tokenize themselves, with their own truncation): each ftcli pair (prompt/chosen/rejected ids, templated and
    length-checked by ftcli) becomes the columns their collator and concatenated_forward read, the prompt masked
    out of the labels. Their text steps before it (maybe_extract_prompt, maybe_apply_chat_template) pass rows
    without text columns through unchanged."""

    def tokenize_row(self, feature, model=None) -> dict:
        prompt = feature["prompt_ids"]
        row = {"prompt_input_ids": prompt, "prompt_attention_mask": [1] * len(prompt)}
        for side in ("chosen", "rejected"):
            answer = feature[f"{side}_ids"]
            row[f"{side}_input_ids"] = prompt + answer
            row[f"{side}_attention_mask"] = [1] * (len(prompt) + len(answer))
            row[f"{side}_labels"] = [-100] * len(prompt) + answer
        return row


def experimental_trainer(name: str, config: str, trainer: str) -> tuple[type, type]:
    """A trainer TRL keeps in trl.experimental (ORPO, CPO): its config and trainer classes, without the warning
    its import prints (it is a note for library users; ftcli's tests pin what it uses)."""
    import importlib
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = importlib.import_module(f"trl.experimental.{name}")
    return getattr(module, config), getattr(module, trainer)


def cpo_loss_types() -> list[str]:
    """The CPO losses of the installed TRL, from CPOConfig's loss_type field."""
    import dataclasses

    config, _ = experimental_trainer("cpo", "CPOConfig", "CPOTrainer")
    field = next(f for f in dataclasses.fields(config) if f.name == "loss_type")
    return list(field.metadata.get("choices", ()))


def grpo_loss_types() -> list[str]:
    """The GRPO losses of the installed TRL, from the "Supported values are ..." sentence of GRPOConfig's loss_type
    help (TRL keeps no public list)."""
    import dataclasses

    from trl import GRPOConfig

    help_text = next(f for f in dataclasses.fields(GRPOConfig) if f.name == "loss_type").metadata.get(
        "help", ""
    )
    sentence = re.search(r"Supported values are (.*?)\.\s", help_text)
    return re.findall(r"'([a-z_]+)'", sentence.group(1)) if sentence else []


def dpo_loss_types() -> list[str]:
    """The DPO losses of the installed TRL, read from DPOConfig's loss_type field help (TRL keeps no public list,
    and checks the name only at the first training step, after the data is prepared)."""
    import dataclasses

    from trl import DPOConfig

    help_text = next(f for f in dataclasses.fields(DPOConfig) if f.name == "loss_type").metadata.get(
        "help", ""
    )
    return re.findall(r"`'([a-z_]+)'`", help_text)


# --- transformers' auto classes --------------------------------------------------------------------------------


def vision_model_class(model_type: str):
    """The transformers class of a vision tower's own config type (clip_vision_model -> CLIPVisionModel), from the
    auto mapping's table of names (private: AutoModel maps a whole CLIP checkpoint to CLIPModel, both towers)."""
    import transformers
    from transformers.models.auto.modeling_auto import MODEL_MAPPING_NAMES

    return getattr(transformers, MODEL_MAPPING_NAMES.get(model_type, ""), None)


# --- transformers' processors ---------------------------------------------------------------------------------


def returns_mm_token_type_ids(processor) -> bool:
    """Whether a VLM processor gives its model per-token modality ids (Qwen2/2.5-VL's M-RoPE, Gemma 3's image
    attention). transformers 5.2x says so with a processor class attribute; earlier 5.x with a default of its
    kwargs class (`valid_processor_kwargs._defaults["text_kwargs"]`), the attribute absent (5.17)."""
    kwargs = getattr(processor, "valid_processor_kwargs", None)
    legacy = (getattr(kwargs, "_defaults", None) or {}).get("text_kwargs", {}).get("return_mm_token_type_ids")
    return bool(legacy if legacy is not None else getattr(processor, "return_mm_token_type_ids", False))


# --- bitsandbytes ------------------------------------------------------------------------------------------------

# Linear4bit's flag for repacking its weight into the CPU's inference-only layout (models/bnb_cpu.py).
BNB_CPU_INFERENCE_LAYOUT = "support_avx512bf16_for_cpu"
