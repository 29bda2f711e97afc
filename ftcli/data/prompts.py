"""Rows for online RL (task: grpo): each row's prompt, its reference answer, and the columns rewards read.

The prompt is what the data's answer replies to: a chat or instruction row's conversation before its last assistant
turn, a completion row's prompt, a preference row's prompt (its reference is the chosen answer). With a chat
template the prompt is kept as messages, which TRL renders with that same template (set on the tokenizer) and
add_generation_prompt, exactly as ftcli renders prompts at inference; without one it is raw text. A prompt longer
than align.max_prompt_length is dropped (counted), never cut: a prompt cut short asks another question.

Used as a batched `datasets.map` function, so it must stay picklable (num_proc > 1).
"""

from __future__ import annotations

from dataclasses import dataclass

from ftcli.data.formats import BadRow, canonical_row
from ftcli.data.templates import render_chat
from ftcli.data.tokenize import BAD, DROPPED_OVERLONG, OK, char_budget

PROMPT_COLUMNS = ("prompt", "answer")


@dataclass
class PromptRows:
    tokenizer: object
    fmt: str
    columns: dict
    template: str | None  # None: prompts are raw text
    max_prompt_length: int
    keep: tuple[str, ...] = ()  # raw columns the rewards compare against, kept as text

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        names = list(batch)
        out: dict[str, list] = {
            k: [] for k in (*PROMPT_COLUMNS, *self.keep, "prompt_length", "status", "__row", "error")
        }
        empty = [] if self.template is not None else ""
        for values in zip(*batch.values()):
            row = dict(zip(names, values))
            try:
                prompt, answer = self.split(canonical_row(self.fmt, row, self.columns))
                kept = {k: self._column(row, k) for k in self.keep}
                length = self._length(prompt)
                status, error = (OK if length <= self.max_prompt_length else DROPPED_OVERLONG), None
            except BadRow as bad:
                prompt, answer, kept, length, status = empty, "", dict.fromkeys(self.keep, ""), 0, BAD
                error = f"field '{bad.field}': {bad.message}"
            out["prompt"].append(prompt)
            out["answer"].append(answer)
            for k in self.keep:
                out[k].append(kept[k])
            out["prompt_length"].append(length)
            out["status"].append(status)
            out["__row"].append(row.get("__row", 0))
            out["error"].append(error)
        return out

    def split(self, row: dict):
        """(prompt: messages or text, reference answer: text) of a canonical row."""
        if "messages" in row:  # chat, instruction
            messages = row["messages"]
            if row.get("tools") or any(m.get("tool_calls") or m["role"] == "tool" for m in messages):
                raise BadRow("messages", "GRPO prompts with tool calls are not supported")
            last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=len(messages))
            prompt, answer = messages[:last], messages[last]["content"] if last < len(messages) else ""
            if not prompt:
                raise BadRow("messages", "no turn before the first assistant answer to prompt with")
            return self._prompt(prompt), answer
        if "chosen" in row:  # preference: the chosen answer is the reference
            chosen = row["chosen"]
            answer = chosen if isinstance(chosen, str) else chosen[-1]["content"]
            return self._prompt(row["prompt"]), answer
        return self._prompt(row["prompt"]), row["completion"]  # completion

    def _prompt(self, prompt):
        if self.template is None:
            if isinstance(prompt, list):
                raise BadRow(
                    "prompt", "conversational prompts need a chat template; set data.template (e.g. chatml)"
                )
            return prompt
        messages = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
        return [{"role": m["role"], "content": m["content"]} for m in messages]

    def _length(self, prompt) -> int:
        """Prompt tokens as TRL will count them; a hopelessly long text is measured by its characters."""
        chars = len(prompt) if isinstance(prompt, str) else sum(len(m["content"]) for m in prompt)
        if chars > char_budget(self.tokenizer, self.max_prompt_length):
            return self.max_prompt_length + 1
        if isinstance(prompt, str):
            return len(self.tokenizer(prompt)["input_ids"])
        text = render_chat(self.tokenizer, self.template, prompt, True, field="prompt")
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _column(self, row: dict, name: str) -> str:
        field = self.columns.get(name, name)
        if row.get(field) is None:
            raise BadRow(field, "missing: align.rewards compares against it; map it with data.columns")
        return str(row[field])
