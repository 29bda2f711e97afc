"""The bad-input catalogue: every malformed recipe, dataset or command line exits 2 with one line that names
the key / file / row and what to do, never a traceback, and leaves no half-written output dir (at most the
frozen recipe and a summary.json saying `failed`)."""

import json

import pytest

from tests.helpers import DATA, RECIPES, call_main, pickle_only_adapter, pickle_only_model

SMOKE = RECIPES / "smoke"
GOOD_CHAT = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}


def write(path, text):
    path.write_text(text)
    return path


def jsonl(path, rows):
    return write(path, "\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")


def recipe_on(tmp_path, data_file, fmt="chat", extra=""):
    return write(
        tmp_path / "r.yaml",
        f"extends: {SMOKE / 'sft-lora.yaml'}\ndata:\n  format: {fmt}\n"
        f"  sources: [{data_file}]\n  cache_dir: {tmp_path / 'cache'}\n{extra}",
    )


def fake_run(path, status="completed", method="lora"):
    """A run dir's record without weights: enough for the refusals that come before any model loads."""
    path.mkdir()
    write(
        path / "recipe.resolved.yaml",
        f"model: {{name: 'builtin:tiny-llama'}}\nmethod: {method}\n"
        f"data: {{sources: [{DATA / 'chat.jsonl'}]}}\n",
    )
    write(path / "summary.json", json.dumps({"status": status, "error": "the disk is full"}))
    write(path / "adapter_config.json", "{}")
    return path


def alias_bomb(path):
    levels = ["a: &a [x, x, x, x, x, x, x, x, x, x]"]
    for i, name in enumerate("bcdef"):
        previous = "abcdef"[i]
        levels.append(f"{name}: &{name} [{', '.join(['*' + previous] * 10)}]")
    return write(path, "\n".join(levels) + "\n")


def png(path, size):
    from PIL import Image

    Image.new("1", size).save(path)
    return path


def symlink(link, target):
    link.symlink_to(target)
    return link


def caption_rows(t, image, image_dir=None):
    source = {"path": str(jsonl(t / "c.jsonl", [{"image": image, "caption": "a red circle"}]))}
    if image_dir:
        source["image_dir"] = str(image_dir)
    return [
        "prepare",
        SMOKE / "caption-lora.yaml",
        f"data.cache_dir={t / 'c'}",
        f"data.sources=[{json.dumps(source)}]",
    ]


def empty_safetensors_beside_bin(path):
    adapter = pickle_only_adapter(path)
    write(adapter / "model.safetensors", "")
    return adapter


# (id, builder(tmp_path) -> argv, expected text in the error line)
CASES = [
    (
        "unknown key",
        lambda t: ["validate", SMOKE / "sft-lora.yaml", "training.learnig_rate=1"],
        "did you mean learning_rate",
    ),
    ("wrong type", lambda t: ["validate", SMOKE / "sft-lora.yaml", "training.epochs=abc"], "training.epochs"),
    (
        "zero batch",
        lambda t: ["validate", SMOKE / "sft-lora.yaml", "training.batch_size=0"],
        "training.batch_size",
    ),
    ("unknown method", lambda t: ["validate", SMOKE / "sft-lora.yaml", "method.type=lorax"], "method"),
    ("unknown task", lambda t: ["validate", SMOKE / "sft-lora.yaml", "task=sftt"], "task"),
    (
        "missing data file",
        lambda t: ["validate", SMOKE / "sft-lora.yaml", "data.sources.0.path=./missing.jsonl"],
        "file not found: ./missing.jsonl",
    ),
    (
        "format the task cannot use",
        lambda t: ["validate", SMOKE / "sft-lora.yaml", "data.format=text"],
        "task sft cannot learn from text rows",
    ),
    (
        "column of another format",
        lambda t: ["validate", SMOKE / "sft-lora.yaml", "data.columns={prompt: q}"],
        "not a column of the chat format",
    ),
    (
        "eval twice",
        lambda t: ["validate", SMOKE / "sft-lora.yaml", f"data.eval_sources=[{DATA / 'chat.jsonl'}]"],
        "either eval_fraction or eval_sources",
    ),
    (
        "prefix with packing",
        lambda t: ["validate", SMOKE / "sft-prefix.yaml", "data.packing=true"],
        "data.packing",
    ),
    (
        "unknown builtin",
        lambda t: ["train", SMOKE / "sft-lora.yaml", "model.name=builtin:nope", f"output.dir={t / 'run'}"],
        "unknown builtin model 'nope'",
    ),
    (
        "missing model dir",
        lambda t: ["validate", SMOKE / "sft-lora.yaml", "model.name=./no-such-model"],
        "model.name",
    ),
    (
        "missing env var",
        lambda t: [
            "validate",
            write(
                t / "e.yaml",
                f"extends: {SMOKE / 'sft-lora.yaml'}\ndescription: ${{env:FTCLI_SURELY_UNSET}}\n",
            ),
        ],
        "environment variable FTCLI_SURELY_UNSET is not set",
    ),
    ("yaml syntax", lambda t: ["validate", write(t / "s.yaml", "model: {name: [\n")], "YAML syntax error"),
    (
        "duplicate key",
        lambda t: ["validate", write(t / "d.yaml", "model: {name: a}\nmodel: {name: b}\n")],
        "model: key given twice",
    ),
    ("extends cycle", lambda t: ["validate", write(t / "c.yaml", f"extends: {t / 'c.yaml'}\n")], "extends"),
    ("empty recipe", lambda t: ["validate", write(t / "empty.yaml", "")], "recipe is empty"),
    ("missing recipe", lambda t: ["validate", t / "nope.yaml"], "recipe file not found"),
    (
        "two launch nodes without address",
        lambda t: ["validate", SMOKE / "sft-lora.yaml", "launch.num_machines=2"],
        "launch.main_process_ip",
    ),
    (
        "ref model with lora",
        lambda t: ["validate", SMOKE / "dpo-lora.yaml", "align.ref_model=x/y"],
        "align.ref_model",
    ),
    (
        "fp16 on a cpu",
        lambda t: ["train", SMOKE / "sft-lora.yaml", "training.precision=fp16", f"output.dir={t / 'run'}"],
        "fp16 mixed precision needs a CUDA GPU",
    ),
    (
        "cuda optimizer on a cpu",
        lambda t: [
            "train",
            SMOKE / "sft-lora.yaml",
            "training.optimizer=paged_adamw_8bit",
            f"output.dir={t / 'run'}",
        ],
        "bitsandbytes CUDA optimizer",
    ),
    (
        "lora target missing",
        lambda t: [
            "train",
            SMOKE / "sft-lora.yaml",
            "method.target_modules=[q_lin]",
            f"output.dir={t / 'run'}",
        ],
        "'q_lin' names no module",
    ),
    (
        "freeze key matches nothing",
        lambda t: [
            "train",
            SMOKE / "sft-full.yaml",
            "method.keys_to_finetune=[vision]",
            f"output.dir={t / 'run'}",
        ],
        "'vision' matches no parameter",
    ),
    (
        "adapter dir without adapter",
        lambda t: [
            "train",
            SMOKE / "sft-lora.yaml",
            "method=lora",
            f"model.adapter={t}",
            f"output.dir={t / 'run'}",
        ],
        "model.adapter",
    ),
    (
        "pickle-only model dir",
        lambda t: [
            "train",
            SMOKE / "sft-lora.yaml",
            f"model.name={pickle_only_model(t / 'pkl')}",
            f"output.dir={t / 'run'}",
        ],
        "pkl holds only pickle weights (pytorch_model.bin)",
    ),
    (
        "pickle-only adapter",
        lambda t: [
            "train",
            SMOKE / "sft-lora.yaml",
            "method=lora",
            f"model.adapter={pickle_only_adapter(t / 'pa')}",
            f"output.dir={t / 'run'}",
        ],
        "pa holds only pickle weights (adapter_model.bin)",
    ),
    (
        "infer a pickle-only model dir",
        lambda t: ["infer", pickle_only_model(t / "pkl"), "-p", "hi"],
        "model.allow_pickle: true",
    ),
    (
        "broken jsonl line",
        lambda t: ["prepare", recipe_on(t, jsonl(t / "b.jsonl", [GOOD_CHAT, "{oops"]))],
        "b.jsonl",
    ),
    (
        "chat row without answer",
        lambda t: [
            "prepare",
            recipe_on(
                t, jsonl(t / "n.jsonl", [GOOD_CHAT, {"messages": [{"role": "user", "content": "hi"}]}])
            ),
        ],
        "row 2: field 'messages'",
    ),
    (
        "wrong columns",
        lambda t: ["prepare", recipe_on(t, DATA / "chat.jsonl", fmt="instruction")],
        "field 'instruction': missing",
    ),
    ("empty dataset", lambda t: ["prepare", recipe_on(t, write(t / "empty.jsonl", ""))], ""),
    (
        "every row too long",
        lambda t: ["prepare", recipe_on(t, DATA / "chat.jsonl", extra="  max_length: 8\n  overlong: drop\n")],
        "data.max_length: no training rows left: all 300 were dropped for length (they are longer than 8 tokens); "
        "raise it, or set data.overlong: truncate",
    ),
    (
        "every image pair's prompt too long",
        lambda t: [
            "prepare",
            SMOKE / "vlm-dpo-lora.yaml",
            "align.max_prompt_length=20",
            f"data.cache_dir={t}",
        ],
        "align.max_prompt_length: no training rows left: all 150 were dropped for length (their prompts with the "
        "images' tokens are over 20); raise it: an image is never cut",
    ),
    (
        "unknown template",
        lambda t: ["prepare", SMOKE / "sft-lora.yaml", "data.template=vicunaa"],
        "unknown template 'vicunaa'",
    ),
    (
        "identical preference pair",
        lambda t: [
            "prepare",
            write(
                t / "p.yaml",
                f"extends: {SMOKE / 'dpo-lora.yaml'}\n"
                f"data:\n  sources: [{jsonl(t / 'p.jsonl', [{'prompt': 'q', 'chosen': 'a', 'rejected': 'a'}])}]\n"
                "  eval_fraction: 0\ntraining: {eval_steps: null}\n",
            ),
        ],
        "identical to rejected",
    ),
    ("align on a train recipe", lambda t: ["align", SMOKE / "sft-lora.yaml"], "run by `ftcli train`"),
    ("train on an align recipe", lambda t: ["train", SMOKE / "dpo-lora.yaml"], "run by `ftcli align`"),
    (
        "unknown preference task",
        lambda t: ["align", SMOKE / "dpo-lora.yaml", "task=ppo"],
        "task: Input should be",
    ),
    (
        "resume without checkpoint",
        lambda t: ["train", SMOKE / "sft-lora.yaml", f"output.dir={t}", "--resume"],
        "no complete checkpoint",
    ),
    (
        "overwrite and resume",
        lambda t: ["train", SMOKE / "sft-lora.yaml", f"output.dir={t / 'run'}", "--resume", "--overwrite"],
        "contradict",
    ),
    ("infer on nothing", lambda t: ["infer", t / "nothing", "-p", "hi"], "nothing: no such file or folder"),
    (
        "infer without weights",
        lambda t: [
            "infer",
            (t / "runlike").mkdir()
            or write(
                t / "runlike" / "recipe.resolved.yaml",
                f"model: {{name: 'builtin:tiny-llama'}}\nmethod: lora\n"
                f"data: {{sources: [{DATA / 'chat.jsonl'}]}}\n",
            ).parent,
            "-p",
            "hi",
        ],
        "neither adapter_config.json nor config.json",
    ),
    ("infer empty prompt", lambda t: ["infer", SMOKE / "sft-lora.yaml", "-p", ""], "empty prompt"),
    ("bad launcher", lambda t: ["train", SMOKE / "sft-lora.yaml", "--launcher", "slurm"], "--launcher slurm"),
    # task: caption (multimodal GIT)
    (
        "caption without a vision model",
        lambda t: ["validate", SMOKE / "caption-lora.yaml", "multimodal=null"],
        "multimodal.vision_model: task caption needs a vision encoder",
    ),
    (
        "caption merged",
        lambda t: ["validate", SMOKE / "caption-lora.yaml", "output.merge=true"],
        "output.merge: a caption run is rebuilt from its two base checkpoints",
    ),
    (
        "caption with prefix tuning",
        lambda t: ["validate", SMOKE / "caption-lora.yaml", "method.type=prefix"],
        "task caption trains with full, lora, qlora, not prefix",
    ),
    (
        "image data for sft",
        lambda t: ["validate", SMOKE / "sft-lora.yaml", "data.format=caption"],
        "caption rows train with task: vlm or caption",
    ),
    (
        "caption key matches nothing",
        lambda t: [
            "train",
            SMOKE / "caption-lora.yaml",
            "multimodal.keys_to_finetune=[vit]",
            f"output.dir={t / 'run'}",
            f"data.cache_dir={t / 'c'}",
        ],
        "multimodal.keys_to_finetune: 'vit' matches no parameter",
    ),
    (
        "missing image",
        lambda t: [
            "prepare",
            SMOKE / "caption-lora.yaml",
            f"data.cache_dir={t / 'c'}",
            f"data.sources=[{jsonl(t / 'm.jsonl', [{'image': 'gone.png', 'caption': 'x'}])}]",
        ],
        "m.jsonl row 1: field 'image': gone.png: image file not found",
    ),
    (
        "image outside its folder",
        lambda t: [
            "prepare",
            SMOKE / "caption-lora.yaml",
            f"data.cache_dir={t / 'c'}",
            f"data.sources=[{jsonl(t / 'o.jsonl', [{'image': '/etc/hostname', 'caption': 'x'}])}]",
        ],
        "set data.allow_images_outside: true if intended",
    ),
    (
        "image folder missing",
        lambda t: ["validate", SMOKE / "caption-lora.yaml", "data.sources.0.image_dir=./nope"],
        "data.sources.0.image_dir: image folder not found",
    ),
    (
        "image for a text model",
        lambda t: ["infer", SMOKE / "sft-lora.yaml", "--image", DATA / "shapes/images/eval-000.png"],
        "images go to caption runs",
    ),
    (
        "caption recipe before training",
        lambda t: ["infer", SMOKE / "caption-lora.yaml", "--image", DATA / "shapes/images/eval-000.png"],
        "run `ftcli infer` on its run dir",
    ),
    # YAML that would explode: expansion, recursion, depth
    (
        "yaml alias bomb",
        lambda t: ["validate", alias_bomb(t / "bomb.yaml")],
        "expands to over 100,000 values",
    ),
    (
        "yaml alias containing itself",
        lambda t: ["validate", write(t / "self.yaml", "model: &m {name: *m}\n")],
        "refers to a value that contains it",
    ),
    (
        "yaml nested deeply",
        lambda t: ["validate", write(t / "deep.yaml", "model: " + "[" * 5000 + "]" * 5000 + "\n")],
        "nested more than 64 levels deep",
    ),
    (
        "yaml nested past the limit",
        lambda t: ["validate", write(t / "deep2.yaml", "model: " + "[" * 80 + "]" * 80)],
        "model.0.0.0",
    ),
    (
        "recipe not utf-8",
        lambda t: [
            "validate",
            write(t / "latin.yaml", "")
            and (t / "latin.yaml").write_bytes(b"description: caf\xe9\n")
            and t / "latin.yaml",
        ],
        "latin.yaml:1: not UTF-8 text (byte 0xe9)",
    ),
    # over-long file names
    (
        "file name too long",
        lambda t: ["train", SMOKE / "sft-lora.yaml", f"output.dir={t / ('x' * 300)}"],
        "the file name is too long; shorten the path",
    ),
    # numbers out of range
    (
        "infinite learning rate",
        lambda t: ["validate", SMOKE / "sft-lora.yaml", "training.learning_rate=.inf"],
        "training.learning_rate: Input should be a finite number",
    ),
    (
        "nan epochs",
        lambda t: ["validate", SMOKE / "sft-lora.yaml", "training.epochs=.nan"],
        "training.epochs",
    ),
    (
        "seed of 2**64",
        lambda t: ["validate", SMOKE / "sft-lora.yaml", f"training.seed={2**64}"],
        "training.seed",
    ),
    ("negative seed", lambda t: ["validate", SMOKE / "sft-lora.yaml", "data.seed=-1"], "data.seed"),
    (
        "infinite source weight",
        lambda t: ["validate", SMOKE / "sft-lora.yaml", "data.sources.0.weight=.inf"],
        "data.sources.0.weight",
    ),
    (
        "absurd batch",
        lambda t: ["validate", SMOKE / "sft-lora.yaml", f"training.batch_size={10**12}"],
        "training.batch_size",
    ),
    # bytes that are not UTF-8
    (
        "data not utf-8",
        lambda t: [
            "prepare",
            recipe_on(
                t,
                write(t / "b.jsonl", "")
                and (t / "b.jsonl").write_bytes(json.dumps(GOOD_CHAT).encode() + b'\n{"messages": "\xff"}\n')
                and t / "b.jsonl",
            ),
        ],
        "b.jsonl: line 2 is not UTF-8 (byte 0xff",
    ),
    (
        "prompts not utf-8",
        lambda t: [
            "infer",
            SMOKE / "sft-lora.yaml",
            "-i",
            write(t / "p.txt", "") and (t / "p.txt").write_bytes(b"hello\n\xfe\n") and t / "p.txt",
        ],
        "p.txt row 2: not UTF-8 (byte 0xfe)",
    ),
    (
        "prompt argument not utf-8",
        lambda t: ["infer", SMOKE / "sft-lora.yaml", "-p", "caf\udce9"],
        "--prompt 1: not valid UTF-8 text",
    ),
    # prompts the model cannot take
    (
        "prompt longer than the context",
        lambda t: ["infer", SMOKE / "sft-lora.yaml", "-p", "word " * 1000],
        "over the model's context of 4,096",
    ),
    (
        "malformed messages in infer input",
        lambda t: [
            "infer",
            SMOKE / "sft-lora.yaml",
            "-i",
            jsonl(t / "m.jsonl", [{"messages": [{"content": "hi"}]}]),
        ],
        "m.jsonl row 1 field 'messages[0].role': missing role",
    ),
    (
        "chat template that raises",
        lambda t: [
            "infer",
            SMOKE / "sft-lora.yaml",
            "-p",
            "hi",
            "data.template={{ raise_exception('only system turns') }}",
        ],
        "--prompt 1: chat template rejected this conversation: only system turns",
    ),
    # outputs that are not whole, and what ftcli must not write over
    (
        "infer an unfinished run",
        lambda t: ["infer", fake_run(t / "cut", status="interrupted"), "-p", "hi"],
        "did not complete: it interrupted",
    ),
    (
        "merge onto a file",
        lambda t: ["merge", fake_run(t / "done"), "--out", write(t / "file.txt", "mine")],
        "file.txt is a file; name a folder",
    ),
    (
        "merge onto the run",
        lambda t: ["merge", fake_run(t / "done"), "--out", t / "done"],
        "would hold the run",
    ),
    (
        "merge over someone's folder",
        lambda t: [
            "merge",
            fake_run(t / "done"),
            "--out",
            write((t / "mine").mkdir() or t / "mine" / "notes.txt", "x").parent,
            "--overwrite",
        ],
        "also holds notes.txt",
    ),
    # caches and trackers the machine cannot give
    (
        "cache dir that cannot be made",
        lambda t: ["prepare", SMOKE / "sft-lora.yaml", "data.cache_dir=/proc/ftcli-c"],
        "data.cache_dir: cannot create /proc/ftcli-c",
    ),
    (
        "tracker not installed",
        lambda t: [
            "train",
            SMOKE / "sft-lora.yaml",
            "training.report_to=[mlflow]",
            f"output.dir={t / 'run'}",
        ],
        "training.report_to: mlflow is not installed",
    ),
    # pickle behind an empty safetensors file, images that would eat the machine or leave their folder
    (
        "empty safetensors beside a pickle adapter",
        lambda t: [
            "train",
            SMOKE / "sft-lora.yaml",
            "method=lora",
            f"model.adapter={empty_safetensors_beside_bin(t / 'pa')}",
            f"output.dir={t / 'run'}",
        ],
        "holds only pickle weights (adapter_model.bin)",
    ),
    (
        "decompression bomb image",
        lambda t: caption_rows(t, str(png(t / "big.png", (20000, 20000)))),
        "big.png: too large: over 89,478,485 pixels",
    ),
    (
        "image link leaving its folder",
        lambda t: caption_rows(
            t,
            "link.png",
            image_dir=symlink(
                (t / "imgs").mkdir() or t / "imgs" / "link.png", png(t / "outside.png", (8, 8))
            ).parent,
        ),
        "link.png is outside the image folder",
    ),
    (
        "image folder that is a link",
        lambda t: caption_rows(t, "x.png", image_dir=symlink(t / "lnk", DATA / "shapes")),
        "is a symbolic link",
    ),
    # keys the chosen task, method or formats would not read (issue 19)
    (
        "kto key on dpo",
        lambda t: ["validate", SMOKE / "dpo-lora.yaml", "align.desirable_weight=2"],
        "align.desirable_weight: not read here: task dpo does not read it (it is for kto)",
    ),
    (
        "reward key on dpo",
        lambda t: ["validate", SMOKE / "dpo-lora.yaml", "align.center_rewards_coefficient=0.01"],
        "align.center_rewards_coefficient: not read here: task dpo does not read it (it is for reward)",
    ),
    (
        "align key on sft",
        lambda t: ["validate", SMOKE / "sft-lora.yaml", "align.beta=0.2"],
        "align.beta: not read here",
    ),
    (
        "adapter shape with model.adapter",
        lambda t: ["validate", SMOKE / "sft-lora.yaml", "model.adapter=./x", "method.use_dora=true"],
        "model.adapter",
    ),
    (
        "lora rank with model.adapter",
        lambda t: ["validate", SMOKE / "dpo-from-sft.yaml", "method.r=4"],
        "method.r: not read here: continuing model.adapter keeps that adapter's own r",
    ),
    (
        "full with model.adapter",
        lambda t: ["validate", SMOKE / "dpo-from-sft.yaml", "method=full"],
        "model.adapter: continuing an adapter trains that adapter",
    ),
    (
        "adapter of another kind",
        lambda t: [
            "validate",
            SMOKE / "sft-lora.yaml",
            "method=prefix",
            f"model.adapter={pickle_only_adapter(t / 'la')}",
        ],
        "is a LORA adapter and method.type is prefix; set method.type: lora or qlora",
    ),
    (
        "modules_to_save on caption",
        lambda t: ["validate", SMOKE / "caption-lora.yaml", "method.modules_to_save=[lm_head]"],
        "method.modules_to_save: not read here: a caption run chooses the parts it trains",
    ),
    (
        "template for text rows",
        lambda t: ["validate", SMOKE / "pretrain-lora.yaml", "data.template=chatml"],
        "data.template: not read here: text rows use no chat template",
    ),
    (
        "train_on for pairs",
        lambda t: ["validate", SMOKE / "dpo-lora.yaml", "data.train_on=all"],
        "data.train_on: not read here: preference rows choose their own labels",
    ),
    (
        "overlong for text",
        lambda t: ["validate", SMOKE / "pretrain-lora.yaml", "data.overlong=drop"],
        "data.overlong: not read here: text documents are split",
    ),
    (
        "image_dir for chat rows",
        lambda t: ["validate", SMOKE / "sft-lora.yaml", f"data.sources.0.image_dir={t}"],
        "data.sources.0.image_dir: not read here: these rows have no images",
    ),
    (
        "hub revision of a builtin model",
        lambda t: ["validate", SMOKE / "sft-lora.yaml", "model.revision=v1"],
        "model.revision: not read here: builtin:tiny-llama is built in code",
    ),
    (
        "hub revision of a builtin vision model",
        lambda t: ["validate", SMOKE / "caption-lora.yaml", "multimodal.vision_revision=v1"],
        "multimodal.vision_revision: not read here: builtin:tiny-clip is built in code",
    ),
    (
        "8-bit with nf4 settings",
        lambda t: ["validate", SMOKE / "sft-qlora.yaml", "method.bits=8", "method.quant_type=fp4"],
        "method.quant_type: not read here: 8-bit quantization",
    ),
    (
        "prefix MLP size without the MLP",
        lambda t: ["validate", SMOKE / "sft-prefix.yaml", "method.prefix_projection=false"],
        "method.encoder_hidden_size: not read here",
    ),
    (
        "warm-up twice",
        lambda t: ["validate", SMOKE / "sft-lora.yaml", "training.warmup_ratio=0.1"],
        "training.warmup_steps: not read here: training.warmup_ratio is set too",
    ),
    (
        "eval steps without eval data",
        lambda t: ["validate", SMOKE / "sft-lora.yaml", "data.eval_fraction=0", "training.eval_steps=5"],
        "training.eval_steps: not read here",
    ),
    (
        "checkpoint limit without checkpoints",
        lambda t: ["validate", SMOKE / "sft-lora.yaml", "training.save_total_limit=5"],
        "training.save_total_limit",
    ),
    (
        "deepspeed settings under ddp",
        lambda t: ["validate", SMOKE / "sft-lora.yaml", "launch.deepspeed.zero_stage=3"],
        "launch.deepspeed.zero_stage: not read here: launch.strategy is ddp",
    ),
    (
        "address of one machine",
        lambda t: ["validate", SMOKE / "sft-lora.yaml", "launch.main_process_ip=10.0.0.1"],
        "launch.main_process_ip: not read here",
    ),
    (
        "merge of a full fine-tune",
        lambda t: ["validate", SMOKE / "sft-full.yaml", "output.merge=true"],
        "output.merge: a full fine-tune holds full weights already",
    ),
    (
        "merge of prompt tuning",
        lambda t: ["validate", SMOKE / "sft-prompt.yaml", "output.merge=true"],
        "output.merge: prompt tuning adds virtual tokens",
    ),
    (
        "infer mode the task has not",
        lambda t: ["validate", SMOKE / "sft-lora.yaml", "infer.mode=score"],
        "infer.mode: a sft model does generate or perplexity, not score",
    ),
    (
        "tool calls the template cannot render",
        lambda t: [
            "prepare",
            recipe_on(
                t,
                jsonl(
                    t / "tools.jsonl",
                    [
                        {
                            "messages": [
                                {"role": "user", "content": "weather?"},
                                {
                                    "role": "assistant",
                                    "content": None,
                                    "tool_calls": [
                                        {
                                            "type": "function",
                                            "function": {
                                                "name": "get_weather",
                                                "arguments": {"city": "Lima"},
                                            },
                                        }
                                    ],
                                },
                            ]
                        }
                    ],
                ),
            ),
        ],
        "the chat template does not render tool calls",
    ),
]


@pytest.mark.parametrize("name, build, expected", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2(name, build, expected, tmp_path, capsys):
    argv = build(tmp_path)
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")}
    code = call_main(*argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert "Traceback" not in err
    lines = err.splitlines()  # progress tables may come first; the error is the one last line
    assert lines[-1].startswith("error: ") and sum(line.startswith("error") for line in lines) == 1, err
    assert expected in lines[-1], lines[-1]
    run = tmp_path / "run"
    if run.exists():  # at most the record of the failure (and ftcli's marker and lock), never partial results
        assert {p.name for p in run.iterdir()} <= {
            "recipe.resolved.yaml",
            "summary.json",
            ".ftcli-run",
            ".ftcli-lock",
        }
        assert json.loads((run / "summary.json").read_text())["status"] == "failed"
    for path, mtime in before.items():  # nothing the user had was touched
        assert path.stat().st_mtime_ns == mtime, path


def test_the_catalogue_is_at_least_a_hundred_cases():
    assert len(CASES) >= 100
