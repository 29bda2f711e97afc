"""The task, method and format specs (recipe/registry.py) and what they drive: every name they give loads, the
schema's choices are the registry's, every derived default is resolved when a recipe loads (what validate prints
is what runs), function-calling rows and Arrow files are read rather than dropped, and evaluation does not depend
on how training packed its rows."""

import json

import pytest

from ftcli.recipe import load_recipe
from ftcli.recipe.registry import FORMATS, METHODS, TASKS, load
from ftcli.recipe.schema import Method
from tests.helpers import DATA, RECIPES, call_main, write_recipe

SMOKE = RECIPES / "smoke"
TOOL_TEMPLATE = (
    "{% if tools %}<|im_start|>system\nTools: {{ tools | tojson }}<|im_end|>\n{% endif %}"
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}"
    "{% for c in m.tool_calls or [] %}<tool_call>{{ c.function | tojson }}</tool_call>{% endfor %}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def test_every_spec_names_code_that_loads_and_the_schema_offers_the_registry():
    for spec in TASKS.values():
        assert callable(load(spec.trainer)) and spec.command in ("train", "align")
        assert set(spec.formats) <= set(FORMATS) and set(spec.methods) <= set(METHODS)
    assert all(callable(load(spec.apply)) for spec in METHODS.values())
    assert all(callable(load(spec.rows)) for spec in FORMATS.values())
    schema_methods = {cls.model_fields["type"].default for cls in Method.__origin__.__args__}  # type: ignore[attr-defined]
    assert schema_methods == set(METHODS)


@pytest.mark.parametrize(
    "name", ["sft-lora", "pretrain-full", "sft-prefix", "dpo-lora", "kto-lora", "reward-lora", "caption-lora"]
)
def test_validate_prints_every_derived_default_resolved(name, capsys):
    assert call_main("validate", SMOKE / f"{name}.yaml", "--json") == 0
    printed = json.loads(capsys.readouterr().out)
    task = TASKS[printed["task"]]
    resolved = [("training", "learning_rate"), ("data", "packing"), ("infer", "mode"), ("output", "dir")]
    resolved += [
        ("align", key)
        for key in ("beta", "max_prompt_length", "max_completion_length")
        if key in task.align_keys
    ]
    if printed["method"]["type"] in ("lora", "qlora"):
        resolved.append(("method", "target_modules"))
    for section, key in resolved:
        assert printed[section][key] is not None, f"{section}.{key}"
    # and the frozen recipe is what runs: loading the printed document again changes nothing
    again = load_recipe(write_recipe(SMOKE.parent / "data" / ".printed.yaml", json.dumps(printed)))
    (SMOKE.parent / "data" / ".printed.yaml").unlink()
    assert again.model_dump(mode="json") == printed


def test_defaults_follow_task_and_method():
    lora, dpo = (
        load_recipe(SMOKE / "sft-lora.yaml", ["training.learning_rate=null"]),
        load_recipe(SMOKE / "dpo-lora.yaml"),
    )
    assert lora.training.learning_rate == 2e-4 and lora.data.packing is True and lora.infer.mode == "generate"
    assert dpo.align.beta == 0.1 and dpo.align.max_prompt_length == 64 and dpo.data.packing is False
    reward = load_recipe(SMOKE / "reward-lora.yaml", ["training.learning_rate=null"])
    assert reward.training.learning_rate == 1e-4 and reward.infer.mode == "score"
    caption = load_recipe(SMOKE / "caption-lora.yaml")
    assert caption.method.target_modules == "attention"
    prefix = load_recipe(SMOKE / "sft-prefix.yaml", ["training.learning_rate=null"])
    assert prefix.training.learning_rate == 3e-2 and prefix.data.packing is False


def test_function_calling_rows_are_rendered_and_their_calls_learned(tmp_path):
    from ftcli.data.prepare import prepare_data
    from ftcli.models.load import load_tokenizer

    row = {
        "tools": [
            {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
        ],
        "messages": [
            {"role": "user", "content": "Weather in Lima?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Lima"}}}
                ],
            },
            {"role": "tool", "name": "get_weather", "content": "sunny, 24C"},
            {"role": "assistant", "content": "It is sunny in Lima."},
        ],
    }
    (tmp_path / "tools.jsonl").write_text(json.dumps(row) + "\n")
    recipe = load_recipe(
        SMOKE / "sft-lora.yaml",
        [
            f"data.sources=[{tmp_path / 'tools.jsonl'}]",
            "data.eval_fraction=0",
            f"data.template={json.dumps(TOOL_TEMPLATE)}",
            "data.packing=false",
            f"data.cache_dir={tmp_path / 'c'}",
            "data.max_length=1024",
        ],
    )
    tokenizer = load_tokenizer(recipe.model)
    prepared = prepare_data(recipe, tokenizer)
    ids, labels = prepared.train[0]["input_ids"], prepared.train[0]["labels"]
    text = tokenizer.decode(ids)
    learned = tokenizer.decode([t for t, label in zip(ids, labels) if label != -100])
    assert "Tools: [" in text and '"parameters": {"type": "object"}' in text  # the schemas reach the text
    assert (
        '<tool_call>{"name": "get_weather", "arguments": {"city": "Lima"}}</tool_call>' in learned
    )  # the call
    assert "It is sunny in Lima." in learned and "sunny, 24C" not in learned  # the tool's reply is context


def test_arrow_files_are_a_source(tmp_path):
    import datasets

    from ftcli.data.prepare import prepare_data
    from ftcli.models.load import load_tokenizer

    rows = [json.loads(line) for line in (DATA / "chat.jsonl").read_text().splitlines()[:20]]
    dataset = datasets.Dataset.from_list(rows)
    dataset.save_to_disk(str(tmp_path / "saved"))
    arrow = next((tmp_path / "saved").glob("*.arrow"))
    recipe = load_recipe(
        SMOKE / "sft-lora.yaml", [f"data.sources=[{arrow}]", f"data.cache_dir={tmp_path / 'c'}"]
    )
    prepared = prepare_data(recipe, load_tokenizer(recipe.model))
    assert prepared.stats["sources"][0]["rows_read"] == 20


def test_the_data_cache_key_follows_the_data_code(monkeypatch):
    from ftcli.data import cache

    before = cache.fingerprint({"x": 1})
    monkeypatch.setattr(cache, "data_code_version", lambda: "another version of the code")
    assert cache.fingerprint({"x": 1}) != before
