"""The bundled recipes (recipes/ in the source tree, installed inside the wheel as ftcli/bundled)."""

from __future__ import annotations

from pathlib import Path

import yaml


def bundled_dir() -> Path | None:
    """ftcli/bundled in an installed wheel (recipes/ packaged with their data), else recipes/ of a checkout."""
    package = Path(__file__).resolve().parents[1]
    for candidate in (package / "bundled", package.parent / "recipes"):
        if candidate.is_dir():
            return candidate
    return None


def bundled_recipes() -> list[tuple[str, Path, str]]:
    """(name, path, description) of every bundled recipe, e.g. ('smoke/sft-lora', ..., 'LoRA SFT ...')."""
    root = bundled_dir()
    if root is None:
        return []
    found = []
    for path in sorted(root.rglob("*.yaml")):
        if path.relative_to(root).parts[0] in (
            "data",
            "eval",
        ):  # datasets and lm-eval task files, not recipes
            continue
        try:
            body = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError:
            body = {}
        description = body.get("description") if isinstance(body, dict) else None
        found.append((str(path.relative_to(root).with_suffix("")), path, description or ""))
    return found


def find_recipe(name: str) -> str:
    """A path as given if it exists; else a bundled recipe by name (with or without .yaml)."""
    if Path(name).exists():
        return name
    root = bundled_dir()
    if root is not None:
        for candidate in (root / name, root / f"{name}.yaml", root / name.removeprefix("recipes/")):
            if candidate.is_file():
                return str(candidate)
    return name
