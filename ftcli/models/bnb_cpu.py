"""A guard for bitsandbytes' CPU 4-bit backend during training.

On CPUs with AVX512-BF16, a `Linear4bit` repacks its weight in place into an inference-only layout the first time
it runs without grad in eval mode, which is every evaluation pass. From then on training forwards go through
`gemv_4bit`, which has no autograd kernel: gradients reaching all but the last layers come out wrong (we measured
~100% relative error on layer-0 LoRA gradients after one eval forward). ftcli keeps the training layout for the
whole run and hands the model back with the fast inference path allowed again.
"""

from __future__ import annotations

from contextlib import contextmanager


@contextmanager
def training_layout(model):
    import bitsandbytes as bnb

    from ftcli.upstream import BNB_CPU_INFERENCE_LAYOUT as flag

    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    saved = [getattr(m, flag, False) for m in layers]
    for layer in layers:
        setattr(layer, flag, False)
    try:
        yield
    finally:
        for layer, value in zip(layers, saved):
            setattr(layer, flag, value)
