"""Batch collators: packed rows (position_ids, no attention mask), padded rows (attention mask), padded image
rows (plus pixel_values), and image preference pairs."""

from __future__ import annotations

from dataclasses import dataclass

from ftcli.data.tokenize import IGNORE


@dataclass
class _RightPadding:
    """Right-pads input_ids and labels, and counts real vs fed tokens (for tokens/s and padding fraction)."""

    pad_token_id: int
    real_tokens: int = 0  # tokens fed to the model that are not padding
    padded_tokens: int = 0  # all tokens fed, padding included

    def _pad(self, examples: list[dict]):
        import torch

        width = max(len(e["input_ids"]) for e in examples)
        self.real_tokens += sum(len(e["input_ids"]) for e in examples)
        self.padded_tokens += width * len(examples)
        input_ids = torch.full((len(examples), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
        for b, e in enumerate(examples):
            input_ids[b, : len(e["input_ids"])] = torch.tensor(e["input_ids"])
            labels[b, : len(e["labels"])] = torch.tensor(e["labels"])
        return input_ids, labels, width


@dataclass
class PackedCollator(_RightPadding):
    """Packed rows. Positions restart per row, so transformers keeps attention inside each row."""

    def __call__(self, examples: list[dict]) -> dict:
        import torch

        input_ids, labels, width = self._pad(examples)
        position_ids = torch.zeros_like(input_ids)
        for b, e in enumerate(examples):
            n = len(e["input_ids"])
            lengths = list(e.get("seq_lengths") or [n]) + ([width - n] if width > n else [])
            position_ids[b] = torch.cat([torch.arange(k) for k in lengths])
        return {"input_ids": input_ids, "labels": labels, "position_ids": position_ids}


@dataclass
class PaddedCollator(_RightPadding):
    """Unpacked rows, with the padding masked out."""

    def __call__(self, examples: list[dict]) -> dict:

        input_ids, labels, width = self._pad(examples)
        return {"input_ids": input_ids, "labels": labels, "attention_mask": _mask(examples, width)}


@dataclass
class ImageCollator(_RightPadding):
    """Image rows (task: caption): padded text plus `pixel_values` from the vision model's image processor, read
    per batch so prepared data holds paths, not pixels."""

    image_processor: object = None

    def __call__(self, examples: list[dict]) -> dict:

        from ftcli.data.images import load_rgb

        input_ids, labels, width = self._pad(examples)
        attention_mask = _mask(examples, width)
        images = [load_rgb(e["image"]) for e in examples]
        pixel_values = self.image_processor(images=images, return_tensors="pt")["pixel_values"]
        return {
            "input_ids": input_ids,
            "labels": labels,
            "attention_mask": attention_mask,
            "pixel_values": pixel_values,
        }


@dataclass
class VisionCollator(_RightPadding):
    """Image conversations (task: vlm): padded text plus what the model's processor makes of the batch's images
    (`_image_inputs`)."""

    processor: object = None

    def __call__(self, examples: list[dict]) -> dict:
        input_ids, labels, width = self._pad(examples)
        batch = {"input_ids": input_ids, "labels": labels, "attention_mask": _mask(examples, width)}
        batch.update(_image_inputs(self.processor, [p for e in examples for p in e["images"]], input_ids))
        return batch


@dataclass
class VisionPairCollator(_RightPadding):
    """Preference pairs about images (task vlm_dpo), in the layout TRL's DPOTrainer scores: every prompt + chosen
    row, then every prompt + rejected row, with a completion_mask on the answers; each pair's images twice, in
    that order."""

    processor: object = None

    def __call__(self, examples: list[dict]) -> dict:
        rows = [
            {"input_ids": e["prompt_ids"] + e[side], "labels": [IGNORE] * len(e["prompt_ids"]) + e[side]}
            for side in ("chosen_ids", "rejected_ids")
            for e in examples
        ]
        input_ids, labels, width = self._pad(rows)
        batch = {
            "input_ids": input_ids,
            "attention_mask": _mask(rows, width),
            "completion_mask": (labels != IGNORE).long(),
        }
        batch.update(_image_inputs(self.processor, [p for e in examples for p in e["images"]] * 2, input_ids))
        return batch


def _mask(examples: list[dict], width: int):
    import torch

    lengths = torch.tensor([len(e["input_ids"]) for e in examples])
    return (torch.arange(width)[None, :] < lengths[:, None]).long()


def _image_inputs(processor, paths: list[str], input_ids) -> dict:
    """What the model's processor makes of the images, in row order (pixel_values, and image_grid_thw or
    image_sizes where the model takes them), and the per-token modality ids of processors that return them
    (Qwen2/2.5-VL's M-RoPE positions read them; Gemma 3 calls them token_type_ids), exactly as the processor
    gives them at inference."""
    import torch

    from ftcli.data.images import load_rgb
    from ftcli.upstream import returns_mm_token_type_ids

    out = dict(processor.image_processor(images=[load_rgb(p) for p in paths], return_tensors="pt"))
    if returns_mm_token_type_ids(processor):
        kinds = torch.tensor(processor.create_mm_token_type_ids(input_ids.tolist()))
        out["token_type_ids" if "token_type_ids" in processor.model_input_names else "mm_token_type_ids"] = (
            kinds
        )
    return out
