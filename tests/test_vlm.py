"""task: vlm — a pretrained vision-language model (builtin tiny LLaVA) learns the synthetic shapes' colours on
held-out images; rows are laid out by the model's own processor with labels on the answers only (several images
per row, LLaVA conversations, instructions); the run dir, its merge and its export load in plain
transformers/peft with the same logits; QLoRA quantizes the language model only; full fine-tuning freezes the
vision tower unless told otherwise. task: vlm_dpo — DPO on preference pairs about images: the saved adapter,
loaded in plain transformers/peft, prefers the right colour of held-out images over the base model."""

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


def test_overwrite_may_replace_a_vlm_run_dir(trained):
    """Its processor files are ftcli's too: --overwrite must not take them for the user's."""
    from ftcli.run_dir import check_replaceable

    out, _, _ = trained
    assert (out / "processor_config.json").exists()
    check_replaceable(load_recipe(SMOKE / "vlm-lora.yaml", [f"output.dir={out}"]), out)


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


# --- task: vlm_dpo -------------------------------------------------------------------------------------------

PAIRS_EVAL = [json.loads(line) for line in (SHAPES / "preferences_eval.jsonl").read_text().splitlines()]


def answer_logprob(model, processor, pair: dict, side: str) -> float:
    """log p(answer | image, question) under a plain transformers model, the prompt laid out by its processor."""
    from PIL import Image

    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": pair["prompt"]}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    full = processor.apply_chat_template(
        messages + [{"role": "assistant", "content": [{"type": "text", "text": pair[side]}]}]
    )
    image = Image.open(SHAPES / pair["image"]).convert("RGB")
    n = processor(text=[prompt], images=[image], return_tensors="pt")["input_ids"].shape[1]
    inputs = processor(text=[full], images=[image], return_tensors="pt")
    with torch.no_grad():
        logits = model(**inputs).logits[0, n - 1 : -1].float()
    answer = inputs["input_ids"][0, n:]
    return logits.log_softmax(-1).gather(-1, answer[:, None]).sum().item()


def test_dpo_on_image_pairs_makes_the_saved_adapter_prefer_the_right_colour_of_held_out_images(tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from ftcli.tasks import dpo

    out = tmp_path / "run"
    summary = dpo.run(load_recipe(SMOKE / "vlm-dpo-lora.yaml", [f"output.dir={out}"]))
    assert summary["status"] == "completed" and summary["final_loss"] < 0.5 * summary["first_loss"]
    assert summary["eval_accuracy"] >= 0.8 and summary["eval_margin"] > 0
    processor = AutoProcessor.from_pretrained(out)  # the run dir carries the processor
    base = AutoModelForImageTextToText.from_pretrained(builtin_path("builtin:tiny-llava")).eval()
    margins = {
        "base": [
            answer_logprob(base, processor, p, "chosen") - answer_logprob(base, processor, p, "rejected")
            for p in PAIRS_EVAL
        ]
    }
    tuned = PeftModel.from_pretrained(base, out).eval()
    margins["tuned"] = [
        answer_logprob(tuned, processor, p, "chosen") - answer_logprob(tuned, processor, p, "rejected")
        for p in PAIRS_EVAL
    ]
    implicit = [t - b for t, b in zip(margins["tuned"], margins["base"])]  # DPO's implicit reward margin
    assert sum(m > 0 for m in implicit) >= 0.8 * len(PAIRS_EVAL), implicit
    assert sum(m > 0 for m in margins["tuned"]) >= 0.8 * len(PAIRS_EVAL), margins["tuned"]
    code, stdout, err = run_cli(
        "infer", out, "--image", SHAPES / PAIRS_EVAL[0]["image"], "-p", "What colour is the shape?"
    )
    assert code == 0 and len(stdout.splitlines()) == 1, err


def pairs_for(max_prompt_length=64):
    from ftcli.data.vision import VisionPairs
    from ftcli.models.load import load_processor

    processor = load_processor(load_recipe(SMOKE / "vlm-dpo-lora.yaml").model)
    images = ImageRows(str(SHAPES), False, 0, "")
    return processor, VisionPairs(
        processor.tokenizer,
        {},
        processor.chat_template,
        80,
        max_prompt_length,
        "truncate",
        80,
        "image_preference",
        processor=processor,
        images=images,
    )


def test_image_pairs_put_the_image_tokens_in_the_prompt_and_never_cut_them():
    processor, pairs = pairs_for()
    row = {"image": "images/train-000.png", "prompt": "What colour?", "chosen": "red", "rejected": "blue"}
    out = pairs({k: [v] for k, v in row.items()})
    image = image_token_id(processor)
    assert out["status"] == ["ok"] and out["images"] == [[str(SHAPES / "images/train-000.png")]]
    prompt = processor.tokenizer.decode(out["prompt_ids"][0])
    assert out["prompt_ids"][0].count(image) == 16 and prompt.index("<image>") < prompt.index("What colour?")
    assert prompt.endswith("<|im_start|>assistant\n")  # the generation prompt, as infer lays it out
    decode = processor.tokenizer.decode
    assert (decode(out["chosen_ids"][0]), decode(out["rejected_ids"][0])) == (
        "red<|im_end|>\n",
        "blue<|im_end|>\n",
    )
    _, short = pairs_for(max_prompt_length=20)  # the image's 16 tokens and the template do not fit
    assert short({k: [v] for k, v in row.items()})["status"] == ["dropped:overlong"]
    marked = pairs({k: [v] for k, v in {**row, "prompt": "<image> and <image>"}.items()})
    assert marked["status"] == ["bad"] and "2 <image> marks in the text for 1 images" in marked["error"][0]
    answered = pairs({k: [v] for k, v in {**row, "chosen": "red <image>"}.items()})
    assert answered["status"] == ["bad"] and "images belong in the prompt" in answered["error"][0]


def test_a_bos_the_template_wrote_is_not_added_again():
    """As transformers' own apply_chat_template does: a Gemma 3-style template starts with <bos>."""
    from types import SimpleNamespace

    from ftcli.data.vision import processor_inputs

    seen = []

    def processor(text, images, **kwargs):
        seen.append(kwargs)
        return {}

    processor.tokenizer = SimpleNamespace(bos_token="<bos>")
    processor_inputs(processor, ["<bos><start_of_turn>user"], [])
    processor_inputs(processor, ["<|im_start|>user"], [], padding=True)
    assert seen == [{"add_special_tokens": False}, {"padding": True}]


def test_the_pair_collator_lays_out_chosen_then_rejected_with_each_pairs_images_twice():
    from ftcli.data.collate import VisionPairCollator

    class Processor:  # a Qwen2.5-VL-like processor: M-RoPE positions read mm_token_type_ids
        return_mm_token_type_ids = True
        model_input_names = ["input_ids", "attention_mask", "pixel_values", "mm_token_type_ids"]

        def image_processor(self, images, return_tensors):
            return {
                "pixel_values": torch.stack([torch.full((3, 4, 4), float(i)) for i in range(len(images))])
            }

        def create_mm_token_type_ids(self, input_ids):
            return [[int(t == 9) for t in row] for row in input_ids]

    a, b = (str(SHAPES / r["image"]) for r in PAIRS_EVAL[:2])
    batch = VisionPairCollator(0, processor=Processor())(
        [
            {"prompt_ids": [5, 9, 9], "chosen_ids": [6, 2], "rejected_ids": [7, 7, 2], "images": [a]},
            {"prompt_ids": [9, 5], "chosen_ids": [6, 2], "rejected_ids": [7, 2], "images": [b]},
        ]
    )
    assert batch["input_ids"].tolist() == [
        [5, 9, 9, 6, 2, 0],
        [9, 5, 6, 2, 0, 0],
        [5, 9, 9, 7, 7, 2],
        [9, 5, 7, 2, 0, 0],
    ]
    assert batch["completion_mask"].tolist() == [
        [0, 0, 0, 1, 1, 0],
        [0, 0, 1, 1, 0, 0],
        [0, 0, 0, 1, 1, 1],
        [0, 0, 1, 1, 0, 0],
    ]
    assert batch["attention_mask"].sum(1).tolist() == [5, 4, 6, 4]
    assert batch["mm_token_type_ids"][:, :3].tolist() == [[0, 1, 1], [1, 0, 0], [0, 1, 1], [1, 0, 0]]
    assert len(batch["pixel_values"]) == 4  # row order: a, b (chosen), a, b (rejected)


def test_vlm_dpo_refuses_keys_it_would_not_read(capsys):
    code = call_main("validate", SMOKE / "vlm-dpo-lora.yaml", "align.precompute_ref_log_probs=true")
    err = capsys.readouterr().err
    assert code == 2 and "align.precompute_ref_log_probs" in err and "vlm_dpo" in err, err


@pytest.mark.slow
def test_two_workers_train_the_vision_tower_to_the_one_process_weights(tmp_path):
    """DDP (gloo on CPU) with the vision tower trained: LLaVA reads the tower's second-to-last layer, so its last
    layer gets no gradient, which DDP must expect; the same global batch gives the same weights."""
    from safetensors.torch import load_file

    common = [
        "method.type=full",
        "method.keys_to_finetune=[vision_tower, multi_modal_projector]",
        "training.max_steps=3",
        "training.learning_rate=1e-3",
        "training.lr_scheduler=constant",
        f"data.cache_dir={tmp_path / 'c'}",
    ]
    for name, extra in (("one", []), ("two", ["launch.num_processes=2", "training.batch_size=4"])):
        code, _, err = run_cli(
            "train", SMOKE / "vlm-lora.yaml", *common, *extra, f"output.dir={tmp_path / name}"
        )
        assert code == 0, err
    one, two = (load_file(tmp_path / name / "model.safetensors") for name in ("one", "two"))
    assert one.keys() == two.keys()
    for key in one:
        if key.endswith(
            "k_proj.bias"
        ):  # its gradient is 0 up to rounding: Adam scales that noise up to a step
            continue
        torch.testing.assert_close(two[key], one[key], rtol=1e-4, atol=1e-5, msg=key)


def test_a_processor_that_needs_torchvision_says_so(monkeypatch):
    """transformers builds Qwen2/2.5-VL's video processor with torchvision only (here: not installed): one line
    saying what to install, not an internal error."""
    import transformers

    from ftcli.errors import UserError
    from ftcli.models.load import load_processor

    def refuse(*args, **kwargs):
        raise ImportError("Video processor cannot be loaded - requested pil backend is not available.")

    monkeypatch.setattr(transformers.AutoProcessor, "from_pretrained", refuse)
    with pytest.raises(UserError, match="needs torchvision"):
        load_processor(load_recipe(SMOKE / "vlm-lora.yaml").model)


QWEN_TEMPLATE = (  # Qwen2-VL's layout: each image as <|vision_start|><|image_pad|><|vision_end|>
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% for item in message['content'] %}{% if item['type'] == 'image' %}"
    "{{ '<|vision_start|><|image_pad|><|vision_end|>' }}{% else %}{{ item['text'] }}{% endif %}{% endfor %}"
    "{{ '<|im_end|>\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


@pytest.fixture(scope="module")
def tiny_qwen():
    """A random Qwen2.5-VL (M-RoPE over image_grid_thw and mm_token_type_ids) and its processor, built in code.
    Without torchvision transformers cannot build the processor's video processor, which images never use: the
    processor is then assembled without it."""
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
        Qwen2VLImageProcessorPil,
    )

    from ftcli.models.builtin import EOS, IM_END, IM_START, PAD, build_byte_tokenizer

    tok = build_byte_tokenizer()
    marks = ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
    tok.add_special_tokens({"additional_special_tokens": [IM_START, IM_END, *marks]})
    tok.chat_template = QWEN_TEMPLATE
    ids = tok.convert_tokens_to_ids
    vision = dict(depth=2, hidden_size=64, intermediate_size=128, num_heads=4, patch_size=8, window_size=16)
    text = dict(vocab_size=len(tok), hidden_size=128, intermediate_size=256, num_hidden_layers=2)
    text.update(num_attention_heads=4, num_key_value_heads=2, eos_token_id=ids(EOS), pad_token_id=ids(PAD))
    text["rope_parameters"] = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [4, 6, 6]}
    config = Qwen2_5_VLConfig(
        vision_config={**vision, "out_hidden_size": 128, "fullatt_block_indexes": [1]},
        text_config=text,
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
    )
    torch.manual_seed(0)
    model = Qwen2_5_VLForConditionalGeneration(config).eval()
    images = Qwen2VLImageProcessorPil(patch_size=8, merge_size=2, min_pixels=256, max_pixels=4096)
    try:
        processor = Qwen2_5_VLProcessor(image_processor=images, tokenizer=tok, chat_template=QWEN_TEMPLATE)
    except (ImportError, AttributeError, TypeError):  # no torchvision: no video processor
        processor = object.__new__(Qwen2_5_VLProcessor)
        processor.image_processor, processor.tokenizer, processor.video_processor = images, tok, None
        processor.chat_template = QWEN_TEMPLATE
        processor.image_token, processor.video_token = "<|image_pad|>", "<|video_pad|>"
        processor.image_token_id, processor.video_token_id = ids("<|image_pad|>"), ids("<|video_pad|>")
    return model, processor


def test_qwen2_5_vl_batches_give_the_logits_of_the_processors_own_layout(tiny_qwen):
    """Padded rows and image pairs, laid out by ftcli, give Qwen2.5-VL the ids and the M-RoPE positions its
    processor gives one conversation at a time: the same logits on every real token."""
    from PIL import Image

    from ftcli.data.collate import VisionCollator, VisionPairCollator
    from ftcli.data.vision import VisionPairs

    model, processor = tiny_qwen
    tok, images = processor.tokenizer, ImageRows(str(SHAPES), False, 0, "")
    paths, questions = ["images/eval-000.png", "images/eval-004.png"], ["What colour?", "Which colour is it?"]

    def own_logits(path, question, answer):
        content = [{"type": "image"}, *([{"type": "text", "text": question}] if question else [])]
        messages = [{"role": "user", "content": content}]
        messages.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
        text = tok.apply_chat_template(messages, tokenize=False)
        inputs = processor(
            text=[text], images=[Image.open(SHAPES / path).convert("RGB")], return_tensors="pt"
        )
        with torch.no_grad():
            return inputs["input_ids"][0], model(**inputs).logits[0]

    rows = VisionRows(processor, "caption", {}, QWEN_TEMPLATE, "completion", 256, "truncate", images)
    out = rows({"image": paths, "caption": ["red", "a purple circle on grey"]})
    batch = VisionCollator(tok.pad_token_id, processor=processor)(
        [{k: out[k][i] for k in ("input_ids", "labels", "images")} for i in range(2)]
    )
    batch.pop("labels")
    pairs = VisionPairs(
        tok, {}, QWEN_TEMPLATE, 256, 200, "truncate", 200, "image_preference", processor=processor
    )
    pairs.images = images
    out = pairs(
        {
            "image": paths,
            "prompt": questions,
            "chosen": ["red", "purple"],
            "rejected": ["blue", "a green one"],
        }
    )
    pair_batch = VisionPairCollator(tok.pad_token_id, processor=processor)(
        [{k: out[k][i] for k in ("prompt_ids", "chosen_ids", "rejected_ids", "images")} for i in range(2)]
    )
    pair_batch.pop("completion_mask")
    probe = processor(
        text=["<|vision_start|><|image_pad|><|vision_end|>"],
        images=[Image.open(SHAPES / paths[0]).convert("RGB")],
        return_tensors="pt",
    )
    for key in set(probe) - {"input_ids", "attention_mask"}:  # what this transformers' processor adds
        assert key in batch and key in pair_batch, key
    with torch.no_grad():
        logits, pair_logits = model(**batch).logits, model(**pair_batch).logits
    expected = [
        (logits[0], own_logits(paths[0], None, "red")),
        (logits[1], own_logits(paths[1], None, "a purple circle on grey")),
        (pair_logits[0], own_logits(paths[0], questions[0], "red")),
        (pair_logits[1], own_logits(paths[1], questions[1], "purple")),
        (pair_logits[2], own_logits(paths[0], questions[0], "blue")),
        (pair_logits[3], own_logits(paths[1], questions[1], "a green one")),
    ]
    ids = [*batch["input_ids"], *pair_batch["input_ids"]]
    for row, (got, (own_ids, own)) in enumerate(expected):
        n = len(own_ids)
        assert torch.equal(ids[row][:n], own_ids), row
        torch.testing.assert_close(got[:n], own, rtol=1e-4, atol=1e-4, msg=f"row {row}")
