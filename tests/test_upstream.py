"""One test per library internal ftcli relies on (ftcli/upstream.py): each is still there, shaped as ftcli uses
it. An upgrade that moves one fails here, by name, instead of quietly in a run."""

import inspect

import pytest


def params(function) -> list[str]:
    return list(inspect.signature(function).parameters)


def test_trainer_checkpoint_hooks_atomic_checkpoints_overrides():
    from transformers import Trainer
    from transformers.trainer_utils import rotate_checkpoints

    assert params(Trainer._save_checkpoint)[:3] == ["self", "model", "trial"]
    assert params(Trainer._get_output_dir)[:2] == ["self", "trial"]
    assert {"output_dir", "save_total_limit", "best_model_checkpoint", "use_mtime"} <= set(
        params(rotate_checkpoints)
    )


def test_trainer_save_and_load_hooks_trained_tensors_only_overrides():
    from transformers import Trainer

    assert params(Trainer._save)[:3] == ["self", "output_dir", "state_dict"]
    assert params(Trainer._load_from_checkpoint)[:3] == ["self", "resume_from_checkpoint", "model"]


@pytest.mark.parametrize("trainer", ["DPOTrainer", "KTOTrainer"])
def test_trl_prepare_dataset_prepared_pairs_overrides(trainer):
    import trl

    cls = getattr(trl, trainer)
    assert params(cls._prepare_dataset)[:5] == ["self", "dataset", "processing_class", "args", "dataset_name"]
    assert "_prepare_dataset(" in inspect.getsource(cls.__init__)  # still called while the trainer is built


@pytest.mark.parametrize(
    "name, config, trainer", [("orpo", "ORPOConfig", "ORPOTrainer"), ("cpo", "CPOConfig", "CPOTrainer")]
)
def test_trl_experimental_tokenize_row_tokenized_pair_rows_overrides(name, config, trainer, tmp_path):
    """The trainer still builds its rows with self.tokenize_row, and its collator and forward read the columns
    ftcli's hook writes."""
    import datasets
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ftcli.models.builtin import builtin_path
    from ftcli.upstream import TokenizedPairRows, experimental_trainer

    config_cls, trainer_cls = experimental_trainer(name, config, trainer)
    assert params(trainer_cls.tokenize_row)[:3] == ["self", "feature", "model"]
    pairs = datasets.Dataset.from_dict(
        {"prompt_ids": [[1, 2, 3], [4, 5]], "chosen_ids": [[6, 7], [8]], "rejected_ids": [[9], [10, 11, 12]]}
    )
    path = builtin_path("builtin:tiny-llama")
    built = type(trainer, (TokenizedPairRows, trainer_cls), {})(
        model=AutoModelForCausalLM.from_pretrained(path),
        args=config_cls(output_dir=str(tmp_path), max_length=16, report_to=[], use_cpu=True),
        train_dataset=pairs,
        processing_class=AutoTokenizer.from_pretrained(path),
    )
    row = built.train_dataset[0]
    assert row["chosen_input_ids"] == [1, 2, 3, 6, 7] and row["chosen_labels"] == [-100, -100, -100, 6, 7]
    batch = built.data_collator([built.train_dataset[0], built.train_dataset[1]])
    loss, metrics = built.get_batch_loss_metrics(built.model, batch)
    assert torch.isfinite(loss) and "rewards/accuracies" in metrics


def test_cpo_loss_types_are_read_from_the_installed_trl():
    from ftcli.upstream import cpo_loss_types

    assert {"sigmoid", "hinge", "ipo", "simpo"} <= set(cpo_loss_types())


def test_dpo_loss_types_are_read_from_the_installed_trl():
    from ftcli.upstream import dpo_loss_types

    found = dpo_loss_types()
    assert {"sigmoid", "ipo", "hinge", "robust"} <= set(found), found


def test_vision_tower_classes_are_found_by_config_type():
    from transformers import CLIPVisionModel, SiglipVisionModel

    from ftcli.upstream import vision_model_class

    assert vision_model_class("clip_vision_model") is CLIPVisionModel
    assert vision_model_class("siglip_vision_model") is SiglipVisionModel
    assert vision_model_class("llama") is not None and vision_model_class("no-such-type") is None


def test_which_processors_return_modality_ids_is_read_from_the_installed_transformers():
    from transformers import Gemma3Processor, LlavaProcessor, Qwen2_5_VLProcessor

    from ftcli.upstream import returns_mm_token_type_ids

    assert returns_mm_token_type_ids(Qwen2_5_VLProcessor) and returns_mm_token_type_ids(Gemma3Processor)
    assert not returns_mm_token_type_ids(LlavaProcessor)


def test_bitsandbytes_cpu_inference_layout_flag():
    import bitsandbytes as bnb

    from ftcli.upstream import BNB_CPU_INFERENCE_LAYOUT

    assert BNB_CPU_INFERENCE_LAYOUT in inspect.getsource(bnb.nn.Linear4bit)


def test_trainers_are_composed_not_patched():
    from transformers import Trainer

    from ftcli.upstream import AtomicCheckpoints, TrainedTensorsOnly, trainer_class

    cls = trainer_class(Trainer, TrainedTensorsOnly)
    assert cls.__mro__[1:4] == (TrainedTensorsOnly, AtomicCheckpoints, Trainer) and cls.__name__ == "Trainer"
