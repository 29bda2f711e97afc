"""Prompt templates: the tokenizer's own chat template by default, a named one, or inline Jinja from the recipe.

All of them are chat templates (Jinja over `messages`), rendered by the tokenizer's `apply_chat_template`, so
the same code masks labels for every template.
"""

from __future__ import annotations

from ftcli.data.formats import BadRow
from ftcli.errors import RecipeError

ALPACA_PREAMBLE = "Below is an instruction that describes a task. Write a response that appropriately completes the request."
NAMED_TEMPLATES = {
    "chatml": (
        "{% for message in messages %}"
        "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    ),
    "alpaca": (
        "{% if messages[0]['role'] == 'system' %}{{ messages[0]['content'] + '\n\n' }}"
        "{% else %}{{ '" + ALPACA_PREAMBLE + "\n\n' }}{% endif %}"
        "{% for message in messages %}"
        "{% if message['role'] == 'user' %}{{ '### Instruction:\n' + message['content'] + '\n\n' }}"
        "{% elif message['role'] == 'assistant' %}{{ '### Response:\n' + message['content'] + eos_token + '\n\n' }}"
        "{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}{{ '### Response:\n' }}{% endif %}"
    ),
    "llama2": (
        "{% if messages[0]['role'] == 'system' %}{% set system = messages[0]['content'] %}"
        "{% set messages = messages[1:] %}{% else %}{% set system = '' %}{% endif %}"
        "{% for message in messages %}"
        "{% if message['role'] == 'user' %}"
        "{% if loop.first and system %}{% set content = '<<SYS>>\n' + system + '\n<</SYS>>\n\n' + message['content'] %}"
        "{% else %}{% set content = message['content'] %}{% endif %}"
        "{{ bos_token + '[INST] ' + content + ' [/INST]' }}"
        "{% elif message['role'] == 'assistant' %}{{ ' ' + message['content'] + ' ' + eos_token }}{% endif %}"
        "{% endfor %}"
    ),
}


def resolve_template(template: str | None, tokenizer) -> str:
    """The Jinja chat template to render rows with."""
    if template is None:
        if getattr(tokenizer, "chat_template", None):
            return tokenizer.chat_template
        raise RecipeError(
            f"the tokenizer has no chat template; set data.template to one of {', '.join(NAMED_TEMPLATES)} "
            "or to inline Jinja",
            key="data.template",
        )
    if template in NAMED_TEMPLATES:
        return NAMED_TEMPLATES[template]
    if "{{" in template or "{%" in template:
        return template
    raise RecipeError(
        f"unknown template {template!r}; use one of {', '.join(NAMED_TEMPLATES)}, inline Jinja, or leave it unset "
        "for the tokenizer's own",
        key="data.template",
    )


def render_chat(
    tokenizer,
    template: str,
    messages: list[dict],
    add_generation_prompt: bool,
    field="messages",
    tools: list | None = None,
) -> str:
    """The template applied to a conversation; a template's own raise_exception or a Jinja error is a bad row."""
    try:
        return tokenizer.apply_chat_template(
            messages,
            chat_template=template,
            tokenize=False,
            add_generation_prompt=add_generation_prompt,
            **({"tools": tools} if tools else {}),
        )
    except Exception as exc:  # noqa: BLE001
        raise BadRow(field, f"chat template rejected this conversation: {exc}") from None


_PROBE_NAME = "ftcli_probe_function"
_RENDERS_TOOLS: dict = {}


def check_renders_tools(tokenizer, template: str, calls: bool, schemas: bool) -> None:
    """Rows with tool calls or tool schemas need a template that renders them (the model's own template for Qwen2.5,
    Llama 3.1, Mistral and others does; ChatML as ftcli ships it does not): without it they would be dropped from
    the text in silence, and the model would learn answers with its calls cut out."""
    if template not in _RENDERS_TOOLS:
        call = {"type": "function", "function": {"name": _PROBE_NAME, "arguments": {"x": 1}}}
        schema = {
            "type": "function",
            "function": {
                "name": _PROBE_NAME + "_schema",
                "description": "probe",
                "parameters": {"type": "object", "properties": {}},
            },
        }
        probe = [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "", "tool_calls": [call]},
        ]
        try:
            text = tokenizer.apply_chat_template(
                probe, chat_template=template, tools=[schema], tokenize=False
            )
        except Exception:  # noqa: BLE001 - a template that cannot take them does not render them
            text = ""
        _RENDERS_TOOLS[template] = (_PROBE_NAME in text, _PROBE_NAME + "_schema" in text)
    renders_calls, renders_schemas = _RENDERS_TOOLS[template]
    missing = (
        "tool calls"
        if calls and not renders_calls
        else "tool schemas (the row's tools)"
        if (schemas and not renders_schemas)
        else None
    )
    if missing:
        raise BadRow(
            "messages",
            f"the chat template does not render {missing}, so they would vanish from the "
            "training text; use a template that renders them (the model's own, e.g. Qwen2.5 or Llama "
            "3.1), or remove them from the data",
        )
