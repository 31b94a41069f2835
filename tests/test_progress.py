import io

from quatrix.progress import Progress


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_a_log_file_gets_one_line_per_twentieth_of_the_run_not_redraws():
    stream = io.StringIO()
    progress = Progress("pretrain", 0, 1000, stream=stream)
    for step in range(1, 1001):
        progress.update(step, {"loss": 2.5, "tokens_per_s": 100.0, "source": "text"})
    progress.close()
    lines = stream.getvalue().splitlines()
    assert "\r" not in stream.getvalue() and 20 <= len(lines) <= 21
    assert lines[-1].startswith("pretrain: 1000/1000 steps loss 2.500 tok/s 100")


def test_a_terminal_gets_a_bar_and_other_ranks_nothing():
    terminal = Terminal()
    progress = Progress("sft", 0, 10, stream=terminal)
    progress.update(5, {"loss": 1.0})
    progress.close()
    assert "\r" in terminal.getvalue() and "sft" in terminal.getvalue()
    quiet = io.StringIO()
    silent = Progress("sft", 0, 10, enabled=False, stream=quiet)
    silent.update(10, {"loss": 1.0})
    assert quiet.getvalue() == ""
