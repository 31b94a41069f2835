"""A real uvicorn server for the tests that need sockets (429, disconnects, the browser)."""

import time

from quatrix.serve.main import running_server  # noqa: F401  (the tests' live server)


def slow_steps(scheduler, seconds: float) -> None:
    """Make each decode step take at least `seconds`, so tests can act mid-generation."""
    step = scheduler._step

    def slowed():
        time.sleep(seconds)
        step()

    scheduler._step = slowed
