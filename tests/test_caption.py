"""task: caption — the GIT model (mask per LM family), what trains, learning on the synthetic shapes, reloading a
run dir in a fresh process, QLoRA, resume, and the image data layouts."""

import json

import pytest
import torch

from ftcli.recipe import load_recipe
from tests.helpers import DATA, RECIPES, run_cli

SMOKE = RECIPES / "smoke"
SHAPES = DATA / "shapes"
FAMILIES = ["llama", "opt", "mpt"]


def git_model(family):
    import transformers

    from ftcli.models.builtin import builtin_path
    from ftcli.models.git import GitLLM

    lm = transformers.AutoModelForCausalLM.from_pretrained(builtin_path(f"builtin:tiny-{family}"))
    vision = transformers.AutoModel.from_pretrained(builtin_path("builtin:tiny-clip"))
    torch.manual_seed(0)
    return GitLLM(vision, lm).eval()


def caption_recipe(tmp_path, *overrides):
    return load_recipe(
        SMOKE / "caption-lora.yaml",
        [f"output.dir={tmp_path / 'run'}", f"data.cache_dir={tmp_path / 'cache'}", *overrides],
    )


# --- the GIT attention pattern, per family ------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_git_attention_pattern_holds_for_each_family(family):
    """Text is causal over text and sees every image token; image tokens see each other both ways. Checked by
    perturbation at the LM's input (one image token's projected features), so the vision encoder's own
    bidirectional attention cannot fake it."""
    model = git_model(family)
    pixels, ids = torch.randn(2, 3, 32, 32), torch.randint(0, 250, (2, 10))
    n = model.image_tokens(pixels[:1]).shape[1]
    with torch.no_grad():
        base = model(input_ids=ids, pixel_values=pixels).logits

        later = ids.clone()
        later[:, 6] = (later[:, 6] + 1) % 250
        changed = model(input_ids=later, pixel_values=pixels).logits
        assert torch.equal(changed[:, : n + 6], base[:, : n + 6])  # nothing before the change moves
        assert (changed[:, n + 6 :] - base[:, n + 6 :]).abs().amax(-1).min() > 1e-4

        for patch in (0, n - 1):  # the first (CLS) and the last patch token
            original = model.image_tokens

            def nudged(pixel_values, original=original, patch=patch):
                tokens = original(pixel_values).clone()
                tokens[:, patch] += torch.randn(tokens.shape[-1], generator=torch.Generator().manual_seed(1))
                return tokens

            model.image_tokens = nudged
            try:
                moved = model(input_ids=ids, pixel_values=pixels).logits
            finally:
                model.image_tokens = original
            delta = (moved - base).abs().amax(-1)  # (batch, positions)
            assert delta[:, n:].min() > 1e-5, "a text position did not see the image token"
            assert delta[:, :n].min() > 1e-5, "an image token did not see another image token"


def test_mask_form_per_family_and_why_mpt_differs():
    from ftcli.models.git import git_mask

    assert [git_model(f).mask_form for f in FAMILIES] == ["additive", "additive", "blocked"]
    text = torch.tensor([[1, 1, 1, 0]])  # one padding position
    additive, blocked = (
        git_mask(2, text, "additive", torch.float32),
        git_mask(2, text, "blocked", torch.float32),
    )
    allowed = torch.tensor(
        [
            [1, 1, 0, 0, 0, 0],
            [1, 1, 0, 0, 0, 0],
            [1, 1, 1, 0, 0, 0],
            [1, 1, 1, 1, 0, 0],
            [1, 1, 1, 1, 1, 0],
            [1, 1, 1, 1, 1, 0],  # the padding query still sees real keys; padding is never a key
        ],
        dtype=torch.bool,
    )
    assert torch.equal(additive[0, 0] == 0, allowed)
    assert blocked.dtype == torch.bool and torch.equal(~blocked[0, 0], allowed)
    # MPT masks the True entries: handed sdpa's "True = attend" boolean instead, it would invert the pattern.
    model = git_model("mpt")
    pixels, ids = torch.randn(1, 3, 32, 32), torch.randint(0, 250, (1, 6))
    with torch.no_grad():
        inputs, mask, _ = model._inputs(pixels, ids, torch.ones_like(ids))
        right = model.lm(inputs_embeds=inputs, attention_mask=mask).logits
        wrong = model.lm(inputs_embeds=inputs, attention_mask=~mask).logits
    torch.testing.assert_close(right, model(input_ids=ids, pixel_values=pixels).logits)
    assert not torch.allclose(right, wrong, atol=1e-3)


@pytest.mark.parametrize("family", FAMILIES)
def test_cached_generation_equals_step_by_step_greedy_decoding(family):
    model = git_model(family)
    pixels, prompt = torch.randn(1, 3, 32, 32), torch.randint(0, 250, (1, 3))
    generated = model.generate(
        pixels, prompt, max_new_tokens=6, do_sample=False, pad_token_id=0, eos_token_id=None
    )
    sequence = prompt
    with torch.no_grad():
        for _ in range(6):
            next_token = model(input_ids=sequence, pixel_values=pixels).logits[:, -1].argmax(-1, keepdim=True)
            sequence = torch.cat([sequence, next_token], 1)
    assert generated.tolist() == sequence[:, 3:].tolist()


# --- training -------------------------------------------------------------------------------------------------


def test_projection_and_lora_learn_the_colours_and_a_fresh_process_gives_the_same_captions(tmp_path):
    """The issue's bar: eval loss falls clearly and greedy captions of held-out images name the right colour for
    at least 80% of them; the run dir rebuilt in another process captions identically."""
    from ftcli.infer.describe import describe
    from ftcli.infer.inputs import read_inputs
    from ftcli.tasks import caption

    recipe = caption_recipe(tmp_path)
    eval_rows = [json.loads(line) for line in (SHAPES / "eval.jsonl").read_text().splitlines()]
    images = [str(SHAPES / row["image"]) for row in eval_rows]
    in_process = []

    def captions(model, tokenizer):
        model.eval()
        items = read_inputs([], None, images)
        processor = caption_processor(recipe)
        in_process.extend(
            r["output"] for r in describe(model, tokenizer, processor, items, recipe.infer, None, recipe)
        )

    summary = caption.run(recipe, overwrite=True, on_done=captions)
    assert summary["status"] == "completed"
    assert summary["final_eval_loss"] < 0.25 * summary["first_loss"], summary
    right = sum(
        row["caption"].split()[1] == (out.split() + ["", ""])[1] for row, out in zip(eval_rows, in_process)
    )
    assert right >= 0.8 * len(eval_rows), in_process

    code, out, err = run_cli("infer", tmp_path / "run", *sum((["--image", i] for i in images), []), "--json")
    assert code == 0, err
    fresh = [json.loads(line) for line in out.splitlines()]
    assert [r["output"] for r in fresh] == in_process
    assert [r["image"] for r in fresh] == images
    saved = json.loads((tmp_path / "run" / "git_config.json").read_text())
    assert saved["vision_model"] == "builtin:tiny-clip" and set(saved["trained_parts"]) == {
        "projection",
        "adapters",
    }


def caption_processor(recipe):
    from ftcli.models.multimodal import load_vision

    return load_vision(recipe)[1]


def trained_and_initial(tmp_path, *overrides):
    """(initial, trained, names that required grad) parameter tensors of a 3-step run, by name."""
    import transformers

    from ftcli.models.multimodal import build_git
    from ftcli.tasks import caption

    recipe = caption_recipe(tmp_path, "training.max_steps=3", "training.learning_rate=1e-2", *overrides)
    transformers.set_seed(recipe.training.seed)
    initial = {n: p.detach().clone() for n, p in build_git(recipe)[0].named_parameters()}
    trained, trainable = {}, set()

    def keep(model, tokenizer):
        trained.update({n: p.detach().clone() for n, p in model.named_parameters()})
        trainable.update(n for n, p in model.named_parameters() if p.requires_grad)

    caption.run(recipe, overwrite=True, on_done=keep)
    return initial, trained, trainable


def test_a_continued_run_keeps_what_the_earlier_run_trained_where_it_freezes_it(tmp_path):
    """Stage 1 trains the LM head in full, stage 2 continues with LoRA (head frozen): stage 2's run dir still
    holds stage 1's head, so `infer` on stage 2 alone rebuilds the model that stage 2 trained."""
    from safetensors.torch import load_file

    from ftcli.infer.target import resolve_target
    from ftcli.models.multimodal import load_git_for_inference
    from ftcli.tasks import caption

    steps = ["training.max_steps=3", "training.learning_rate=1e-2"]
    first = tmp_path / "first"
    caption.run(
        caption_recipe(first, *steps, "method.type=full", 'multimodal.keys_to_finetune=["lm_head"]'),
        overwrite=True,
    )
    head = load_file(str(first / "run" / "model.safetensors"))["lm.lm_head.weight"]
    seen = {}
    second = tmp_path / "second"
    recipe = caption_recipe(second, *steps, f"model.adapter={first / 'run'}")
    caption.run(recipe, overwrite=True, on_done=lambda model, tok: seen.update(model=model))
    assert not seen["model"].lm.lm_head.weight.requires_grad  # stage 2 froze it ...
    saved = load_file(str(second / "run" / "model.safetensors"))
    assert torch.equal(saved["lm.lm_head.weight"], head)  # ... and still carries stage 1's
    rebuilt, _, _ = load_git_for_inference(resolve_target(str(second / "run"), []))
    for name, param in seen["model"].named_parameters():
        assert torch.equal(dict(rebuilt.named_parameters())[name].cpu(), param.detach().cpu()), name


@pytest.mark.parametrize(
    "method, keys, expect_changed",
    [
        ("full", [], ("projection.",)),
        ("full", ["lm_head"], ("projection.", "lm.lm_head.")),
        ("full", ["vision."], ("projection.", "vision.")),
        ("full", ["lm."], ("projection.", "lm.")),
        ("lora", [], ("projection.", "lora_")),
    ],
    ids=["projection", "head", "vit", "whole-lm", "lora"],
)
def test_keys_to_finetune_trains_exactly_what_it_names(tmp_path, method, keys, expect_changed):
    initial, trained, trainable = trained_and_initial(
        tmp_path, f"method.type={method}", f"multimodal.keys_to_finetune={json.dumps(keys)}"
    )
    assert initial.keys() == trained.keys()
    named = lambda n: any((k in n) if k.endswith("_") else n.startswith(k) for k in expect_changed)
    assert trainable == {n for n in initial if named(n)}
    changed = {n for n in initial if not torch.equal(initial[n], trained[n])}
    assert changed <= trainable, f"frozen parameters changed: {sorted(changed - trainable)[:5]}"
    for prefix in expect_changed:  # each named part really trained (post_layernorm & co may get no gradient)
        assert any(
            named(n) and (prefix in n if prefix.endswith("_") else n.startswith(prefix)) for n in changed
        )
    assert len(changed) >= 0.8 * len(trainable)
    if (
        method == "lora"
    ):  # the frozen recipe rebuilds the same LoRA layout (q/k/v), so the run reloads exactly
        from ftcli.models.multimodal import build_git

        frozen = load_recipe(tmp_path / "run" / "recipe.resolved.yaml")
        assert {n for n, _ in build_git(frozen)[0].named_parameters()} == trained.keys()
        assert any(".q_proj.lora_A" in n for n in trained) and not any(".o_proj.lora_" in n for n in trained)


def test_tied_head_of_opt_is_found_by_its_head_name_and_a_key_matching_nothing_is_an_error(tmp_path):
    from ftcli.errors import RecipeError
    from ftcli.models.multimodal import build_git

    recipe = caption_recipe(
        tmp_path, "model.name=builtin:tiny-opt", "method.type=full", 'multimodal.keys_to_finetune=["lm_head"]'
    )
    model, _ = build_git(recipe)
    assert model.lm.get_input_embeddings().weight.requires_grad  # tied: the head is the embedding matrix
    recipe = caption_recipe(tmp_path, "method.type=full", 'multimodal.keys_to_finetune=["q_lin"]')
    with pytest.raises(RecipeError, match="'q_lin' matches no parameter") as err:
        build_git(recipe)
    assert err.value.key == "multimodal.keys_to_finetune"


@pytest.mark.slow
@pytest.mark.parametrize("family", ["opt", "mpt"])
def test_opt_and_mpt_train_a_step_and_generate_from_the_cli(tmp_path, family):
    run = tmp_path / "run"
    code, _, err = run_cli(
        "train",
        SMOKE / "caption-lora.yaml",
        f"model.name=builtin:tiny-{family}",
        f"output.dir={run}",
        "training.max_steps=2",
        f"data.cache_dir={tmp_path / 'c'}",
    )
    assert code == 0, err
    code, out, err = run_cli(
        "infer", run, "--image", SHAPES / "images/eval-000.png", "--max-new-tokens", "5", "--json"
    )
    assert code == 0, err
    assert json.loads(out)["completion_tokens"] >= 1


@pytest.mark.slow
def test_qlora_caption_quantizes_only_the_lm_and_reloads_the_same(tmp_path):
    import bitsandbytes as bnb

    from ftcli.infer.describe import describe
    from ftcli.infer.inputs import read_inputs
    from ftcli.tasks import caption

    recipe = caption_recipe(tmp_path, "method.type=qlora", "training.epochs=2")
    image = str(SHAPES / "images/eval-003.png")
    seen = {}

    def check(model, tokenizer):
        seen["4bit"] = sum(isinstance(m, bnb.nn.Linear4bit) for m in model.lm.modules())
        seen["vision"] = {p.dtype for p in model.vision.parameters()}
        items = read_inputs([], None, [image])
        out = describe(model.eval(), tokenizer, caption_processor(recipe), items, recipe.infer, None, recipe)
        seen["caption"] = next(out)["output"]

    assert caption.run(recipe, overwrite=True, on_done=check)["status"] == "completed"
    assert seen["4bit"] > 0 and seen["vision"] == {torch.float32}
    code, out, err = run_cli("infer", tmp_path / "run", "--image", image)
    assert code == 0, err
    assert out.strip() == seen["caption"].strip()


@pytest.mark.slow
def test_resume_loads_the_trained_tensors_and_matches_an_uninterrupted_run(tmp_path):
    from safetensors.torch import load_file

    common = [
        "training.lr_scheduler=constant",
        "training.warmup_steps=0",
        "training.save_steps=3",
        f"data.cache_dir={tmp_path / 'c'}",
        "data.eval_sources=[]",
    ]
    straight, parted = tmp_path / "straight", tmp_path / "parted"
    assert (
        run_cli(
            "train", SMOKE / "caption-lora.yaml", *common, "training.max_steps=6", f"output.dir={straight}"
        )[0]
        == 0
    )
    assert (
        run_cli(
            "train", SMOKE / "caption-lora.yaml", *common, "training.max_steps=3", f"output.dir={parted}"
        )[0]
        == 0
    )
    checkpoint = sorted(p.name for p in parted.iterdir() if p.name.startswith("checkpoint-"))
    assert checkpoint == ["checkpoint-3"]
    assert (parted / "checkpoint-3" / "model.safetensors").stat().st_size < 200_000  # trained tensors only
    code, _, err = run_cli(
        "train",
        SMOKE / "caption-lora.yaml",
        *common,
        "training.max_steps=6",
        f"output.dir={parted}",
        "--resume",
    )
    assert code == 0, err
    a, b = load_file(straight / "model.safetensors"), load_file(parted / "model.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-5, rtol=1e-4)


# --- image data -------------------------------------------------------------------------------------------------


def prepared(tmp_path, sources, fmt="caption", extra=None, tokenizer_name="builtin:tiny-llama"):
    from ftcli.data.prepare import prepare_data
    from ftcli.models.load import load_tokenizer

    recipe = caption_recipe(
        tmp_path,
        f"model.name={tokenizer_name}",
        f"data.format={fmt}",
        f"data.sources={json.dumps(sources)}",
        "data.eval_sources=[]",
        *(extra or []),
    )
    tokenizer = load_tokenizer(recipe.model)
    return prepare_data(recipe, tokenizer), tokenizer


def test_coco_layout_joins_captions_to_images(tmp_path):
    data, tokenizer = prepared(tmp_path, [str(SHAPES / "captions_coco.json")])
    assert len(data.train) == 300  # two captions for each of 150 images
    texts = {
        tokenizer.decode([t for t in row["labels"] if t >= 0], skip_special_tokens=True)
        for row in data.train.select(range(20))
    }
    assert any(" in " in t for t in texts) and any(t.startswith("a ") for t in texts)
    assert all(path.startswith(str(SHAPES / "images")) for path in data.train["image"])


def test_caption_rows_start_with_the_begin_token_and_learn_only_the_caption(tmp_path):
    data, tokenizer = prepared(
        tmp_path, [str(SHAPES / "train.jsonl")], extra=["multimodal.caption_prompt=A photo of"]
    )
    row = data.train[0]
    assert row["input_ids"][0] == tokenizer.eos_token_id  # the byte tokenizer has no BOS: EOS begins
    prompt = tokenizer("A photo of")["input_ids"]
    assert row["input_ids"][1 : 1 + len(prompt)] == prompt
    assert all(label == -100 for label in row["labels"][: 1 + len(prompt)])
    caption = tokenizer.decode([t for t in row["labels"] if t >= 0], skip_special_tokens=True)
    assert caption.startswith(" a ") or caption.startswith("a ")


def test_instruction_and_llava_rows_and_a_mix_with_captions(tmp_path):
    sources = [
        {"path": str(SHAPES / "train.jsonl"), "format": "caption"},
        {"path": str(SHAPES / "instructions.jsonl"), "format": "image_instruction", "weight": 0.5},
        {"path": str(SHAPES / "llava.jsonl"), "format": "image_chat", "max_samples": 10},
    ]
    data, tokenizer = prepared(tmp_path, sources)
    assert len(data.train) == 150 + 75 + 10
    texts = [tokenizer.decode(row["input_ids"]) for row in data.train]
    answers = [tokenizer.decode([t for t in row["labels"] if t >= 0]) for row in data.train]
    assert not any("<image>" in t for t in texts)  # LLaVA's placeholder is not text: the image goes first
    assert any("Describe the picture." in t for t in texts) and any("What colour" in t for t in texts)
    assert not any("What colour" in a or "Describe" in a for a in answers)  # questions carry no loss


def test_image_paths_are_confined_to_their_folder_unless_allowed(tmp_path):
    from ftcli.errors import DataError

    outside = tmp_path / "elsewhere.png"
    outside.write_bytes((SHAPES / "images/train-000.png").read_bytes())
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"image": "../elsewhere.png", "caption": "a red circle"}) + "\n")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "rows.jsonl").write_text(rows.read_text())
    with pytest.raises(DataError) as err:
        prepared(tmp_path, [str(tmp_path / "data" / "rows.jsonl")])
    assert "outside the image folder" in str(err.value) and err.value.row == 1
    data, _ = prepared(
        tmp_path, [str(tmp_path / "data" / "rows.jsonl")], extra=["data.allow_images_outside=true"]
    )
    assert data.train["image"] == [str(outside)]


def test_missing_and_unreadable_images_are_named_by_file_and_row_or_skipped_and_counted(tmp_path):
    from ftcli.errors import DataError

    (tmp_path / "broken.png").write_bytes(b"not a png")
    (tmp_path / "ok.png").write_bytes((SHAPES / "images/train-000.png").read_bytes())
    rows = tmp_path / "rows.jsonl"
    rows.write_text(
        "\n".join(
            json.dumps(r)
            for r in [
                {"image": "ok.png", "caption": "a red circle"},
                {"image": "missing.png", "caption": "a red circle"},
                {"image": "broken.png", "caption": "a red circle"},
            ]
        )
        + "\n"
    )
    with pytest.raises(DataError) as err:
        prepared(tmp_path, [str(rows)])
    assert err.value.row == 2 and "missing.png: image file not found" in str(err.value)
    data, _ = prepared(tmp_path, [str(rows)], extra=["data.on_bad_rows=skip"])
    assert len(data.train) == 1 and data.stats["sources"][0]["bad_skipped"] == 2


def test_embedded_base64_images_as_in_m3it_train_like_files(tmp_path):
    import base64

    from ftcli.data.collate import ImageCollator

    rows = tmp_path / "m3it.jsonl"
    encoded = [base64.b64encode((SHAPES / f"images/train-00{i}.png").read_bytes()).decode() for i in range(3)]
    rows.write_text(
        "\n".join(
            json.dumps(
                {"instruction": "What colour is it?", "inputs": "", "outputs": c, "image_base64_str": [b64]}
            )
            for c, b64 in zip(["red", "green", "blue"], encoded)
        )
        + "\n"
    )
    columns = {"image": "image_base64_str", "input": "inputs", "output": "outputs"}
    data, tokenizer = prepared(tmp_path, [{"path": str(rows), "columns": columns}], fmt="image_instruction")
    assert len(data.train) == 3 and all(i.startswith("data:image;base64,") for i in data.train["image"])
    batch = ImageCollator(
        tokenizer.pad_token_id, image_processor=caption_processor(caption_recipe(tmp_path))
    )([data.train[i] for i in range(3)])
    assert batch["pixel_values"].shape == (3, 3, 32, 32)
    rows.write_text(
        json.dumps({"instruction": "q", "outputs": "a", "image_base64_str": ["QUJD" * 20]}) + "\n"
    )
    from ftcli.errors import DataError

    with pytest.raises(DataError, match="embedded image: not a readable image"):
        prepared(tmp_path, [{"path": str(rows), "columns": columns}], fmt="image_instruction")


@pytest.mark.slow
@pytest.mark.parametrize("parts", [[], ["vision."]], ids=["lora", "lora+vision"])
def test_two_worker_caption_run_reaches_the_one_process_weights(tmp_path, parts):
    """DDP through accelerate-launched workers (gloo on CPU): the same global batch gives the same trained tensors,
    also when the vision encoder trains (CLIP's post_layernorm then gets no gradient, which DDP must expect)."""
    from safetensors.torch import load_file

    common = ["training.max_steps=4", "training.lr_scheduler=constant", f"data.cache_dir={tmp_path / 'c'}"]
    common.append(f"multimodal.keys_to_finetune={json.dumps(parts)}")
    code, _, err = run_cli("train", SMOKE / "caption-lora.yaml", *common, f"output.dir={tmp_path / 'one'}")
    assert code == 0, err
    code, _, err = run_cli(
        "train",
        SMOKE / "caption-lora.yaml",
        *common,
        f"output.dir={tmp_path / 'two'}",
        "launch.num_processes=2",
        "training.batch_size=4",
    )
    assert code == 0, err
    one, two = (
        load_file(tmp_path / "one" / "model.safetensors"),
        load_file(tmp_path / "two" / "model.safetensors"),
    )
    assert one.keys() == two.keys()
    for key in one:
        if key.endswith("k_proj.bias"):  # its gradient is 0 up to rounding (softmax ignores a shift shared by
            continue  # every key), and Adam scales that rounding noise up to a step
        torch.testing.assert_close(two[key], one[key], rtol=1e-4, atol=1e-5, msg=key)


@pytest.mark.slow
def test_gradient_checkpointing_and_a_repetition_penalty_work_on_the_git_model(tmp_path):
    """Trainer 5 turns checkpointing on through activation_checkpointing_enable (real LMs get it from `auto`)."""
    from ftcli.tasks import caption

    recipe = caption_recipe(
        tmp_path, "training.gradient_checkpointing=true", "training.max_steps=3", "data.eval_sources=[]"
    )
    summary = caption.run(recipe, overwrite=True)
    assert summary["status"] == "completed" and summary["gradient_checkpointing"]["enabled"] is True
    code, out, err = run_cli(
        "infer",
        tmp_path / "run",
        "--image",
        SHAPES / "images/eval-000.png",
        "--max-new-tokens",
        "6",
        "--json",
        "infer.repetition_penalty=1.3",
    )
    assert code == 0, err
    assert json.loads(out)["completion_tokens"] >= 1


def test_image_token_count_is_what_the_encoder_gives_with_or_without_a_class_token():
    """git_config.json's image_tokens (and the memory estimate): CLIP adds a class token, SigLIP has none."""
    import transformers

    from ftcli.models.git import GitLLM
    from ftcli.models.multimodal import image_token_count

    lm = git_model("llama").lm
    siglip = transformers.SiglipVisionModel(
        transformers.SiglipVisionConfig(
            image_size=32,
            patch_size=8,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
        )
    )
    for model in (git_model("llama"), GitLLM(siglip, lm)):
        tokens = model.image_tokens(torch.zeros(1, 3, 32, 32)).shape[1]
        assert image_token_count(model) == tokens
    assert image_token_count(GitLLM(siglip, lm)) == 16
