"""Batch collators: packed rows (position_ids, no attention mask) and padded rows (attention mask)."""

from __future__ import annotations

from dataclasses import dataclass

from ftcli.data.tokenize import IGNORE


@dataclass
class PackedCollator:
    """Right-pads packed rows. Positions restart per row, so transformers keeps attention inside each row."""

    pad_token_id: int
    real_tokens: int = 0  # tokens fed to the model that are not padding
    padded_tokens: int = 0  # all tokens fed, padding included

    def __call__(self, examples: list[dict]) -> dict:
        import torch

        width = max(len(e["input_ids"]) for e in examples)
        self.real_tokens += sum(len(e["input_ids"]) for e in examples)
        self.padded_tokens += width * len(examples)
        input_ids = torch.full((len(examples), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
        position_ids = torch.zeros((len(examples), width), dtype=torch.long)
        for b, e in enumerate(examples):
            n = len(e["input_ids"])
            input_ids[b, :n] = torch.tensor(e["input_ids"])
            labels[b, :n] = torch.tensor(e["labels"])
            lengths = list(e.get("seq_lengths") or [n]) + ([width - n] if width > n else [])
            position_ids[b] = torch.cat([torch.arange(k) for k in lengths])
        return {"input_ids": input_ids, "labels": labels, "position_ids": position_ids}


@dataclass
class PaddedCollator:
    """Right-pads unpacked rows and masks the padding."""

    pad_token_id: int
    real_tokens: int = 0
    padded_tokens: int = 0

    def __call__(self, examples: list[dict]) -> dict:
        import torch

        width = max(len(e["input_ids"]) for e in examples)
        self.real_tokens += sum(len(e["input_ids"]) for e in examples)
        self.padded_tokens += width * len(examples)
        input_ids = torch.full((len(examples), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
        attention_mask = torch.zeros((len(examples), width), dtype=torch.long)
        for b, e in enumerate(examples):
            n = len(e["input_ids"])
            input_ids[b, :n] = torch.tensor(e["input_ids"])
            labels[b, :n] = torch.tensor(e["labels"])
            attention_mask[b, :n] = 1
        return {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}
