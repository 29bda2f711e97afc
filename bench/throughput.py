"""Training throughput on a skewed chat workload: ftcli's defaults against the packed-loop limit and plain TRL.

    python bench/throughput.py            # full: 2,000 rows, 30 steps per variant, writes bench/results/
    python bench/throughput.py --quick    # a few steps on a few rows (the test suite runs this so it cannot rot)

All variants run in one invocation, each in its own process (so end-to-end wall time and peak RSS are its own):
  raw         a plain PyTorch loop over ftcli's packed rows, attention kept inside each document: the limit
  raw-lora    the same loop on a plain peft LoRA model (r=8, all linear layers): the limit for LoRA
  trl         TRL SFTTrainer with its defaults (padded batches, gradient checkpointing on): what users write
  ftcli-full  `ftcli train`, full fine-tuning, ftcli's defaults
  ftcli-lora  `ftcli train`, LoRA r=8 on all linear layers, ftcli's defaults
Real tokens/s counts only non-padding tokens fed to the model. Absolute numbers drift between runs on a shared
machine; the ratios, measured in the same run, are the result.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
WORDS = (
    "the model learns to answer short questions and long ones with care while data stays skewed "
    "most samples are short but a few are very long and padding wastes compute"
).split()


def make_workload(path: Path, rows: int, seed: int = 0) -> None:
    """Chat rows whose token lengths are lognormal: median ~122, p99 ~600 with the byte-level tokenizer."""
    rng = random.Random(seed)
    with path.open("w") as out:
        for _ in range(rows):
            n = max(8, min(1800, int(math.exp(rng.gauss(math.log(100), 0.76)))))
            text = " ".join(rng.choice(WORDS) for _ in range(n // 5 + 1))[:n]
            cut = max(4, n // 5)
            out.write(
                json.dumps(
                    {
                        "messages": [
                            {"role": "user", "content": text[:cut]},
                            {"role": "assistant", "content": text[cut:] or "ok"},
                        ]
                    }
                )
                + "\n"
            )


def recipe_text(data: Path, work: Path, method: str, steps: int) -> str:
    return f"""
task: sft
model: {{name: "builtin:bench-llama"}}
method: {"{type: lora, r: 8, alpha: 16, dropout: 0.0, target_modules: all-linear}" if method == "lora" else "full"}
data:
  format: chat
  sources: ["{data}"]
  max_length: 512
  cache_dir: {work / "cache"}
training:
  max_steps: {steps}
  batch_size: 8
  learning_rate: 1.0e-4
  logging_steps: 1000
output:
  dir: {work / ("run-" + method)}
"""


# --- the variants, each run in its own process -------------------------------------------------------------


def run_raw(data: Path, work: Path, steps: int, lora: bool = False) -> dict:
    import torch

    from ftcli.data.collate import PackedCollator
    from ftcli.data.prepare import prepare_data
    from ftcli.models.load import load_base_model, load_tokenizer, training_config
    from ftcli.recipe import load_recipe

    recipe_file = work / "raw.yaml"
    recipe_file.write_text(recipe_text(data, work, "full", steps))
    recipe = load_recipe(recipe_file)
    tokenizer = load_tokenizer(recipe.model)
    rows = prepare_data(recipe, tokenizer).train
    torch.manual_seed(0)
    model = load_base_model(recipe)
    training_config(model)
    if lora:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(
            model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear")
        )
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    collate = PackedCollator(tokenizer.pad_token_id)
    order = list(range(len(rows)))
    random.Random(0).shuffle(order)
    start = time.perf_counter()
    for step in range(steps):
        batch = collate([rows[order[(step * 8 + i) % len(order)]] for i in range(8)])
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    seconds = time.perf_counter() - start
    return {"real_tokens": collate.real_tokens, "seconds": seconds}


def run_trl(data: Path, work: Path, steps: int) -> dict:
    import datasets
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from ftcli.models.load import load_base_model, load_tokenizer
    from ftcli.recipe import load_recipe

    recipe_file = work / "trl.yaml"
    recipe_file.write_text(recipe_text(data, work, "full", steps))
    recipe = load_recipe(recipe_file)
    tokenizer = load_tokenizer(recipe.model)
    model = load_base_model(recipe)
    timing = {}

    class Clock(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            timing["start"] = time.perf_counter()

        def on_train_end(self, args, state, control, **kw):
            timing["seconds"] = time.perf_counter() - timing["start"]
            timing["real_tokens"] = state.num_input_tokens_seen

    args = SFTConfig(
        output_dir=str(work / "run-trl"),
        per_device_train_batch_size=8,
        max_length=512,
        max_steps=steps,
        use_cpu=True,
        report_to="none",
        save_strategy="no",
        logging_steps=1000,
        disable_tqdm=True,
        include_num_input_tokens_seen="non_padding",
        learning_rate=1e-4,
    )
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=datasets.load_dataset("json", data_files=str(data))["train"],
        processing_class=tokenizer,
        callbacks=[Clock()],
    )
    trainer.train()
    return {
        "real_tokens": timing["real_tokens"],
        "seconds": timing["seconds"],
        "gradient_checkpointing": bool(getattr(args, "gradient_checkpointing", False)),
    }


def run_ftcli(data: Path, work: Path, steps: int, method: str) -> dict:
    recipe_file = work / f"ftcli-{method}.yaml"
    recipe_file.write_text(recipe_text(data, work, method, steps))
    proc = subprocess.run(
        [sys.executable, "-m", "ftcli", "train", str(recipe_file), "--json", "--overwrite"],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-2000:])
    summary = json.loads(proc.stdout)
    return {
        "real_tokens": summary["tokens_per_s"] * summary["train_seconds"],
        "seconds": summary["train_seconds"],
        "padding_fraction": summary["padding_fraction"],
        "gradient_checkpointing": summary["gradient_checkpointing"]["enabled"],
        "child_peak_rss": summary["peak_memory_bytes"],
    }


def worker(variant: str, data: Path, work: Path, steps: int) -> None:
    run = {
        "raw": lambda: run_raw(data, work, steps),
        "raw-lora": lambda: run_raw(data, work, steps, lora=True),
        "trl": lambda: run_trl(data, work, steps),
        "ftcli-full": lambda: run_ftcli(data, work, steps, "full"),
        "ftcli-lora": lambda: run_ftcli(data, work, steps, "lora"),
    }[variant]
    result = run()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    result["peak_rss"] = max(rss, result.pop("child_peak_rss", 0))
    print("RESULT " + json.dumps(result))


# --- the driver ---------------------------------------------------------------------------------------------


def cold_start(argv: list[str]) -> float | None:
    times = []
    for _ in range(3):
        start = time.perf_counter()
        try:
            subprocess.run(argv, capture_output=True, check=True, timeout=60)
        except (OSError, subprocess.SubprocessError):
            return None
        times.append(time.perf_counter() - start)
    return round(min(times), 2)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="a few steps on a few rows (a smoke test)")
    parser.add_argument(
        "--out", type=Path, default=HERE / "results", help="where the .md and .json results go"
    )
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        return worker(args.variant, args.work / "chat.jsonl", args.work, args.steps)

    import tempfile

    import torch

    rows, steps = (120, 3) if args.quick else (2000, 30)
    work = Path(tempfile.mkdtemp(prefix="ftcli-bench-"))
    make_workload(work / "chat.jsonl", rows)
    env = {**os.environ, "FTCLI_CACHE": str(work / "ftcli-cache"), "TOKENIZERS_PARALLELISM": "false"}
    results = {}
    for variant in ("raw", "raw-lora", "trl", "ftcli-full", "ftcli-lora"):
        start = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, __file__, "--variant", variant, "--work", str(work), "--steps", str(steps)],
            capture_output=True,
            text=True,
            env=env,
        )
        wall = time.perf_counter() - start
        line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
        if proc.returncode != 0 or line is None:
            raise SystemExit(f"{variant} failed:\n{proc.stderr[-3000:]}")
        result = json.loads(line.removeprefix("RESULT "))
        result.update(wall_s=round(wall, 2), tokens_per_s=round(result["real_tokens"] / result["seconds"], 1))
        results[variant] = result
        print(f"{variant}: {result['tokens_per_s']} real tok/s, wall {wall:.1f}s", file=sys.stderr)
    raw = results["raw"]
    for result in results.values():
        result["ratio_to_raw"] = round(result["tokens_per_s"] / raw["tokens_per_s"], 3)
        result["ratio_to_trl"] = round(result["tokens_per_s"] / results["trl"]["tokens_per_s"], 3)
        result["wall_vs_raw"] = round(result["wall_s"] / raw["wall_s"], 3)
    report = {
        "mode": "quick" if args.quick else "full",
        "rows": rows,
        "steps": steps,
        "batch": "8 x 512",
        "model": "builtin:bench-llama (3.1M)",
        "machine": f"{platform.machine()}, {os.cpu_count()} cpus, "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads)",
        "python": platform.python_version(),
        "help_cold_start_s": {
            name: cold_start([str(Path(sys.executable).parent / name), "--help"]) for name in ("ftcli", "trl")
        },  # both console scripts
        "results": results,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    name = "throughput-quick" if args.quick else "throughput-cpu"
    (args.out / f"{name}.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / f"{name}.md").write_text(markdown(report))
    print(markdown(report))


def markdown(report: dict) -> str:
    lines = [
        f"# Training throughput ({report['mode']})",
        "",
        f"{report['rows']} skewed chat rows, {report['steps']} steps of {report['batch']}, {report['model']}; "
        f"{report['machine']}, Python {report['python']}.",
        "",
        "| variant | real tok/s | vs raw loop | vs TRL | wall s | wall vs raw | peak RSS MiB | notes |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    notes = {
        "raw": "packed, per-document attention",
        "raw-lora": "the same loop, peft LoRA r8 all-linear",
        "trl": "SFTTrainer defaults",
        "ftcli-full": "`ftcli train`, full FT",
        "ftcli-lora": "`ftcli train`, LoRA r8 all-linear",
    }
    for name, r in report["results"].items():
        extra = []
        if "gradient_checkpointing" in r:
            extra.append(f"grad ckpt {'on' if r['gradient_checkpointing'] else 'off'}")
        if r.get("padding_fraction") is not None:
            extra.append(f"padding {r['padding_fraction']:.0%}")
        lines.append(
            f"| {name} | {r['tokens_per_s']:,.0f} | {r['ratio_to_raw']:.2f} | {r['ratio_to_trl']:.2f} | "
            f"{r['wall_s']:.1f} | {r['wall_vs_raw']:.2f} | {r['peak_rss'] / 2**20:,.0f} | "
            f"{notes[name]}{'; ' + ', '.join(extra) if extra else ''} |"
        )
    results = report["results"]
    lora = results["ftcli-lora"]["tokens_per_s"] / results["raw-lora"]["tokens_per_s"]
    cold = report["help_cold_start_s"]
    lines += [
        "",
        f"`ftcli train` LoRA: {lora:.2f}x the raw peft LoRA loop; full: {results['ftcli-full']['ratio_to_raw']:.2f}x "
        "the raw loop.",
        "",
        f"`--help` cold start: ftcli {cold['ftcli']} s, trl {cold['trl']} s.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
