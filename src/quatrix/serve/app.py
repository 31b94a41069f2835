"""`quatrix serve`: an OpenAI-compatible HTTP API and a web chat page (FastAPI).

    POST /v1/chat/completions   messages -> assistant reply (the Quatrix chat format)
    POST /v1/completions        prompt(s), text or token ids -> continuation (echo, logprobs)
    POST /tokenize, /detokenize text or messages <-> token ids (vLLM's shapes)
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

Log-probabilities (`logprobs` on completions, `logprobs`/`top_logprobs` on chat) are those of
the model's own distribution, computed in fp32 before temperature, top-k or top-p, as vLLM
and OpenAI report them; with `echo` the prompt's tokens are scored too (the first has none).
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
from quatrix.serve.protocol import (MAX_STOP, APIError, ChatBody, CompletionBody, DetokenizeBody, ResponseShape,
                                    TokenizeBody, body_of, chat_messages, error_response, openapi,
                                    validation_message)
from quatrix.serve.scheduler import Delta, Done, Echo, Failed, QueueFull, Request, Scheduler
from quatrix.tokenizer import EOT

router = APIRouter()
TOKEN_ROUTES = ("/tokenize", "/detokenize")  # guarded like /v1/


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
    app.openapi = lambda: openapi(app)
    return app


def _server(http: HTTPRequest) -> Server:
    return http.app.state.server


async def guard(request: HTTPRequest, call_next):
    """The API key and the body-size limit, before a /v1/ route runs."""
    server = _server(request)
    if request.url.path.startswith("/v1/") or request.url.path in TOKEN_ROUTES:
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
@router.post("/v1/chat/completions", openapi_extra=body_of(ChatBody))
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
    if body.top_logprobs is not None and not body.logprobs:
        raise APIError(400, "top_logprobs needs logprobs: true", param="top_logprobs")
    request = Request(prompt, limit, sink=None, sampling=sampling(body), n=body.n, stop=stops(body),
                      seed=body.seed, media=media, logprobs=(body.top_logprobs or 0) if body.logprobs else None)
    return await run(server, [request], body, "chat")


@router.post("/v1/completions", openapi_extra=body_of(CompletionBody))
async def completions(http: HTTPRequest):
    server = _server(http)
    body = await read_body(http, CompletionBody)
    prompts = prompt_batch(server, body.prompt)
    if len(prompts) * body.n > server.scheduler.max_batch:
        raise APIError(400, f"{len(prompts)} prompts x n={body.n} is more than the server decodes at once "
                            f"(max_batch={server.scheduler.max_batch})", param="prompt")
    if body.max_tokens == 0 and not body.echo:
        raise APIError(400, "max_tokens 0 generates nothing: it needs echo: true (to score the prompt)",
                       param="max_tokens")
    requests = [Request(prompt, budget(server, prompt, body.max_tokens), sink=None, sampling=sampling(body), n=body.n,
                        stop=stops(body), seed=None if body.seed is None else body.seed + i, logprobs=body.logprobs,
                        echo=body.echo)
                for i, prompt in enumerate(prompts)]
    return await run(server, requests, body, "text")


@router.post("/tokenize", openapi_extra=body_of(TokenizeBody))
async def tokenize(http: HTTPRequest):
    server = _server(http)
    body = await read_body(http, TokenizeBody)
    if (body.prompt is None) == (body.messages is None):
        raise APIError(400, "give exactly one of prompt (text) and messages (a conversation)", param="prompt")
    if body.prompt is not None:
        tokens = server.tokenizer.encode(body.prompt)
    else:
        messages, _ = chat_messages(body.messages, server.model)
        try:
            check_messages(messages)
            tokens, _ = render(messages, server.tokenizer, add_generation_prompt=body.add_generation_prompt)
        except ValueError as e:
            raise APIError(400, str(e), param="messages") from None
    return {"count": len(tokens), "max_model_len": server.model.config.max_seq_len, "tokens": tokens}


@router.post("/detokenize", openapi_extra=body_of(DetokenizeBody))
async def detokenize(http: HTTPRequest):
    server = _server(http)
    body = await read_body(http, DetokenizeBody)
    check_ids(server, body.tokens, "tokens")
    return {"prompt": server.tokenizer.decode(body.tokens)}


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


def prompt_batch(server: Server, prompt) -> list[list[int]]:
    """A completions `prompt` (text, token ids, or a list of either) as token-id prompts."""
    if isinstance(prompt, str) or (prompt and isinstance(prompt[0], int)):
        prompt = [prompt]
    if not prompt:
        raise APIError(400, "prompt is an empty batch", param="prompt")
    batch = []
    for i, item in enumerate(prompt):
        ids = server.tokenizer.encode(item) if isinstance(item, str) else item
        where = "prompt" if len(prompt) == 1 else f"prompt.{i}"
        if not ids:
            raise APIError(400, f"{where} is empty", param=where)
        check_ids(server, ids, where)
        batch.append(ids)
    return batch


def check_ids(server: Server, ids: list[int], param: str) -> None:
    vocab = server.model.config.vocab_size
    bad = next((t for t in ids if not 0 <= t < vocab), None)
    if bad is not None:
        raise APIError(400, f"{param} holds token id {bad}, outside the vocabulary [0, {vocab})", param=param)


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


async def run(server: Server, requests: list[Request], body, kind: str):
    """Submit every prompt's request; then stream SSE chunks, or gather them into one
    response. Choice `p * n + i` is choice i of prompt p."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()
    for p, request in enumerate(requests):
        request.sink = lambda event, p=p: loop.call_soon_threadsafe(queue.put_nowait, (p, event))
    try:
        for request in requests:
            server.scheduler.submit(request)
    except QueueFull as e:
        for request in requests:
            request.cancel()
        raise APIError(429, str(e), kind="rate_limit_error", headers={"Retry-After": "1"}) from None
    except ValueError as e:
        raise APIError(400, str(e), param="n") from None
    rid = f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{uuid.uuid4().hex[:24]}"
    logprobs = requests[0].logprobs
    shape = ResponseShape(rid, kind, server.model_name, server.tokenizer, logprobs)
    if body.stream:
        include_usage = bool((body.stream_options or {}).get("include_usage"))
        return StreamingResponse(_sse(queue, requests, shape, include_usage), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    n = requests[0].n
    choices = len(requests) * n
    texts, reasons = [""] * choices, [None] * choices
    entries = [[] for _ in range(choices)] if logprobs is not None else None
    done = Done(0, 0)
    finished = 0
    try:
        while finished < len(requests):
            p, event = await queue.get()
            if isinstance(event, Echo):
                for c in range(p * n, (p + 1) * n):
                    texts[c] = server.tokenizer.decode([e.token for e in event.entries])
                    if entries is not None:
                        entries[c] += event.entries
            elif isinstance(event, Delta):
                c = p * n + event.index
                texts[c] += event.text
                reasons[c] = event.finish_reason or reasons[c]
                if entries is not None:
                    entries[c] += event.logprobs
            elif isinstance(event, Failed):
                raise APIError(500, event.message, kind="server_error")
            elif isinstance(event, Done):
                done = Done(done.prompt_tokens + event.prompt_tokens, done.completion_tokens + event.completion_tokens)
                if requests[p].max_tokens == 0:  # scored only: nothing generated, the length was 0
                    for c in range(p * n, (p + 1) * n):
                        reasons[c] = "length"
                finished += 1
        return JSONResponse(shape.whole(texts, reasons, done, entries))
    finally:
        for request in requests:
            request.cancel()  # a no-op when it finished; frees the rows if the client left


def scheduler_for(model, tokenizer, **kwargs) -> Scheduler:
    """A Scheduler whose replies end at <|end|> (chat) or <|endoftext|> (documents), and whose
    text leaves out role and media-slot tokens (the reasoning tags stay: they are content)."""
    hidden = [i for name, i in tokenizer.special.items() if name not in REASONING_TAGS]
    return Scheduler(model, tokenizer, stop_token_ids=[tokenizer.token_id(END), tokenizer.token_id(EOT)],
                     hidden_token_ids=hidden, **kwargs)


async def _sse(queue: asyncio.Queue, requests: list[Request], shape: ResponseShape, include_usage: bool):
    """Server-sent events: `data: {chunk}` per delta (an echoed prompt first), the usage chunk
    if asked, `data: [DONE]`. If the client goes away the generator is closed and the
    requests cancelled, which frees their rows in the batch."""
    def event(data) -> str:
        return f"data: {json.dumps(data) if not isinstance(data, str) else data}\n\n"

    n = requests[0].n
    offsets = [0] * (len(requests) * n)  # characters sent per choice: text_offset of the next token
    done, finished = Done(0, 0), 0
    try:
        if shape.kind == "chat":
            for i in range(len(requests) * n):
                yield event(shape.chunk(i, "", None, first=True))
        while finished < len(requests):
            p, item = await queue.get()
            if isinstance(item, Echo):
                text = shape.tokenizer.decode([e.token for e in item.entries])
                for c in range(p * n, (p + 1) * n):
                    yield event(shape.chunk(c, text, None, entries=item.entries, offset=0))
                    offsets[c] = len(text)
            elif isinstance(item, Delta):
                c = p * n + item.index
                yield event(shape.chunk(c, item.text, item.finish_reason, entries=item.logprobs, offset=offsets[c]))
                offsets[c] += sum(len(shape.token_text(e.token)) for e in item.logprobs) if item.logprobs else len(item.text)
            elif isinstance(item, Failed):
                yield event({"error": {"message": item.message, "type": "server_error", "param": None,
                                       "code": 500}})
                break
            elif isinstance(item, Done):
                done = Done(done.prompt_tokens + item.prompt_tokens, done.completion_tokens + item.completion_tokens)
                if requests[p].max_tokens == 0:
                    for c in range(p * n, (p + 1) * n):
                        yield event(shape.chunk(c, "", "length"))
                finished += 1
        else:
            if include_usage:
                yield event(shape.usage_chunk(done))
        yield event("[DONE]")
    finally:
        for request in requests:
            request.cancel()
