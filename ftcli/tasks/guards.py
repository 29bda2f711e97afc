"""What keeps a run's work safe while it trains: stop cleanly on SIGTERM or Ctrl-C with a checkpoint to resume
from, and stop at a non-finite loss instead of training on garbage. (Checkpoints written atomically:
ftcli/upstream.py.)"""

from __future__ import annotations

import contextlib
import math
import signal
import sys
import threading

from ftcli.errors import UserError


class Stopped(UserError):
    """The run was asked to stop (SIGTERM or SIGINT); a checkpoint was written. Exit 143 / 130, as the plain signal
    would."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum


class Diverged(UserError):
    """The loss became NaN or infinite."""


def _stop_now(signum, frame):
    raise Stopped(
        f"stopped by {signal.Signals(signum).name} before any training step could finish; nothing to "
        "resume from yet",
        signum,
    )


@contextlib.contextmanager
def stop_on_signals():
    """For a run's whole lifetime (tokenizing, loading, saving): SIGTERM stops it at once as an interruption, exit
    143, recorded as such, where the default would kill it mid-word with summary.json still saying running.
    During the training loop the Guards callback turns SIGTERM and Ctrl-C into a checkpoint-and-stop instead."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)
    if previous is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _stop_now)
    try:
        yield
    finally:
        if previous is signal.SIG_DFL:
            signal.signal(signal.SIGTERM, previous)


def make_guards():
    from transformers import TrainerCallback

    class Guards(TrainerCallback):
        def __init__(self):
            self.signalled = None  # the signal number, once one arrived
            self.previous = {}

        def on_train_begin(self, args, state, control, **kw):
            # only where nobody else handles them (a caller's own handlers win over ftcli's defaults)
            ours = (
                (signal.SIGTERM, (signal.SIG_DFL, _stop_now)),
                (signal.SIGINT, (signal.default_int_handler,)),
            )
            for signum, defaults in ours:
                if signal.getsignal(signum) in defaults:
                    self.previous[signum] = signal.signal(signum, self._on_signal)

        def _on_signal(self, signum, frame):
            self.signalled = signum  # acted on at the end of the current step
            if signum == signal.SIGINT:  # a second Ctrl-C aborts at once, without the checkpoint
                signal.signal(signal.SIGINT, self.previous.pop(signal.SIGINT))
                print(
                    "\nstopping after this step with a checkpoint (Ctrl-C again to abort now)",
                    file=sys.stderr,
                )

        def on_step_end(self, args, state, control, **kw):
            if self._anyone_signalled(args):
                control.should_save = True
                control.should_training_stop = True

        def _anyone_signalled(self, args) -> int | None:
            """Workers must stop at the same step (a checkpoint is a collective save), even when the signal
            reaches them a step apart: agree on the flag every step (one tiny all-reduce)."""
            import torch
            import torch.distributed as dist

            if args.world_size > 1 and dist.is_available() and dist.is_initialized():
                flag = torch.tensor([self.signalled or 0], device=args.device)
                dist.all_reduce(flag, op=dist.ReduceOp.MAX)
                self.signalled = self.signalled or int(flag.item()) or None
            return self.signalled

        def on_log(self, args, state, control, logs=None, **kw):
            loss = (logs or {}).get("loss")
            if loss is not None and not math.isfinite(loss):
                raise Diverged(
                    f"the training loss became {loss} by step {state.global_step}; lower "
                    "training.learning_rate or check the data (earlier checkpoints are kept)"
                )

        def on_train_end(self, args, state, control, **kw):
            for signum, handler in self.previous.items():
                signal.signal(signum, handler)
            if self.signalled:
                name = signal.Signals(self.signalled).name
                raise Stopped(
                    f"stopped by {name} at step {state.global_step}; a checkpoint was saved, continue "
                    "with --resume",
                    self.signalled,
                )

    return Guards()
