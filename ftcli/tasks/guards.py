"""Trainer callbacks that keep a run's work safe: stop cleanly on SIGTERM with a checkpoint to resume from, and
stop at a non-finite loss instead of training on garbage."""

from __future__ import annotations

import math
import signal

from ftcli.errors import UserError


class Stopped(UserError):
    """The run was asked to stop (SIGTERM); a checkpoint was written. Exit 143, like a plain SIGTERM."""

    exit_code = 128 + signal.SIGTERM


class Diverged(UserError):
    """The loss became NaN or infinite."""


def make_guards():
    from transformers import TrainerCallback

    class Guards(TrainerCallback):
        def __init__(self):
            self.signalled = False
            self.previous = None

        def on_train_begin(self, args, state, control, **kw):
            if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:  # only where nobody else handles it
                self.previous = signal.signal(signal.SIGTERM, self._on_sigterm)

        def _on_sigterm(self, signum, frame):
            self.signalled = True  # acted on at the end of the current step

        def on_step_end(self, args, state, control, **kw):
            if self.signalled:
                control.should_save = True
                control.should_training_stop = True

        def on_log(self, args, state, control, logs=None, **kw):
            loss = (logs or {}).get("loss")
            if loss is not None and not math.isfinite(loss):
                raise Diverged(f"the training loss became {loss} by step {state.global_step}; lower "
                               "training.learning_rate or check the data (earlier checkpoints are kept)")  # fmt: skip

        def on_train_end(self, args, state, control, **kw):
            if self.previous is not None:
                signal.signal(signal.SIGTERM, self.previous)
            if self.signalled:
                raise Stopped(f"stopped by SIGTERM at step {state.global_step}; a checkpoint was saved, continue "
                              "with --resume")  # fmt: skip

    return Guards()
