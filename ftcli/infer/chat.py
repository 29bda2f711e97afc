"""`ftcli infer TARGET --chat`: a multi-turn session, streaming each answer as it is generated. Lines come from
the terminal (or stdin); `/reset` starts over, `/exit` or end of input quits."""

from __future__ import annotations

import sys

from ftcli import report
from ftcli.errors import UserError
from ftcli.infer.generate import generate
from ftcli.infer.inputs import Item
from ftcli.recipe.schema import InferSpec


def chat(model, tokenizer, spec: InferSpec, template: str | None) -> None:
    from transformers import TextStreamer

    if template is None:
        raise UserError(
            "--chat needs a chat template: the model has none and the recipe sets no data.template"
        )
    spec = spec.model_copy(update={"batch_size": 1, "num_return_sequences": 1})
    messages: list[dict] = []
    tty = sys.stdin.isatty()
    report.console.print("[dim]chat: /reset to start over, /exit to quit[/]")
    while True:
        if tty:
            report.console.print("[bold]you>[/] ", end="")
        line = sys.stdin.readline()
        if not line or line.strip() == "/exit":
            return
        if line.strip() == "/reset":
            messages = []
            continue
        if not line.strip():
            continue
        messages.append({"role": "user", "content": line.rstrip("\n")})
        streamer = TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
        result = next(
            generate(model, tokenizer, [Item(0, {"messages": messages}, "chat")], spec, template, streamer)
        )
        sys.stdout.flush()
        messages.append({"role": "assistant", "content": result["output"]})
