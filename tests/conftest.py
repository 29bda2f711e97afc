import os

import pytest


@pytest.fixture(autouse=True, scope="session")
def _shared_cache(tmp_path_factory):
    """One cache for the session: builtin models are materialized once, prepared data is shared by fingerprint."""
    if not os.environ.get("FTCLI_CACHE"):
        os.environ["FTCLI_CACHE"] = str(tmp_path_factory.mktemp("ftcli-cache"))
    os.environ.setdefault("HF_DATASETS_CACHE", str(tmp_path_factory.mktemp("hf-datasets")))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


