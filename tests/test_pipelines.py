"""ftcli in CI logs and shell pipelines: progress and phase lines where stderr is a file, exactly one stdout line
per completion, a closed pipe ends with 0, and refusals that need no model come before the heavy imports."""

import json
import os
import re
import subprocess
import sys

import pytest

from ftcli import report
from ftcli.infer.run import one_line
from tests.helpers import RECIPES, call_main, imported_after

SMOKE = RECIPES / "smoke"
QUESTIONS = [f"What is the capital of {c}?" for c in ("Peru", "Japan", "Norway", "Chile", "Egypt")]


def logged(log, *args, input=None, progress_seconds="0") -> subprocess.CompletedProcess:
    """ftcli in a fresh process with stderr going to the file `log`, as under nohup or in CI."""
    with open(log, "w") as err:
        return subprocess.run(
            [sys.executable, "-m", "ftcli", *map(str, args)],
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            input=input,
            env={**os.environ, "FTCLI_PROGRESS_SECONDS": progress_seconds},
        )


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipelines")
    done = logged(
        root / "train.log",
        "train",
        SMOKE / "sft-lora.yaml",
        f"output.dir={root / 'run'}",
        "training.max_steps=30",
    )
    assert done.returncode == 0, (root / "train.log").read_text()
    return root / "run"


def test_train_with_stderr_to_a_file_logs_progress_lines_and_phases(run):
    log = (run.parent / "train.log").read_text()
    progress = [line for line in log.splitlines() if line.startswith("train ")]
    # FTCLI_PROGRESS_SECONDS=0: a line per step, each with the numbers a log reader wants
    assert [int(line.split()[1].split("/")[0]) for line in progress] == list(range(1, 31))
    assert all(re.search(r"\d+/30 steps \(\d+%\)  .*tok/s  elapsed \d+:\d\d", line) for line in progress)
    assert all("eta " in line for line in progress[:-1]) and "(100%)" in progress[-1]
    assert sum("loss " in line for line in progress) >= 25
    for phase in ("loading builtin:tiny-llama (lora) on the cpu", f"saving to {run}", "done 30 steps"):
        assert phase in log
    assert "\r" not in log and "\x1b[" not in log  # no redrawn bars, no colour codes
    assert "…" not in log  # tables are not cut to 80 columns


def test_plain_progress_prints_at_a_steady_interval(monkeypatch, capsys):
    clock = iter(range(0, 1000))
    monkeypatch.setattr(report.time, "perf_counter", lambda: next(clock))
    monkeypatch.setenv("FTCLI_PROGRESS_SECONDS", "30")
    progress = report.PlainProgress("train", 100, " steps")  # one second a step
    for step in range(1, 101):
        progress.update(step, "loss 1.0000")
    lines = capsys.readouterr().err.splitlines()
    assert [line.split()[1] for line in lines] == ["30/100", "60/100", "90/100", "100/100"]
    assert lines[0] == "train 30/100 steps (30%)  loss 1.0000  elapsed 0:30  eta 1:10"


def test_infer_and_merge_with_stderr_to_a_file_log_their_phases(run, tmp_path):
    done = logged(
        tmp_path / "infer.log", "infer", run, "-i", "-", "--max-new-tokens", "8", input="\n".join(QUESTIONS)
    )
    log = (tmp_path / "infer.log").read_text()
    assert done.returncode == 0 and len(done.stdout.splitlines()) == 5, log
    assert f"loading builtin:tiny-llama + {run} on the cpu" in log
    assert [line for line in log.splitlines() if line.startswith("infer ")][-1] == (
        [line for line in log.splitlines() if line.startswith("infer 5/5 results (100%)")][0]
    )
    done = logged(tmp_path / "merge.log", "merge", run, "--out", tmp_path / "merged")
    log = (tmp_path / "merge.log").read_text()
    assert done.returncode == 0 and done.stdout == f"{tmp_path / 'merged'}\n", log
    assert f"writing {tmp_path / 'merged'} from {run}" in log
    assert "merging the adapter into builtin:tiny-llama on the cpu" in log


def test_one_line_escapes_what_would_break_a_line_as_json_does():
    text = 'a\nb\\n\tc\x1b[31m\r\u2028"é✓'
    assert one_line(text) == 'a\\nb\\\\n\\tc\\u001b[31m\\r\\u2028"é✓'
    assert json.loads('"' + one_line(text).replace('"', '\\"') + '"') == text  # reversible
    assert one_line("plain text") == "plain text"


def test_plain_infer_prints_one_escaped_line_per_completion_and_raw_prints_them_as_they_are(capsys):
    # an untrained model sampling freely: completions full of newlines and control bytes
    args = ["infer", "builtin:tiny-llama", *(a for q in QUESTIONS for a in ("-p", q)), "--no-template"]
    args += ["--temperature", "1.0", "--seed", "3", "--max-new-tokens", "48"]
    outputs = {}
    for style in ("--json", None, "--raw"):
        capsys.readouterr()
        assert call_main(*args, *([style] if style else [])) == 0
        outputs[style] = capsys.readouterr().out
    completions = [json.loads(line)["output"] for line in outputs["--json"].splitlines()]
    assert len(completions) == 5 and sum(bool(re.search(r"[\x00-\x1f]", c)) for c in completions) >= 3
    assert outputs[None].splitlines() == [one_line(c) for c in completions]
    assert outputs[None].count("\n") == 5
    assert outputs["--raw"] == "".join(c + "\n" for c in completions)


@pytest.mark.slow
def test_infer_into_head_ends_with_0_twenty_times_out_of_twenty(run, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(QUESTIONS * 3) + "\n")
    infer = f"{sys.executable} -m ftcli infer {run} -i - --max-new-tokens 8 --batch-size 1"
    once = f'cat {prompts} | {infer} 2>>{tmp_path / "err"} | head -n 1 >/dev/null; echo "${{PIPESTATUS[1]}}"'
    loop = f"seq 20 | xargs -P 2 -I{{}} bash -c '{once}'"  # two at a time: the race is per process
    done = subprocess.run(["bash", "-c", loop], capture_output=True, text=True, env=os.environ)
    assert done.stdout.split() == ["0"] * 20, (tmp_path / "err").read_text()[-2000:]
    assert "Traceback" not in (tmp_path / "err").read_text()


@pytest.mark.parametrize(
    "args, message",
    [
        (("infer", "runs/nonexistent", "-p", "hi"), "runs/nonexistent: no such file or folder"),
        (("infer", "no-such-dir", "-p", "hi"), "no-such-dir: no such file or folder"),
        (("merge", "runs/nonexistent", "--out", "m"), "runs/nonexistent: no such file or folder"),
        (
            ("infer", "notrun", "-p", "hi"),
            "notrun: neither a run dir (no recipe.resolved.yaml) nor a model dir",
        ),
        (("export", "notrun", "--out", "m"), "notrun: neither a run dir"),
        (("align", SMOKE / "sft-lora.yaml"), "task sft is run by `ftcli train`, not `ftcli align`"),
        (
            ("align", SMOKE / "dpo-from-sft.yaml"),  # before its SFT run: once a minute of hub retries
            "model.adapter: runs/smoke-sft-lora: no such file or folder (and not taken for a hub model id",
        ),
        (
            ("train", SMOKE / "sft-lora.yaml", "model.name=org/nothing"),
            "model.name: org/nothing: no such file",
        ),
        (("train", SMOKE / "sft-lora.yaml", "output.dir=notrun"), "output dir notrun is not empty"),
    ],
)
def test_refusals_that_need_no_model_come_before_the_heavy_imports(args, message, tmp_path):
    (tmp_path / "runs").mkdir()
    (tmp_path / "notrun").mkdir()
    (tmp_path / "notrun" / "notes.txt").write_text("mine")
    code, err, heavy = imported_after(*args, cwd=tmp_path)
    assert code == 2 and message in err and len(err.splitlines()) == 1, err
    assert heavy == set()  # about the time `validate` takes (~0.2 s here), not a model load
