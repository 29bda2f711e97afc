"""How a prompt becomes tokens at inference, the same way the model saw prompts in training: the recipe's
`data.template` if set, else the tokenizer's chat template, else raw text (and always raw with --no-template)."""

from __future__ import annotations

from ftcli.data.formats import BadRow
from ftcli.data.templates import render_chat, resolve_template
from ftcli.data.tokenize import max_token_chars
from ftcli.errors import DataError
from ftcli.infer.inputs import Item
from ftcli.recipe.registry import FORMATS, TASKS
from ftcli.recipe.schema import Recipe


def inference_template(recipe: Recipe, tokenizer) -> str | None:
    if not recipe.infer.chat_template or not (
        FORMATS[recipe.data.format].templated or TASKS[recipe.task].pairs
    ):  # e.g. pretraining text
        return None
    if recipe.data.template or getattr(tokenizer, "chat_template", None):
        return resolve_template(recipe.data.template, tokenizer)
    return None


def prompt_ids(
    tokenizer, template: str | None, item: Item, context: int | None = None, new_tokens: int = 0
) -> list[int]:
    """The prompt's tokens. A prompt the chat template rejects, or one that leaves no room in the model's context
    for `new_tokens` (found before tokenizing when it is hopelessly long), is an error naming its input line."""
    fields = item.fields
    if context is not None:
        chars = len(fields.get("prompt") or "") + sum(len(m["content"]) for m in fields.get("messages") or [])
        if chars > context * max_token_chars(tokenizer):
            raise DataError(
                f"{item.where}: the prompt ({chars:,} characters) is far longer than the model's context "
                f"of {context:,} tokens; shorten it"
            )
    try:
        if template is None:
            text = fields.get("prompt") or "\n".join(m["content"] for m in fields["messages"])
            ids = tokenizer(text)["input_ids"]
        else:
            messages = fields.get("messages") or [{"role": "user", "content": fields["prompt"]}]
            ids = tokenizer(render_chat(tokenizer, template, messages, True), add_special_tokens=False)[
                "input_ids"
            ]
    except BadRow as bad:
        raise DataError(f"{item.where}: {bad.message}") from None
    if context is not None and len(ids) + new_tokens > context:
        raise DataError(
            f"{item.where}: the prompt is {len(ids):,} tokens, and with {new_tokens} new tokens that is "
            f"over the model's context of {context:,}; shorten it or lower --max-new-tokens"
        )
    return ids


def context_length(model) -> int | None:
    """How many positions the model takes, from its config (None when it does not say)."""
    config = model.config
    for name in ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length", "n_ctx"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def stop_ids(tokenizer, template: str | None) -> list[int]:
    """EOS plus the template's end-of-turn token (e.g. ChatML's <|im_end|>, Llama 3's <|eot_id|>), which is where
    a chat model trained with ftcli learned to stop."""
    ids = {tokenizer.eos_token_id}
    turn = [{"role": "user", "content": "x"}, {"role": "assistant", "content": "\x00MARK\x00"}]
    try:
        rendered = render_chat(tokenizer, template, turn, False) if template is not None else None
    except BadRow:  # a template that refuses this probe turn: each prompt meets it again, and says so
        rendered = None
    if rendered is not None:
        after = rendered.split("\x00MARK\x00", 1)[-1]
        special = set(tokenizer.all_special_ids)
        following = [t for t in tokenizer(after, add_special_tokens=False)["input_ids"] if t in special]
        ids.update(following[:1])
    return sorted(i for i in ids if i is not None)
