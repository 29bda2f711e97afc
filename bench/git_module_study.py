"""The GIT-LLM module study on builtin tiny models: the five recipes of recipes/multimodal/ (projection only; +
LoRA on the LM's q/k/v; + every LM layer; + every ViT layer; + the LM head), each run with the same short
schedule on the synthetic shapes set, drawn in one PNG (train and validation loss), with a markdown table of
final losses. The real study (CLIP ViT-B/16 + OPT-350m, COCO, 5 epochs) is the same recipes without overrides.

Run: python bench/git_module_study.py [--epochs N] [--out bench/results]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STUDY = ["proj", "lora", "lm", "vit", "head"]
LABELS = {
    "proj": "Proj",
    "lora": "Proj + LoRA (LM q/k/v)",
    "lm": "Proj + whole LM",
    "vit": "Proj + whole ViT",
    "head": "Proj + LM head",
}


def overrides(epochs: int, run_dir: Path, cache: Path) -> list[str]:
    shapes = ROOT / "recipes" / "data" / "shapes"
    return [
        "model.name=builtin:tiny-opt",
        "model.dtype=float32",
        "multimodal.vision_model=builtin:tiny-clip",
        f"data.sources=[{shapes / 'train.jsonl'}]",
        f"data.eval_sources=[{shapes / 'eval.jsonl'}]",
        "data.num_proc=null",
        f"data.cache_dir={cache}",
        f"training.epochs={epochs}",
        "training.batch_size=8",
        "training.learning_rate=1e-3",
        "training.logging_steps=5",
        "training.eval_steps=10",
        "training.save_steps=null",
        f"output.dir={run_dir}",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    curves, table = {}, []
    with tempfile.TemporaryDirectory() as tmp:
        for name in STUDY:
            run = Path(tmp) / name
            recipe = ROOT / "recipes" / "multimodal" / f"coco-opt-350m-{name}.yaml"
            command = [
                sys.executable,
                "-m",
                "ftcli",
                "train",
                str(recipe),
                *overrides(args.epochs, run, Path(tmp) / "c"),
                "--json",
            ]
            # the recipes' COCO paths are overridden, but their ${env:COCO_DIR} must still resolve
            done = subprocess.run(
                command, capture_output=True, text=True, env={**os.environ, "COCO_DIR": tmp}
            )
            if done.returncode:
                sys.exit(f"{name}: {done.stderr.strip().splitlines()[-1]}")
            summary = json.loads(done.stdout)
            rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
            curves[name] = (
                [(r["step"], r["loss"]) for r in rows if "loss" in r],
                [(r["step"], r["eval_loss"]) for r in rows if "eval_loss" in r],
            )
            table.append(
                {
                    "run": LABELS[name],
                    "trainable": summary["parameters"]["trainable"],
                    "final_train_loss": summary["final_loss"],
                    "final_eval_loss": summary["final_eval_loss"],
                    "best_eval_loss": summary["best_eval_loss"],
                    "seconds": summary["train_seconds"],
                }
            )
            print(f"{name}: eval {summary['final_eval_loss']:.4f}", file=sys.stderr)
    _plot(curves, args.out / "git-module-study.png")
    (args.out / "git-module-study.json").write_text(json.dumps(table, indent=2) + "\n")
    lines = [
        "| run | trainable params | final train loss | final val loss | best val loss |",
        "|---|---|---|---|---|",
    ]
    for row in table:
        lines.append(
            f"| {row['run']} | {row['trainable']:,} | {row['final_train_loss']:.3f} | "
            f"{row['final_eval_loss']:.3f} | {row['best_eval_loss']:.3f} |"
        )
    (args.out / "git-module-study.md").write_text(
        f"# GIT module study, builtin tiny CLIP + OPT, synthetic shapes, {args.epochs} epochs\n\n"
        + "\n".join(lines)
        + "\n\n![losses](git-module-study.png)\n"
    )
    print("\n".join(lines))


def _plot(curves: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (train_ax, eval_ax) = plt.subplots(1, 2, figsize=(11, 4), dpi=110, sharey=True)
    for name, (train, evals) in curves.items():
        line = train_ax.plot(*zip(*train), label=LABELS[name])[0]
        eval_ax.plot(*zip(*evals), "o-", color=line.get_color(), label=LABELS[name])
    for ax, title in ((train_ax, "train loss"), (eval_ax, "validation loss")):
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    train_ax.set_ylabel("loss")
    eval_ax.legend()
    fig.tight_layout()
    fig.savefig(out)


if __name__ == "__main__":
    main()
