import os
import tempfile


def pytest_configure(config):
    """One cache for the run, set before test modules are imported: builtin models are materialized once (not
    into the user's ~/.cache), prepared data is shared by fingerprint, and nothing reaches for the hub."""
    if not os.environ.get("FTCLI_CACHE"):
        os.environ["FTCLI_CACHE"] = tempfile.mkdtemp(prefix="ftcli-test-cache-")
    os.environ.setdefault("HF_DATASETS_CACHE", tempfile.mkdtemp(prefix="ftcli-test-hf-datasets-"))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
