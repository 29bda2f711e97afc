"""Batched vs one-at-a-time generation through ftcli's own generate path (left padding, stop tokens).

    python bench/generation.py [--model builtin:bench-llama] [--prompts 64] [--new-tokens 64] [--batch-size 16]

Writes bench/results/generation-<device>.json and prints the ratio. Greedy decoding, so both runs produce the
same tokens; only the wall time differs.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="builtin:bench-llama")
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()

    import torch

    from ftcli.infer.generate import generate
    from ftcli.infer.inputs import Item
    from ftcli.infer.load import load_for_inference
    from ftcli.infer.prompting import inference_template
    from ftcli.infer.target import resolve_target

    recipe = resolve_target(args.model, [f"infer.max_new_tokens={args.new_tokens}"])
    model, tokenizer = load_for_inference(recipe)
    template = inference_template(recipe, tokenizer)
    items = [
        Item(i, {"prompt": f"Question {i}: what is the capital of country number {i}?"}, "bench")
        for i in range(args.prompts)
    ]

    def timed(batch_size: int) -> tuple[float, int, list[str]]:
        spec = recipe.infer.model_copy(update={"batch_size": batch_size})
        start = time.perf_counter()
        results = list(generate(model, tokenizer, items, spec, template))
        seconds = time.perf_counter() - start
        return seconds, sum(r["completion_tokens"] for r in results), [r["output"] for r in results]

    timed(args.batch_size)  # warm-up
    batched_s, batched_tokens, batched_out = timed(args.batch_size)
    single_s, single_tokens, single_out = timed(1)
    device = (
        torch.cuda.get_device_name()
        if torch.cuda.is_available()
        else f"cpu ({torch.get_num_threads()} threads)"
    )
    result = {
        "model": args.model,
        "prompts": args.prompts,
        "max_new_tokens": args.new_tokens,
        "device": device,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "batched": {
            "batch_size": args.batch_size,
            "seconds": round(batched_s, 3),
            "tokens": batched_tokens,
            "tokens_per_s": round(batched_tokens / batched_s, 1),
        },
        "one_at_a_time": {
            "seconds": round(single_s, 3),
            "tokens": single_tokens,
            "tokens_per_s": round(single_tokens / single_s, 1),
        },
        "same_outputs": batched_out == single_out,
    }
    result["speedup"] = round(result["batched"]["tokens_per_s"] / result["one_at_a_time"]["tokens_per_s"], 2)
    out = (
        Path(__file__).parent
        / "results"
        / f"generation-{'cuda' if torch.cuda.is_available() else 'cpu'}.json"
    )
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
