"""`quatrix serve`: an OpenAI-compatible HTTP API and a web chat page (FastAPI).

    POST /v1/chat/completions   messages -> assistant reply (the Quatrix chat format)
    POST /v1/completions        prompt -> continuation
    GET  /v1/models             the one model served
    GET  /health                liveness and load
    GET  /                      the web chat page (static/index.html)

Every request goes to one Scheduler, which decodes whatever is running in one batch. The
routes are plain module-level functions reading the server's state (`app.state.server`);
the request and response shapes live in quatrix.serve.protocol. Errors are OpenAI-shaped
({"error": {"message", "type", "param", "code"}}): 400 for a bad request (malformed JSON, a
field of the wrong type or out of range, a bad role, a prompt that does not fit the
context), 401 without the API key, 413 for an oversized body, 429 when the waiting queue is
full.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from importlib.resources import files

from fastapi import APIRouter, FastAPI, Request as HTTPRequest
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from pydantic import ValidationError

from quatrix.chat import END, REASONING_TAGS, check_messages, render
from quatrix.engine import Sampling
from quatrix.serve.protocol import (MAX_STOP, APIError, ChatBody, CompletionBody, ResponseShape, chat_messages,
                                    error_response, validation_message)
from quatrix.serve.scheduler import Delta, Done, Failed, QueueFull, Request, Scheduler
from quatrix.tokenizer import EOT

router = APIRouter()


@dataclass
class Server:
    """What the routes read from `app.state.server`."""

    scheduler: Scheduler
    model_name: str
    api_key: str | None = None
    max_body_bytes: int = 8 << 20
    max_tokens_default: int = 256
    created: int = field(default_factory=lambda: int(time.time()))

    @property
    def model(self):
        return self.scheduler.model

    @property
    def tokenizer(self):
        return self.scheduler.tokenizer


def create_app(scheduler: Scheduler, *, model_name: str, api_key: str | None = None,
               max_body_bytes: int = 8 << 20, max_tokens_default: int = 256) -> FastAPI:
    """The FastAPI app around a (not yet started) scheduler; its lifespan starts and stops it."""

    @asynccontextmanager
    async def lifespan(app):
        scheduler.start()
        try:
            yield
        finally:
            scheduler.stop()

    app = FastAPI(title="Quatrix", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.scheduler = scheduler
    app.state.server = Server(scheduler, model_name, api_key, max_body_bytes, max_tokens_default)
    app.add_exception_handler(APIError, lambda request, error: error_response(error))
    app.middleware("http")(guard)
    app.include_router(router)
    return app


def _server(http: HTTPRequest) -> Server:
    return http.app.state.server


async def guard(request: HTTPRequest, call_next):
    """The API key and the body-size limit, before a /v1/ route runs."""
    server = _server(request)
    if request.url.path.startswith("/v1/"):
        if server.api_key is not None:
            given = request.headers.get("authorization", "")
            if not secrets.compare_digest(given.encode(), f"Bearer {server.api_key}".encode()):
                return error_response(APIError(401, "missing or wrong API key (send 'Authorization: Bearer KEY')",
                                               kind="authentication_error"))
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > server.max_body_bytes:
            return error_response(APIError(413, f"request body of {length} bytes is over the limit of "
                                                f"{server.max_body_bytes} bytes"))
    return await call_next(request)


# ---------------------------------------------------------------------- routes
@router.post("/v1/chat/completions")
async def chat_completions(http: HTTPRequest):
    server = _server(http)
    body = await read_body(http, ChatBody)
    messages, media = chat_messages(body.messages, server.model)
    try:
        check_messages(messages)
        prompt, _ = render(messages, server.tokenizer, add_generation_prompt=True)
    except ValueError as e:
        raise APIError(400, str(e), param="messages") from None
    limit = budget(server, prompt, body.max_completion_tokens or body.max_tokens)
    request = Request(prompt, limit, sink=None, sampling=sampling(body), n=body.n, stop=stops(body),
                      seed=body.seed, media=media)
    return await run(server, request, body, "chat")


@router.post("/v1/completions")
async def completions(http: HTTPRequest):
    server = _server(http)
    body = await read_body(http, CompletionBody)
    prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
    if len(prompts) != 1:
        raise APIError(400, f"one prompt per request, got {len(prompts)}", param="prompt")
    prompt = server.tokenizer.encode(prompts[0])
    if not prompt:
        raise APIError(400, "the prompt is empty", param="prompt")
    limit = budget(server, prompt, body.max_tokens)
    request = Request(prompt, limit, sink=None, sampling=sampling(body), n=body.n, stop=stops(body), seed=body.seed)
    return await run(server, request, body, "text")


@router.get("/v1/models")
async def models(http: HTTPRequest):
    server = _server(http)
    return {"object": "list", "data": [{"id": server.model_name, "object": "model", "created": server.created,
                                        "owned_by": "quatrix"}]}


@router.get("/health")
async def health(http: HTTPRequest):
    server = _server(http)
    model = server.model
    return {"status": "ok", "model": server.model_name, "vision": model.vision is not None,
            "audio": model.audio is not None, "context": model.config.max_seq_len, **server.scheduler.load}


@router.get("/favicon.ico", include_in_schema=False)
async def favicon():
    return Response(status_code=204)


@router.get("/", response_class=HTMLResponse)
async def page():
    return HTMLResponse(files("quatrix.serve").joinpath("static/index.html").read_text())


# ---------------------------------------------------------------------- helpers of the routes
async def read_body(request: HTTPRequest, schema):
    """The JSON body checked against `schema`; a 400 naming the field otherwise."""
    raw = await request.body()
    limit = _server(request).max_body_bytes
    if len(raw) > limit:
        raise APIError(413, f"request body of {len(raw)} bytes is over the limit of {limit} bytes")
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise APIError(400, f"malformed JSON body: {e}") from None
    if not isinstance(data, dict):
        raise APIError(400, f"the body must be a JSON object, got {type(data).__name__}")
    try:
        return schema.model_validate(data)
    except ValidationError as e:
        message, param = validation_message(e)
        raise APIError(400, message, param=param) from None


def budget(server: Server, prompt: list[int], requested: int | None) -> int:
    """New tokens for the reply: as asked if the context has room, else the room (at most the default)."""
    context = server.model.config.max_seq_len
    room = context - len(prompt)
    if requested is not None:
        if len(prompt) + requested > context:
            raise APIError(400, f"the prompt has {len(prompt)} tokens and max_tokens is {requested}: "
                                f"{len(prompt) + requested} is more than the model's context of {context} tokens",
                           param="max_tokens")
        return requested
    if room < 1:
        raise APIError(400, f"the prompt has {len(prompt)} tokens, which leaves no room for a reply in the model's "
                            f"context of {context} tokens", param="messages")
    return min(room, server.max_tokens_default)


def stops(body) -> tuple[str, ...]:
    stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    if len(stop) > MAX_STOP or any(not s for s in stop):
        raise APIError(400, f"stop takes at most {MAX_STOP} non-empty strings", param="stop")
    return tuple(stop)


def sampling(body) -> Sampling:
    return Sampling(temperature=body.temperature, top_k=body.top_k, top_p=body.top_p)


async def run(server: Server, request: Request, body, kind: str):
    """Submit; then stream SSE chunks, or gather them into one response."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()
    request.sink = lambda event: loop.call_soon_threadsafe(queue.put_nowait, event)
    try:
        server.scheduler.submit(request)
    except QueueFull as e:
        raise APIError(429, str(e), kind="rate_limit_error", headers={"Retry-After": "1"}) from None
    except ValueError as e:
        raise APIError(400, str(e), param="n") from None
    rid = f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{uuid.uuid4().hex[:24]}"
    shape = ResponseShape(rid, kind, server.model_name)
    if body.stream:
        include_usage = bool((body.stream_options or {}).get("include_usage"))
        return StreamingResponse(_sse(queue, request, shape, include_usage), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    texts, reasons = [""] * request.n, [None] * request.n
    try:
        while True:
            event = await queue.get()
            if isinstance(event, Delta):
                texts[event.index] += event.text
                reasons[event.index] = event.finish_reason or reasons[event.index]
            elif isinstance(event, Failed):
                raise APIError(500, event.message, kind="server_error")
            elif isinstance(event, Done):
                return JSONResponse(shape.whole(texts, reasons, event))
    finally:
        request.cancel()  # a no-op when it finished; frees the rows if the client left


def scheduler_for(model, tokenizer, **kwargs) -> Scheduler:
    """A Scheduler whose replies end at <|end|> (chat) or <|endoftext|> (documents), and whose
    text leaves out role and media-slot tokens (the reasoning tags stay: they are content)."""
    hidden = [i for name, i in tokenizer.special.items() if name not in REASONING_TAGS]
    return Scheduler(model, tokenizer, stop_token_ids=[tokenizer.token_id(END), tokenizer.token_id(EOT)],
                     hidden_token_ids=hidden, **kwargs)


async def _sse(queue: asyncio.Queue, request: Request, shape: ResponseShape, include_usage: bool):
    """Server-sent events: `data: {chunk}` per delta, the usage chunk if asked, `data: [DONE]`.
    If the client goes away the generator is closed and the request cancelled, which frees
    its rows in the batch."""
    def event(data) -> str:
        return f"data: {json.dumps(data) if not isinstance(data, str) else data}\n\n"

    try:
        if shape.kind == "chat":
            for i in range(request.n):
                yield event(shape.chunk(i, "", None, first=True))
        while True:
            item = await queue.get()
            if isinstance(item, Delta):
                yield event(shape.chunk(item.index, item.text, item.finish_reason))
            elif isinstance(item, Failed):
                yield event({"error": {"message": item.message, "type": "server_error", "param": None,
                                       "code": 500}})
                break
            elif isinstance(item, Done):
                if include_usage:
                    yield event(shape.usage_chunk(item))
                break
        yield event("[DONE]")
    finally:
        request.cancel()
