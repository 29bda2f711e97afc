"""Read one recipe data source (local file/folder, COCO-captions annotation file, or hub dataset) into a
`datasets.Dataset`."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from ftcli.data.images import coco_rows
from ftcli.errors import DataError
from ftcli.recipe.schema import DataSource

BUILDERS = {
    ".jsonl": "json",
    ".json": "json",
    ".csv": "csv",
    ".parquet": "parquet",
    ".arrow": "arrow",
    ".txt": "text",
}
ROW = "__row"  # 1-based row number inside its source, kept for error messages


def load_source(src: DataSource, key: str, cache_dir: Path):
    """Load a source with a 1-based `__row` column. `key` is its recipe path (data.sources.0) for errors; datasets'
    own conversion of local files goes into `cache_dir` (ftcli's cache, not the home folder's)."""
    import datasets

    path = Path(src.path)
    coco = coco_rows(path) if path.is_file() else None
    if coco is not None:
        ds = datasets.Dataset.from_list(coco)
    elif path.exists():
        files = _local_files(path, key)
        builder = BUILDERS[files[0].suffix]
        library_logs = logging.getLogger("datasets")
        level = library_logs.level
        library_logs.setLevel(
            logging.CRITICAL
        )  # a bad file is reported below, by row, not as datasets' traceback
        try:
            ds = datasets.load_dataset(
                builder, data_files=[str(f) for f in files], split="train", cache_dir=str(cache_dir)
            )
        except Exception as exc:  # noqa: BLE001 - datasets raises many types for one bad file
            raise _explain_load_failure(files, exc) from None
        finally:
            library_logs.setLevel(level)
    else:
        try:
            ds = datasets.load_dataset(src.path, src.name, split=src.split, revision=src.revision)
        except Exception as exc:  # noqa: BLE001
            raise DataError(
                f"cannot load hub dataset {src.path!r} (split {src.split!r}): {str(exc).splitlines()[0]}; "
                f"check {key}.path/name/split, or that you are online and logged in for gated data",
            ) from None
    if len(ds) == 0:
        raise DataError(f"dataset is empty ({key}); point it at a file with rows", file=src.path)
    return ds.add_column(ROW, list(range(1, len(ds) + 1)))


def _local_files(path: Path, key: str) -> list[Path]:
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix in BUILDERS and p.is_file())
        if not files:
            raise DataError(f"no {'/'.join(BUILDERS)} files in this folder ({key}.path)", file=str(path))
        kinds = {BUILDERS[f.suffix] for f in files}
        if len(kinds) > 1:
            raise DataError(
                f"folder mixes file types {sorted(kinds)}; use one source per type", file=str(path)
            )
        return files
    if path.suffix not in BUILDERS:
        raise DataError(
            f"unsupported file type {path.suffix!r}; use one of {', '.join(BUILDERS)}", file=str(path)
        )
    return [path]


def _explain_load_failure(files: list[Path], exc: Exception) -> DataError:
    """datasets' errors carry no line numbers: find the first bad line ourselves (bytes that are not UTF-8 in
    any text file, a line that is not a JSON object in JSONL)."""
    for file in files:
        if file.suffix == ".parquet":
            continue
        with file.open("rb") as handle:
            for line_no, raw in enumerate(handle, 1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as err:
                    return DataError(
                        f"line {line_no} is not UTF-8 (byte 0x{raw[err.start]:02x} at column "
                        f"{err.start + 1}); re-encode the file as UTF-8",
                        file=str(file),
                    )
                if file.suffix == ".jsonl" and line.strip():
                    try:
                        value = json.loads(line)
                    except json.JSONDecodeError as err:
                        return DataError(
                            f"line {line_no} is not valid JSON ({err.msg}); fix or remove it", file=str(file)
                        )
                    if not isinstance(value, dict):
                        return DataError(f"line {line_no} is not a JSON object", file=str(file))
    cause = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return DataError(f"cannot read: {cause}", file=", ".join(str(f) for f in files))
