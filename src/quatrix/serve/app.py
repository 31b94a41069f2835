"""`quatrix serve`: an OpenAI-compatible HTTP API and a web chat page (FastAPI).

    POST /v1/chat/completions   messages -> assistant reply (the Quatrix chat format)
    POST /v1/completions        prompt -> continuation
    GET  /v1/models             the one model served
    GET  /health                liveness and load
    GET  /                      the web chat page (static/index.html)

Every request goes to one Scheduler, which decodes whatever is running in one batch.
Errors are OpenAI-shaped ({"error": {"message", "type", "param", "code"}}): 400 for a bad
request (malformed JSON, a field of the wrong type or out of range, a bad role, a prompt
that does not fit the context), 401 without the API key, 413 for an oversized body, 429
when the waiting queue is full.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import json
import secrets
import time
import uuid
from importlib.resources import files
from typing import Annotated, Any, Literal

from fastapi import FastAPI, Request as HTTPRequest
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from quatrix.chat import END, REASONING_TAGS, check_messages, render
from quatrix.engine import Sampling
from quatrix.media import image_to_tensor, model_inputs, modality, read_audio
from quatrix.serve.scheduler import Delta, Done, Failed, QueueFull, Request, Scheduler
from quatrix.tokenizer import EOT

MAX_STOP = 4


# ---------------------------------------------------------------------- request bodies
class _Body(BaseModel):
    """Fields as OpenAI's; unknown ones are ignored (clients send many), known ones are
    checked strictly (a string is not a number)."""

    model_config = ConfigDict(extra="ignore", strict=True)

    model: str | None = None
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] = 1.0
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] = 1.0
    top_k: Annotated[int, Field(ge=0)] = 0
    n: Annotated[int, Field(ge=1, le=16)] = 1
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False
    stream_options: dict[str, bool] | None = None


class ImageURL(BaseModel):
    url: str


class InputAudio(BaseModel):
    data: str  # base64 of the file's bytes
    format: str = "wav"


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)

    type: Literal["text", "image_url", "input_audio"]
    text: str | None = None
    image_url: ImageURL | None = None
    input_audio: InputAudio | None = None


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)

    role: str
    content: str | list[ContentPart]


class ChatBody(_Body):
    messages: Annotated[list[Message], Field(min_length=1)]
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None


class CompletionBody(_Body):
    prompt: str | list[str]


class APIError(Exception):
    def __init__(self, status: int, message: str, *, kind: str = "invalid_request_error", param: str | None = None,
                 headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.kind, self.param, self.headers = status, message, kind, param, headers


def _error_response(error: APIError) -> JSONResponse:
    body = {"error": {"message": error.message, "type": error.kind, "param": error.param, "code": error.status}}
    return JSONResponse(body, status_code=error.status, headers=error.headers)


def _validation_message(error: ValidationError) -> tuple[str, str]:
    first = error.errors()[0]
    where = ".".join(str(p) for p in first["loc"])
    return f"field '{where}': {first['msg']}", where


# ---------------------------------------------------------------------- the app
def create_app(scheduler: Scheduler, *, model_name: str, api_key: str | None = None,
               max_body_bytes: int = 8 << 20, max_tokens_default: int = 256) -> FastAPI:
    """The FastAPI app around a (not yet started) scheduler; its lifespan starts and stops it."""
    from contextlib import asynccontextmanager

    model, tokenizer = scheduler.model, scheduler.tokenizer
    config = model.config
    created = int(time.time())

    @asynccontextmanager
    async def lifespan(app):
        scheduler.start()
        try:
            yield
        finally:
            scheduler.stop()

    app = FastAPI(title="Quatrix", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.scheduler = scheduler

    @app.exception_handler(APIError)
    async def api_error(request, error: APIError):
        return _error_response(error)

    @app.middleware("http")
    async def guard(request: HTTPRequest, call_next):
        if request.url.path.startswith("/v1/"):
            if api_key is not None:
                given = request.headers.get("authorization", "")
                if not secrets.compare_digest(given.encode(), f"Bearer {api_key}".encode()):
                    return _error_response(APIError(401, "missing or wrong API key (send 'Authorization: Bearer KEY')",
                                                    kind="authentication_error"))
            length = request.headers.get("content-length")
            if length is not None and length.isdigit() and int(length) > max_body_bytes:
                return _error_response(APIError(413, f"request body of {length} bytes is over the limit of "
                                                     f"{max_body_bytes} bytes"))
        return await call_next(request)

    async def read_body(request: HTTPRequest, schema):
        raw = await request.body()
        if len(raw) > max_body_bytes:
            raise APIError(413, f"request body of {len(raw)} bytes is over the limit of {max_body_bytes} bytes")
        try:
            data = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise APIError(400, f"malformed JSON body: {e}") from None
        if not isinstance(data, dict):
            raise APIError(400, f"the body must be a JSON object, got {type(data).__name__}")
        try:
            return schema.model_validate(data)
        except ValidationError as e:
            message, param = _validation_message(e)
            raise APIError(400, message, param=param) from None

    def budget(prompt: list[int], requested: int | None) -> int:
        room = config.max_seq_len - len(prompt)
        if requested is not None:
            if len(prompt) + requested > config.max_seq_len:
                raise APIError(400, f"the prompt has {len(prompt)} tokens and max_tokens is {requested}: "
                                    f"{len(prompt) + requested} is more than the model's context of "
                                    f"{config.max_seq_len} tokens", param="max_tokens")
            return requested
        if room < 1:
            raise APIError(400, f"the prompt has {len(prompt)} tokens, which leaves no room for a reply in the "
                                f"model's context of {config.max_seq_len} tokens", param="messages")
        return min(room, max_tokens_default)

    def stops(body) -> tuple[str, ...]:
        stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
        if len(stop) > MAX_STOP or any(not s for s in stop):
            raise APIError(400, f"stop takes at most {MAX_STOP} non-empty strings", param="stop")
        return tuple(stop)

    def sampling(body) -> Sampling:
        return Sampling(temperature=body.temperature, top_k=body.top_k, top_p=body.top_p)

    async def run(request: Request, body, kind: str):
        """Submit; then stream SSE chunks, or gather them into one response."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        request.sink = lambda event: loop.call_soon_threadsafe(queue.put_nowait, event)
        try:
            scheduler.submit(request)
        except QueueFull as e:
            raise APIError(429, str(e), kind="rate_limit_error", headers={"Retry-After": "1"}) from None
        except ValueError as e:
            raise APIError(400, str(e), param="n") from None
        rid = f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{uuid.uuid4().hex[:24]}"
        shape = _Shape(rid, kind, model_name)
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

    @app.post("/v1/chat/completions")
    async def chat_completions(http: HTTPRequest):
        body = await read_body(http, ChatBody)
        messages, media = _messages(body.messages, model)
        try:
            check_messages(messages)
            prompt, _ = render(messages, tokenizer, add_generation_prompt=True)
        except ValueError as e:
            raise APIError(400, str(e), param="messages") from None
        limit = budget(prompt, body.max_completion_tokens or body.max_tokens)
        request = Request(prompt, limit, sink=None, sampling=sampling(body), n=body.n, stop=stops(body),
                          seed=body.seed, media=media)
        return await run(request, body, "chat")

    @app.post("/v1/completions")
    async def completions(http: HTTPRequest):
        body = await read_body(http, CompletionBody)
        prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        if len(prompts) != 1:
            raise APIError(400, f"one prompt per request, got {len(prompts)}", param="prompt")
        prompt = tokenizer.encode(prompts[0])
        if not prompt:
            raise APIError(400, "the prompt is empty", param="prompt")
        limit = budget(prompt, body.max_tokens)
        request = Request(prompt, limit, sink=None, sampling=sampling(body), n=body.n, stop=stops(body),
                          seed=body.seed)
        return await run(request, body, "text")

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": created,
                                            "owned_by": "quatrix"}]}

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": model_name, "vision": model.vision is not None,
                "audio": model.audio is not None, "context": config.max_seq_len, **scheduler.load}

    @app.get("/favicon.ico", include_in_schema=False)
    async def favicon():
        return Response(status_code=204)

    @app.get("/", response_class=HTMLResponse)
    async def page():
        return HTMLResponse(files("quatrix.serve").joinpath("static/index.html").read_text())

    return app


def scheduler_for(model, tokenizer, **kwargs) -> Scheduler:
    """A Scheduler whose replies end at <|end|> (chat) or <|endoftext|> (documents), and whose
    text leaves out role and media-slot tokens (the reasoning tags stay: they are content)."""
    hidden = [i for name, i in tokenizer.special.items() if name not in REASONING_TAGS]
    return Scheduler(model, tokenizer, stop_token_ids=[tokenizer.token_id(END), tokenizer.token_id(EOT)],
                     hidden_token_ids=hidden, **kwargs)


# OpenAI content part type -> the modality it carries (quatrix.media.MODALITIES)
_MEDIA_PARTS = {"image_url": "image", "input_audio": "audio"}


def _messages(messages: list[Message], model) -> tuple[list[dict], dict]:
    """OpenAI messages -> Quatrix messages (roles checked by check_messages) and the media.

    "developer" is OpenAI's newer name for "system". Content parts: text is joined; an
    image_url must be a base64 data URL and input_audio base64 file bytes (the server
    fetches nothing). The model takes one image and one clip per conversation."""
    out, media = [], {}
    for i, message in enumerate(messages):
        role = "system" if message.role == "developer" else message.role
        if isinstance(message.content, str):
            out.append({"role": role, "content": message.content})
            continue
        text = "".join(part.text or "" for part in message.content if part.type == "text")
        entry = {"role": role, "content": text}
        for part in message.content:
            if part.type not in _MEDIA_PARTS:
                continue
            key = _MEDIA_PARTS[part.type]
            kind, param = modality(key), f"messages.{i}.content"
            if getattr(model, kind.encoder) is None:
                raise APIError(400, f"this model has no {kind.encoder} encoder, so it cannot take {kind.noun}",
                               param=param)
            if key in media:
                raise APIError(400, f"the model takes one {key} per conversation", param=param)
            decode = _decode_image if key == "image" else _decode_audio
            media[key] = decode(part, model.config, param)[None]
            entry[key] = True
        out.append(entry)
    return out, model_inputs(media)


def _decode_image(part: ContentPart, config, param: str):
    from PIL import Image, UnidentifiedImageError

    url = part.image_url.url if part.image_url is not None else ""
    if not url.startswith("data:") or ";base64," not in url:
        raise APIError(400, "image_url must be a base64 data URL (data:image/png;base64,...); the server fetches "
                            "nothing from the network", param=param)
    try:
        raw = base64.b64decode(url.split(";base64,", 1)[1], validate=True)
        with Image.open(io.BytesIO(raw)) as image:
            return image_to_tensor(image, config.image_size)
    except (binascii.Error, ValueError) as e:
        raise APIError(400, f"image_url is not valid base64: {e}", param=param) from None
    except (UnidentifiedImageError, OSError) as e:
        raise APIError(400, f"image_url does not hold a readable image: {e}", param=param) from None


def _decode_audio(part: ContentPart, config, param: str):
    """input_audio {"data": base64 bytes of a WAV/FLAC file, "format"} -> [T] at the model's rate."""
    if part.input_audio is None:
        raise APIError(400, "an input_audio part needs {'data': base64 file bytes, 'format': 'wav'}", param=param)
    try:
        raw = base64.b64decode(part.input_audio.data, validate=True)
    except (binascii.Error, ValueError) as e:
        raise APIError(400, f"input_audio.data is not valid base64: {e}", param=param) from None
    try:
        return read_audio(io.BytesIO(raw), config.sample_rate, config.audio_max_seconds, name="input_audio")
    except ValueError as e:
        raise APIError(400, str(e), param=param) from None


class _Shape:
    """The OpenAI response and chunk objects of one request."""

    def __init__(self, rid: str, kind: str, model: str):
        self.rid, self.kind, self.model, self.created = rid, kind, model, int(time.time())

    def _head(self, object_name: str) -> dict[str, Any]:
        return {"id": self.rid, "object": object_name, "created": self.created, "model": self.model}

    def whole(self, texts, reasons, done: Done) -> dict:
        if self.kind == "chat":
            choices = [{"index": i, "message": {"role": "assistant", "content": t}, "finish_reason": r}
                       for i, (t, r) in enumerate(zip(texts, reasons))]
            return {**self._head("chat.completion"), "choices": choices, "usage": _usage(done)}
        choices = [{"index": i, "text": t, "finish_reason": r, "logprobs": None}
                   for i, (t, r) in enumerate(zip(texts, reasons))]
        return {**self._head("text_completion"), "choices": choices, "usage": _usage(done)}

    def chunk(self, index: int, text: str, reason: str | None, first: bool = False) -> dict:
        if self.kind == "chat":
            delta = {"role": "assistant", "content": text} if first else ({"content": text} if text else {})
            choice = {"index": index, "delta": delta, "finish_reason": reason}
            return {**self._head("chat.completion.chunk"), "choices": [choice]}
        return {**self._head("text_completion"),
                "choices": [{"index": index, "text": text, "finish_reason": reason, "logprobs": None}]}

    def usage_chunk(self, done: Done) -> dict:
        name = "chat.completion.chunk" if self.kind == "chat" else "text_completion"
        return {**self._head(name), "choices": [], "usage": _usage(done)}


def _usage(done: Done) -> dict:
    return {"prompt_tokens": done.prompt_tokens, "completion_tokens": done.completion_tokens,
            "total_tokens": done.prompt_tokens + done.completion_tokens}


async def _sse(queue: asyncio.Queue, request: Request, shape: _Shape, include_usage: bool):
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
