"""The GPU check: one bounded command (about 8 minutes on one GPU) that proves ftcli on CUDA and writes the results.

    python bench/gpu_check.py                 # on a machine with a CUDA GPU; results in bench/results/
    python bench/gpu_check.py --smoke         # the same stages, tiny, on any machine (plumbing; the suite runs it)

Stages, each in its own processes with its own time limit (a failed stage is recorded and the next one runs):
  env         GPU, driver, library versions
  suite       the test suite (tests/test_gpu.py runs the GPU paths), beside the untimed stages
  engines     one full fine-tuning recipe, the same seed, on DDP, DeepSpeed ZeRO-2 and ZeRO-3, FSDP through
              `launch:` (1 process each): the loss curves must agree within bf16 noise
  throughput  one skewed chat workload, bf16, real (non-padding) tokens/s after warm-up, peak GPU memory, MFU:
              raw-amp     plain PyTorch loop over ftcli's packed rows, fp32 master weights, bf16 autocast, fused
                          AdamW: the same arithmetic as `ftcli train` full, without a Trainer (the limit)
              raw-bf16    the same loop on bf16 weights (pure-bf16 training: what `model.dtype: bfloat16` runs)
              raw-lora    plain peft LoRA r16 all-linear loop (get_peft_model, autocast, fused AdamW)
              trl         TRL SFTTrainer with its defaults (what users write)
              ftcli-full / ftcli-lora / ftcli-qlora   `ftcli train`, ftcli's defaults
  infer       `ftcli infer` batched greedy generation against model.generate() on the same GPU and prompts
  tasks       issue 20's tasks on the GPU: GRPO (the workload model, a regex reward) with transformers generate and,
              when vLLM is installed, with vLLM; VLM LoRA and QLoRA (builtin tiny LLaVA on the shapes): steps/s,
              step time, peak memory, reward before/after or eval loss
Targets (issue 17): full >= 0.95x raw-amp; LoRA faster than full and >= 0.90x raw-lora; QLoRA peak memory below
LoRA's, LoRA's below full's; infer >= 0.90x generate(); engine losses equal within bf16 noise.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SIZES = {
    "gpu": dict(
        model=dict(
            hidden_size=1024,
            intermediate_size=4096,
            num_hidden_layers=28,
            num_attention_heads=16,
            num_key_value_heads=8,
            vocab_size=32000,
        ),
        rows=3000,
        median=320,
        cap=2000,
        max_length=2048,
        batch=16,
        warmup=3,
        measured=12,
        prompts=128,
        infer_batch=64,
        new_tokens=128,
        engine_steps=8,
        engine_batch=4,
        engine_length=1024,
    ),
    "smoke": dict(
        model=dict(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            vocab_size=512,
        ),
        rows=200,
        median=60,
        cap=200,
        max_length=256,
        batch=4,
        warmup=2,
        measured=3,
        prompts=8,
        infer_batch=4,
        new_tokens=8,
        engine_steps=3,
        engine_batch=2,
        engine_length=256,
    ),
}
VARIANTS = ("raw-amp", "raw-bf16", "raw-lora", "trl", "ftcli-full", "ftcli-lora", "ftcli-qlora")
ENGINES = {
    "ddp": {"strategy": "ddp"},
    "zero2": {"strategy": "deepspeed", "deepspeed": {"zero_stage": 2}},
    "zero3": {"strategy": "deepspeed", "deepspeed": {"zero_stage": 3}},
    "fsdp": {"strategy": "fsdp"},
}
LORA = "{type: lora, r: 16, alpha: 32, dropout: 0.0, target_modules: all-linear}"
METHODS = {"full": "full", "lora": LORA, "qlora": LORA.replace("lora", "qlora", 1)}
WORDS = (
    "the model learns to answer short questions and long ones with care while data stays skewed most samples "
    "are short but a few are very long and padding wastes compute on every step of training"
).split()


# --- the workload --------------------------------------------------------------------------------------------


def make_workload(work: Path, size: dict) -> dict:
    """A random-init LLaMA-architecture model with ftcli's byte-level tokenizer, skewed chat rows, prompts."""
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig, LlamaConfig

    from ftcli.models.builtin import EOS, IM_END, PAD, build_byte_tokenizer

    rng = random.Random(0)
    with (work / "chat.jsonl").open("w") as out:
        for _ in range(size["rows"]):
            n = max(16, min(size["cap"], int(math.exp(rng.gauss(math.log(size["median"]), 0.8)))))
            text = " ".join(rng.choice(WORDS) for _ in range(n // 5 + 2))[:n]
            cut = max(8, n // 5)
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
    with (work / "prompts.jsonl").open("w") as out:
        for i in range(size["prompts"]):
            words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 40)))
            out.write(json.dumps({"prompt": f"Question {i}: {words}?"}) + "\n")
    tokenizer = build_byte_tokenizer()
    ids = tokenizer.convert_tokens_to_ids
    config = LlamaConfig(
        **size["model"],
        max_position_embeddings=4096,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        initializer_range=0.02,
        bos_token_id=None,
        eos_token_id=ids(EOS),
        pad_token_id=ids(PAD),
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.generation_config = GenerationConfig(eos_token_id=[ids(EOS), ids(IM_END)], pad_token_id=ids(PAD))
    model.save_pretrained(work / "model")
    tokenizer.save_pretrained(work / "model")
    total = sum(p.numel() for p in model.parameters())
    return {
        "params": total,
        "params_matmul": total - model.get_input_embeddings().weight.numel(),
        "model": size["model"],
        "rows": size["rows"],
    }


def recipe_text(
    work: Path, size: dict, method: str, out: str, steps: int, batch: int, length: int, extra: str = ""
) -> str:
    return f"""
task: sft
model: {{name: "{work / "model"}"}}
method: {METHODS[method]}
data:
  format: chat
  sources: ["{work / "chat.jsonl"}"]
  max_length: {length}
  cache_dir: "{work / "data-cache"}"
training:
  max_steps: {steps}
  batch_size: {batch}
  learning_rate: 1.0e-4
  lr_scheduler: constant
  logging_steps: 1
  gradient_checkpointing: false
output:
  dir: "{work / out}"
{extra}"""


# --- one throughput variant (run as `gpu_check.py --variant NAME`, in its own process) ----------------------


class Window:
    """Warm-up steps, then `measured` steps timed between two synchronizations, counting real tokens."""

    def __init__(self, warmup: int, measured: int):
        self.warmup, self.last = warmup, warmup + measured
        self.t0 = self.tokens0 = None
        self.result: dict = {}

    def step(self, step: int, real_tokens: int) -> bool:
        """After each optimizer step; True once the window is over."""
        if step == self.warmup:
            _sync()
            self.t0, self.tokens0 = time.perf_counter(), real_tokens
        elif step == self.last and self.t0 is not None:
            _sync()
            seconds = time.perf_counter() - self.t0
            tokens = real_tokens - self.tokens0
            self.result = {
                "steps": self.last - self.warmup,
                "seconds": round(seconds, 3),
                "real_tokens": tokens,
                "tokens_per_s": round(tokens / seconds, 1),
                "step_s": round(seconds / (self.last - self.warmup), 4),
            }
            return True
        return False


def _sync():
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def run_variant(name: str, work: Path, size: dict) -> dict:
    import torch

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    window = Window(size["warmup"], size["measured"])
    steps = size["warmup"] + size["measured"]
    if name.startswith("raw"):
        extra = raw_loop(name, work, size, window, steps)
    elif name == "trl":
        extra = trl_loop(work, size, window, steps)
    else:
        extra = ftcli_run(name.removeprefix("ftcli-"), work, size, window, steps)
    peak = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None
    return {**window.result, **extra, "peak_gpu_bytes": peak}


def raw_loop(name: str, work: Path, size: dict, window: Window, steps: int) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    from ftcli.data.collate import PackedCollator
    from ftcli.data.prepare import prepare_data
    from ftcli.models.load import load_tokenizer, training_config
    from ftcli.recipe import load_recipe

    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    recipe_file = work / f"{name}.yaml"
    recipe_file.write_text(recipe_text(work, size, "full", name, steps, size["batch"], size["max_length"]))
    recipe = load_recipe(recipe_file)  # the same prepared (packed) rows as the ftcli variants
    tokenizer = load_tokenizer(recipe.model)
    rows = prepare_data(recipe, tokenizer).train
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(
        str(work / "model"), dtype=torch.bfloat16 if cuda else torch.float32, attn_implementation="sdpa"
    ).to(device)
    training_config(model)
    if name == "raw-amp":
        model.float()
    elif name == "raw-lora":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(
            model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear")
        )
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4, fused=cuda)
    autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=cuda and name != "raw-bf16")
    collate = PackedCollator(tokenizer.pad_token_id)
    order = list(range(len(rows)))
    random.Random(0).shuffle(order)
    for step in range(1, steps + 1):
        batch = collate(
            [rows[order[((step - 1) * size["batch"] + i) % len(order)]] for i in range(size["batch"])]
        )
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        with autocast:
            loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        window.step(step, collate.real_tokens)
    return {
        "final_loss": round(float(loss), 4),
        "trainable": sum(p.numel() for p in params),
        "weights_dtype": str(params[0].dtype).removeprefix("torch."),
    }


def trl_loop(work: Path, size: dict, window: Window, steps: int) -> dict:
    import datasets
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    cuda = torch.cuda.is_available()
    tokenizer = AutoTokenizer.from_pretrained(str(work / "model"))
    model = AutoModelForCausalLM.from_pretrained(
        str(work / "model"), dtype=torch.bfloat16 if cuda else torch.float32
    )

    class Timed(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            window.step(state.global_step, int(state.num_input_tokens_seen or 0))

    config = SFTConfig(
        output_dir=str(work / "run-trl"),
        per_device_train_batch_size=size["batch"],
        max_length=size["max_length"],
        max_steps=steps,
        report_to="none",
        save_strategy="no",
        logging_steps=1000,
        disable_tqdm=True,
        include_num_input_tokens_seen="non_padding",
        **({} if cuda else {"bf16": False, "use_cpu": True}),
    )
    train = datasets.load_dataset("json", data_files=str(work / "chat.jsonl"))["train"]
    SFTTrainer(
        model=model, args=config, train_dataset=train, processing_class=tokenizer, callbacks=[Timed()]
    ).train()
    return {
        "gradient_checkpointing": bool(getattr(config, "gradient_checkpointing", False)),
        "weights_dtype": str(model.dtype).removeprefix("torch."),
    }


def ftcli_run(method: str, work: Path, size: dict, window: Window, steps: int) -> dict:
    """`ftcli train` through its own entry point in this process; only the timing window is added, by wrapping the
    progress callback ftcli builds."""
    import ftcli.report as report
    from ftcli.cli import main

    original = report.make_callback

    def timed_callback(run_dir, collator=None):
        callback = original(run_dir, collator)
        step_end = callback.on_step_end

        def on_step_end(args, state, control, **kw):
            step_end(args, state, control, **kw)
            window.step(state.global_step, collator.real_tokens if collator else 0)

        callback.on_step_end = on_step_end
        return callback

    report.make_callback = timed_callback
    recipe_file = work / f"ftcli-{method}.yaml"
    recipe_file.write_text(
        recipe_text(
            work, size, method, f"run-ftcli-{method}", steps, size["batch"], size["max_length"]
        ).replace("  gradient_checkpointing: false\n", "")
    )
    try:
        main(["train", str(recipe_file), "--overwrite", "--json"])
    except SystemExit as exc:
        if exc.code not in (0, None):
            raise RuntimeError(f"ftcli train exited {exc.code}") from None
    summary = json.loads((work / f"run-ftcli-{method}" / "summary.json").read_text())
    keep = (
        "status",
        "device",
        "precision",
        "weights_dtype",
        "gradient_checkpointing",
        "padding_fraction",
        "first_loss",
        "final_loss",
        "parameters",
    )
    return {"ftcli": {k: summary.get(k) for k in keep}, "trainable": summary["parameters"]["trainable"]}


# --- infer: `ftcli infer` against model.generate on the same GPU (`gpu_check.py --infer`) ------------------


def run_infer(work: Path, size: dict) -> dict:
    import io
    from contextlib import redirect_stdout

    import torch

    from ftcli.cli import main

    target = work / "run-ftcli-full"
    target = target if (target / "config.json").exists() else work / "model"
    argv = [
        "infer",
        str(target),
        "-i",
        str(work / "prompts.jsonl"),
        "--json",
        "--batch-size",
        str(size["infer_batch"]),
        "--max-new-tokens",
        str(size["new_tokens"]),
    ]

    def ftcli_infer(arguments: list[str]) -> str:
        """`ftcli infer` through its entry point in this process; its stdout."""
        buffer = io.StringIO()
        with redirect_stdout(buffer):
            try:
                main(arguments)
            except SystemExit as exc:
                if exc.code not in (0, None):
                    raise RuntimeError(f"ftcli infer exited {exc.code}") from None
        return buffer.getvalue()

    ftcli_infer([*argv[:4], "--max-new-tokens", "4"])  # warm-up: kernels, caches
    began = time.perf_counter()
    output = ftcli_infer(argv)
    cli_wall = time.perf_counter() - began
    rows = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    batches = {r["index"] // size["infer_batch"]: r["batch_seconds"] for r in rows}
    ftcli_tokens = sum(r["completion_tokens"] for r in rows)
    ftcli_s = sum(batches.values())

    # the same prompts through plain transformers: left-padded batches, greedy, model on the same device
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = "cuda" if torch.cuda.is_available() else "cpu"
    tok = AutoTokenizer.from_pretrained(target)
    tok.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(
        target, dtype=torch.bfloat16 if device == "cuda" else torch.float32, device_map={"": device}
    ).eval()
    prompts = [
        tok.apply_chat_template(
            [{"role": "user", "content": r["input"]}], tokenize=False, add_generation_prompt=True
        )
        for r in rows
    ]
    plain_tokens, plain_s = 0, 0.0
    for start in range(0, len(prompts), size["infer_batch"]):
        enc = tok(
            prompts[start : start + size["infer_batch"]],
            return_tensors="pt",
            padding=True,
            add_special_tokens=False,
        ).to(device)
        _sync()
        began = time.perf_counter()
        with torch.no_grad():
            out = model.generate(**enc, max_new_tokens=size["new_tokens"], do_sample=False)
        _sync()
        plain_s += time.perf_counter() - began
        new = out[:, enc["input_ids"].shape[1] :]
        stops = set(model.generation_config.eos_token_id or [])
        for row in new.tolist():
            end = next((i for i, t in enumerate(row) if t in stops), None)
            plain_tokens += len(row) if end is None else end + 1
    return {
        "rows": len(rows),
        "batch": size["infer_batch"],
        "max_new_tokens": size["new_tokens"],
        "ftcli_tokens": ftcli_tokens,
        "ftcli_generate_s": round(ftcli_s, 3),
        "ftcli_cli_wall_s": round(cli_wall, 2),
        "ftcli_tokens_per_s": round(ftcli_tokens / ftcli_s, 1) if ftcli_s else None,
        "generate_tokens": plain_tokens,
        "generate_s": round(plain_s, 3),
        "generate_tokens_per_s": round(plain_tokens / plain_s, 1) if plain_s else None,
    }


# --- the driver ---------------------------------------------------------------------------------------------


class Check:
    def __init__(self, args):
        self.args, self.started = args, time.perf_counter()
        self.size = SIZES["smoke" if args.smoke else "gpu"]
        self.work = Path(tempfile.mkdtemp(prefix="ftcli-gpu-check-"))
        self.env = {
            **os.environ,
            "FTCLI_CACHE": str(self.work / "cache"),
            "HF_HUB_OFFLINE": "1",
            "HF_DATASETS_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
            "PYTHONUNBUFFERED": "1",
        }
        self.results: dict = {"mode": "smoke" if args.smoke else "gpu", "stages": {}}

    def left(self) -> float:
        return self.args.budget - (time.perf_counter() - self.started)

    def child(self, argv: list[str], limit: float, log: str) -> tuple[int, str]:
        """A child process under a time limit; (exit code, its output), also kept in the work dir's logs."""
        began = time.perf_counter()
        try:
            proc = subprocess.run(
                argv, capture_output=True, text=True, env=self.env, cwd=ROOT, timeout=max(limit, 1)
            )
            code, text = proc.returncode, proc.stdout + proc.stderr
        except subprocess.TimeoutExpired as exc:
            code, text = 124, f"{exc.stdout or ''}{exc.stderr or ''}\n[timed out after {limit:.0f}s]"
        (self.work / "logs").mkdir(exist_ok=True)
        (self.work / "logs" / f"{log}.log").write_text(
            f"$ {' '.join(argv)}\n{text}\n[{time.perf_counter() - began:.1f}s]"
        )
        return code, text if isinstance(text, str) else text.decode(errors="replace")

    def stage(self, name: str, result: dict) -> None:
        self.results["stages"][name] = result
        print(
            f"[{time.perf_counter() - self.started:5.0f}s] {name}: {result.get('status', 'ok')}",
            file=sys.stderr,
        )

    def run(self) -> dict:
        self.stage("env", env_facts())
        suite = self.start_suite()
        code, text = self.child(
            [sys.executable, __file__, "--workload", str(self.work)] + self.size_flag(),
            min(300, self.left()),
            "workload",
        )
        self.results["workload"] = (
            _result_line(text) if code == 0 else {"status": "failed", "error": text[-2000:]}
        )
        if code == 0:
            self.engines()
        self.finish_suite(suite)
        if code == 0:
            for variant in VARIANTS:
                self.variant(variant)
            self.infer()
            self.tasks()
        return self.results

    def size_flag(self) -> list[str]:
        return ["--smoke"] if self.args.smoke else []

    def start_suite(self):
        if self.args.smoke or self.args.no_suite:
            self.stage("suite", {"status": "skipped", "reason": "--smoke / --no-suite"})
            return None
        workers = ["-n", "8"] if shutil.which("pytest") and _has_module("xdist") else []
        argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *workers, "--all", "tests"]
        log = open(self.work / "suite.log", "w")  # noqa: SIM115 - closed in finish_suite
        proc = subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=ROOT,
            env={k: v for k, v in self.env.items() if k != "FTCLI_CACHE"},
        )
        return proc, log, time.perf_counter(), argv

    def finish_suite(self, suite) -> None:
        if suite is None:
            return
        proc, log, began, argv = suite
        try:
            proc.wait(timeout=max(self.args.suite_limit - (time.perf_counter() - began), 1))
            code = proc.returncode
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            code = 124
        log.close()
        text = (self.work / "suite.log").read_text()
        last = next((line for line in reversed(text.splitlines()) if line.strip()), "")
        failed = [
            line.split(" ", 1)[1] for line in text.splitlines() if line.startswith(("FAILED ", "ERROR "))
        ]
        skipped = [line for line in text.splitlines() if line.startswith("SKIPPED")]
        self.stage(
            "suite",
            {
                "status": "ok" if code == 0 else "failed",
                "exit": code,
                "summary": last.strip("= "),
                "command": " ".join(argv),
                "failed": failed[:40],
                "skipped": skipped[:20],
                "seconds": round(time.perf_counter() - began, 1),
            },
        )

    def engines(self) -> None:
        """The same recipe and seed on every engine, one process each, side by side."""
        size, procs = self.size, {}
        available = {"deepspeed": _has_module("deepspeed")}
        smoke_engines = ("ddp",)
        for i, (name, launch) in enumerate(ENGINES.items()):
            if self.args.smoke and name not in smoke_engines:
                continue
            if launch["strategy"] == "deepspeed" and not available["deepspeed"]:
                self.results.setdefault("engines", {})[name] = {
                    "status": "skipped",
                    "reason": "deepspeed not installed",
                }
                continue
            launch = {
                "num_processes": 1,
                "main_process_port": 29600 + i,
                **launch,
                **({"device": "cpu"} if self.args.smoke else {}),
            }
            recipe = self.work / f"engine-{name}.yaml"
            recipe.write_text(
                recipe_text(
                    self.work,
                    size,
                    "full",
                    f"engine-{name}",
                    size["engine_steps"],
                    size["engine_batch"],
                    size["engine_length"],
                    f"launch: {json.dumps(launch)}\n",
                )
            )
            argv = [sys.executable, "-m", "ftcli", "train", str(recipe), "--launcher", "accelerate", "--json"]
            procs[name] = subprocess.Popen(
                argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=self.env, cwd=ROOT
            )
        engines = self.results.setdefault("engines", {})
        for name, proc in procs.items():
            try:
                out, err = proc.communicate(timeout=max(min(240, self.left() - 200), 30))
            except subprocess.TimeoutExpired:
                proc.kill()
                out, err = proc.communicate()
            metrics = self.work / f"engine-{name}" / "metrics.jsonl"
            losses = (
                [json.loads(line)["loss"] for line in metrics.read_text().splitlines() if '"loss"' in line]
                if metrics.exists()
                else []
            )
            engines[name] = {
                "status": "ok" if proc.returncode == 0 else "failed",
                "exit": proc.returncode,
                "losses": losses,
                "error": None if proc.returncode == 0 else err[-1500:],
            }
        reference = engines.get("ddp", {}).get("losses")
        if reference:
            for result in engines.values():
                if result.get("losses"):
                    diffs = [abs(a - b) for a, b in zip(result["losses"], reference)]
                    result["max_abs_diff_vs_ddp"] = round(max(diffs), 4) if diffs else None
                    result["agrees"] = (
                        bool(diffs) and max(d / max(abs(r), 1e-6) for d, r in zip(diffs, reference)) <= 0.02
                    )
        self.stage(
            "engines",
            {"status": "ok" if all(r.get("status") != "failed" for r in engines.values()) else "failed"},
        )

    def variant(self, name: str) -> None:
        limit = min(180, self.left() - 60)
        if limit < 20:
            self.results.setdefault("throughput", {})[name] = {"status": "skipped", "reason": "time budget"}
            return
        code, text = self.child(
            [sys.executable, __file__, "--variant", name, "--work", str(self.work), *self.size_flag()],
            limit,
            name,
        )
        result = (
            _result_line(text) if code == 0 else {"status": "failed", "exit": code, "error": text[-1500:]}
        )
        self.results.setdefault("throughput", {})[name] = result
        self.stage(f"throughput {name}", result)

    def infer(self) -> None:
        limit = min(180, self.left())
        if limit < 20:
            self.stage("infer", {"status": "skipped", "reason": "time budget"})
            return
        code, text = self.child(
            [sys.executable, __file__, "--infer", "--work", str(self.work), *self.size_flag()], limit, "infer"
        )
        self.results["infer"] = (
            _result_line(text) if code == 0 else {"status": "failed", "error": text[-1500:]}
        )
        self.stage("infer", self.results["infer"])

    def tasks(self) -> None:
        """GRPO (with and without vLLM), VLM LoRA/QLoRA and VLM DPO, each one `ftcli` command, its summary kept."""
        device = "cpu" if self.args.smoke else "cuda"
        steps = 4 if self.args.smoke else 30
        grpo = [
            "align",
            str(ROOT / "recipes/smoke/grpo-lora.yaml"),
            f"model.name={self.work / 'model'}",
            f"data.sources=[{self.work / 'chat.jsonl'}]",
            "data.template=chatml",
            f"training.max_steps={steps}",
            f"training.eval_steps={steps}",
            f"launch.device={device}",
        ]
        vlm = [
            "train",
            str(ROOT / "recipes/smoke/vlm-lora.yaml"),
            f"training.max_steps={steps * 4}",
            f"launch.device={device}",
        ]
        runs = {
            "grpo-generate": grpo + ["align.use_vllm=false"],
            "vlm-lora": vlm,
            "vlm-qlora": vlm + ["method.type=qlora"],
            "vlm-dpo-lora": [
                "align",
                str(ROOT / "recipes/smoke/vlm-dpo-lora.yaml"),
                f"training.max_steps={steps * 4}",
                f"launch.device={device}",
            ],
        }
        if _has_module("vllm") and not self.args.smoke:
            runs["grpo-vllm"] = grpo + ["align.use_vllm=true"]
        keep = ("status", "steps", "train_seconds", "step_time_s", "peak_memory_bytes", "device", "precision")
        keep += ("eval_reward_before", "eval_reward", "final_eval_loss", "eval_accuracy", "tokens_per_s")
        for name, argv in runs.items():
            limit = min(240, self.left())
            if limit < 30:
                self.results.setdefault("tasks", {})[name] = {"status": "skipped", "reason": "time budget"}
                continue
            out = self.work / f"task-{name}"
            code, text = self.child(
                [sys.executable, "-m", "ftcli", *argv, f"output.dir={out}", "--overwrite"], limit, name
            )
            summary = (
                json.loads((out / "summary.json").read_text()) if (out / "summary.json").exists() else {}
            )
            result = {k: summary.get(k) for k in keep if k in summary}
            if code != 0:
                result.update(status="failed", exit=code, error=text[-1500:])
            self.results.setdefault("tasks", {})[name] = result
            self.stage(f"tasks {name}", result)


def _has_module(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def _result_line(text: str) -> dict:
    line = next((x for x in reversed(text.splitlines()) if x.startswith("RESULT ")), None)
    return json.loads(line.removeprefix("RESULT ")) if line else {"status": "failed", "error": text[-1500:]}


def _commit() -> str | None:
    """The commit checked: git's, or a `.commit` file beside a copy made with `git archive`."""
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        marker = ROOT / ".commit"
        return marker.read_text().strip()[:12] if marker.exists() else None


def env_facts() -> dict:
    import importlib.metadata as md

    import torch

    facts = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "gpu_count": torch.cuda.device_count() if torch.cuda.is_available() else 0,
        "bf16": torch.cuda.is_available() and torch.cuda.is_bf16_supported(),
        "commit": _commit(),
    }
    for name in (
        "ftcli",
        "transformers",
        "trl",
        "peft",
        "accelerate",
        "bitsandbytes",
        "datasets",
        "deepspeed",
    ):
        try:
            facts[name] = md.version(name)
        except md.PackageNotFoundError:
            facts[name] = None
    return facts


def mfu(result: dict, params_matmul: int, full: bool, gpu: str | None) -> float | None:
    """Model FLOPs utilization: k·N·tokens/s over the GPU's dense bf16 peak (TRL's table); k = 6 when the weights
    train (forward, input and weight gradients), 4 when they are frozen (adapters); attention FLOPs not counted."""
    if not gpu or not result.get("tokens_per_s"):
        return None
    try:
        from trl.trainer.utils import get_peak_flops
    except ImportError:
        return None
    peak = get_peak_flops(gpu, "bfloat16")
    return round((6 if full else 4) * params_matmul * result["tokens_per_s"] / peak, 4) if peak else None


def markdown(results: dict) -> str:
    env, stages = results["stages"]["env"], results["stages"]
    lines = [
        f"# ftcli GPU check ({results['mode']}, {results['date']})",
        "",
        f"ftcli at {env.get('commit') or 'an unknown commit'} on {env['gpu'] or 'no GPU'} x{env['gpu_count']}; "
        f"torch {env['torch']} (CUDA {env['cuda']}), transformers "
        f"{env['transformers']}, trl {env['trl']}, peft {env['peft']}, bitsandbytes {env['bitsandbytes']}, "
        f"accelerate {env['accelerate']}, deepspeed {env['deepspeed']}. Wall {results['wall_s']} s.",
        "",
    ]
    suite = stages.get("suite", {})
    lines += [
        "## Test suite",
        "",
        f"`{suite.get('command', '')}`: {suite.get('summary') or suite.get('reason')}",
        "",
    ]
    lines += [f"- FAILED {f}" for f in suite.get("failed", [])] + [""]
    work = results.get("workload") or {}
    lines += [
        "## Training throughput",
        "",
        f"Random-init LLaMA {work.get('model')}, {work.get('params', 0) / 1e6:.0f}M parameters; {work.get('rows')} "
        "skewed chat rows; bf16 on a GPU; real = non-padding tokens/s after warm-up.",
        "",
        "| variant | real tok/s | vs raw-amp | MFU | peak GPU GiB | trained weights | notes |",
        "|---|---:|---:|---:|---:|---|---|",
    ]
    throughput = results.get("throughput", {})
    raw = (throughput.get("raw-amp") or {}).get("tokens_per_s")
    for name, r in throughput.items():
        if not r.get("tokens_per_s"):
            lines.append(
                f"| {name} | {r.get('status')} | | | | | {str(r.get('error') or r.get('reason'))[-120:]!r} |"
            )
            continue
        full = name in ("raw-amp", "raw-bf16", "trl", "ftcli-full")
        m = mfu(r, work.get("params_matmul", 0), full, env["gpu"])
        ft = r.get("ftcli") or {}
        checkpointing = (ft.get("gradient_checkpointing") or {}).get("enabled") or r.get(
            "gradient_checkpointing"
        )
        cells = [
            name,
            f"{r['tokens_per_s']:,.0f}",
            f"{r['tokens_per_s'] / raw:.2f}" if raw else "-",
            f"{m:.1%}" if m else "-",
            f"{r['peak_gpu_bytes'] / 2**30:.1f}" if r.get("peak_gpu_bytes") else "-",
            ft.get("weights_dtype") or r.get("weights_dtype", ""),
            "grad ckpt on" if checkpointing else "",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "## Engines (one full fine-tuning recipe, same seed, 1 process each)",
        "",
        "| engine | status | losses | max abs diff vs DDP | agrees |",
        "|---|---|---|---:|---|",
    ]
    for name, r in results.get("engines", {}).items():
        losses = ", ".join(f"{x:.4f}" for x in r.get("losses", []))
        lines.append(
            f"| {name} | {r['status']} | {losses or r.get('reason') or (r.get('error') or '')[-100:]!r} | "
            f"{r.get('max_abs_diff_vs_ddp', '')} | {r.get('agrees', '')} |"
        )
    infer = results.get("infer") or {}
    lines += ["", "## Inference", ""]
    if infer.get("ftcli_tokens_per_s"):
        ratio = (
            infer["ftcli_tokens_per_s"] / infer["generate_tokens_per_s"]
            if infer.get("generate_tokens_per_s")
            else None
        )
        lines.append(
            f"`ftcli infer` {infer['ftcli_tokens_per_s']:,.0f} tokens/s vs model.generate() "
            f"{infer.get('generate_tokens_per_s') or 0:,.0f} tokens/s ({ratio:.2f}x), {infer['rows']} prompts, "
            f"batch {infer['batch']}, {infer['max_new_tokens']} new tokens, greedy."
        )
    else:
        lines.append(f"{infer.get('status')}: {str(infer.get('error'))[-300:]}")
    tasks = results.get("tasks") or {}
    if tasks:
        lines += [
            "",
            "## Tasks (GRPO, VLM)",
            "",
            "| run | status | steps | s | p50 step s | peak GiB | result |",
        ]
        lines.append("|---|---|---|---|---|---|---|")
        for name, r in tasks.items():
            peak = r.get("peak_memory_bytes")
            outcome = (
                f"held-out reward {r.get('eval_reward_before')} -> {r.get('eval_reward')}"
                if "eval_reward" in r
                else f"held-out preference accuracy {r.get('eval_accuracy')}"
                if "eval_accuracy" in r
                else f"eval loss {r.get('final_eval_loss'):.4f}"
                if r.get("final_eval_loss") is not None
                else str(r.get("error", ""))[-120:]
            )
            p50 = (r.get("step_time_s") or {}).get("p50") if isinstance(r.get("step_time_s"), dict) else None
            lines.append(
                f"| {name} | {r.get('status')} | {r.get('steps')} | {r.get('train_seconds')} | {p50} | "
                f"{peak / 2**30:.2f} | {outcome} |"
                if peak
                else f"| {name} | {r.get('status')} | {r.get('steps')} | {r.get('train_seconds')} | {p50} | - | "
                f"{outcome} |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--smoke", action="store_true", help="tiny sizes, CPU workers: check the plumbing anywhere"
    )
    parser.add_argument("--out", type=Path, default=HERE / "results", help="where the .md and .json go")
    parser.add_argument("--budget", type=float, default=480, help="seconds for the whole check")
    parser.add_argument("--suite-limit", type=float, default=300, help="seconds for the test suite")
    parser.add_argument("--no-suite", action="store_true", help="skip the test suite")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (models, runs, logs)")
    parser.add_argument("--workload", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--infer", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    size = SIZES["smoke" if args.smoke else "gpu"]
    if args.workload:
        return print("RESULT " + json.dumps(make_workload(args.workload, size)), flush=True)
    if args.variant:
        return print("RESULT " + json.dumps(run_variant(args.variant, args.work, size)), flush=True)
    if args.infer:
        return print("RESULT " + json.dumps(run_infer(args.work, size)), flush=True)

    check = Check(args)
    try:
        results = check.run()
    finally:
        if not args.keep:
            shutil.rmtree(check.work, ignore_errors=True)
    results["date"] = time.strftime("%Y-%m-%d")
    results["wall_s"] = round(time.perf_counter() - check.started, 1)
    env = results["stages"]["env"]
    name = "gpu-check-smoke" if args.smoke else f"gpu-check-{(env['gpu'] or 'cpu').split()[-1].lower()}"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{name}.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / f"{name}.md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
