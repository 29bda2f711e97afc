"""`ftcli eval`: lm-evaluation-harness in-process on a run dir gives lm-eval's own numbers, side by side with the
base, kept in the run's eval.json; clear errors for unknown tasks and a missing extra."""

import json
import sys

import pytest

from tests.helpers import RECIPES, call_main, run_cli

EVAL_TASKS = RECIPES / "eval"


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("eval") / "run"
    code, _, err = run_cli("train", RECIPES / "smoke" / "sft-lora.yaml", f"output.dir={run}")
    assert code == 0, err
    return run


@pytest.mark.slow
def test_ftcli_eval_equals_calling_lm_eval_directly_and_compares_with_the_base(sft_run, monkeypatch):
    pytest.importorskip("lm_eval", reason='the eval extra is not installed (pip install ".[eval]")')
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    from ftcli.models.builtin import builtin_path

    code, out, err = run_cli(
        "eval", sft_run, "--tasks", "ftcli_capitals", "--include-path", EVAL_TASKS, "--compare-base", "--json"
    )
    assert code == 0, err
    ours = json.loads(out)
    monkeypatch.chdir(EVAL_TASKS)  # the shipped tasks name their data files relative to their folder
    direct = {}
    for name, extra in (("model", f",peft={sft_run}"), ("base", "")):
        result = simple_evaluate(
            model="hf",
            model_args=f"pretrained={builtin_path('builtin:tiny-llama')}{extra},dtype=float32",
            tasks=["ftcli_capitals"],
            device="cpu",
            batch_size=8,
            task_manager=TaskManager(include_path=str(EVAL_TASKS)),
        )
        direct[name] = result["results"]["ftcli_capitals"]
    for name in ("model", "base"):
        assert ours[name]["ftcli_capitals"]["acc"] == pytest.approx(direct[name]["acc,none"])
        assert ours[name]["ftcli_capitals"]["acc_norm"] == pytest.approx(direct[name]["acc_norm,none"])
    assert (
        ours["model"]["ftcli_capitals"]["acc_norm"] > ours["base"]["ftcli_capitals"]["acc_norm"]
    )  # it learned
    history = json.loads((sft_run / "eval.json").read_text())
    assert history[-1]["model"] == ours["model"]


@pytest.mark.slow
def test_eval_table_and_history_accumulate(sft_run):
    pytest.importorskip("lm_eval", reason='the eval extra is not installed (pip install ".[eval]")')
    before = json.loads((sft_run / "eval.json").read_text()) if (sft_run / "eval.json").exists() else []
    code, out, err = run_cli(
        "eval", sft_run, "--tasks", "ftcli_colours", "--include-path", EVAL_TASKS, "--limit", "5"
    )
    assert code == 0, err
    assert "ftcli_colours" in out and "acc" in out  # the table is the result: on stdout
    assert len(json.loads((sft_run / "eval.json").read_text())) == len(before) + 1


def test_unknown_task_is_one_line_with_a_suggestion(capsys):
    pytest.importorskip("lm_eval", reason='the eval extra is not installed (pip install ".[eval]")')
    code = call_main("eval", "builtin:tiny-llama", "--tasks", "ftcli_capitalz", "--include-path", EVAL_TASKS)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1] == (
        f"error: --tasks: 'ftcli_capitalz' is not a task of lm-eval's registry or "
        f"{EVAL_TASKS}; did you mean ftcli_capitals?"
    )


def test_missing_extra_says_how_to_install_it(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # import lm_eval now raises ImportError
    monkeypatch.setitem(sys.modules, "lm_eval.tasks", None)
    code = call_main("eval", "builtin:tiny-llama", "--tasks", "anything")
    assert code == 2
    assert 'pip install ".[eval]" (in a checkout of ftcli)' in capsys.readouterr().err
