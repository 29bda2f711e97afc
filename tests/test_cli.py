"""The command line: lazy imports, exit codes, one-line errors, clean stdout."""

import json

import yaml

from tests.helpers import RECIPES, call_main, imported_after, run_cli, write_recipe


def test_help_and_validate_import_no_ml_libraries():
    assert imported_after("--help")[2] == set()
    assert imported_after("validate", RECIPES / "smoke" / "sft-lora.yaml")[2] == set()


def test_version(capsys):
    assert call_main("--version") == 0
    assert capsys.readouterr().out.startswith("ftcli ")


def test_validate_prints_the_resolved_recipe(capsys):
    assert call_main("validate", RECIPES / "smoke" / "sft-lora.yaml", "training.epochs=5", "--json") == 0
    resolved = json.loads(capsys.readouterr().out)
    assert resolved["training"]["epochs"] == 5 and resolved["method"]["type"] == "lora"
    assert resolved["training"]["lr_scheduler"] == "cosine"  # defaults are filled in
    assert call_main("validate", RECIPES / "smoke" / "sft-lora.yaml") == 0
    assert yaml.safe_load(capsys.readouterr().out)["model"]["name"] == "builtin:tiny-llama"


def test_recipe_error_exits_2_with_one_line_and_no_traceback(tmp_path):
    path = write_recipe(
        tmp_path / "r.yaml", "model:\n  name: builtin:tiny-llama\n  nmae: x\ndata:\n  sources: [a]\n"
    )
    code, out, err = run_cli("validate", path)
    assert code == 2 and out == ""
    assert err.strip() == f"error: {path}:3 model.nmae: unknown key; did you mean name?"
    assert "Traceback" not in err


def test_debug_shows_the_traceback(tmp_path):
    path = write_recipe(tmp_path / "r.yaml", "model: {name: x, nmae: y}\ndata: {sources: [a]}\n")
    code, _, err = run_cli("validate", path, "--debug")
    assert code != 0 and "Traceback" in err


def test_train_refuses_an_alignment_task(capsys):
    code = call_main("train", RECIPES / "smoke" / "sft-lora.yaml", "task=dpo", "data.format=preference")
    assert code == 2
    assert "task dpo is run by `ftcli align`" in capsys.readouterr().err


def test_commands_refuse_what_they_cannot_do_before_loading_anything(capsys):
    assert call_main("align", RECIPES / "smoke" / "sft-lora.yaml") == 2
    assert "task sft is run by `ftcli train`, not `ftcli align`" in capsys.readouterr().err
    assert call_main("infer", RECIPES / "smoke" / "sft-lora.yaml") == 2
    assert "nothing to do: give --prompt TEXT" in capsys.readouterr().err


def test_recipes_lists_bundled_recipes_with_descriptions(capsys):
    assert call_main("recipes", "--json") == 0
    listed = {r["name"]: r["description"] for r in json.loads(capsys.readouterr().out)}
    assert listed.get("smoke/sft-lora")
    assert all(not name.startswith("data") for name in listed)


def test_missing_recipe_file(capsys):
    assert call_main("validate", "nope.yaml") == 2
    assert "recipe file not found" in capsys.readouterr().err


def test_validate_refuses_prefix_tuning_on_a_model_without_kv_cache(tmp_path, capsys):
    model = tmp_path / "mamba"
    model.mkdir()
    (model / "config.json").write_text('{"model_type": "mamba"}')
    recipe = write_recipe(
        tmp_path / "r.yaml", f"extends: {RECIPES / 'smoke' / 'sft-prefix.yaml'}\nmodel:\n  name: {model}\n"
    )
    assert call_main("validate", recipe) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "method.type: prefix tuning needs a key/value cache" in err
    assert f"{RECIPES / 'smoke' / 'sft-prefix.yaml'}:" in err  # where method.type was written
    assert (
        call_main("validate", RECIPES / "smoke" / "sft-prefix.yaml", "training.gradient_checkpointing=true")
        == 2
    )
    assert "training.gradient_checkpointing: peft's prefix tuning" in capsys.readouterr().err


def test_errors_found_while_running_still_name_the_yaml_line(tmp_path, capsys):
    recipe = write_recipe(
        tmp_path / "r.yaml",
        f"extends: {RECIPES / 'smoke' / 'sft-lora.yaml'}\n"
        "training:\n  optimizer: paged_adamw_8bit\n"
        f"output:\n  dir: {tmp_path / 'run'}\n",
    )
    assert call_main("train", recipe) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(
        f"error: {recipe}:3 training.optimizer: paged_adamw_8bit is a bitsandbytes CUDA optimizer"
    )
