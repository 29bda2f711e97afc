"""The recipe loader only ever returns a valid recipe or raises ftcli's user-error type, whatever YAML and
overrides it is given; and a secret from the environment never reaches the run dir."""

import os

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ftcli.errors import UserError
from ftcli.recipe import load_recipe
from ftcli.recipe.schema import Recipe
from tests.helpers import DATA, RECIPES, call_main

KEYS = [
    "task",
    "model",
    "name",
    "method",
    "type",
    "r",
    "alpha",
    "data",
    "format",
    "sources",
    "path",
    "columns",
    "training",
    "epochs",
    "batch_size",
    "learning_rate",
    "output",
    "dir",
    "launch",
    "num_processes",
    "align",
    "beta",
    "infer",
    "extends",
    "max_length",
    "description",
    "template",
    "${env:X}",
]
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**6), 10**6),
    st.floats(allow_nan=True),
    st.text(max_size=12),
    st.sampled_from(
        [
            "lora",
            "sft",
            "dpo",
            "builtin:tiny-llama",
            "auto",
            "-1",
            "${env:HOME}",
            "${env:NOPE_X}",
            str(DATA / "chat.jsonl"),
        ]
    ),
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=10,
)
BASE = yaml.safe_load((RECIPES / "smoke" / "sft-lora.yaml").read_text())
BASE["data"]["sources"] = [str(DATA / "chat.jsonl")]
DOTTED = [
    "task",
    "model.name",
    "method",
    "method.type",
    "method.r",
    "data.format",
    "data.sources",
    "data.sources.0",
    "data.max_length",
    "training.epochs",
    "training.batch_size",
    "training.precision",
    "output.dir",
    "launch.num_processes",
    "align.loss_type",
    "infer.temperature",
    "data.columns",
    "nope.key",
]
overrides = st.lists(
    st.tuples(
        st.sampled_from(DOTTED),
        st.text(max_size=10)
        | st.sampled_from(["3", "[a, b]", "{x: 1}", "null", "true", "lora", "1e-4", "[", "}"]),
    ).map(lambda t: f"{t[0]}={t[1]}"),
    max_size=3,
)
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def loads_or_user_error(path, extra) -> None:
    try:
        recipe = load_recipe(path, extra)
    except UserError:
        return
    assert isinstance(recipe, Recipe)


@FUZZ
@given(doc=st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=8), values, max_size=6), extra=overrides)
def test_random_documents(tmp_path, doc, extra):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(doc))
    loads_or_user_error(path, extra)


@FUZZ
@given(changes=st.dictionaries(st.sampled_from(DOTTED), values, max_size=3), extra=overrides)
def test_mutations_of_a_valid_recipe(tmp_path, changes, extra):
    doc = yaml.safe_load(yaml.safe_dump(BASE))
    for dotted, value in changes.items():
        node, *parts = doc, *dotted.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {}) if isinstance(node, dict) else {}
        if isinstance(node, dict):
            node[parts[-1]] = value
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(doc))
    loads_or_user_error(path, extra)


@FUZZ
@given(text=st.text(max_size=200))
def test_arbitrary_text(tmp_path, text):
    path = tmp_path / "r.yaml"
    path.write_text(text)
    loads_or_user_error(path, [])


def test_a_secret_from_the_environment_never_reaches_the_run_dir(tmp_path, monkeypatch):
    secret = "hf_FAKE0secret0value0123456789"
    monkeypatch.setenv("HF_TOKEN", secret)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        f"extends: {RECIPES / 'smoke' / 'sft-lora.yaml'}\ndescription: run by ${{env:HF_TOKEN}}\n"
        f"output: {{dir: {tmp_path / 'run'}}}\ntraining: {{max_steps: 3}}\n"
    )
    assert call_main("train", recipe) == 0
    leaked = [p for p in (tmp_path / "run").rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]
    assert leaked == []
    # frozen as written, so a reload reads the variable again instead of a token or a mask
    assert "description: run by ${env:HF_TOKEN}" in (tmp_path / "run" / "recipe.resolved.yaml").read_text()
    assert os.environ["HF_TOKEN"] == secret
