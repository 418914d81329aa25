"""Progress display: a tqdm bar on a terminal, plain log lines otherwise (or with ``--quiet``).

One :class:`Progress` per run::

    progress = Progress(total_steps, initial=step, quiet=args.quiet, enabled=info.is_main)
    progress.set_epoch(epoch, epochs)
    progress.update(ce=1.23, acc=0.61, lat=72.4, lam=0.5)   # one step done
    progress.log("epoch 1: ...")                              # a line that does not break the bar
    progress.close()

``quiet``: no bar; a one-line summary every ``log_every`` steps and every :meth:`log` line.
``enabled=False`` (ranks other than 0): nothing at all. TensorBoard scalars go through
:func:`tensorboard_writer` (rank 0 only).
"""

from __future__ import annotations

import sys
import time


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


class Progress:
    def __init__(self, total: int, *, initial: int = 0, quiet: bool = False, enabled: bool = True,
                 log_every: int = 50, stream=None):
        self.total = total
        self.step = initial
        self.quiet = quiet
        self.enabled = enabled
        self.log_every = max(1, log_every)
        self.stream = stream or sys.stderr
        self.epoch_text = ""
        self.start = time.monotonic()
        self._bar = None
        if enabled and not quiet and getattr(self.stream, "isatty", lambda: False)():
            from tqdm import tqdm

            self._bar = tqdm(total=total, initial=initial, file=self.stream, dynamic_ncols=True, leave=True,
                             bar_format="{desc} {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}] {postfix}")
        elif enabled and not quiet:
            self.quiet = True  # not a terminal: plain lines

    def set_epoch(self, epoch: int, epochs: int, note: str = "") -> None:
        """Show ``epoch`` (0-based) of ``epochs`` (plus a short note, e.g. 'warm-up')."""
        self.epoch_text = f"epoch {epoch + 1}/{epochs}" + (f" {note}" if note else "")
        if self._bar is not None:
            self._bar.set_description_str(self.epoch_text)

    def update(self, n: int = 1, **metrics) -> None:
        """Advance by ``n`` steps and show ``metrics`` (name=value)."""
        self.step += n
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.set_postfix_str(" ".join(f"{k}={_fmt(v)}" for k, v in metrics.items()), refresh=False)
            self._bar.update(n)
        elif self.step % self.log_every == 0 or self.step == self.total:
            elapsed = time.monotonic() - self.start
            text = " ".join(f"{k}={_fmt(v)}" for k, v in metrics.items())
            print(f"[{self.epoch_text}] step {self.step}/{self.total} {text} ({elapsed:.0f}s)", file=self.stream,
                  flush=True)

    def log(self, message: str) -> None:
        """Print a line (above the bar when there is one)."""
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.write(message, file=self.stream)
        else:
            print(message, file=self.stream, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def tensorboard_writer(log_dir, purge_step: int | None = None):
    """A TensorBoard ``SummaryWriter`` that does not import TensorFlow.

    With TensorFlow installed (the tflite backend needs it), ``torch.utils.tensorboard`` would
    import it to write event files (tens of seconds, a GB of memory per process). TensorBoard's
    own ``tensorboard.compat.notf`` marker makes it use its built-in file writer instead.
    ``purge_step``: a resumed run drops the events the killed run wrote after its checkpoint.
    """
    import types

    if "tensorflow" not in sys.modules:
        sys.modules.setdefault("tensorboard.compat.notf", types.ModuleType("tensorboard.compat.notf"))
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(log_dir=str(log_dir), purge_step=purge_step)
