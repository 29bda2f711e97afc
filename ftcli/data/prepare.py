"""The data pipeline of a recipe: sources -> canonical rows -> tokens and labels -> packing -> cache.

`ftcli prepare` runs it and prints its statistics; `ftcli train` runs it too and gets a cache hit when nothing
that affects the tokens changed.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ftcli.data.cache import (
    data_cache_root,
    fingerprint,
    load_cached,
    save_cached,
    source_fingerprint,
    tokenizer_fingerprint,
)
from ftcli.data.images import ImageRows, begin_token_id
from ftcli.data.packing import pack_rows
from ftcli.data.pairs import PAIR_COLUMNS, PairTokenizer
from ftcli.data.prompts import PROMPT_COLUMNS, PromptRows
from ftcli.data.sources import ROW, load_source
from ftcli.data.templates import resolve_template
from ftcli.data.tokenize import (
    BAD,
    DROPPED_NO_LABELS,
    DROPPED_OVERLONG,
    IGNORE,
    OK,
    SPLIT,
    TRUNCATED,
    RowTokenizer,
)
from ftcli.data.vision import VisionPairs, VisionRows
from ftcli.errors import DataError, RecipeError
from ftcli.recipe.registry import FORMATS, TASKS
from ftcli.recipe.schema import DataSource, Recipe

KEEP = (OK, TRUNCATED, SPLIT)


@dataclass
class PreparedData:
    train: object  # datasets.Dataset: input_ids, labels (+ seq_lengths when packed); pairs: prompt/chosen/rejected_ids
    eval: object | None
    stats: dict
    cache_dir: str
    cache_hit: bool
    packed: bool
    extra: dict = field(default_factory=dict)


def prepare_data(
    recipe: Recipe, tokenizer, log: Callable[[str], None] = lambda _: None, processor=None
) -> PreparedData:
    """`processor`: a vision-language model's (tasks vlm, vlm_dpo), which lays out its images' tokens."""
    data = recipe.data
    packed = data.packing
    task = TASKS[recipe.task]
    pairs = task.pairs
    needs_template = any(FORMATS[s.format or data.format].templated for s in _all_sources(recipe))
    if pairs or (task.prompts and not needs_template):  # pairs and prompts: the chat template if there is one
        needs_template = bool(data.template or getattr(tokenizer, "chat_template", None))
    if processor is not None:  # every vlm row is a conversation, in the processor's own template
        needs_template, tokenizer = True, processor.tokenizer
    template = resolve_template(data.template, processor or tokenizer) if needs_template else None
    key = fingerprint(
        {
            "data": data.model_dump(mode="json", exclude={"cache_dir", "num_proc"}),
            "task": recipe.task,
            "packed": packed,
            "pair_lengths": [recipe.align.max_prompt_length, recipe.align.max_completion_length]
            if pairs
            else None,
            "prompts": [recipe.align.max_prompt_length, *reward_columns(recipe)] if task.prompts else None,
            "template": template,
            "caption_prompt": recipe.multimodal.caption_prompt if recipe.multimodal else None,
            "tokenizer": tokenizer_fingerprint(tokenizer),
            "image_processor": processor.image_processor.to_dict() if processor is not None else None,
            "files": [source_fingerprint(s.path) for s in _all_sources(recipe)],
        }
    )
    root = data_cache_root(data.cache_dir)
    cached = load_cached(root, key, log)
    if cached is not None:
        train, evaluation, stats = cached
        log(f"prepared data: cache hit {root / key}")
        return PreparedData(train, evaluation, stats, str(root / key), True, packed)

    import datasets

    datasets.disable_progress_bars()
    start = time.perf_counter()
    train_parts, eval_parts, source_stats = [], [], []
    for group, sources in (("sources", data.sources), ("eval_sources", data.eval_sources)):
        for i, src in enumerate(sources):
            log(f"tokenizing {src.path}")
            part, counts = _tokenize_source(
                recipe, src, f"data.{group}.{i}", tokenizer, template, root / "sources", processor
            )
            (train_parts if group == "sources" else eval_parts).append(part)
            source_stats.append(
                {"path": src.path, "split": "train" if group == "sources" else "eval", **counts}
            )

    if TASKS[recipe.task].prompts and len({str(p.features["prompt"]) for p in train_parts + eval_parts}) > 1:
        raise DataError(
            "the sources give prompts of two kinds, conversations (chat, instruction, preference with a chat "
            "template) and raw text (completion); GRPO samples from one kind: convert one of them"
        )
    train = datasets.concatenate_datasets(train_parts) if len(train_parts) > 1 else train_parts[0]
    if len(train) == 0:
        raise _nothing_left(recipe, source_stats)
    evaluation = None
    if eval_parts:
        evaluation = datasets.concatenate_datasets(eval_parts) if len(eval_parts) > 1 else eval_parts[0]
    elif data.eval_fraction:
        if len(train) < 2:
            raise DataError("too few rows to hold out an eval split; lower data.eval_fraction or add data")
        split = train.train_test_split(
            test_size=max(1, round(len(train) * data.eval_fraction)), seed=data.seed
        )
        train, evaluation = split["train"], split["test"]
    if len(train) == 0:
        raise DataError("no training rows left after tokenization (all dropped or bad); see `ftcli prepare`")

    split_stats = _pair_stats if pairs else _prompt_stats if task.prompts else _split_stats
    stats = {"sources": source_stats, "train": split_stats(train)}
    if evaluation is not None:
        stats["eval"] = split_stats(evaluation)
    if packed:
        train = _pack(train, data.max_length, data.seed)
        stats["train"].update(_packing_stats(train, data.max_length))
        if evaluation is not None:
            evaluation = _pack(evaluation, data.max_length, data.seed)
            stats["eval"].update(_packing_stats(evaluation, data.max_length))
    seconds = time.perf_counter() - start
    rows_read = sum(s["rows_read"] for s in source_stats)
    stats.update(
        fingerprint=key,
        packed=packed,
        max_length=data.max_length,
        seconds=round(seconds, 3),
        rows_per_s=round(rows_read / seconds, 1) if seconds > 0 else None,
    )
    entry = save_cached(root, key, train, evaluation, stats)
    cached = load_cached(root, key)  # memory-mapped from the cache, like a later hit
    return PreparedData(cached[0], cached[1], stats, str(entry), False, packed)


def _nothing_left(recipe: Recipe, source_stats: list[dict]) -> Exception:
    """No training row survived: when length alone dropped them all, which limit to raise."""
    train = [s for s in source_stats if s["split"] == "train"]
    used, long = (sum(s[k] for s in train) for k in ("rows_used", "dropped_overlong"))
    if not used or long < used:
        return DataError("no training rows left after tokenization (all dropped or bad); see `ftcli prepare`")
    data, align = recipe.data, recipe.align
    images = any(FORMATS[s.format or data.format].images for s in data.sources)
    if TASKS[recipe.task].pairs and images:
        key, why = (
            "align.max_prompt_length",
            f"their prompts with the images' tokens are over {align.max_prompt_length}",
        )
        fix = "raise it: an image is never cut"
    elif TASKS[recipe.task].pairs:
        key = "data.max_length"
        why = f"they are over data.max_length {data.max_length} or align.max_prompt_length {align.max_prompt_length}"
        fix = "raise them, or set data.overlong: truncate"
    elif images and data.overlong == "truncate":
        key, why = "data.max_length", f"their images end past {data.max_length} tokens"
        fix = "raise it: an image is never cut"
    else:
        key, why, fix = (
            "data.max_length",
            f"they are longer than {data.max_length} tokens",
            "raise it, or set data.overlong: truncate",
        )
    return RecipeError(f"no training rows left: all {used} were dropped for length ({why}); {fix}", key=key)


def _all_sources(recipe: Recipe) -> list[DataSource]:
    return [*recipe.data.sources, *recipe.data.eval_sources]


def _tokenize_source(
    recipe: Recipe, src: DataSource, key: str, tokenizer, template, sources_cache: Path, processor=None
):
    data = recipe.data
    ds = load_source(src, key, sources_cache)
    rows_read = len(ds)
    if data.shuffle:
        ds = ds.shuffle(seed=data.seed)
    if src.max_samples:
        ds = ds.select(range(min(src.max_samples, len(ds))))
    if src.weight:
        n = max(1, round(len(ds) * src.weight))
        ds = ds.select([i % len(ds) for i in range(n)])
    fmt = src.format or data.format
    columns = src.columns if src.columns is not None else data.columns
    images = FORMATS[fmt].images
    if processor is not None and TASKS[recipe.task].pairs:
        tokenize = VisionPairs(
            processor.tokenizer,
            columns,
            template,
            data.max_length,
            recipe.align.max_prompt_length,
            data.overlong,
            recipe.align.max_completion_length,
            fmt,
            processor=processor,
            images=_image_rows(recipe, src, processor.tokenizer),
        )
    elif processor is not None:
        tokenize = VisionRows(
            processor,
            fmt,
            columns,
            template,
            data.train_on,
            data.max_length,
            data.overlong,
            _image_rows(recipe, src, tokenizer),
        )
    elif TASKS[recipe.task].prompts:
        conversations = template is not None and (FORMATS[fmt].templated or FORMATS[fmt].encoding == "pair")
        tokenize = PromptRows(
            tokenizer,
            fmt,
            columns,
            template if conversations else None,
            recipe.align.max_prompt_length,
            reward_columns(recipe),
        )
    elif TASKS[recipe.task].pairs:
        tokenize = PairTokenizer(
            tokenizer,
            columns,
            template,
            data.max_length,
            recipe.align.max_prompt_length,
            data.overlong,
            recipe.align.max_completion_length,
        )
    else:
        images = _image_rows(recipe, src, tokenizer) if images else None
        tokenize = RowTokenizer(
            tokenizer, fmt, columns, template, data.train_on, data.max_length, data.overlong, images
        )
    num_proc = data.num_proc if data.num_proc and data.num_proc > 1 else None
    out = ds.map(tokenize, batched=True, batch_size=256, remove_columns=ds.column_names, num_proc=num_proc)
    statuses = out["status"]
    counts = Counter(statuses)
    if counts[BAD]:
        rows = out[ROW]  # rows were shuffled: report the first bad one in file order
        first = min((i for i, s in enumerate(statuses) if s == BAD), key=rows.__getitem__)
        if data.on_bad_rows == "error":
            raise DataError(
                f"{out[first]['error']} (set data.on_bad_rows: skip to skip such rows)",
                file=src.path,
                row=out[first][ROW],
            )
    keep = [i for i, s in enumerate(statuses) if s in KEEP]
    out = out.select(keep)
    if TASKS[recipe.task].prompts:
        out = out.select_columns([*PROMPT_COLUMNS, *reward_columns(recipe), "prompt_length"])
    elif TASKS[recipe.task].pairs:
        margins = out["margin"]
        has_margin = any(m is not None for m in margins)
        if has_margin and any(m is None for m in margins):
            first = next(i for i, m in enumerate(margins) if m is None)
            raise DataError(
                "margin missing on some rows but not others",
                file=src.path,
                row=out[first][ROW],
                field=columns.get("margin", "margin"),
            )
        out = out.select_columns(
            [
                *PAIR_COLUMNS,
                *(["images"] if processor is not None else []),
                *(["margin"] if has_margin else []),
            ]
        )
    elif processor is not None:
        out = out.select_columns(["input_ids", "labels", "images"])
    else:
        out = out.select_columns(["input_ids", "labels", *(["image"] if FORMATS[fmt].images else [])])
    return out, {
        "rows_read": rows_read,
        "rows_used": len(ds),
        "kept": len(keep),
        "truncated": counts[TRUNCATED],
        "split_long": counts[SPLIT],
        "dropped_overlong": counts[DROPPED_OVERLONG],
        "dropped_no_labels": counts[DROPPED_NO_LABELS],
        "bad_skipped": counts[BAD],
    }


def _image_rows(recipe: Recipe, src: DataSource, tokenizer) -> ImageRows:
    local = Path(src.path)
    image_dir = src.image_dir or (str(local.parent if local.is_file() else local) if local.exists() else None)
    return ImageRows(
        image_dir,
        recipe.data.allow_images_outside,
        begin_token_id(tokenizer),
        recipe.multimodal.caption_prompt if recipe.multimodal else "",
    )


def _pack(ds, max_length: int, seed: int):
    import datasets

    return datasets.Dataset.from_dict(pack_rows(list(ds["input_ids"]), list(ds["labels"]), max_length, seed))


def _split_stats(ds) -> dict:
    lengths = sorted(len(x) for x in ds["input_ids"])
    labels = sum(sum(1 for t in row if t != IGNORE) for row in ds["labels"])
    pick = lambda q: lengths[min(len(lengths) - 1, int(q * len(lengths)))] if lengths else 0
    return {
        "rows": len(lengths),
        "tokens": sum(lengths),
        "label_tokens": labels,
        "length_p50": pick(0.5),
        "length_p90": pick(0.9),
        "length_p99": pick(0.99),
        "length_max": lengths[-1] if lengths else 0,
    }


def reward_columns(recipe: Recipe) -> tuple[str, ...]:
    """Columns of the data a grpo run's match rewards compare against, besides the reference `answer`."""
    return tuple(
        sorted({r.column for r in recipe.align.rewards if r.type == "match" and r.column != "answer"})
    )


def _prompt_stats(ds) -> dict:
    lengths = sorted(ds["prompt_length"])
    return {
        "rows": len(lengths),
        "tokens": sum(lengths),
        "label_tokens": 0,  # completions are sampled while training
        "prompt_length_p50": lengths[len(lengths) // 2] if lengths else 0,
        "prompt_length_max": lengths[-1] if lengths else 0,
    }


def _pair_stats(ds) -> dict:
    prompts = sorted(len(x) for x in ds["prompt_ids"])
    answers = [len(c) + len(r) for c, r in zip(ds["chosen_ids"], ds["rejected_ids"])]
    pick = lambda q: prompts[min(len(prompts) - 1, int(q * len(prompts)))] if prompts else 0
    return {
        "rows": len(prompts),
        "tokens": sum(prompts) * 2 + sum(answers),  # each side is scored after its own copy of the prompt
        "label_tokens": sum(answers),
        "prompt_length_p50": pick(0.5),
        "prompt_length_max": prompts[-1] if prompts else 0,
        "longest_pair": max(
            (
                p + max(len(c), len(r))
                for p, c, r in zip(map(len, ds["prompt_ids"]), ds["chosen_ids"], ds["rejected_ids"])
            ),
            default=0,
        ),
    }


def _packing_stats(packed, max_length: int) -> dict:
    tokens = sum(len(x) for x in packed["input_ids"])
    return {"packed_rows": len(packed), "packing_efficiency": round(tokens / (len(packed) * max_length), 4)}
