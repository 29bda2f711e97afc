"""How a prompt becomes tokens at inference, the same way the model saw prompts in training: the recipe's
`data.template` if set, else the tokenizer's chat template, else raw text (and always raw with --raw)."""

from __future__ import annotations

from ftcli.data.templates import render_chat, resolve_template
from ftcli.recipe.schema import Recipe


def inference_template(recipe: Recipe, tokenizer, raw: bool) -> str | None:
    if raw or recipe.task == "pretrain":
        return None
    if recipe.data.template or getattr(tokenizer, "chat_template", None):
        return resolve_template(recipe.data.template, tokenizer)
    return None


def prompt_ids(tokenizer, template: str | None, fields: dict) -> list[int]:
    if template is None:
        text = fields.get("prompt") or "\n".join(m["content"] for m in fields["messages"])
        return tokenizer(text)["input_ids"]
    messages = fields.get("messages") or [{"role": "user", "content": fields["prompt"]}]
    return tokenizer(render_chat(tokenizer, template, messages, True), add_special_tokens=False)["input_ids"]


def stop_ids(tokenizer, template: str | None) -> list[int]:
    """EOS plus the template's end-of-turn token (e.g. ChatML's <|im_end|>, Llama 3's <|eot_id|>), which is where
    a chat model trained with ftcli learned to stop."""
    ids = {tokenizer.eos_token_id}
    if template is not None:
        turn = [{"role": "user", "content": "x"}, {"role": "assistant", "content": "\x00MARK\x00"}]
        after = render_chat(tokenizer, template, turn, False).split("\x00MARK\x00", 1)[-1]
        special = set(tokenizer.all_special_ids)
        following = [t for t in tokenizer(after, add_special_tokens=False)["input_ids"] if t in special]
        ids.update(following[:1])
    return sorted(i for i in ids if i is not None)
