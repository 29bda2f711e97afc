"""Multi-process and multi-node runs are accelerate's job. With more than one process, `ftcli train|align` opens
the run dir and freezes the resolved recipe there, writes an accelerate config next to it, and re-executes itself
as `accelerate launch -m ftcli.worker COMMAND RUN_DIR`: every worker runs the same task on that frozen recipe
(workers never re-parse the command line). The main worker prepares the data first and alone writes outputs."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import yaml

from ftcli import redact
from ftcli.errors import RecipeError, UserError
from ftcli.recipe.schema import Recipe

WORKER_ENV = "FTCLI_WORKER"  # set in workers: the run dir is already open, the recipe frozen
CONFIG_NAME = "accelerate_config.yaml"


def in_worker() -> bool:
    return os.environ.get(WORKER_ENV) == "1"


def is_main_process() -> bool:
    return os.environ.get("RANK", "0") == "0"


def processes_per_machine(recipe: Recipe) -> int:
    """Worker processes on this machine: one per GPU, never more than there are (each takes one whole GPU);
    any number of CPU workers with launch.device: cpu."""
    from ftcli.models.hardware import device_of

    n = recipe.launch.num_processes
    device = device_of(recipe)
    if device != "cuda":
        if n == "auto" or n == 1:
            return 1
        if device == "mps":
            raise RecipeError(
                "several processes need one CUDA GPU each, or CPU workers (launch.device: cpu); MPS "
                "runs one process",
                key="launch.num_processes",
            )
        return n
    import torch

    gpus = torch.cuda.device_count()
    if n == "auto":
        return gpus
    if n > gpus:
        raise RecipeError(
            f"{n} processes, but this machine has {gpus} GPU{'s' if gpus != 1 else ''} (one each); set "
            f"launch.num_processes: {gpus} (or auto), or launch.device: cpu to run CPU workers",
            key="launch.num_processes",
        )
    return n


def wants_workers(recipe: Recipe) -> bool:
    return processes_per_machine(recipe) * recipe.launch.num_machines > 1


def check_engine(recipe: Recipe, config: dict) -> None:
    """The workers can run the engine their accelerate `config` asks for: refused before any run dir or worker
    exists."""
    from ftcli.models.hardware import device_of

    own = recipe.launch.config_file
    key = "launch.config_file" if own else "launch.strategy"
    engine = config.get("distributed_type")
    if engine == "DEEPSPEED" and not installed("deepspeed"):
        raise RecipeError(
            f"{'this accelerate config asks for DeepSpeed, which' if own else 'DeepSpeed'} is not installed; pip "
            f"install 'ftcli[deepspeed]'{'' if own else ', or use launch.strategy: ddp or fsdp'}",
            key=key,
        )
    if engine == "FSDP" and device_of(recipe) == "cpu":
        raise RecipeError(
            "accelerate runs FSDP on GPUs only (CPU workers would silently run plain DDP); use launch.strategy: "
            "ddp or deepspeed for CPU workers",
            key=key,
        )


def installed(package: str) -> bool:
    from importlib.util import find_spec

    return find_spec(package) is not None


def accelerate_config(recipe: Recipe, precision: str) -> dict:
    """The accelerate config file for this recipe, or the user's own (`launch.config_file`)."""
    from ftcli.models.hardware import device_of

    launch = recipe.launch
    if launch.config_file:
        return yaml.safe_load(Path(launch.config_file).read_text())
    config = {
        "compute_environment": "LOCAL_MACHINE",
        "distributed_type": {"ddp": "MULTI_GPU", "deepspeed": "DEEPSPEED", "fsdp": "FSDP"}[launch.strategy],
        "num_machines": launch.num_machines,
        "machine_rank": launch.machine_rank,
        "num_processes": processes_per_machine(recipe)
        * launch.num_machines,  # accelerate counts all machines
        "main_process_port": rendezvous_port(launch),
        "mixed_precision": precision if precision in ("bf16", "fp16") else "no",
        "use_cpu": device_of(recipe) == "cpu",
        "rdzv_backend": "static",
        "same_network": True,
        "main_training_function": "main",
        "debug": False,
    }
    if launch.main_process_ip:
        config["main_process_ip"] = launch.main_process_ip
    if launch.strategy == "deepspeed":
        ds = launch.deepspeed
        config["deepspeed_config"] = (
            {"deepspeed_config_file": ds.config_file}
            if ds.config_file
            else {
                "zero_stage": ds.zero_stage,
                "offload_optimizer_device": "cpu" if ds.offload_optimizer else "none",
                "offload_param_device": "cpu" if ds.offload_params else "none",
                "zero3_init_flag": ds.zero_stage == 3,
                "zero3_save_16bit_model": ds.zero_stage == 3,  # a loadable consolidated model at the end
                "gradient_accumulation_steps": recipe.training.grad_accum,
                "gradient_clipping": recipe.training.max_grad_norm,
            }
        )
    elif launch.strategy == "fsdp":
        fsdp = launch.fsdp
        config["fsdp_config"] = {
            "fsdp_version": 1,
            "fsdp_sharding_strategy": fsdp.sharding_strategy,
            "fsdp_auto_wrap_policy": fsdp.auto_wrap_policy,
            "fsdp_state_dict_type": fsdp.state_dict_type,
            "fsdp_offload_params": fsdp.cpu_offload,
            "fsdp_use_orig_params": True,  # needed with frozen (PEFT) parameters
            "fsdp_sync_module_states": True,
            "fsdp_cpu_ram_efficient_loading": True,
        }
    return config


def rendezvous_port(launch) -> int:
    """`auto`: a free port on one machine, so two runs on a node (or two test workers) do not both take torchrun's
    29500; the nodes of a multi-node run must agree on one, so there it is 29500 unless the recipe names another."""
    import socket

    if launch.main_process_port != "auto":
        return launch.main_process_port
    if launch.num_machines > 1:
        return 29500
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def launch_command(
    command: str, run_dir: Path, recipe_file: Path, config_path: Path, resume: bool
) -> list[str]:
    worker = ["-m", "ftcli.worker", command, str(run_dir), str(recipe_file)] + (
        ["--resume"] if resume else []
    )
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config_path), *worker]


def dry_run(recipe: Recipe, command: str, config: dict, resume: bool) -> dict:
    """What would run, without running it or touching the output dir."""
    from ftcli.run_dir import RESOLVED, run_dir_of

    out = run_dir_of(recipe)
    return {
        "config": config,
        "command": launch_command(command, out, out / RESOLVED, out / CONFIG_NAME, resume),
    }


def run_workers(recipe: Recipe, command: str, config: dict, overwrite: bool, resume: bool) -> dict:
    """Open and lock the run dir here, then hand the run to accelerate-launched workers and wait for them. Ctrl-C
    and SIGTERM reach every worker; a worker's failure is this command's failure; summary.json ends with the truth
    even when the workers could not write it."""
    import tempfile

    from ftcli import report
    from ftcli.run_dir import freeze_recipe, open_run_dir, private_recipe, run_dir_of

    lock = None
    if recipe.launch.machine_rank == 0:  # the main node owns the run dir
        out, lock = open_run_dir(recipe, overwrite=overwrite, resume=resume)
        freeze_recipe(recipe, out)  # the record, secrets masked
        launch_files = out
    else:  # other nodes never clear or write it (it may be shared); their launch files stay local
        out = run_dir_of(recipe)
        out.mkdir(parents=True, exist_ok=True)
        launch_files = Path(tempfile.mkdtemp(prefix="ftcli-node-"))
    recipe_file = private_recipe(recipe)  # what the workers run, secrets included, readable by this user only
    try:
        config_path = launch_files / CONFIG_NAME
        config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        cmd = launch_command(command, out, recipe_file, config_path, resume)
        report.phase(f"launching: {shlex.join(cmd)}")
        return _wait_for_workers(cmd, out)
    finally:
        shutil.rmtree(recipe_file.parent, ignore_errors=True)
        if lock is not None:
            lock.release()


def _wait_for_workers(cmd: list[str], out: Path) -> dict:
    from ftcli import report

    # Workers' stdout goes to our stderr: stdout is for this command's result only.
    proc = subprocess.Popen(
        cmd,
        stdout=sys.stderr,
        stderr=subprocess.PIPE,
        text=True,
        bufsize=1,
        env={**os.environ, WORKER_ENV: "1"},
        start_new_session=True,
    )
    stopped = []

    def stop(signum, _frame):
        stopped.append(signum)
        os.killpg(proc.pid, signal.SIGTERM)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        _relay_stderr(proc.stderr, verbose=os.environ.get("FTCLI_DEBUG") == "1")
        code = proc.wait()
    except KeyboardInterrupt:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        _settle(out, "interrupted", exit_code=130)
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
    if stopped:
        _settle(out, "interrupted", exit_code=128 + stopped[0])
        raise WorkerFailed("stopped by SIGTERM; every worker was stopped", 128 + stopped[0])
    summary = (
        _settle(
            out,
            "crashed",
            error=f"the workers exited with code {code} before recording a result",
            exit_code=code or 1,
        )
        if code != 0
        else _read_summary(out)
    )
    if code != 0 and summary.get("status") == "completed":  # the main worker finished and wrote everything
        report.console.print(
            f"[yellow]warning: a worker exited with code {code} after the run completed; "
            "the outputs are complete[/]"
        )
        return summary
    if code != 0:
        error = summary.get("error") or "see the worker messages above"
        raise WorkerFailed(f"the workers failed: {error}", summary.get("exit_code", 1))
    return summary


def _read_summary(out: Path) -> dict:
    try:
        return json.loads((out / "summary.json").read_text())
    except (OSError, ValueError):
        return {}


def _settle(out: Path, status: str, **fields) -> dict:
    """Workers killed by a signal, or dead before recording anything, cannot say so themselves: a summary that
    is missing or still says running gets `status` (an interrupted or crashed run)."""
    from ftcli import report

    summary = _read_summary(out)
    if summary.get("status") in (None, "running"):
        summary = {**summary, "status": status, **fields}
        report.write_summary(out / "summary.json", summary)
    return summary


ELASTIC_NOISE = ("torch/distributed/elastic/", "torch.distributed.elastic", "torch/distributed/run.py")


def _relay_stderr(stream, verbose: bool) -> None:
    """Pass the workers' stderr through, minus torchrun's own reports (a launcher traceback, a failure table,
    its signal logs): the worker has already said what went wrong in one line. --debug keeps everything."""
    block: list[str] = []
    for line in stream:
        line = redact.mask(line)
        if verbose:
            sys.stderr.write(line)
        elif block or line.startswith("Traceback (most recent call last):"):
            block.append(line)
            if line.startswith("=" * 20) and len([x for x in block if x.startswith("=" * 20)]) == 2:
                if not _from_launcher(block):
                    sys.stderr.writelines(block)
                block = []
        elif not any(noise in line for noise in ELASTIC_NOISE):
            sys.stderr.write(line)
    if not _from_launcher(block):
        sys.stderr.writelines(block)


def _from_launcher(block: list[str]) -> bool:
    return any(noise in line for line in block for noise in (*ELASTIC_NOISE, "accelerate/commands/launch.py"))


class WorkerFailed(UserError):
    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code
