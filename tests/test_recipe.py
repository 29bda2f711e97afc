"""The recipe language: extends, overrides, env, and errors that name file, line and key."""

import pytest

from ftcli.errors import RecipeError
from ftcli.recipe import load_recipe
from tests.helpers import DATA, RECIPES, write_recipe

BASE = f"""\
model:
  name: builtin:tiny-llama
method: lora
data:
  sources:
    - path: {DATA / "chat.jsonl"}
training:
  learning_rate: 1e-4
  batch_size: 4
"""


def error_of(path, overrides=(), env=None) -> str:
    with pytest.raises(RecipeError) as info:
        load_recipe(path, list(overrides), env=env or {})
    return str(info.value)


def test_unknown_key_names_file_line_and_suggests(tmp_path):
    path = write_recipe(tmp_path / "r.yaml", BASE + "  learnig_rate: 3\n")
    assert error_of(path) == f"{path}:10 training.learnig_rate: unknown key; did you mean learning_rate?"


def test_unknown_key_in_method_block_is_found_through_the_union(tmp_path):
    path = write_recipe(tmp_path / "r.yaml", BASE.replace("method: lora", "method:\n  type: lora\n  rank: 8"))
    message = error_of(path)
    assert message.startswith(f"{path}:5 method.rank: unknown key; did you mean r?")


def test_wrong_type(tmp_path):
    path = write_recipe(tmp_path / "r.yaml", BASE.replace("batch_size: 4", "batch_size: many"))
    message = error_of(path)
    assert message.startswith(f"{path}:9 training.batch_size: ")
    assert "integer" in message and "'many'" in message


def test_a_value_no_member_of_a_union_takes_says_what_each_would(tmp_path):
    path = write_recipe(
        tmp_path / "r.yaml", BASE + "launch:\n  num_processes: many\n  main_process_port: 0\n"
    )
    assert error_of(path) == (
        f"{path}:11 launch.num_processes: expected an integer or 'auto' (got 'many') (and 1 more problem; fix this "
        "one first)"
    )
    path = write_recipe(tmp_path / "r.yaml", BASE + "launch:\n  main_process_port: 0\n")
    assert (
        error_of(path)
        == f"{path}:11 launch.main_process_port: expected a number greater than 0 or 'auto' (got 0)"
    )


def test_missing_required_key(tmp_path):
    path = write_recipe(
        tmp_path / "r.yaml", BASE.replace("  name: builtin:tiny-llama\n", "  revision: main\n")
    )
    assert error_of(path) == f"{path}:1 model.name: required key is missing"


def test_bad_override_syntax_and_unknown_override_key(tmp_path):
    path = write_recipe(tmp_path / "r.yaml", BASE)
    assert "must look like key.path=value" in error_of(path, ["training.learning_rate"])
    assert error_of(path, ["training.epochz=2"]) == (
        "command line training.epochz: unknown key; did you mean epochs?"
    )


def test_missing_env_var(tmp_path):
    path = write_recipe(tmp_path / "r.yaml", BASE.replace("builtin:tiny-llama", "${env:MY_MODEL}"))
    assert error_of(path) == (
        f"{path}:2 model.name: environment variable MY_MODEL is not set; export it or write ${{env:MY_MODEL,default}}"
    )


def test_yaml_syntax_error_has_line(tmp_path):
    path = write_recipe(tmp_path / "r.yaml", BASE + "output:\n  dir: [unclosed\n")
    message = error_of(path)
    assert message.startswith(f"{path}:") and "YAML syntax error" in message


def test_duplicate_key_is_an_error(tmp_path):
    path = write_recipe(tmp_path / "r.yaml", BASE + "  batch_size: 8\n")
    assert error_of(path) == f"{path}:10 training.batch_size: key given twice"


def test_bad_method_type_lists_the_methods(tmp_path):
    path = write_recipe(tmp_path / "r.yaml", BASE)
    message = error_of(path, ["method.type=lorra"])
    assert message.startswith("command line method.type: unknown type 'lorra'") and "'qlora'" in message


def test_impossible_combination_names_the_key(tmp_path):
    path = write_recipe(tmp_path / "r.yaml", BASE)
    message = error_of(path, ["method.type=prefix", "data.packing=true"])
    assert message.startswith("command line data.packing: prefix tuning prepends virtual tokens")


def test_missing_data_file(tmp_path):
    path = write_recipe(tmp_path / "r.yaml", BASE.replace(str(DATA / "chat.jsonl"), "nope.jsonl"))
    assert error_of(path).startswith(f"{path}:6 data.sources.0.path: file not found: nope.jsonl")


def test_extends_overrides_and_env_resolve(tmp_path):
    write_recipe(tmp_path / "base.yaml", BASE)
    child = write_recipe(
        tmp_path / "child.yaml",
        "extends: base.yaml\n"
        "training:\n  epochs: 2\n"
        "output:\n  dir: ${env:RUNS,runs}/${env:NAME}\n"
        "data:\n  max_length: 64\n",
    )
    recipe = load_recipe(
        child, ["training.learning_rate=3e-4", "method.r=4", "data.packing=false"], env={"NAME": "x"}
    )
    assert recipe.training.epochs == 2  # from child
    assert recipe.training.batch_size == 4  # inherited, deep-merged with the child's training block
    assert recipe.training.learning_rate == pytest.approx(3e-4)  # override, YAML-typed
    assert recipe.method.type == "lora" and recipe.method.r == 4
    assert recipe.data.max_length == 64 and recipe.data.packing is False
    assert recipe.data.sources[0].path == str(DATA / "chat.jsonl")
    assert recipe.output.dir == "runs/x"  # default used for RUNS, NAME from env


def test_data_paths_are_relative_to_the_recipe(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "rows.jsonl").write_text('{"text": "hello"}\n')
    path = write_recipe(
        tmp_path / "sub" / "r.yaml",
        "task: pretrain\nmodel:\n  name: builtin:tiny-llama\n"
        "data:\n  format: text\n  sources: [rows.jsonl]\n",
    )
    assert load_recipe(path).data.sources[0].path == str(tmp_path / "sub" / "rows.jsonl")


def test_extends_cycle_is_an_error(tmp_path):
    write_recipe(tmp_path / "a.yaml", "extends: b.yaml\n")
    write_recipe(tmp_path / "b.yaml", "extends: a.yaml\n")
    assert "cycle" in error_of(tmp_path / "a.yaml")


def test_task_and_format_must_agree(tmp_path):
    path = write_recipe(tmp_path / "r.yaml", BASE)
    assert error_of(path, ["task=pretrain"]) == (
        f"{path}:4 data.format: task pretrain cannot learn from chat rows (it takes text); chat rows train with task: sft or grpo"
    )


def test_paths_resolve_next_to_the_file_that_wrote_them(tmp_path):
    child = write_recipe(tmp_path / "child.yaml", f"extends: {RECIPES / 'smoke' / 'sft-lora.yaml'}\n")
    recipe = load_recipe(child)
    assert recipe.data.sources[0].path == str((DATA / "chat.jsonl").resolve())
