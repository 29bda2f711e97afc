"""Preference rows -> prompt_ids / chosen_ids / rejected_ids, the pre-tokenized layout TRL's preference trainers
consume (their own tokenization is skipped, as for SFT).

Conversational pairs, and string pairs when a chat template is available, are rendered with the template: the
prompt with the generation prompt, each answer as the text the whole conversation adds after it (so the template's
end-of-turn marker is part of the answer). Without a template, string pairs are joined as raw text, as TRL does.
Long pairs keep the end of the prompt (the turn being answered) and the beginning of each answer.

Used as a batched `datasets.map` function, so it must stay picklable (num_proc > 1).
"""

from __future__ import annotations

from dataclasses import dataclass

from ftcli.data.formats import BadRow, canonical_row
from ftcli.data.templates import render_chat
from ftcli.data.tokenize import BAD, DROPPED_NO_LABELS, DROPPED_OVERLONG, OK, TRUNCATED, cap_text, char_budget

PAIR_COLUMNS = ("prompt_ids", "chosen_ids", "rejected_ids")


@dataclass
class PairTokenizer:
    tokenizer: object
    columns: dict
    template: str | None  # None: no chat template, string pairs are joined as raw text
    max_length: int
    max_prompt_length: int
    overlong: str  # truncate | drop
    max_completion_length: int | None = None

    fmt: str = "preference"
    OUTPUT = PAIR_COLUMNS  # the columns a row becomes (image pairs add their image paths)

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        names = list(batch)
        out: dict[str, list] = {
            k: [] for k in (*self.OUTPUT, "margin", "status", "raw_length", "__row", "error")
        }
        for values in zip(*batch.values()):
            row = dict(zip(names, values))
            try:
                pair = canonical_row(self.fmt, row, self.columns)
                encoded, status, raw = self._encode(pair)
                margin, error = pair["margin"], None
            except BadRow as bad:
                encoded, status, raw, margin = {}, BAD, 0, None
                error = f"field '{bad.field}': {bad.message}"
            for key in self.OUTPUT:
                out[key].append(encoded.get(key, []) if status in (OK, TRUNCATED) else [])
            out["margin"].append(None if margin is None else float(margin))
            out["status"].append(status)
            out["raw_length"].append(raw)
            out["__row"].append(row.get("__row", 0))
            out["error"].append(error)
        return out

    def _encode(self, pair: dict):
        # texts longer than a pair can hold are cut first: the prompt keeps its end, answers their beginning
        prompt_cap, answer_cap = (
            char_budget(self.tokenizer, n) for n in (self.max_prompt_length, self.max_length)
        )
        prompt = _capped(pair["prompt"], prompt_cap, keep_end=True)
        chosen, rejected = (_capped(pair[side], answer_cap) for side in ("chosen", "rejected"))
        *ids, status, raw = self._fit(*self.encode(prompt, [chosen, rejected]))
        return dict(zip(PAIR_COLUMNS, ids)), status, raw

    def encode(self, prompt, answers: list) -> list[list[int]]:
        """[prompt_ids, answer_ids...] for a prompt (text or messages) and answers (text or assistant messages),
        as training saw them; also used to score responses with a trained reward model."""
        tok = self.tokenizer
        chat = any(isinstance(x, list) for x in (prompt, *answers))
        if chat and self.template is None:
            raise BadRow(
                "chosen", "conversational pairs need a chat template; set data.template (e.g. chatml)"
            )
        if self.template is not None:
            prompt_text, texts = self.render(prompt, answers)
            prompt_ids = tok(prompt_text, add_special_tokens=False)["input_ids"]
        else:
            prompt_ids, texts = tok(prompt)["input_ids"], list(answers)
        return [prompt_ids, *self.answer_ids(texts)]

    def render(self, prompt, answers: list) -> tuple[str, list[str]]:
        """The templated prompt (with the generation prompt), and each answer as the text the conversation adds
        after it. A message's content may be a list of content items (an image pair's prompt)."""
        as_list = lambda side, role: side if isinstance(side, list) else [{"role": role, "content": side}]
        messages = as_list(prompt, "user")
        prompt_text = self._apply(messages, True)
        texts = []
        for name, answer in zip(("chosen", "rejected", "response"), answers):
            full = self._apply(messages + as_list(answer, "assistant"), False)
            if not full.startswith(prompt_text):
                raise BadRow(
                    name,
                    "the chat template renders the prompt differently inside the conversation; "
                    "set data.template (e.g. chatml)",
                )
            texts.append(full[len(prompt_text) :])
        return prompt_text, texts

    def answer_ids(self, texts: list[str]) -> list[list[int]]:
        """Each answer's tokens, ending in a stop the model must learn."""
        tok = self.tokenizer
        special = set(tok.all_special_ids)
        completions = []
        for ids in tok(texts, add_special_tokens=False)["input_ids"]:
            if not any(t in special for t in ids):  # the model must learn to stop
                ids = ids + [tok.eos_token_id]
            completions.append(ids)
        return completions

    def _fit(self, prompt, chosen, rejected):
        raw = len(prompt) + max(len(chosen), len(rejected))
        answer_cap = self.max_completion_length or self.max_length
        status = OK
        if (
            raw > self.max_length
            or len(prompt) > self.max_prompt_length
            or max(map(len, (chosen, rejected))) > answer_cap
        ):
            if self.overlong == "drop":
                return [], [], [], DROPPED_OVERLONG, raw
            prompt = prompt[-self.max_prompt_length :]
            budget = min(self.max_length - len(prompt), answer_cap)
            chosen, rejected, status = chosen[:budget], rejected[:budget], TRUNCATED
        if chosen == rejected:  # truncation cut away every difference
            return [], [], [], DROPPED_NO_LABELS, raw
        return prompt, chosen, rejected, status, raw

    def _apply(self, messages: list[dict], add_generation_prompt: bool) -> str:
        return render_chat(self.tokenizer, self.template, messages, add_generation_prompt, field="prompt")


def _capped(side, budget: int, keep_end: bool = False):
    if isinstance(side, str):
        return cap_text(side, budget, keep_end)
    return [{**m, "content": cap_text(m["content"], budget, keep_end)} for m in side]
