"""What a run tells the user and leaves behind: tables and progress on stderr, metrics.jsonl, summary.json and
loss.png in the run dir. stdout is kept for results (`--json`)."""

from __future__ import annotations

import errno
import json
import math
import os
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from ftcli import redact


def make_console(file) -> Console:
    console = Console(file=file, highlight=False)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console.width = 160  # a log or a pipe: rich would assume 80 columns and cut names in tables
    return console


console = make_console(redact.MaskedStream(lambda: sys.stderr))


def phase(text: str) -> None:
    """One line on stderr when a long step starts (loading a model, tokenizing, saving), so a log shows where a
    command is while it works."""
    console.print(f"[dim]{text}[/]", soft_wrap=True)


def human(n: float) -> str:
    for unit in ("", "K", "M", "B"):
        if abs(n) < 1000:
            return f"{n:.0f}{unit}" if unit == "" else f"{n:.1f}{unit}"
        n /= 1000
    return f"{n:.1f}T"


def print_table(title: str, rows: list[tuple[str, object]]) -> None:
    table = Table(title=title, show_header=False, title_justify="left", box=None, padding=(0, 2))
    for key, value in rows:
        table.add_row(f"[bold]{key}[/]", str(value))
    console.print(table)


def print_prepare_stats(stats: dict, cache_dir: str, cache_hit: bool) -> None:
    table = Table(title="prepared data" + (" (cache hit)" if cache_hit else ""), title_justify="left")
    for col in ("source", "split", "read", "kept", "truncated", "split long", "dropped", "bad skipped"):
        table.add_column(col, justify="left" if col in ("source", "split") else "right")
    for s in stats["sources"]:
        table.add_row(
            Path(s["path"]).name,
            s["split"],
            str(s["rows_read"]),
            str(s["kept"]),
            str(s["truncated"]),
            str(s["split_long"]),
            str(s["dropped_overlong"] + s["dropped_no_labels"]),
            str(s["bad_skipped"]),
        )
    console.print(table)
    for split in ("train", "eval"):
        if split in stats:
            st = stats[split]
            line = f"{split}: {st['rows']} rows, {human(st['tokens'])} tokens, {human(st['label_tokens'])} label tokens, "
            if "longest_pair" in st:  # preference pairs
                line += f"prompt p50/max {st['prompt_length_p50']}/{st['prompt_length_max']}, longest pair "
                line += str(st["longest_pair"])
            elif "prompt_length_p50" in st:  # prompts (online RL)
                line = f"{split}: {st['rows']} prompts, {human(st['tokens'])} tokens, "
                line += f"prompt p50/max {st['prompt_length_p50']}/{st['prompt_length_max']}"
            else:
                line += f"length p50/p90/p99/max {st['length_p50']}/{st['length_p90']}/{st['length_p99']}/"
                line += str(st["length_max"])
            if "packed_rows" in st:
                line += f", packed into {st['packed_rows']} rows ({st['packing_efficiency']:.0%} full)"
            console.print(line, soft_wrap=True)
    console.print(f"cache: {cache_dir}", soft_wrap=True)


def write_json(path: Path, payload) -> None:
    """Atomic write: a reader (or a crash) never sees half a file."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    os.replace(tmp, path)


SUMMARY_RESERVE = 64 * 1024  # bytes summary.json keeps on disk, so its last word fits even on a full disk


def write_summary(path: Path, summary: dict) -> None:
    """summary.json, atomically; on a full disk, rewritten in place into the room its first version reserved
    (JSON allows the trailing blanks), so a run never stays "running" because its disk filled up."""
    text = json.dumps(summary, indent=2, default=str) + "\n"
    padded = text + " " * max(SUMMARY_RESERVE - len(text.encode()), 0)
    try:
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(padded)
        os.replace(tmp, path)
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT) or not path.exists():
            raise
        path.with_suffix(".json.tmp").unlink(missing_ok=True)
        with path.open("r+") as handle:
            handle.write(padded[: max(path.stat().st_size, len(text))])
            handle.truncate()


# TRL's preference accuracy metrics (DPO/KTO/ORPO/SimPO and reward models), train and eval.
ACCURACY_KEYS = ("rewards/accuracies", "eval_rewards/accuracies", "accuracy", "eval_accuracy")


def plot_losses(metrics_file: Path, out: Path) -> bool:
    """loss.png: train and eval loss against step (and accuracy when logged)."""
    if not metrics_file.exists():
        return False
    rows = [json.loads(line) for line in metrics_file.read_text().splitlines() if line.strip()]
    train = [(r["step"], r["loss"]) for r in rows if "loss" in r]
    evals = [(r["step"], r["eval_loss"]) for r in rows if "eval_loss" in r]
    if not train and not evals:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    if train:
        ax.plot(*zip(*train), label="train loss")
    if evals:
        ax.plot(*zip(*evals), "o-", label="eval loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    handles = ax.get_legend_handles_labels()
    accuracy = {k: [(r["step"], r[k]) for r in rows if k in r] for k in ACCURACY_KEYS}
    if any(accuracy.values()):  # preference runs: accuracy on a second axis
        ax2 = ax.twinx()
        for key, points in accuracy.items():
            if points:
                ax2.plot(*zip(*points), "--" if key.startswith("eval") else ":", label=key.replace("/", " "))
        ax2.set_ylabel("preference accuracy")
        ax2.set_ylim(0, 1.05)
        extra = ax2.get_legend_handles_labels()
        handles = (handles[0] + extra[0], handles[1] + extra[1])
    ax.legend(*handles, loc="center right")
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return True


def progress_seconds() -> float:
    """How often a log (stderr not a terminal) gets a progress line: FTCLI_PROGRESS_SECONDS, default 30."""
    try:
        return max(float(os.environ.get("FTCLI_PROGRESS_SECONDS", "30")), 0.0)
    except ValueError:
        return 30.0


class PlainProgress:
    """Progress for logs, CI and `nohup`: where stderr is no terminal (no bar can redraw), one plain line at a steady
    interval and one at the end: `train 40/120 (33%)  loss 1.2345  1.2K tok/s  elapsed 0:42  eta 1:24`."""

    def __init__(self, what: str, total: int | None, unit: str = ""):
        self.what, self.total, self.unit = what, total, unit
        self.started = self.printed = time.perf_counter()
        self.every = progress_seconds()

    def update(self, done: int, info: str = "", force: bool = False) -> None:
        now = time.perf_counter()
        if not force and now - self.printed < self.every and done != self.total:
            return
        self.printed = now
        elapsed = now - self.started
        of = f"/{self.total}{self.unit} ({done / self.total:.0%})" if self.total else self.unit
        eta = ""
        if self.total and done and done < self.total:
            eta = f"  eta {_clock(elapsed / done * (self.total - done))}"
        parts = [f"{self.what} {done}{of}", info, f"elapsed {_clock(elapsed)}{eta}"]
        console.print("  ".join(p for p in parts if p), highlight=False, markup=False, soft_wrap=True)


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def make_callback(run_dir: Path, collator=None):
    """A transformers TrainerCallback: progress on stderr (a bar on a terminal, plain lines in a log),
    metrics.jsonl, step times (main process only)."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
    from transformers import TrainerCallback

    class ReportCallback(TrainerCallback):
        def __init__(self):
            self.metrics_file = run_dir / "metrics.jsonl"
            self.bar = self.plain = self.task = None
            self.info = ""
            self.step_times: list[float] = []
            self.last_step_at = None
            self.start = None
            self.last: dict = {}
            self.best_eval = None

        def on_train_begin(self, args, state, control, **kw):
            self.start = time.perf_counter()
            self.last_step_at = self.start
            if not state.is_world_process_zero:
                return
            if not console.is_terminal:
                self.plain = PlainProgress("train", state.max_steps, " steps")
                return
            self.bar = Progress(
                TextColumn("[bold]train[/]"),
                BarColumn(),
                TextColumn("{task.completed}/{task.total}"),
                TextColumn("{task.fields[info]}"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=console,
                transient=False,
            )
            self.bar.start()
            self.task = self.bar.add_task(
                "train", total=state.max_steps, completed=state.global_step, info=""
            )

        def on_step_end(self, args, state, control, **kw):
            now = time.perf_counter()
            if self.last_step_at is not None:
                self.step_times.append(now - self.last_step_at)
            self.last_step_at = now
            if self.bar:
                self.bar.update(self.task, completed=state.global_step)
            elif self.plain:
                self.plain.update(state.global_step, self._info(), force=state.global_step == 1)

        def _info(self) -> str:
            info = []
            if "loss" in self.last:
                info.append(f"loss {self.last['loss']:.4f}")
            if "reward" in self.last:  # online RL: what it learns to raise, and its spread over the samples
                spread = f" ± {self.last['reward_std']:.4f}" if "reward_std" in self.last else ""
                info.append(f"reward {self.last['reward']:.4f}{spread}")
            if "learning_rate" in self.last:
                info.append(f"lr {self.last['learning_rate']:.2e}")
            elapsed = (
                time.perf_counter() - self.start if self.start is not None else 0
            )  # (eval before training)
            if collator is not None and elapsed > 0:
                info.append(f"{human(collator.real_tokens / elapsed)} tok/s")
            return "  ".join(info)

        def on_log(self, args, state, control, logs=None, **kw):
            if not state.is_world_process_zero or not logs:
                return
            row = {"step": state.global_step, "epoch": round(state.epoch or 0, 4), **_clean(logs)}
            if "eval_loss" in row:
                row["eval_perplexity"] = perplexity(row["eval_loss"])
                self.best_eval = (
                    row["eval_loss"] if self.best_eval is None else min(self.best_eval, row["eval_loss"])
                )
            self.last.update(row)
            with self.metrics_file.open("a") as handle:
                handle.write(json.dumps(row) + "\n")
            # online RL is judged by its held-out reward, everything else by its held-out loss
            held_out = (
                f"eval reward {row['eval_reward']:.4f}"
                if "eval_reward" in row
                else f"eval loss {row['eval_loss']:.4f}"
                if "eval_loss" in row
                else ""
            )
            info = self._info() + (f"  {held_out}" if held_out else "")
            if self.bar:
                self.bar.update(self.task, info=info)
            elif self.plain and held_out:  # evaluations are worth a line of their own
                console.print(
                    f"step {state.global_step}/{state.max_steps}  {held_out}",
                    highlight=False,
                    markup=False,
                    soft_wrap=True,
                )

        def on_train_end(self, args, state, control, **kw):
            if self.bar:
                self.bar.update(self.task, completed=state.global_step)
                self.bar.stop()
            elif self.plain and state.global_step != self.plain.total:
                self.plain.update(state.global_step, self._info(), force=True)

    return ReportCallback()


def step_time_percentiles(times: list[float]) -> dict:
    if not times:
        return {}
    ordered = sorted(times[1:] or times)  # the first step includes warm-up
    pick = lambda q: round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 4)
    return {"p50": pick(0.5), "p90": pick(0.9), "max": round(ordered[-1], 4)}


def perplexity(loss: float) -> float:
    return math.exp(loss) if loss < 50 else float("inf")


def _clean(logs: dict) -> dict:
    return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in logs.items()}


def print_eval(rows: list[tuple[str, str, float, float | None]], file=None) -> None:
    """`ftcli eval`'s result: one row per task and metric, the base beside the fine-tune when compared."""
    compared = any(base is not None for *_, base in rows)
    table = Table(title="lm-evaluation-harness", title_justify="left")
    for col in (
        "task",
        "metric",
        "fine-tune" if compared else "score",
        *(("base", "change") if compared else ()),
    ):
        table.add_column(col, justify="left" if col in ("task", "metric") else "right")
    for task, metric, value, base in rows:
        extra = (
            (f"{base:.4f}", f"{value - base:+.4f}")
            if compared and base is not None
            else ("", "")
            if compared
            else ()
        )
        table.add_row(task, metric, f"{value:.4f}", *extra)
    make_console(file).print(table)
