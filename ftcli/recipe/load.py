"""YAML -> (extends, dotted overrides, ${env:VAR}) -> a validated Recipe.

Every failure is a RecipeError that names the file, the YAML line and the key path. The loader keeps a map
from each key path to where it was written (a file:line, or "command line"), so errors can point at it.
"""

from __future__ import annotations

import difflib
import os
import re
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from ftcli import redact
from ftcli.errors import RecipeError
from ftcli.recipe.schema import Recipe

KeyPath = tuple  # of str | int
ENV_PATTERN = re.compile(r"\$\{env:([A-Za-z_][A-Za-z0-9_]*)(?:,([^}]*))?\}")
# Names other tools use for our keys, so their users get a useful did-you-mean.
KEY_ALIASES = {
    "rank": "r",
    "lora_r": "r",
    "lora_alpha": "alpha",
    "lora_dropout": "dropout",
    "lora_target_modules": "target_modules",
    "num_epochs": "epochs",
    "num_train_epochs": "epochs",
    "micro_batch_size": "batch_size",
    "per_device_train_batch_size": "batch_size",
    "gradient_accumulation_steps": "grad_accum",
    "lr": "learning_rate",
    "output_dir": "dir",
    "sequence_len": "max_length",
    "cutoff_len": "max_length",
    "max_seq_length": "max_length",
    "lr_scheduler_type": "lr_scheduler",
    "optim": "optimizer",
    "datasets": "sources",
}
LOCAL_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet", ".txt", ".arrow", ".yaml", ".yml")


class Origins(dict):
    """key path -> 'file:line' (or 'command line'): where each value of the recipe was written."""

    def find(self, path: KeyPath) -> str | None:
        while path:
            if path in self:
                return self[path]
            path = path[:-1]
        return self.get((), None)


def load_recipe(
    path: str | Path, overrides: list[str] | None = None, env: Mapping[str, str] | None = None
) -> Recipe:
    """Load, merge, override, interpolate and validate a recipe file."""
    env = os.environ if env is None else env
    origins = Origins()
    raw = _read_with_extends(Path(path), origins, chain=())
    if isinstance(raw.get("method"), str):  # `method: lora` is short for `method: {type: lora}`
        raw["method"] = {"type": raw["method"]}
        origins[("method", "type")] = origins.get(("method",))
    for item in overrides or []:
        _apply_override(raw, item, origins)
    templates: dict[str, str] = {}
    raw = _interpolate(raw, (), env, origins, templates)
    try:
        recipe = Recipe.model_validate(raw)
    except ValidationError as exc:
        raise _to_recipe_error(exc, origins, raw) from None
    _resolve_local_paths(recipe, Path(path).resolve().parent, origins)
    if recipe.output.dir is None:  # resolved here, where the recipe's file name is known
        recipe.output.dir = str(Path("runs") / Path(path).stem)
    recipe._source = str(path)
    recipe._origins = origins
    recipe._templates = templates
    return recipe


# --- YAML with line numbers -------------------------------------------------------------------------------


MAX_VALUES = 100_000  # values a recipe may expand to: YAML aliases can multiply them past any memory
MAX_DEPTH = 64


def _read_yaml(path: Path, origins: Origins) -> dict:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RecipeError("recipe file not found; check the path", where=str(path)) from None
    except UnicodeDecodeError as exc:
        line = path.read_bytes()[: exc.start].count(b"\n") + 1
        raise RecipeError(
            f"not UTF-8 text (byte 0x{exc.object[exc.start]:02x}); save the recipe as UTF-8",
            where=f"{path}:{line}",
        ) from None
    except OSError as exc:
        raise RecipeError(f"cannot read recipe: {exc.strerror or exc}", where=str(path)) from None
    loader = None
    try:
        loader = yaml.SafeLoader(text)  # rejects control characters already
        node = loader.get_single_node()
        if node is None:
            raise RecipeError("recipe is empty; it needs at least model: and data:", where=f"{path}:1")
        return _Builder(loader, path, origins).build(node, (), top=True)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        if isinstance(exc, yaml.reader.ReaderError):
            line = f":{text.count(chr(10), 0, exc.position) + 1}"
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise RecipeError(f"YAML syntax error: {problem}", where=f"{path}{line}") from None
    except RecursionError:
        raise RecipeError(
            f"nested more than {MAX_DEPTH} levels deep; a recipe is a few levels of keys", where=str(path)
        ) from None
    finally:
        if loader is not None:
            loader.dispose()


class _Builder:
    """YAML nodes -> plain values, keeping each key path's file:line. Bounded: at most MAX_VALUES values and
    MAX_DEPTH levels, and an alias may not contain itself, so no document can exhaust memory or the stack.
    `<<:` merge keys work as in YAML 1.1: the mapping's own keys win over merged ones."""

    def __init__(self, loader: yaml.SafeLoader, file: Path, origins: Origins):
        self.loader, self.file, self.origins = loader, file, origins
        self.count = 0
        self.open: set[int] = set()  # nodes being built: meeting one again means an alias contains itself
        self.merged: dict[int, int] = {}  # mapping node -> how many of its pairs came from merge keys

    def build(self, node: yaml.Node, path: KeyPath, top: bool = False):
        where = f"{self.file}:{node.start_mark.line + 1}"
        self.count += 1
        if self.count > MAX_VALUES:
            raise RecipeError(
                f"the recipe expands to over {MAX_VALUES:,} values (YAML aliases repeating aliases?)",
                where=where,
            )
        if len(path) > MAX_DEPTH:
            raise RecipeError(f"nested more than {MAX_DEPTH} levels deep", key=_dotted(path), where=where)
        if id(node) in self.open:
            raise RecipeError(
                "a YAML alias refers to a value that contains it, which would never end",
                key=_dotted(path) or None,
                where=where,
            )
        if top and not isinstance(node, yaml.MappingNode):
            raise RecipeError(
                "a recipe must be a mapping of keys (model:, data:, ...)", where=f"{self.file}:1"
            )
        self.origins[path] = where
        if not isinstance(node, (yaml.MappingNode, yaml.SequenceNode)):
            return self.loader.construct_object(node, deep=True)
        self.open.add(id(node))
        try:
            if isinstance(node, yaml.MappingNode):
                return self._mapping(node, path)
            return [self.build(item, path + (i,)) for i, item in enumerate(node.value)]
        finally:
            self.open.discard(id(node))

    def _mapping(self, node: yaml.MappingNode, path: KeyPath) -> dict:
        if id(node) not in self.merged:
            own = sum(1 for key, _ in node.value if key.tag != "tag:yaml.org,2002:merge")
            self.loader.flatten_mapping(node)  # merged pairs first, then the mapping's own
            self.merged[id(node)] = len(node.value) - own
        first_own = self.merged[id(node)]
        out: dict = {}
        own_keys: set = set()
        for index, (key_node, value_node) in enumerate(node.value):
            key = self.loader.construct_object(key_node, deep=True)
            where = f"{self.file}:{key_node.start_mark.line + 1}"
            if not isinstance(key, str):
                raise RecipeError(
                    f"keys must be strings, got {key!r}", key=_dotted(path) or None, where=where
                )
            if index >= first_own:
                if key in own_keys:
                    raise RecipeError("key given twice", key=_dotted(path + (key,)), where=where)
                own_keys.add(key)
            out[key] = self.build(value_node, path + (key,))
            self.origins[path + (key,)] = where
        return out


def _read_with_extends(path: Path, origins: Origins, chain: tuple) -> dict:
    path = path.resolve() if path.exists() else path
    if path in chain:
        raise RecipeError(
            "extends forms a cycle: " + " -> ".join(str(p) for p in (*chain, path)), key="extends"
        )
    own_origins = Origins()
    raw = _read_yaml(path, own_origins)
    parents = raw.pop("extends", None)
    merged: dict = {}
    if parents is not None:
        where = own_origins.get(("extends",))
        if isinstance(parents, str):
            parents = [parents]
        if not isinstance(parents, list) or not all(isinstance(p, str) for p in parents):
            raise RecipeError("must be a file path or a list of them", key="extends", where=where)
        for parent in parents:
            parent_path = path.parent / parent
            if not parent_path.exists():
                raise RecipeError(f"{parent} not found next to {path.name}", key="extends", where=where)
            merged = _deep_merge(merged, _read_with_extends(parent_path, origins, chain + (path,)))
    origins.update({k: v for k, v in own_origins.items() if k != ("extends",)})
    return _deep_merge(merged, raw)


def _deep_merge(base: dict, top: dict) -> dict:
    out = dict(base)
    for key, value in top.items():
        # A block of another `type` (e.g. method lora -> full) replaces the inherited one instead of merging.
        same_type = (
            isinstance(value, dict)
            and isinstance(out.get(key), dict)
            and value.get("type", out[key].get("type")) == out[key].get("type")
        )
        if same_type:
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


# --- overrides and env -----------------------------------------------------------------------------------


def _apply_override(raw: dict, item: str, origins: Origins) -> None:
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise RecipeError(
            f"override '{item}' must look like key.path=value (e.g. training.learning_rate=1e-4)",
            where="command line",
        )
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError:
        value = text  # not YAML: take it as the literal string
    parts: list[Any] = [int(p) if p.isdigit() else p for p in key.split(".")]
    node: Any = raw
    for depth, part in enumerate(parts[:-1]):
        nxt = _child(node, part)
        if nxt is None:
            nxt = {}
            _set_child(node, part, nxt, key)
        if not isinstance(nxt, (dict, list)):
            raise RecipeError(
                f"cannot set {key}: {'.'.join(map(str, parts[: depth + 1]))} is a value, not a section",
                key=key,
                where="command line",
            )
        node = nxt
    if parts[-1] == "type" and isinstance(node, dict) and node.get("type") != value:
        node.clear()  # another method type starts its block afresh: the old type's keys would not fit it
    _set_child(node, parts[-1], value, key)
    for path in [p for p in origins if p[: len(parts)] == tuple(parts)]:
        del origins[path]
    origins[tuple(parts)] = "command line"


def _child(node: Any, part: Any) -> Any:
    if isinstance(node, list):
        return node[part] if isinstance(part, int) and part < len(node) else None
    return node.get(part)


def _set_child(node: Any, part: Any, value: Any, key: str) -> None:
    if isinstance(node, list):
        if not isinstance(part, int) or part > len(node):
            raise RecipeError(
                f"list index {part} is out of range (the list has {len(node)} items)",
                key=key,
                where="command line",
            )
        if part == len(node):
            node.append(value)
        else:
            node[part] = value
    else:
        node[part] = value


def _interpolate(value: Any, path: KeyPath, env: Mapping[str, str], origins: Origins, templates: dict) -> Any:
    if isinstance(value, dict):
        return {k: _interpolate(v, path + (k,), env, origins, templates) for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolate(v, path + (i,), env, origins, templates) for i, v in enumerate(value)]
    if not isinstance(value, str) or "${" not in value:
        return value

    def replace(match: re.Match) -> str:
        name, default = match.group(1), match.group(2)
        if name in env:
            if redact.is_secret_name(name):
                redact.add(env[name])
            return env[name]
        if default is not None:
            return default
        raise RecipeError(
            f"environment variable {name} is not set; export it or write ${{env:{name},default}}",
            key=_dotted(path),
            where=origins.find(path),
        )

    names = [m.group(1) for m in ENV_PATTERN.finditer(value)]
    if any(redact.is_secret_name(n) for n in names):
        templates[_dotted(path)] = value  # frozen as written: ${env:HF_TOKEN}, never the token
    return ENV_PATTERN.sub(replace, value)


# --- errors ----------------------------------------------------------------------------------------------


def _dotted(path: KeyPath) -> str:
    return ".".join(str(p) for p in path)


def _to_recipe_error(exc: ValidationError, origins: Origins, raw: dict) -> RecipeError:
    errors = exc.errors()
    paths = [_clean_loc(tuple(e["loc"]), raw) for e in errors]
    err, path = errors[0], paths[0]
    kind, msg = err["type"], err["msg"]
    expected = _union_expected([e for e, p in zip(errors, paths) if p == path])
    if expected:
        msg = expected
    elif kind == "extra_forbidden":
        allowed = _keys_at(path, raw)
        alias = KEY_ALIASES.get(str(path[-1]))
        guess = (
            [alias]
            if alias in allowed
            else difflib.get_close_matches(str(path[-1]), allowed, n=1, cutoff=0.6)
        )
        hint = f"did you mean {guess[0]}?" if guess else f"known keys: {', '.join(sorted(allowed))}"
        msg = f"unknown key; {hint}"
    elif kind == "missing":
        msg = "required key is missing"
    elif kind == "union_tag_invalid":
        ctx = err.get("ctx", {})
        path = path + ("type",)
        msg = f"unknown type {ctx.get('tag')!r}; expected one of {ctx.get('expected_tags')}"
    elif kind == "value_error":
        msg = msg.removeprefix("Value error, ")
        head, sep, rest = msg.partition(": ")
        if sep and re.fullmatch(r"[a-z_]+(\.[a-z_0-9]+)*", head):
            path, msg = tuple(int(p) if p.isdigit() else p for p in head.split(".")), rest
    elif not isinstance(err.get("input"), (dict, list)):
        msg = f"{msg} (got {err.get('input')!r})"
    more = len(set(paths)) - 1  # the members of a union refusing one value are one problem
    if more:
        msg += f" (and {more} more problem{'s' if more > 1 else ''}; fix this one first)"
    return RecipeError(msg, key=_dotted(path) or "recipe", where=origins.find(path))


def _clean_loc(loc: tuple, raw: Any) -> tuple:
    """Keep the parts of a pydantic error location that are real keys (drop union-member tags)."""
    clean, node = [], raw
    for i, part in enumerate(loc):
        in_dict = isinstance(node, dict) and part in node
        in_list = isinstance(node, list) and isinstance(part, int) and part < len(node)
        if in_dict or in_list:
            node = node[part]
        elif i < len(loc) - 1 or not isinstance(node, (dict, list)):
            continue  # a union member's tag (`int`, `literal['auto']`), not a key
        clean.append(part)
    return tuple(clean)


# what a scalar union member's error says the value should be
SCALAR_EXPECTED = {
    "int_parsing": "an integer",
    "int_type": "an integer",
    "int_from_float": "an integer",
    "float_parsing": "a number",
    "float_type": "a number",
    "bool_parsing": "true or false",
    "bool_type": "true or false",
    "string_type": "a string",
}


def _union_expected(errors: list[dict]) -> str | None:
    """One value refused by every member of a scalar union (`int | auto`): what it may be, from all of them."""
    if len(errors) < 2:
        return None
    options = []
    for e in errors:
        if e["type"] == "literal_error":
            options.append(e["ctx"]["expected"])
        elif e["type"] in SCALAR_EXPECTED:
            options.append(SCALAR_EXPECTED[e["type"]])
        elif e["type"] in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
            options.append(f"a number {e['msg'].removeprefix('Input should be ')}")
        else:
            return None
    return f"expected {' or '.join(options)} (got {errors[0].get('input')!r})"


def _keys_at(path: tuple, raw: Any) -> list[str]:
    """The keys the schema allows in the mapping that holds path[-1]."""
    tp: Any = Recipe
    node: Any = raw
    for part in path[:-1]:
        node = node.get(part) if isinstance(node, dict) else node[part] if isinstance(node, list) else None
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            field = tp.model_fields.get(part)
            tp = field.annotation if field else None
        else:
            args = typing.get_args(tp)
            tp = args[-1] if typing.get_origin(tp) in (list, dict) and args else None
        tp = _pick_member(tp, node)
    return list(tp.model_fields) if isinstance(tp, type) and issubclass(tp, BaseModel) else []


def _pick_member(tp: Any, node: Any) -> Any:
    """Unwrap Annotated/Optional/unions to the member that describes `node`."""
    while typing.get_origin(tp) in (typing.Annotated, typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if typing.get_origin(tp) is typing.Annotated:
            tp = args[0]
            continue
        models = [a for a in args if isinstance(a, type) and issubclass(a, BaseModel)]
        if isinstance(node, dict) and models:
            tagged = [
                m
                for m in models
                if "type" in m.model_fields and m.model_fields["type"].default == node.get("type")
            ]
            tp = (tagged or models)[0]
        elif isinstance(node, list):
            tp = next((a for a in args if typing.get_origin(a) is list), None)
        else:
            tp = args[0] if args else None
    return tp


# --- paths -----------------------------------------------------------------------------------------------


def _looks_local(text: str) -> bool:
    return text.startswith((".", "/", "~")) or text.endswith(LOCAL_SUFFIXES) or os.sep + os.sep in text


def _resolve_local_path(text: str, base: Path) -> str | None:
    for candidate in (base / os.path.expanduser(text), Path.cwd() / os.path.expanduser(text)):
        if candidate.exists():
            return str(candidate.resolve())
    return None


def _symlink(text: str, base: Path) -> str | None:
    """Where `text` (a folder named in the recipe) leads, if it is a symbolic link."""
    for candidate in (base / os.path.expanduser(text), Path.cwd() / os.path.expanduser(text)):
        if candidate.is_symlink():
            return os.path.realpath(candidate)
        if candidate.exists():
            return None
    return None


def _resolve_local_paths(recipe: Recipe, base: Path, origins: Origins) -> None:
    """Data files are relative to the recipe file that names them (so recipes travel with their data, also through
    `extends`), then to the working dir."""

    def base_of(path: KeyPath) -> Path:
        origin = origins.find(path)
        if origin and origin != "command line":
            return Path(origin.rsplit(":", 1)[0]).resolve().parent
        return base

    sources = [("sources", i, s) for i, s in enumerate(recipe.data.sources)]
    sources += [("eval_sources", i, s) for i, s in enumerate(recipe.data.eval_sources)]
    for group, i, src in sources:
        found = _resolve_local_path(src.path, base_of(("data", group, i, "path")))
        if found:
            src.path = found
        elif _looks_local(src.path):
            path = ("data", group, i, "path")
            raise RecipeError(
                f"file not found: {src.path} (looked next to the recipe and in the working dir)",
                key=_dotted(path),
                where=origins.find(path),
            )
        if src.image_dir is not None:
            path = ("data", group, i, "image_dir")
            linked = _symlink(src.image_dir, base_of(path))
            if linked and not recipe.data.allow_images_outside:
                raise RecipeError(
                    f"{src.image_dir} is a symbolic link (to {linked}), which would move the folder "
                    "images are confined to; name the real folder, or set data.allow_images_outside: "
                    "true",
                    key=_dotted(path),
                    where=origins.find(path),
                )
            found = _resolve_local_path(src.image_dir, base_of(path))
            if not found or not Path(found).is_dir():
                raise RecipeError(
                    f"image folder not found: {src.image_dir} (looked next to the recipe and in the "
                    "working dir)",
                    key=_dotted(path),
                    where=origins.find(path),
                )
            src.image_dir = found
    models = [(("model", key), recipe.model, key) for key in ("name", "adapter")]
    if recipe.multimodal is not None:
        models.append((("multimodal", "vision_model"), recipe.multimodal, "vision_model"))
    for path, spec, key in models:
        value = getattr(spec, key)
        if value and not value.startswith("builtin:"):
            found = _resolve_local_path(value, base_of(path))
            if found:
                setattr(spec, key, found)
            elif _looks_local(value):
                raise RecipeError(f"path not found: {value}", key=_dotted(path), where=origins.find(path))
    for i, reward in enumerate(recipe.align.rewards):  # a reward run dir, or the .py file of a function
        key, value = ("path", reward.path) if reward.type == "model" else ("function", "")
        if reward.type == "python" and ".py:" in reward.function:
            value, _, name = reward.function.rpartition(":")
        if not value:
            continue
        path = ("align", "rewards", i, key)
        found = _resolve_local_path(value, base_of(path))
        if found is None:
            raise RecipeError(
                f"not found: {value} (looked next to the recipe and in the working dir)",
                key=_dotted(path),
                where=origins.find(path),
            )
        setattr(reward, key, found if key == "path" else f"{found}:{name}")
