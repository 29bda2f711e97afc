import os
import tempfile

# What CUDA_VISIBLE_DEVICES was before the suite hid the GPUs; tests/test_gpu.py gives it back to its children.
GPUS_ENV = "FTCLI_TEST_VISIBLE_GPUS"
UNSET = "<unset>"


def pytest_addoption(parser):
    parser.addoption("--all", action="store_true", help="also run the tests marked slow (what .ci/run runs)")


def pytest_collection_modifyitems(config, items):
    """`pytest` runs the fast suite; `pytest --all` adds the slow end-to-end tests (benchmarks' quick modes)."""
    if config.getoption("--all"):
        return
    slow = [item for item in items if item.get_closest_marker("slow")]
    if slow:
        config.hook.pytest_deselected(items=slow)
        items[:] = [item for item in items if not item.get_closest_marker("slow")]


def pytest_configure(config):
    """One cache for the run, set before test modules are imported: builtin models are materialized once (not
    into the user's ~/.cache), prepared data is shared by fingerprint, and nothing reaches for the hub.

    The suite's numerics are the CPU's: its exact comparisons (frozen weights bitwise, reloaded logits to 1e-5,
    resumed runs equal to uninterrupted ones) hold for fp32 on one device, so the GPUs are hidden from this process
    and its children before anything initializes CUDA, and every test means the same on a CPU and a GPU machine.
    The GPU paths are tested by tests/test_gpu.py, whose child processes see the GPUs again."""
    if not os.environ.get("FTCLI_CACHE"):
        os.environ["FTCLI_CACHE"] = tempfile.mkdtemp(prefix="ftcli-test-cache-")
    os.environ.setdefault("HF_DATASETS_CACHE", tempfile.mkdtemp(prefix="ftcli-test-hf-datasets-"))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault(GPUS_ENV, os.environ.get("CUDA_VISIBLE_DEVICES", UNSET))
    os.environ["CUDA_VISIBLE_DEVICES"] = ""
