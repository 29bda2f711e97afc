"""The on-disk cache of prepared data, keyed by a fingerprint of everything that changes the tokens."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from ftcli import paths
from ftcli.paths import writable_dir


def data_code_version() -> str:
    """A digest of the data layer's own code: whatever changes how rows become tokens (formats, templates,
    tokenization, packing, pairs, images) changes it, so a cache made by other code is never reused."""
    digest = hashlib.sha256()
    for module in [
        *sorted(Path(__file__).parent.glob("*.py")),
        Path(__file__).parents[1] / "recipe" / "registry.py",
    ]:
        digest.update(module.name.encode() + b"\0" + module.read_bytes())
    return digest.hexdigest()[:16]


def data_cache_root(cache_dir: str | None) -> Path:
    """data.cache_dir, else <FTCLI_CACHE>/data; a writable folder."""
    if cache_dir:
        return writable_dir(Path(cache_dir).expanduser(), "data.cache_dir")
    return paths.cache_dir("data")


def tokenizer_fingerprint(tokenizer) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    parts = [
        backend.to_str() if backend is not None else repr(sorted(tokenizer.get_vocab().items())),
        str(getattr(tokenizer, "chat_template", None)),
        str(tokenizer.eos_token_id),
        str(tokenizer.pad_token_id),
        type(tokenizer).__name__,
    ]
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()


def source_fingerprint(path: str) -> list:
    """Local files: name, size and mtime of each (cheap, and changes whenever the file does). Hub ids: the id."""
    p = Path(path)
    if not p.exists():
        return [path]
    files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
    return [[str(f), f.stat().st_size, f.stat().st_mtime_ns] for f in files]


def fingerprint(payload: dict) -> str:
    blob = json.dumps({"code": data_code_version(), **payload}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def load_cached(root: Path, key: str, log=lambda _: None):
    """(train, eval or None, stats) from the cache, or None on a miss. An entry that cannot be read (a disk error,
    a hand edit) is ftcli's own to drop: it is deleted and prepared again, instead of failing every later run."""
    from datasets import load_from_disk

    entry = root / key
    stats_file = entry / "stats.json"
    if not stats_file.exists():
        return None
    try:
        stats = json.loads(stats_file.read_text())
        train = load_from_disk(str(entry / "train"))
        evaluation = load_from_disk(str(entry / "eval")) if (entry / "eval").exists() else None
        train[:1]  # reads the arrow data, not only its metadata
    except Exception as exc:  # noqa: BLE001 - whatever is wrong with it, the remedy is the same
        log(f"prepared data in {entry} is unreadable ({type(exc).__name__}); preparing it again")
        shutil.rmtree(entry, ignore_errors=True)
        return None
    return train, evaluation, stats


def save_cached(root: Path, key: str, train, evaluation, stats: dict) -> Path:
    """Write to a temp dir and rename it into place, so a killed prepare never leaves a half cache entry."""
    root.mkdir(parents=True, exist_ok=True)
    entry = root / key
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=root))
    try:
        train.save_to_disk(str(tmp / "train"))
        if evaluation is not None:
            evaluation.save_to_disk(str(tmp / "eval"))
        (tmp / "stats.json").write_text(json.dumps(stats, indent=2))
        if entry.exists():
            shutil.rmtree(entry)
        os.rename(tmp, entry)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return entry
