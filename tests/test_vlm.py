"""task: vlm — a pretrained vision-language model (builtin tiny LLaVA) learns the synthetic shapes' colours on
held-out images; rows are laid out by the model's own processor with labels on the answers only (several images
per row, LLaVA conversations, instructions); the run dir, its merge and its export load in plain
transformers/peft with the same logits; QLoRA quantizes the language model only; full fine-tuning freezes the
vision tower unless told otherwise."""

import json
import subprocess
import sys

import pytest
import torch

from ftcli.data.images import ImageRows
from ftcli.data.tokenize import IGNORE
from ftcli.data.vision import VisionRows, image_token_id
from ftcli.models.builtin import builtin_path
from ftcli.recipe import load_recipe
from ftcli.tasks import vlm
from tests.helpers import DATA, RECIPES, call_main, run_cli

SMOKE = RECIPES / "smoke"
SHAPES = DATA / "shapes"
EVAL = [json.loads(line) for line in (SHAPES / "eval.jsonl").read_text().splitlines()]

# Logits of a model dir (or base + adapter) on one held-out image and the caption prompt, in a fresh process
RELOAD = """
import sys, torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor
model_dir, base, image, dest = sys.argv[1:5]
processor = AutoProcessor.from_pretrained(model_dir)
model = AutoModelForImageTextToText.from_pretrained(base or model_dir)
if base:
    from peft import PeftModel
    model = PeftModel.from_pretrained(model, model_dir)
messages = [{"role": "user", "content": [{"type": "image"}]}]
text = processor.apply_chat_template(messages, add_generation_prompt=True)
inputs = processor(text=[text], images=[Image.open(image).convert("RGB")], return_tensors="pt")
with torch.no_grad():
    torch.save(model.eval()(**inputs).logits[0].float(), dest)
"""


def reload(model_dir, image, dest, base=""):
    subprocess.run(
        [sys.executable, "-c", RELOAD, str(model_dir), str(base), str(image), str(dest)], check=True
    )
    return torch.load(dest)


def in_process_logits(model, processor, image):
    from PIL import Image

    text = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}]}], add_generation_prompt=True
    )
    inputs = processor(text=[text], images=[Image.open(image).convert("RGB")], return_tensors="pt")
    model.eval()
    with torch.no_grad():
        return model(**inputs).logits[0].float()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The smoke LoRA run, with the logits it gives in training's own process."""
    from ftcli.models.load import load_processor

    out = tmp_path_factory.mktemp("vlm") / "run"
    recipe = load_recipe(SMOKE / "vlm-lora.yaml", [f"output.dir={out}"])
    processor = load_processor(recipe.model)
    seen = {}
    summary = vlm.run(
        recipe,
        on_done=lambda model, tok: seen.update(
            logits=in_process_logits(model, processor, SHAPES / EVAL[0]["image"])
        ),
    )
    return out, summary, seen["logits"]


def test_lora_on_the_language_model_learns_the_colours_of_held_out_images(trained, tmp_path):
    out, summary, _ = trained
    assert summary["status"] == "completed" and summary["final_eval_loss"] < 0.1 * summary["first_loss"]
    rows = tmp_path / "images.jsonl"
    rows.write_text("".join(json.dumps({"image": str(SHAPES / r["image"])}) + "\n" for r in EVAL))
    code, stdout, err = run_cli("infer", out, "-i", rows, "--json")
    assert code == 0, err
    answers = [json.loads(line)["output"] for line in stdout.splitlines()]
    right = sum(r["caption"].split()[1] == (a.split() + ["", ""])[1] for r, a in zip(EVAL, answers))
    assert right >= 0.8 * len(EVAL), answers  # the colour word of every caption: "a <colour> <shape>"


def test_run_dir_merge_and_export_load_in_plain_transformers_with_the_same_logits(trained, tmp_path):
    out, _, logits = trained
    image = SHAPES / EVAL[0]["image"]
    base = builtin_path("builtin:tiny-llava")
    torch.testing.assert_close(reload(out, image, tmp_path / "a.pt", base), logits, rtol=1e-4, atol=1e-4)
    assert call_main("merge", out, "--out", tmp_path / "merged") == 0
    torch.testing.assert_close(
        reload(tmp_path / "merged", image, tmp_path / "m.pt"), logits, rtol=1e-4, atol=1e-4
    )
    assert call_main("export", out, "--out", tmp_path / "export", "--dtype", "f32") == 0
    torch.testing.assert_close(
        reload(tmp_path / "export", image, tmp_path / "e.pt"), logits, rtol=1e-4, atol=1e-4
    )
    code, stdout, err = run_cli(
        "infer", tmp_path / "merged", "--image", image
    )  # a model dir: found to be a VLM
    assert code == 0 and stdout.strip(), err


def rows_for(fmt, columns=None, **recipe):
    from ftcli.models.load import load_processor

    processor = load_processor(load_recipe(SMOKE / "vlm-lora.yaml").model)
    images = ImageRows(str(SHAPES), False, 0, "")
    return processor, VisionRows(
        processor, fmt, columns or {}, processor.chat_template, "completion", 256, "truncate", images
    )


def test_labels_fall_on_the_answers_and_each_image_becomes_its_tokens():
    processor, rows = rows_for("image_chat")
    image = image_token_id(processor)
    row = {
        "image": ["images/train-000.png", "images/train-001.png"],
        "messages": [
            {"role": "user", "content": "<image>\nFirst picture."},
            {"role": "assistant", "content": "red"},
            {"role": "user", "content": "And <image>?"},
            {"role": "assistant", "content": "green"},
        ],
    }
    out = rows({k: [v] for k, v in row.items()})
    ids, labels = out["input_ids"][0], out["labels"][0]
    assert out["status"] == ["ok"] and len(out["images"][0]) == 2
    assert (
        ids.count(image) == 2 * 16
    )  # 16 patch features per 32x32 image (CLS dropped), as LLaVA-1.5 lays them
    assert all(label == IGNORE for t, label in zip(ids, labels) if t == image)
    learned = processor.tokenizer.decode([t for t in labels if t != IGNORE])
    assert (
        learned == "red<|im_end|>\ngreen<|im_end|>\n"
    )  # the answers and their turn ends, nothing of the user


def test_images_go_before_the_first_question_unless_marked_and_marks_must_match():
    processor, rows = rows_for("image_instruction")
    out = rows(
        {"image": ["images/train-000.png"], "instruction": ["What colour?"], "input": [""], "output": ["red"]}
    )
    text = processor.tokenizer.decode(out["input_ids"][0])
    assert text.index("<image>") < text.index("What colour?")
    _, chat = rows_for("image_chat")
    bad = chat(
        {
            "image": [["images/train-000.png"]],
            "messages": [
                [{"role": "user", "content": "<image> and <image>"}, {"role": "assistant", "content": "x"}]
            ],
        }
    )
    assert bad["status"] == ["bad"] and "2 <image> marks in the text for 1 images" in bad["error"][0]


def test_llava_conversations_and_instructions_prepare_with_every_row_kept(tmp_path, capsys):
    for name, fmt in (("llava.jsonl", "image_chat"), ("instructions.jsonl", "image_instruction")):
        capsys.readouterr()
        code = call_main(
            "prepare",
            SMOKE / "vlm-lora.yaml",
            f"data.sources=[{SHAPES / name}]",
            f"data.format={fmt}",
            "data.eval_sources=[]",
            "data.max_length=160",
            f"data.cache_dir={tmp_path}",
            "--json",
        )
        assert code == 0
        stats = json.loads(capsys.readouterr().out)
        source = stats["sources"][0]
        assert source["kept"] == source["rows_read"] > 0 and source["truncated"] == 0, source


def test_qlora_quantizes_only_the_language_model(tmp_path):
    import bitsandbytes as bnb

    seen = {}
    recipe = load_recipe(
        SMOKE / "vlm-lora.yaml",
        [f"output.dir={tmp_path / 'run'}", "method.type=qlora", "training.max_steps=2"],
    )
    summary = vlm.run(recipe, on_done=lambda model, tok: seen.update(model=model))
    assert summary["status"] == "completed"
    quantized = [n for n, m in seen["model"].named_modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert quantized and all(".language_model." in n for n in quantized)


def test_full_fine_tuning_freezes_the_vision_tower_unless_named(tmp_path):
    seen = {}
    for keys in ([], ["vision_tower"]):
        recipe = load_recipe(
            SMOKE / "vlm-lora.yaml",
            [
                f"output.dir={tmp_path / str(len(keys))}",
                "method.type=full",
                f"method.keys_to_finetune={keys}",
                "training.max_steps=1",
                "training.learning_rate=1e-4",
            ],
        )
        vlm.run(recipe, on_done=lambda model, tok, n=len(keys): seen.update({n: model}))
    default = {n for n, p in seen[0].named_parameters() if p.requires_grad}
    assert (
        default and not any("vision_tower" in n for n in default) and any("projector" in n for n in default)
    )
    assert {n for n, p in seen[1].named_parameters() if p.requires_grad} == {
        n for n, _ in seen[1].named_parameters() if "vision_tower" in n
    }


def test_labels_survive_markers_and_a_bos_the_processor_puts_around_images():
    from ftcli.data.vision import _carry_labels

    image, bos, boi, eoi = 9, 1, 7, 8
    ids = [5, image, 6, 2]  # "user: <image> answer<eos>" with one placeholder
    labels = [IGNORE, IGNORE, 6, 2]
    expanded = [bos, 5, 3, boi, image, image, image, eoi, 3, 6, 2]  # Gemma 3-like: "\n\n<boi>...<eoi>\n\n"
    out_ids, out_labels = _carry_labels(expanded, ids, labels, image)
    assert out_ids == expanded
    assert out_labels == [IGNORE] * 9 + [6, 2]


def test_the_collator_adds_the_modality_ids_a_processor_returns():
    from ftcli.data.collate import VisionCollator

    class Processor:  # a Qwen2.5-VL-like processor: M-RoPE positions read mm_token_type_ids
        return_mm_token_type_ids = True
        model_input_names = ["input_ids", "attention_mask", "pixel_values", "mm_token_type_ids"]

        def image_processor(self, images, return_tensors):
            return {
                "pixel_values": torch.zeros(len(images), 3, 4, 4),
                "image_grid_thw": torch.ones(len(images), 3),
            }

        def create_mm_token_type_ids(self, input_ids):
            return [[int(t == 9) for t in row] for row in input_ids]

    image = str(SHAPES / EVAL[0]["image"])
    batch = VisionCollator(0, processor=Processor())(
        [
            {"input_ids": [5, 9, 9, 6], "labels": [IGNORE, IGNORE, IGNORE, 6], "images": [image]},
            {"input_ids": [9, 6], "labels": [IGNORE, 6], "images": [image]},
        ]
    )
    assert batch["mm_token_type_ids"].tolist() == [[0, 1, 1, 0], [1, 0, 0, 0]]
    assert batch["image_grid_thw"].shape == (2, 3) and batch["pixel_values"].shape[0] == 2
