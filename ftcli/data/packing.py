"""Contamination-free packing: several tokenized rows share one max_length block, but attention never crosses
rows and positions restart at each row (the collator passes position_ids and no attention_mask, which is how
transformers recognises packed sequences). Loss is then exactly the per-row loss of unpacked training.
"""

from __future__ import annotations

import random
from bisect import bisect_left, insort

from ftcli.data.tokenize import IGNORE


def plan_bins(lengths: list[int], capacity: int) -> list[list[int]]:
    """Best-fit-decreasing: indices of rows grouped into bins of at most `capacity` tokens."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    free: list[tuple[int, int]] = []  # sorted (remaining capacity, bin index)
    bins: list[list[int]] = []
    for i in order:
        need = lengths[i]
        k = bisect_left(free, (need, -1))
        if k == len(free):
            bins.append([i])
            remaining, b = capacity - need, len(bins) - 1
        else:
            remaining, b = free.pop(k)
            bins[b].append(i)
            remaining -= need
        if remaining > 0:
            insort(free, (remaining, b))
    return bins


def pack_rows(
    input_ids: list[list[int]], labels: list[list[int]], capacity: int, seed: int
) -> dict[str, list]:
    """Columns of packed rows: input_ids, labels (first token of each row unlabelled) and seq_lengths."""
    bins = plan_bins([len(x) for x in input_ids], capacity)
    random.Random(seed).shuffle(bins)  # no length curriculum: big and small bins interleave
    out: dict[str, list] = {"input_ids": [], "labels": [], "seq_lengths": []}
    for members in bins:
        ids, labs, lens = [], [], []
        for i in members:
            ids.extend(input_ids[i])
            # The first token of a row is never predicted (there is nothing before it in its row).
            labs.append(IGNORE)
            labs.extend(labels[i][1:])
            lens.append(len(input_ids[i]))
        out["input_ids"].append(ids)
        out["labels"].append(labs)
        out["seq_lengths"].append(lens)
    return out
