"""GIT-style vision-language model: a vision encoder's patch features, through a GIT projection (linear + layer
norm into the LM's hidden size), placed before the text embeddings of a pre-trained causal LM.

Attention follows GIT: image tokens attend to each other fully, text tokens attend to every image token and
causally to earlier text. The LM receives that pattern as a custom 4D mask, which transformers passes through
unchanged; its form depends on the family (see `MASK_FORMS`). Works with any decoder whose forward takes
`inputs_embeds` and a 4D mask (LLaMA, OPT, MPT, Mistral, Qwen2, GPT-NeoX, ...).
"""

from __future__ import annotations

import inspect

import torch
from torch import nn

IGNORE = -100
# How each LM family reads a 4D mask. "additive": a float added to the attention scores (0 = attend, dtype min =
# blocked), what eager and sdpa attention take in LLaMA, OPT and most decoders. "blocked": a boolean where True
# means *masked*: MPT casts its mask to bool and `masked_fill`s the True entries — the opposite of the boolean
# "True = attend" convention of sdpa, so handing MPT an sdpa-style boolean mask would invert the pattern.
MASK_FORMS = {"mpt": "blocked"}


def git_mask(n_image: int, text_mask: torch.Tensor, form: str, dtype: torch.dtype) -> torch.Tensor:
    """The (batch, 1, L, L) GIT attention mask for `n_image` image tokens followed by text whose padding is 0 in
    `text_mask` (batch, T)."""
    batch, length = text_mask.shape[0], n_image + text_mask.shape[1]
    device = text_mask.device
    allowed = torch.ones(length, length, dtype=torch.bool, device=device).tril()
    allowed[:n_image, :n_image] = True  # image <-> image, both directions
    keys = torch.cat([torch.ones(batch, n_image, dtype=torch.bool, device=device), text_mask.bool()], dim=1)
    allowed = (allowed[None] & keys[:, None, :])[:, None]  # padding is never a key
    if form == "blocked":
        return ~allowed
    return torch.zeros(allowed.shape, dtype=dtype, device=device).masked_fill(
        ~allowed, torch.finfo(dtype).min
    )


class GitLLM(nn.Module):
    """`vision` (a CLIP-like vision model) -> `projection` -> `lm` (a causal LM). Parameter names start with those
    three prefixes, which is what `multimodal.keys_to_finetune` matches against."""

    main_input_name = "input_ids"
    base_model_prefix = ""  # read by peft/transformers when they scope weight conversions to sub-models

    def __init__(self, vision: nn.Module, lm: nn.Module):
        super().__init__()
        self.vision = vision
        self.lm = lm
        self.projection = nn.Sequential(
            nn.Linear(vision.config.hidden_size, lm.config.hidden_size), nn.LayerNorm(lm.config.hidden_size)
        )
        self.mask_form = MASK_FORMS.get(lm.config.model_type, "additive")
        self._takes_positions = "position_ids" in inspect.signature(lm.forward).parameters

    @property
    def config(self):  # the LM's: Trainer and ftcli read use_cache and sizes from it
        return self.lm.config

    def image_tokens(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(batch, patches + 1, lm hidden): every vision token (CLS and patches), projected."""
        dtype = next(self.vision.parameters()).dtype
        features = self.vision(pixel_values=pixel_values.to(dtype)).last_hidden_state
        return self.projection(features.to(self.projection[0].weight.dtype))

    def forward(self, input_ids, pixel_values, attention_mask=None, labels=None, **kwargs):
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        inputs, mask, positions = self._inputs(pixel_values, input_ids, attention_mask)
        if labels is not None:  # no loss on image tokens
            labels = torch.cat(
                [labels.new_full((labels.shape[0], inputs.shape[1] - labels.shape[1]), IGNORE), labels], 1
            )
        return self.lm(
            inputs_embeds=inputs, attention_mask=mask, labels=labels, use_cache=False, **positions, **kwargs
        )

    def _inputs(self, pixel_values, input_ids, attention_mask):
        text = self.lm.get_input_embeddings()(input_ids)
        image = self.image_tokens(pixel_values).to(text.dtype)
        inputs = torch.cat([image, text], dim=1)
        mask = git_mask(image.shape[1], attention_mask, self.mask_form, text.dtype)
        positions = {}
        if self._takes_positions:  # OPT would derive positions from a 2D mask, which a 4D one is not
            positions["position_ids"] = torch.arange(inputs.shape[1], device=inputs.device).expand(
                inputs.shape[0], -1
            )
        return inputs, mask, positions

    @torch.no_grad()
    def generate(
        self, pixel_values: torch.Tensor, input_ids: torch.Tensor, **generate_kwargs
    ) -> torch.Tensor:
        """New tokens after `input_ids` (batch, T >= 1, unpadded). The image and all but the last prompt token are
        run once under the GIT mask into a KV cache; `lm.generate` continues from that cache (decoding is plain
        causal from there on), so every sampling option of transformers applies."""
        copies = generate_kwargs.pop("num_return_sequences", 1)
        if copies > 1:
            pixel_values = pixel_values.repeat_interleave(copies, 0)
            input_ids = input_ids.repeat_interleave(copies, 0)
        prefix_ids = input_ids[:, :-1]
        inputs, mask, positions = self._inputs(pixel_values, prefix_ids, torch.ones_like(prefix_ids))
        cache = self.lm(
            inputs_embeds=inputs, attention_mask=mask, use_cache=True, **positions
        ).past_key_values
        # generate() skips the tokens the cache already holds, so the image's stand-in ids are never embedded; a
        # repetition penalty is told to ignore them (they would count as already said, EOS too where pad == EOS).
        stand_in = input_ids.new_zeros((input_ids.shape[0], inputs.shape[1] - prefix_ids.shape[1]))
        full = torch.cat([stand_in, input_ids], dim=1)
        penalty = generate_kwargs.pop("repetition_penalty", 1.0)
        if penalty != 1.0:
            from transformers import LogitsProcessorList, RepetitionPenaltyLogitsProcessor

            generate_kwargs["logits_processor"] = LogitsProcessorList(
                [RepetitionPenaltyLogitsProcessor(penalty, prompt_ignore_length=stand_in.shape[1])]
            )
        out = self.lm.generate(
            input_ids=full, attention_mask=torch.ones_like(full), past_key_values=cache, **generate_kwargs
        )
        return out[:, full.shape[1] :]

    def activation_checkpointing_enable(
        self, activation_checkpointing_kwargs=None, every_n_layers=1, offload=False
    ):
        """What Trainer calls (transformers 5.2x). The LM always backpropagates (to the projection at least); a
        frozen vision encoder never does, so it is not checkpointed."""
        parts = [self.lm] + ([self.vision] if any(p.requires_grad for p in self.vision.parameters()) else [])
        for part in parts:
            if hasattr(part, "activation_checkpointing_enable"):
                part.activation_checkpointing_enable(
                    activation_checkpointing_kwargs=activation_checkpointing_kwargs,
                    every_n_layers=every_n_layers,
                    offload=offload,
                )
            else:  # transformers before 5.2x: the older name, every layer, no offload
                part.gradient_checkpointing_enable(
                    gradient_checkpointing_kwargs=activation_checkpointing_kwargs
                )

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs=None, **_):
        """What the Trainer of transformers before 5.2x calls."""
        self.activation_checkpointing_enable(gradient_checkpointing_kwargs)

    def activation_checkpointing_disable(self):
        for part in (self.vision, self.lm):
            if hasattr(part, "activation_checkpointing_disable"):
                part.activation_checkpointing_disable()
            else:
                part.gradient_checkpointing_disable()

    gradient_checkpointing_disable = activation_checkpointing_disable
