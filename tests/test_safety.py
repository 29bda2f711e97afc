"""Nothing of the user's is lost, no run lies about how it ended, and hostile input is handled or refused in one
line: --overwrite and the run lock, exit codes and summary statuses at every stage, --resume against a changed
recipe, secrets masked by value, damaged caches, checkpoints, final outputs and histories."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.helpers import DATA, RECIPES, call_main, run_cli, write_recipe

SMOKE = RECIPES / "smoke"
LORA = SMOKE / "sft-lora.yaml"


def summary(run):
    return json.loads((run / "summary.json").read_text())


# --- --overwrite and the lock ---------------------------------------------------------------------------------


def test_overwrite_never_deletes_a_folder_of_the_users_files(tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    assert call_main("train", LORA, f"output.dir={mine}", "--overwrite") == 2
    assert "is not a run dir ftcli made" in capsys.readouterr().err
    assert (mine / "notes.txt").read_text() == "mine" and sorted(p.name for p in mine.iterdir()) == [
        "notes.txt"
    ]


def test_overwrite_never_deletes_the_working_dir_or_the_data(tmp_path, monkeypatch, capsys):
    data = tmp_path / "data"
    data.mkdir()
    (data / "chat.jsonl").write_text((DATA / "chat.jsonl").read_text())
    (data / ".ftcli-run").write_text(
        "{}"
    )  # even a folder that looks like a run is refused when it holds inputs
    assert (
        call_main("train", LORA, f"output.dir={data}", f"data.sources=[{data / 'chat.jsonl'}]", "--overwrite")
        == 2
    )
    assert "holds data.sources.0.path" in capsys.readouterr().err
    monkeypatch.chdir(tmp_path)
    assert call_main("train", LORA, "output.dir=.", "--overwrite") == 2
    assert "holds the working directory" in capsys.readouterr().err
    assert (data / "chat.jsonl").exists()


def test_overwrite_replaces_a_run_dir_and_a_second_run_into_a_live_one_is_refused(tmp_path, capsys):
    run = tmp_path / "run"
    assert call_main("train", LORA, f"output.dir={run}", "training.max_steps=2") == 0
    first = (run / ".ftcli-run").read_text()
    assert call_main("train", LORA, f"output.dir={run}", "training.max_steps=3", "--overwrite", "--json") == 0
    assert json.loads(capsys.readouterr().out)["steps"] == 3 and (run / ".ftcli-run").exists()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; "
            "from ftcli.run_dir import RunLock; RunLock(Path(sys.argv[1])); print('held', flush=True);"
            " time.sleep(60)",
            str(run),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        for extra in (["--overwrite"], ["--resume"], []):
            assert call_main("train", LORA, f"output.dir={run}", *extra) == 2
            err = capsys.readouterr().err
            assert f"is in use by a running ftcli (PID {holder.pid}" in err, err
    finally:
        holder.kill()
        holder.wait()
    assert summary(run)["steps"] == 3 and first  # untouched by the refused runs


# --- how a run ends --------------------------------------------------------------------------------------------


def test_ctrl_c_while_tokenizing_exits_130_and_says_interrupted(tmp_path, monkeypatch, capsys):
    import ftcli.tasks.runner as runner

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "prepare_data", interrupted)
    assert call_main("train", LORA, f"output.dir={tmp_path / 'run'}") == 130
    assert "interrupted" in capsys.readouterr().err
    assert summary(tmp_path / "run")["status"] == "interrupted"


def test_sigterm_before_the_training_loop_exits_143_and_says_interrupted(tmp_path, monkeypatch):
    import ftcli.tasks.runner as runner

    real = runner.prepare_data

    def terminated(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler raises before this ends
        return real(*args, **kwargs)

    monkeypatch.setattr(runner, "prepare_data", terminated)
    assert call_main("train", LORA, f"output.dir={tmp_path / 'run'}") == 143
    assert summary(tmp_path / "run")["status"] == "interrupted"
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # restored


def test_weights_gone_nan_fail_the_run_even_when_no_logged_loss_shows_it(tmp_path):
    run = tmp_path / "run"
    code, _, err = run_cli(
        "train",
        LORA,
        f"output.dir={run}",
        "training.learning_rate=1e12",
        "training.max_grad_norm=0",
        "training.logging_steps=1000",
        "training.max_steps=8",
        "data.eval_fraction=0",
    )
    assert code == 2, err
    line = err.splitlines()[-1]
    assert "after step 8" in line and ("NaN/inf" in line or "loss is nan" in line), line
    assert summary(run)["status"] == "failed" and not (run / "adapter_model.safetensors").exists()


def test_an_internal_error_is_recorded_as_crashed_naming_where(tmp_path, monkeypatch, capsys):
    import ftcli.tasks.runner as runner

    def broken(*args, **kwargs):
        raise KeyError("boom")

    monkeypatch.setattr(runner, "prepare_data", broken)
    assert call_main("train", LORA, f"output.dir={tmp_path / 'run'}") == 1
    err = capsys.readouterr().err
    assert "internal error: KeyError: 'boom' (in test_safety.py:" in err and "reached from runner.py:" in err
    recorded = summary(tmp_path / "run")
    assert recorded["status"] == "crashed" and "boom" in recorded["error"]


def test_a_full_disk_still_gets_the_last_word_into_summary_json(tmp_path, monkeypatch):
    import errno

    from ftcli import report

    path = tmp_path / "summary.json"
    report.write_summary(path, {"status": "running"})

    def full(*args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", full)
    report.write_summary(path, {"status": "failed", "error": "No space left on device"})
    assert json.loads(path.read_text()) == {"status": "failed", "error": "No space left on device"}


@pytest.mark.slow
def test_a_kill_during_the_final_save_leaves_no_result_that_looks_whole(tmp_path):
    die = (
        "import os, sys\nimport ftcli.models.save as save\nreal = save.save_tokenizer\n"
        "def dying(*a, **k):\n    os._exit(9)\nsave.save_tokenizer = dying\n"
        "from ftcli.cli import main\nmain(sys.argv[1:])\n"
    )
    run = tmp_path / "run"
    killed = subprocess.run(
        [sys.executable, "-c", die, "train", str(LORA), f"output.dir={run}", "training.max_steps=3"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert killed.returncode == 9, killed.stderr
    assert (run / ".saving" / "adapter_model.safetensors").exists()  # written, but not moved into place
    assert not (run / "adapter_model.safetensors").exists()
    code, _, err = run_cli("infer", run, "-p", "hi")
    assert code == 2 and "was killed while it ran" in err
    code, _, err = run_cli("train", LORA, f"output.dir={run}", "training.max_steps=3", "--overwrite")
    assert code == 0 and (run / "adapter_model.safetensors").exists() and not (run / ".saving").exists()


# --- --resume ----------------------------------------------------------------------------------------------------


def test_resume_refuses_a_changed_recipe_before_touching_the_record(tmp_path, capsys):
    run = tmp_path / "run"
    steps = ["training.max_steps=4", "training.save_steps=2", "data.eval_fraction=0"]
    assert call_main("train", LORA, f"output.dir={run}", *steps) == 0
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    assert (
        call_main(
            "train",
            LORA,
            f"output.dir={run}",
            *steps,
            "training.learning_rate=1e-3",
            "method.r=4",
            "--resume",
        )
        == 2
    )
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "training.learning_rate (0.003 -> 0.001)" in err and "method.r (16 -> 4)" in err
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file() and p.name != ".ftcli-lock"} == {
        k: v for k, v in before.items() if k != ".ftcli-lock"
    }
    # how long to go on may change
    assert call_main("train", LORA, f"output.dir={run}", *steps[1:], "training.max_steps=6", "--resume") == 0
    assert summary(run)["steps"] == 6


def test_resume_passes_over_a_damaged_newest_checkpoint(tmp_path, capsys):
    run = tmp_path / "run"
    steps = [
        "training.max_steps=6",
        "training.save_steps=2",
        "training.save_total_limit=5",
        "data.eval_fraction=0",
    ]
    assert call_main("train", LORA, f"output.dir={run}", *steps) == 0
    newest = run / "checkpoint-6" / "adapter_model.safetensors"
    newest.write_bytes(newest.read_bytes()[:100])  # truncated
    assert call_main("train", LORA, f"output.dir={run}", *steps, "--resume") == 0
    err = capsys.readouterr().err
    assert (
        "checkpoint-6 is damaged (adapter_model.safetensors" in err and "resuming from the one before" in err
    )
    assert summary(run)["status"] == "completed" and summary(run)["steps"] == 6


# --- secrets -------------------------------------------------------------------------------------------------------


def test_secrets_are_masked_by_value_and_other_variables_are_not(tmp_path, monkeypatch, capsys):
    token = "hf_FAKEsecret0123456789abcdefghij"
    monkeypatch.setenv("HF_TOKEN", token)
    monkeypatch.setenv("MAX_TOKENS", "96")
    recipe = write_recipe(
        tmp_path / "r.yaml",
        f"extends: {LORA}\ndescription: by ${{env:HF_TOKEN}}\ndata:\n  max_length: ${{env:MAX_TOKENS}}\n",
    )
    for extra in ([], ["--json"]):
        assert call_main("validate", recipe, *extra) == 0
        out = capsys.readouterr().out
        assert token not in out and "${env:HF_TOKEN}" in out and "96" in out
    # a secret inside a value that reaches an error line
    monkeypatch.setenv("DATA_ID", f"org/data-{token}")
    assert (
        call_main("prepare", recipe, "data.sources.0.path=${env:DATA_ID}", f"data.cache_dir={tmp_path}") == 2
    )
    err = capsys.readouterr().err
    assert token not in err and "***" in err


# --- damaged caches and histories; caches that cannot be used ------------------------------------------------------


def test_a_damaged_cache_entry_is_prepared_again(tmp_path, capsys):
    args = ["prepare", LORA, f"data.cache_dir={tmp_path}", "--json"]
    assert call_main(*args) == 0
    entry = next(p for p in tmp_path.iterdir() if (p / "stats.json").exists())
    for arrow in (entry / "train").glob("*.arrow"):
        arrow.write_bytes(b"not arrow")
    capsys.readouterr()
    assert call_main(*args) == 0
    captured = capsys.readouterr()
    assert "is unreadable (" in captured.err and json.loads(captured.out)["cache_hit"] is False


def test_an_unreadable_eval_history_is_kept_aside_and_a_new_one_started(tmp_path):
    from ftcli.infer.evaluate import record

    (tmp_path / "recipe.resolved.yaml").write_text("{}")
    (tmp_path / "eval.json").write_text("[{broken")
    record(tmp_path, {"tasks": ["t"], "model": {"t": {"acc": 1.0}}})
    assert json.loads((tmp_path / "eval.json").read_text())[0]["model"] == {"t": {"acc": 1.0}}
    kept = list(tmp_path.glob("eval.json.unreadable-*"))
    assert len(kept) == 1 and kept[0].read_text() == "[{broken"


def test_a_cache_root_that_is_a_file_is_one_line(tmp_path):
    blocker = tmp_path / "cache"
    blocker.write_text("not a folder")
    code, _, err = run_cli("prepare", LORA, env={"FTCLI_CACHE": str(blocker)})
    assert code == 2, err
    assert (
        err.strip().splitlines()[-1]
        == f"error: FTCLI_CACHE: {blocker} is a file, not a folder; point FTCLI_CACHE at a folder"
    )


def test_infer_with_stdout_closed_refuses_instead_of_losing_the_results(tmp_path):
    proc = subprocess.run(
        ["bash", "-c", f"{sys.executable} -m ftcli infer {LORA} -p hi >&-"], capture_output=True, text=True
    )
    assert proc.returncode == 2 and "stdout is closed" in proc.stderr


# --- input that is large or oddly written, handled ----------------------------------------------------------------


def test_an_enormous_message_is_cut_to_what_a_row_holds_before_it_is_tokenized():
    from ftcli.data.tokenize import RowTokenizer, char_budget
    from ftcli.models.load import load_tokenizer
    from ftcli.recipe import load_recipe

    tok = load_tokenizer(load_recipe(LORA).model)
    encode = RowTokenizer(tok, "chat", {}, tok.chat_template, "completion", 256, "truncate")
    answer = {"role": "assistant", "content": "hello"}
    huge = encode({"messages": [[{"role": "user", "content": "hi " * 2_000_000}, answer]]})
    assert huge["raw_length"][0] <= char_budget(tok, 256) + 64  # measured on the cut text, not 6M tokens
    long_answer = encode(
        {"messages": [[{"role": "user", "content": "hi"}, {**answer, "content": "ok " * 2_000_000}]]}
    )
    assert long_answer["status"] == ["truncated"] and len(long_answer["input_ids"][0]) == 256


def test_yaml_merge_keys_are_valid_and_own_keys_win(tmp_path, capsys):
    recipe = write_recipe(
        tmp_path / "m.yaml", f"extends: {LORA}\ntraining:\n  <<: {{batch_size: 2, epochs: 3}}\n  epochs: 1\n"
    )
    assert call_main("validate", recipe, "--json") == 0
    training = json.loads(capsys.readouterr().out)["training"]
    assert training["batch_size"] == 2 and training["epochs"] == 1


# --- outputs keep what transformers 4.x reads --------------------------------------------------------------------


@pytest.mark.slow
def test_merged_and_exported_configs_keep_a_non_default_rope_for_transformers_4(tmp_path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from ftcli.models.builtin import builtin_path

    run = tmp_path / "run"
    code, _, err = run_cli(
        "train",
        LORA,
        "model.name=builtin:tiny-llama3",
        f"output.dir={run}",
        "training.max_steps=5",
        "output.merge=true",
    )
    assert code == 0, err
    assert run_cli("export", run, "--out", tmp_path / "f32", "--dtype", "f32")[0] == 0
    for folder in (run / "merged", tmp_path / "f32"):
        config = json.loads((folder / "config.json").read_text())
        assert config["rope_theta"] == 500000.0 and config["rope_scaling"]["rope_type"] == "llama3"
        assert config["torch_dtype"] == config["dtype"] == "float32"
    ids = torch.tensor([[5, 9, 70, 3, 11]])
    base = AutoModelForCausalLM.from_pretrained(builtin_path("builtin:tiny-llama3"))
    with torch.no_grad():
        adapted = PeftModel.from_pretrained(base, run).eval()(input_ids=ids).logits
        merged = AutoModelForCausalLM.from_pretrained(run / "merged").eval()(input_ids=ids).logits
    torch.testing.assert_close(merged, adapted, rtol=1e-4, atol=1e-4)
