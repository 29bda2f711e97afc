"""Markdown reference of every recipe key, generated from the schema:
python -m ftcli.recipe.reference > docs/recipe-reference.md"""

from __future__ import annotations

import typing

from pydantic import BaseModel

from ftcli.recipe import schema


def _models_of(annotation) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    found = []
    for arg in typing.get_args(annotation):
        found += _models_of(arg)
    return found


def key_rows(model: type[BaseModel] = schema.Recipe, prefix: str = "") -> list[tuple[str, str, str]]:
    rows = []
    for name, field in model.model_fields.items():
        path = f"{prefix}{name}"
        nested = [m for m in _models_of(field.annotation) if m is not schema.DataSource or name == "sources"]
        if nested and name != "eval_sources":
            for sub in dict.fromkeys(nested):
                label = (
                    f" ({sub.model_fields['type'].default})"
                    if "type" in sub.model_fields and len(nested) > 1
                    else ""
                )
                rows += [
                    (p + label if label and not p.endswith(".type") else p, d, h)
                    for p, d, h in key_rows(sub, f"{path}{'[]' if name == 'sources' else ''}.")
                ]
            continue
        if field.is_required():
            default = "required"
        elif field.default_factory is not None:
            default = repr(field.default_factory())
        else:
            default = "null" if field.default is None else repr(field.default)
        if path == "method.type":
            default, field_help = (
                "'full'",
                "full \\| lora \\| qlora \\| prefix \\| prompt (`method: lora` is short for this)",
            )
        else:
            field_help = field.description or _literal_choices(field.annotation)
        rows.append((path, default, field_help))
    return rows


def _literal_choices(annotation) -> str:
    if typing.get_origin(annotation) is typing.Literal:
        return " \\| ".join(map(str, typing.get_args(annotation)))
    return ""


def markdown() -> str:
    seen, lines = set(), ["| key | default | meaning |", "|---|---|---|"]
    for path, default, help_text in key_rows():
        if path in seen:
            continue
        seen.add(path)
        lines.append(f"| `{path}` | `{default}` | {help_text} |")
    return "\n".join(lines)


def document() -> str:
    """docs/recipe-reference.md, whole."""
    return (
        "# Recipe reference\n\nGenerated from the schema (`python -m ftcli.recipe.reference > docs/recipe-reference.md`);"
        " every section forbids\nunknown keys, and a misspelt key is an error with a did-you-mean.\n\n"
        + markdown()
        + "\n"
    )


if __name__ == "__main__":
    print(document(), end="")
