"""`ftcli infer` and `ftcli merge`: a run dir alone is enough, stdout carries results only, in order, batching
does not change greedy outputs, reward models score, perplexity compares, bad input exits 2 with file/line."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from tests.helpers import DATA, RECIPES, call_main, run_cli

SMOKE = RECIPES / "smoke"
QUESTIONS = [f"What is the capital of {c}?" for c in ("Peru", "Japan", "Norway", "Chile", "Egypt")]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("infer")
    assert call_main("train", SMOKE / "sft-lora.yaml", f"output.dir={root / 'sft'}") == 0
    assert (
        call_main("align", SMOKE / "reward-lora.yaml", f"output.dir={root / 'reward'}", "output.merge=false")
        == 0
    )
    assert (
        call_main("train", SMOKE / "sft-prompt.yaml", f"output.dir={root / 'prompt'}", "training.max_steps=5")
        == 0
    )
    return root


def infer_json(capsys, *args) -> list[dict]:
    capsys.readouterr()
    assert call_main("infer", *args, "--json") == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def test_run_dir_alone_generates_and_the_merged_model_answers_the_same(runs, tmp_path, capsys):
    prompts = [a for q in QUESTIONS for a in ("-p", q)]
    adapter = infer_json(capsys, runs / "sft", *prompts, "--max-new-tokens", "32")
    assert [r["input"] for r in adapter] == QUESTIONS
    assert all(r["output"] and r["finish_reason"] in ("stop", "length") for r in adapter)
    assert call_main("merge", runs / "sft", "--out", tmp_path / "merged") == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "merged")
    merged = infer_json(capsys, tmp_path / "merged", *prompts, "--max-new-tokens", "32")
    assert [r["output"] for r in merged] == [r["output"] for r in adapter]
    # the model learned the shipped facts: most answers name a capital the way the data does
    assert sum(r["output"].startswith("The capital of") for r in adapter) >= 4


def test_hundred_prompts_on_stdin_give_hundred_ordered_lines_and_batching_is_invisible(runs):
    prompts = [QUESTIONS[i % 5] + f" ({i})" for i in range(100)]
    outputs = {}
    for batch in ("16", "1"):
        code, out, err = run_cli(
            "infer",
            runs / "sft",
            "-i",
            "-",
            "--json",
            "--batch-size",
            batch,
            "--max-new-tokens",
            "16",
            input="\n".join(prompts) + "\n",
        )
        assert code == 0, err
        rows = [json.loads(line) for line in out.splitlines()]  # every stdout line is a result
        assert [r["index"] for r in rows] == list(range(100))
        assert [r["input"] for r in rows] == prompts
        outputs[batch] = [r["output"] for r in rows]
    assert outputs["16"] == outputs["1"]


def test_plain_output_is_one_completion_per_line_and_a_closed_pipe_is_quiet(runs):
    shell = (
        f"printf '{QUESTIONS[0]}\\n{QUESTIONS[1]}\\n{QUESTIONS[2]}\\n{QUESTIONS[3]}\\n' | "
        f"{sys.executable} -m ftcli infer {runs / 'sft'} -i - --max-new-tokens 16 --batch-size 1 | head -n 2"
    )
    proc = subprocess.run(["bash", "-c", shell], capture_output=True, text=True, env=os.environ)
    assert len(proc.stdout.splitlines()) == 2
    assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr


def test_reward_model_ranks_chosen_above_rejected(runs, tmp_path, capsys):
    rows = infer_json(capsys, runs / "reward", "-i", DATA / "preference.jsonl")
    assert len(rows) == 300
    assert sum(r["winner"] == "chosen" for r in rows) / len(rows) >= 0.9
    responses = tmp_path / "responses.jsonl"
    responses.write_text(
        json.dumps({"prompt": QUESTIONS[0], "response": "The capital of Peru is Lima."}) + "\n"
    )
    single = infer_json(capsys, runs / "reward", "-i", responses)
    assert set(single[0]) == {"index", "score"}


def test_perplexity_of_the_finetune_is_below_the_base(runs, capsys):
    tuned = infer_json(capsys, runs / "sft", "--mode", "perplexity", "--split", "train")[0]
    base = infer_json(capsys, SMOKE / "sft-lora.yaml", "--mode", "perplexity", "--split", "train")[0]
    assert tuned["tokens"] == base["tokens"] > 0
    assert tuned["perplexity"] < 0.2 * base["perplexity"]


def test_chat_session_streams_answers_from_stdin(runs):
    code, out, err = run_cli(
        "infer",
        runs / "sft",
        "--chat",
        "--max-new-tokens",
        "24",
        input=f"{QUESTIONS[0]}\n/reset\n{QUESTIONS[1]}\n/exit\n",
    )
    assert code == 0, err
    code, single, _ = run_cli("infer", runs / "sft", "-p", QUESTIONS[0], "--max-new-tokens", "24")
    assert out.startswith(single.strip())


def test_prompt_tuning_run_dir_infers(runs, capsys):
    rows = infer_json(capsys, runs / "prompt", "-p", QUESTIONS[0], "--max-new-tokens", "8")
    assert len(rows) == 1 and rows[0]["completion_tokens"] > 0


def test_bad_input_exits_2_with_file_and_line(runs, tmp_path, capsys):
    assert call_main("infer", tmp_path / "missing", "-p", "hi") == 2
    assert "missing: no such file or folder" in capsys.readouterr().err

    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"prompt": "hi"}\n{"prompt": oops}\n')
    assert call_main("infer", runs / "sft", "-i", broken) == 2
    assert f"{broken} row 2: not valid JSON" in capsys.readouterr().err

    blank = tmp_path / "prompts.txt"
    blank.write_text("hi\n\nthere\n")
    assert call_main("infer", runs / "sft", "-i", blank) == 2
    assert f"{blank}:2: empty prompt" in capsys.readouterr().err
    assert call_main("infer", runs / "sft", "-p", " ") == 2
    assert "--prompt 1: empty prompt" in capsys.readouterr().err

    orphan = tmp_path / "orphan"  # an adapter whose base is gone
    shutil.copytree(runs / "sft", orphan)
    resolved = orphan / "recipe.resolved.yaml"
    resolved.write_text(
        resolved.read_text().replace("name: builtin:tiny-llama", f"name: {tmp_path / 'gone'}")
    )
    assert call_main("infer", orphan, "-p", "hi") == 2
    err = capsys.readouterr().err
    assert f"{resolved}:" in err and "model.name" in err


def test_merge_refuses_what_cannot_be_merged_and_never_overwrites(runs, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert call_main("merge", runs / "sft", "--out", out) == 2
    assert "exists and is not empty; pass --overwrite" in capsys.readouterr().err
    assert (out / "keep.txt").read_text() == "mine"

    assert call_main("merge", runs / "prompt", "--out", tmp_path / "m") == 2
    assert "prompt tuning adds virtual tokens" in capsys.readouterr().err


def test_push_to_hub_without_a_token_is_refused_before_merging(runs, tmp_path):
    env = {"HF_HOME": str(tmp_path / "hf"), "HF_TOKEN": ""}
    code, out, err = run_cli(
        "merge", runs / "sft", "--out", tmp_path / "m", "--push-to-hub", "me/model", env=env
    )
    assert code == 2 and "no Hugging Face token" in err and not (tmp_path / "m").exists()


def test_perplexity_does_not_depend_on_how_training_packed_its_rows(runs, capsys):
    packed = infer_json(capsys, runs / "sft", "--mode", "perplexity", "--split", "eval")[0]
    unpacked = infer_json(
        capsys, runs / "sft", "--mode", "perplexity", "--split", "eval", "data.packing=false"
    )[0]
    assert packed["tokens"] == unpacked["tokens"] and packed["loss"] == pytest.approx(
        unpacked["loss"], abs=1e-6
    )
