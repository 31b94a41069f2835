"""Progress of a training loop: a tqdm bar on a terminal; elsewhere (a log file, a pipe, CI)
one plain line every ~10 seconds or 5% of the run, so a redirected log stays short and
readable instead of holding thousands of carriage-return redraws."""

from __future__ import annotations

import sys
import time
from typing import Any

LINE_EVERY_S = 10.0
LINE_EVERY_FRACTION = 0.05


class Progress:
    def __init__(self, stage: str, start: int, total: int, enabled: bool = True, stream=None):
        self.stage, self.start, self.total = stage, start, total
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.bar = None
        self.t0 = self.last_time = time.perf_counter()
        self.last_step = start
        if enabled and _is_terminal(self.stream):
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=start, desc=stage, file=self.stream)

    def update(self, step: int, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        shown = _shown(record)
        if self.bar is not None:
            self.bar.update(step - self.bar.n)
            self.bar.set_postfix(shown, refresh=False)
            return
        now = time.perf_counter()
        every = max(1, int(self.total * LINE_EVERY_FRACTION))
        if step == self.total or now - self.last_time >= LINE_EVERY_S or step - self.last_step >= every:
            rate = (step - self.start) / max(now - self.t0, 1e-9)
            left = (self.total - step) / rate if rate > 0 else 0.0
            fields = " ".join(f"{k} {v}" for k, v in shown.items())
            print(f"{self.stage}: step {step}/{self.total} {fields} ({_clock(now - self.t0)} elapsed, "
                  f"{_clock(left)} left)", file=self.stream, flush=True)
            self.last_time, self.last_step = now, step

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _is_terminal(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _shown(record: dict[str, Any]) -> dict[str, str]:
    """The few numbers worth a glance: loss (or reward and accuracy), validation, tokens/s."""
    shown = {}
    for key, label, fmt in (("loss", "loss", ".3f"), ("reward", "reward", ".2f"), ("accuracy", "acc", ".2f"),
                            ("val_loss", "val", ".3f"), ("eval_accuracy", "eval", ".2f"),
                            ("tokens_per_s", "tok/s", ".0f")):
        value = record.get(key)
        if isinstance(value, (int, float)):
            shown[label] = format(value, fmt)
    return shown


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else \
        f"{seconds // 60}:{seconds % 60:02d}"
