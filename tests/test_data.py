"""Data formats -> tokens and labels, length policies, bad rows, packing and the prepare cache."""

import json

import pytest

from ftcli.data.packing import pack_rows, plan_bins
from ftcli.data.prepare import prepare_data
from ftcli.data.templates import NAMED_TEMPLATES
from ftcli.data.tokenize import IGNORE, RowTokenizer
from ftcli.errors import DataError
from ftcli.models.load import load_tokenizer
from ftcli.recipe.schema import ModelSpec, Recipe
from tests.helpers import DATA


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(ModelSpec(name="builtin:tiny-llama"))


def encode(
    tok, fmt, row, columns=None, template=None, train_on="completion", max_length=512, overlong="truncate"
):
    template = template or tok.chat_template
    out = RowTokenizer(tok, fmt, columns or {}, template, train_on, max_length, overlong)(
        {k: [v] for k, v in {**row, "__row": 1}.items()}
    )
    return out


def labelled_text(tok, ids, labels):
    """The text of the label tokens (what the model learns to produce)."""
    return tok.decode([t for t, lab in zip(ids, labels) if lab != IGNORE])


def test_chat_labels_are_the_answers_and_their_end_of_turn(tok):
    row = {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi?"},
            {"role": "assistant", "content": "Hello."},
            {"role": "user", "content": "Bye?"},
            {"role": "assistant", "content": "Bye."},
        ]
    }
    out = encode(tok, "chat", row)
    ids, labels = out["input_ids"][0], out["labels"][0]
    assert tok.decode(ids) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi?<|im_end|>\n<|im_start|>assistant\n"
        "Hello.<|im_end|>\n<|im_start|>user\nBye?<|im_end|>\n<|im_start|>assistant\nBye.<|im_end|>\n"
    )
    assert labelled_text(tok, ids, labels) == "Hello.<|im_end|>\nBye.<|im_end|>\n"
    # the end-of-turn token is a label: the model learns to stop
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    assert sum(1 for t, lab in zip(ids, labels) if t == im_end and lab == im_end) == 2


def test_sharegpt_columns_and_roles_are_mapped(tok):
    row = json.loads((DATA / "sharegpt.jsonl").read_text().splitlines()[0])
    out = encode(tok, "chat", row, columns={"messages": "conversations", "role": "from", "content": "value"})
    answer = row["conversations"][1]["value"]
    assert labelled_text(tok, out["input_ids"][0], out["labels"][0]) == answer + "<|im_end|>\n"
    assert "<|im_start|>user\n" + row["conversations"][0]["value"] in tok.decode(out["input_ids"][0])


def test_instruction_rows_with_alpaca_template(tok):
    row = {"instruction": "Give the capital.", "input": "Peru", "output": "Lima."}
    out = encode(tok, "instruction", row, template=NAMED_TEMPLATES["alpaca"])
    text = tok.decode(out["input_ids"][0])
    assert "### Instruction:\nGive the capital.\n\nPeru\n\n### Response:\nLima.<|endoftext|>" in text
    assert labelled_text(tok, out["input_ids"][0], out["labels"][0]) == "Lima.<|endoftext|>\n\n"


def test_completion_rows_learn_completion_and_eos(tok):
    out = encode(tok, "completion", {"prompt": "Country: Peru\nCapital:", "completion": " Lima"})
    assert labelled_text(tok, out["input_ids"][0], out["labels"][0]) == " Lima<|endoftext|>"


def test_train_on_all_labels_every_token(tok):
    out = encode(tok, "completion", {"prompt": "a", "completion": "b"}, train_on="all")
    assert out["labels"][0] == out["input_ids"][0]


def test_text_rows_end_with_eos_and_long_ones_are_split(tok):
    out = encode(tok, "text", {"text": "x" * 25}, max_length=10)
    assert out["status"] == ["split", "split", "split"]
    assert [len(x) for x in out["input_ids"]] == [10, 10, 6]
    assert out["input_ids"][-1][-1] == tok.eos_token_id and out["labels"][0] == out["input_ids"][0]


def test_truncate_and_drop_policies(tok):
    row = {"prompt": "p" * 5, "completion": "c" * 30}
    truncated = encode(tok, "completion", row, max_length=12)
    assert truncated["status"] == ["truncated"] and len(truncated["input_ids"][0]) == 12
    assert encode(tok, "completion", row, max_length=12, overlong="drop")["status"] == ["dropped:overlong"]
    # a truncation that leaves no answer token drops the row: it would teach nothing
    assert encode(tok, "completion", {"prompt": "p" * 20, "completion": "c"}, max_length=12)["status"] == [
        "dropped:no_labels"
    ]


@pytest.mark.parametrize(
    "row, field",
    [
        ({"messages": [{"role": "user", "content": "hi"}]}, "messages"),
        (
            {"messages": [{"role": "user", "content": "hi"}, {"role": "wizard", "content": "x"}]},
            "messages[1].role",
        ),
        (
            {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": " "}]},
            "messages[1].content",
        ),
        ({"messages": "hello"}, "messages"),
        ({"chat": []}, "messages"),
    ],
)
def test_bad_chat_rows_name_the_field(tok, row, field):
    out = encode(tok, "chat", row)
    assert out["status"] == ["bad"] and out["error"][0].startswith(f"field '{field}'")


def recipe_for(tmp_path, rows, fmt="chat", **data):
    src = tmp_path / "rows.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    task = "pretrain" if fmt == "text" else "sft"
    return Recipe.model_validate(
        {
            "task": task,
            "model": {"name": "builtin:tiny-llama"},
            "data": {"format": fmt, "sources": [str(src)], "cache_dir": str(tmp_path / "cache"), **data},
        }
    )


GOOD = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
BAD = {"messages": [{"role": "user", "content": "hi"}]}


def test_bad_row_stops_with_file_row_and_field(tmp_path, tok):
    recipe = recipe_for(tmp_path, [GOOD, GOOD, BAD, GOOD], shuffle=False)
    with pytest.raises(DataError) as info:
        prepare_data(recipe, tok)
    assert str(info.value) == (
        f"{tmp_path / 'rows.jsonl'} row 3: field 'messages': no assistant message to learn from "
        "(set data.on_bad_rows: skip to skip such rows)"
    )


def test_bad_rows_skipped_and_counted_on_request(tmp_path, tok):
    recipe = recipe_for(tmp_path, [GOOD, BAD, GOOD, BAD, GOOD], on_bad_rows="skip")
    stats = prepare_data(recipe, tok).stats
    assert stats["sources"][0]["bad_skipped"] == 2 and stats["sources"][0]["kept"] == 3


def test_broken_jsonl_line_is_named(tmp_path, tok):
    recipe = recipe_for(tmp_path, [GOOD, GOOD])
    with open(recipe.data.sources[0].path, "a") as f:
        f.write('{"messages": [\n')
    with pytest.raises(DataError) as info:
        prepare_data(recipe, tok)
    assert "line 3 is not valid JSON" in str(info.value)


def test_prepare_counts_truncation_and_hits_the_cache(tmp_path, tok, monkeypatch):
    long = {"messages": [{"role": "user", "content": "q" * 100}, {"role": "assistant", "content": "a" * 100}]}
    recipe = recipe_for(tmp_path, [GOOD] * 10 + [long] * 3, max_length=150)
    first = prepare_data(recipe, tok)
    assert not first.cache_hit
    assert first.stats["sources"][0]["truncated"] == 3 and first.stats["train"]["rows"] == 13
    assert first.stats["train"]["length_max"] == 150

    # the second run must not tokenize at all
    def boom(*args, **kwargs):
        raise AssertionError("tokenized again")

    monkeypatch.setattr(RowTokenizer, "__call__", boom)
    second = prepare_data(recipe, tok)
    assert second.cache_hit and second.stats == first.stats
    assert list(second.train["input_ids"]) == list(first.train["input_ids"])

    # anything that changes the tokens changes the fingerprint
    recipe.data.max_length = 160
    with pytest.raises(AssertionError, match="tokenized again"):
        prepare_data(recipe, tok)


def test_best_fit_packing_respects_capacity_and_keeps_every_row():
    lengths = [7, 3, 5, 2, 9, 1, 4, 4, 6]
    bins = plan_bins(lengths, 10)
    assert sorted(i for b in bins for i in b) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in b) <= 10 for b in bins)
    assert len(bins) == 5  # 41 tokens need at least 5 bins of 10


def test_packed_rows_keep_documents_apart():
    packed = pack_rows([[1, 2, 3], [4, 5], [6, 7, 8, 9]], [[1, 2, 3], [-100, 5], [6, 7, 8, 9]], 16, seed=0)
    assert packed["seq_lengths"] == [[4, 3, 2]] or sum(packed["seq_lengths"][0]) == 9
    # the first token of every packed document is never a target (it has no context in its own row)
    labels, lengths = packed["labels"][0], packed["seq_lengths"][0]
    starts = [sum(lengths[:i]) for i in range(len(lengths))]
    assert all(labels[s] == IGNORE for s in starts)


def test_empty_text_documents_are_dropped_and_counted(tmp_path, tok):
    recipe = recipe_for(
        tmp_path, [{"text": "hello world"}, {"text": ""}, {"text": "  "}, {"text": "bye"}], fmt="text"
    )
    stats = prepare_data(recipe, tok).stats
    assert stats["sources"][0]["kept"] == 2 and stats["sources"][0]["dropped_no_labels"] == 2


def test_a_template_without_end_of_turn_gets_eos_as_a_label(tok):
    bare = "{% for m in messages %}{{ m['role'] + ': ' + m['content'] + ' ' }}{% endfor %}"
    bare += "{% if add_generation_prompt %}{{ 'assistant: ' }}{% endif %}"
    row = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}
    out = encode(tok, "chat", row, template=bare)
    assert out["input_ids"][0][-1] == tok.eos_token_id
    assert labelled_text(tok, out["input_ids"][0], out["labels"][0]) == "yo <|endoftext|>"
