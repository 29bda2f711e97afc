"""Preference pairs: the three real-world shapes, the pre-tokenized layout, bad pairs, and `ftcli prepare`."""

import json

import pytest

from ftcli.data.formats import BadRow, canonical_row
from ftcli.data.prepare import prepare_data
from ftcli.errors import DataError
from ftcli.models.load import load_tokenizer
from ftcli.recipe import load_recipe
from ftcli.recipe.schema import ModelSpec
from tests.helpers import DATA, RECIPES, call_main, write_recipe


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(ModelSpec(name="builtin:tiny-llama"))


def first_row(name):
    return json.loads((DATA / name).read_text().splitlines()[0])


def test_explicit_strings_are_kept():
    row = first_row("preference.jsonl")
    pair = canonical_row("preference", row, {})
    assert (pair["prompt"], pair["chosen"], pair["rejected"]) == (
        row["prompt"],
        row["chosen"],
        row["rejected"],
    )


def test_ultrafeedback_conversations_drop_the_repeated_prompt_turn():
    row = first_row(
        "preference_ultrafeedback.jsonl"
    )  # chosen/rejected repeat the user turn, as in the real set
    pair = canonical_row("preference", row, {})
    assert pair["prompt"] == [{"role": "user", "content": row["prompt"]}]
    assert pair["chosen"] == [row["chosen"][1]] and pair["rejected"] == [row["rejected"][1]]


def test_hh_transcripts_split_at_the_shared_prefix_into_turns():
    row = first_row("preference_hh.jsonl")
    pair = canonical_row("preference", row, {})
    assert [m["role"] for m in pair["prompt"]] == ["user", "assistant", "user"]
    assert pair["prompt"][0]["content"] == "Hi, I have a geography question."
    assert pair["prompt"][2]["content"] == row["chosen"].split("Human: ")[-1].split("\n\n")[0]
    assert pair["chosen"] == [{"role": "assistant", "content": row["chosen"].rsplit("Assistant: ", 1)[1]}]
    assert pair["rejected"] == [{"role": "assistant", "content": row["rejected"].rsplit("Assistant: ", 1)[1]}]


def test_plain_strings_without_prompt_take_their_common_beginning():
    pair = canonical_row("preference", {"chosen": "Answer: Lima.", "rejected": "Answer: Paris."}, {})
    assert (pair["prompt"], pair["chosen"], pair["rejected"]) == ("Answer: ", "Lima.", "Paris.")


@pytest.mark.parametrize(
    "row, field, message",
    [
        ({"prompt": "Q", "chosen": "same", "rejected": "same"}, "chosen", "identical to rejected"),
        ({"prompt": "Q", "chosen": "  ", "rejected": "B"}, "chosen", "is empty"),
        ({"chosen": "Lima", "rejected": "Paris"}, "prompt", "share no beginning"),
        ({"prompt": "Q", "chosen": "A"}, "rejected", "missing"),
        ({"prompt": "Q", "chosen": "A", "rejected": "B", "margin": "big"}, "margin", "expected a number"),
    ],
)
def test_bad_pairs_name_the_field(row, field, message):
    with pytest.raises(BadRow) as info:
        canonical_row("preference", row, {})
    assert info.value.field == field and message in info.value.message


def pair_recipe(tmp_path, source, *overrides):
    path = write_recipe(
        tmp_path / "r.yaml",
        f"""
task: dpo
model: {{name: "builtin:tiny-llama"}}
method: lora
data:
  format: preference
  sources: [{{path: "{source}"}}]
  shuffle: false
  cache_dir: {tmp_path / "cache"}
  max_length: 96
""",
    )
    return load_recipe(path, list(overrides))


@pytest.mark.parametrize(
    "name", ["preference.jsonl", "preference_ultrafeedback.jsonl", "preference_hh.jsonl"]
)
def test_each_shape_becomes_templated_prompt_and_answers(tmp_path, tok, name):
    prepared = prepare_data(pair_recipe(tmp_path, DATA / name, "data.max_length=256"), tok)
    row = prepared.train[0]
    prompt, chosen, rejected = (tok.decode(row[k]) for k in ("prompt_ids", "chosen_ids", "rejected_ids"))
    assert prompt.startswith("<|im_start|>") and prompt.endswith("<|im_start|>assistant\n")
    assert chosen.startswith("The capital of") and chosen.endswith(
        "<|im_end|>\n"
    )  # end-of-turn is in the answer
    assert rejected != chosen and rejected.endswith("<|im_end|>\n")
    if name == "preference_hh.jsonl":
        assert prompt.count("<|im_start|>user") == 2 and "Sure, go ahead." in prompt


def test_without_a_chat_template_strings_join_as_raw_text_with_eos(tmp_path, tok):
    tok = load_tokenizer(ModelSpec(name="builtin:tiny-llama"))
    tok.chat_template = None
    row = prepare_data(pair_recipe(tmp_path, DATA / "preference.jsonl"), tok).train[0]
    raw = first_row("preference.jsonl")
    assert tok.decode(row["prompt_ids"]) == raw["prompt"]
    assert row["chosen_ids"][-1] == tok.eos_token_id and tok.decode(row["chosen_ids"][:-1]) == raw["chosen"]


def test_long_pairs_keep_the_end_of_the_prompt(tmp_path, tok):
    long = tmp_path / "long.jsonl"
    long.write_text(
        json.dumps(
            {"prompt": "x" * 200 + " Which is the capital of Peru?", "chosen": "Lima.", "rejected": "Paris."}
        )
        + "\n"
    )
    prepared = prepare_data(pair_recipe(tmp_path, long, "align.max_prompt_length=40"), tok)
    row = prepared.train[0]
    assert len(row["prompt_ids"]) == 40 and tok.decode(row["prompt_ids"]).endswith("<|im_start|>assistant\n")
    assert len(row["prompt_ids"]) + len(row["chosen_ids"]) <= 96
    assert prepared.stats["sources"][0]["truncated"] == 1
    capped = prepare_data(pair_recipe(tmp_path, long, "align.max_completion_length=3"), tok).train[0]
    assert len(capped["chosen_ids"]) == 3 and len(capped["rejected_ids"]) == 3


def test_bad_pair_stops_with_file_and_row_or_is_skipped(tmp_path, tok):
    rows = tmp_path / "pairs.jsonl"
    good = {"prompt": "Q?", "chosen": "A.", "rejected": "B."}
    rows.write_text("\n".join(json.dumps(r) for r in [good, good, {**good, "rejected": "A."}, good]) + "\n")
    with pytest.raises(DataError) as info:
        prepare_data(pair_recipe(tmp_path, rows), tok)
    assert str(info.value).startswith(f"{rows} row 3: field 'chosen': identical to rejected")
    stats = prepare_data(pair_recipe(tmp_path, rows, "data.on_bad_rows=skip"), tok).stats
    assert stats["sources"][0]["bad_skipped"] == 1 and stats["sources"][0]["kept"] == 3


def test_margin_column_is_carried(tmp_path, tok):
    rows = tmp_path / "pairs.jsonl"
    rows.write_text(json.dumps({"prompt": "Q?", "chosen": "A.", "rejected": "B.", "gap": 1.5}) + "\n")
    recipe = pair_recipe(tmp_path, rows, "data.columns={margin: gap}", "task=reward")
    assert prepare_data(recipe, tok).train[0]["margin"] == 1.5


def test_ftcli_prepare_runs_alignment_recipes(capsys):
    assert call_main("prepare", RECIPES / "smoke" / "dpo-lora.yaml", "--json") == 0
    stats = json.loads(capsys.readouterr().out)
    assert (
        stats["train"]["rows"] == 270
        and stats["eval"]["rows"] == 30
        and stats["train"]["prompt_length_p50"] > 0
    )
