"""Progress of a long loop (training steps, synthesized clips, collected episodes): a tqdm bar
on a terminal; elsewhere (a log file, a pipe, CI) one plain line every ~10 seconds or 5% of
the way, so a redirected log stays short and readable instead of holding thousands of
carriage-return redraws. `QUATRIX_LOG=quiet` silences it, `QUATRIX_LOG=json` makes each
line a JSON object (for scripts); the training stages' `--quiet` and `--log-format` set it."""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

LINE_EVERY_S = 10.0
LINE_EVERY_FRACTION = 0.05
LOG_FORMATS = ("text", "json")


def log_mode() -> str:
    """"text", "json" or "quiet", from the QUATRIX_LOG environment variable (child processes inherit it)."""
    mode = os.environ.get("QUATRIX_LOG", "text")
    return mode if mode in (*LOG_FORMATS, "quiet") else "text"


class Progress:
    """progress.update(done, record) after each unit of work; progress.close() at the end."""

    def __init__(self, name: str, start: int, total: int, enabled: bool = True, stream=None, unit: str = "steps",
                 mode: str | None = None):
        self.name, self.start, self.total, self.unit = name, start, total, unit
        self.stream = stream or sys.stderr
        self.mode = mode or log_mode()
        self.enabled = enabled and self.mode != "quiet"
        self.bar = None
        self.t0 = self.last_time = time.perf_counter()
        self.last_done = start
        if self.enabled and self.mode == "text" and _is_terminal(self.stream):
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=start, desc=name, file=self.stream, leave=False)

    def update(self, done: int, record: dict[str, Any] | None = None) -> None:
        if not self.enabled:
            return
        shown = _shown(record or {})
        if self.bar is not None:
            self.bar.update(done - self.bar.n)
            if shown:
                self.bar.set_postfix(shown, refresh=False)
            return
        now = time.perf_counter()
        every = max(1, int(self.total * LINE_EVERY_FRACTION))
        if done == self.total or now - self.last_time >= LINE_EVERY_S or done - self.last_done >= every:
            self._line(done, now, shown)
            self.last_time, self.last_done = now, done

    def _line(self, done: int, now: float, shown: dict[str, str]) -> None:
        rate = (done - self.start) / max(now - self.t0, 1e-9)
        left = (self.total - done) / rate if rate > 0 else 0.0
        if self.mode == "json":
            line = json.dumps({"progress": self.name, "done": done, "total": self.total, **shown,
                               "elapsed_s": round(now - self.t0, 1), "left_s": round(left, 1)})
        else:
            fields = "".join(f" {k} {v}" for k, v in shown.items())
            line = (f"{self.name}: {done}/{self.total} {self.unit}{fields} ({_clock(now - self.t0)} elapsed, "
                    f"{_clock(left)} left)")
        print(line, file=self.stream, flush=True)

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
