"""A real uvicorn server for the tests that need sockets (429, disconnects, the browser)."""

import contextlib
import threading
import time


@contextlib.contextmanager
def running_server(app):
    """Serve `app` with uvicorn on a free loopback port in a thread; yield its base URL."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not (server.started and server.servers):
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def slow_steps(scheduler, seconds: float) -> None:
    """Make each decode step take at least `seconds`, so tests can act mid-generation."""
    step = scheduler._step

    def slowed():
        time.sleep(seconds)
        step()

    scheduler._step = slowed
