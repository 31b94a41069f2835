"""The OpenAI API's shapes as `quatrix serve` speaks them: request bodies (pydantic models
whose bounds are the real contract, so /openapi.json shows it), the error object, the
response and chunk objects, and OpenAI messages (with image and audio content parts) turned
into Quatrix chat messages and model inputs."""

from __future__ import annotations

import base64
import binascii
import io
import time
from typing import Annotated, Any, Literal

from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from quatrix.media import image_to_tensor, model_inputs, modality, read_audio
from quatrix.serve.scheduler import Done, TokenLogprob

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


MAX_LOGPROBS = 20  # alternatives per position, as OpenAI's API allows


class ChatBody(_Body):
    messages: Annotated[list[Message], Field(min_length=1)]
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    logprobs: bool = False
    top_logprobs: Annotated[int, Field(ge=0, le=MAX_LOGPROBS)] | None = None


class CompletionBody(_Body):
    """A prompt is text or token ids; a list of either is a batch (one choice per prompt x n)."""
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: Annotated[int, Field(ge=0)] | None = None  # 0 with echo: score the prompt only
    echo: bool = False
    logprobs: Annotated[int, Field(ge=0, le=MAX_LOGPROBS)] | None = None


class TokenizeBody(BaseModel):
    """vLLM's /tokenize: text (`prompt`) or a conversation (`messages`, rendered in the chat format)."""
    model_config = ConfigDict(extra="ignore", strict=True)

    model: str | None = None
    prompt: str | None = None
    messages: Annotated[list[Message], Field(min_length=1)] | None = None
    add_generation_prompt: bool = True


class DetokenizeBody(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)

    model: str | None = None
    tokens: list[int]


def body_of(model) -> dict:
    """The route's request body in /openapi.json: the pydantic model read_body checks, with
    every field's type and bound (the schemas themselves are added by `openapi`)."""
    return {"requestBody": {"required": True, "content": {"application/json": {
        "schema": {"$ref": f"#/components/schemas/{model.__name__}"}}}}}


BODIES = (ChatBody, CompletionBody, TokenizeBody, DetokenizeBody)


def openapi(app) -> dict:
    """FastAPI's schema of the routes, with the request bodies' pydantic schemas as components."""
    if app.openapi_schema is None:
        from fastapi.openapi.utils import get_openapi

        schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for model in BODIES:
            full = model.model_json_schema(ref_template="#/components/schemas/{model}")
            components.update(full.pop("$defs", {}))
            components[model.__name__] = full
        app.openapi_schema = schema
    return app.openapi_schema


class APIError(Exception):
    def __init__(self, status: int, message: str, *, kind: str = "invalid_request_error", param: str | None = None,
                 headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.kind, self.param, self.headers = status, message, kind, param, headers


def error_response(error: APIError) -> JSONResponse:
    body = {"error": {"message": error.message, "type": error.kind, "param": error.param, "code": error.status}}
    return JSONResponse(body, status_code=error.status, headers=error.headers)


def validation_message(error: ValidationError) -> tuple[str, str]:
    first = error.errors()[0]
    where = ".".join(str(p) for p in first["loc"])
    return f"field '{where}': {first['msg']}", where


# OpenAI content part type -> the modality it carries (quatrix.media.MODALITIES)
_MEDIA_PARTS = {"image_url": "image", "input_audio": "audio"}


def chat_messages(messages: list[Message], model) -> tuple[list[dict], dict]:
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
                raise APIError(400, f"this model has no {kind.encoder} encoder, so it cannot take {kind.a_noun}",
                               param=param)
            if key in media:
                raise APIError(400, f"the model takes one {kind.noun} per conversation", param=param)
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


class ResponseShape:
    """The OpenAI response and chunk objects of one request (`n` choices per prompt)."""

    def __init__(self, rid: str, kind: str, model: str, tokenizer=None, logprobs: int | None = None):
        self.rid, self.kind, self.model, self.created = rid, kind, model, int(time.time())
        self.tokenizer, self.logprobs = tokenizer, logprobs

    def _head(self, object_name: str) -> dict[str, Any]:
        return {"id": self.rid, "object": object_name, "created": self.created, "model": self.model}

    def whole(self, texts, reasons, done: Done, entries=None) -> dict:
        """`entries[i]`: choice i's TokenLogprob list (echoed prompt first), when asked for."""
        if self.kind == "chat":
            choices = [{"index": i, "message": {"role": "assistant", "content": t}, "finish_reason": r,
                        "logprobs": self.chat_logprobs(entries[i]) if entries is not None else None}
                       for i, (t, r) in enumerate(zip(texts, reasons))]
            return {**self._head("chat.completion"), "choices": choices, "usage": usage(done)}
        choices = [{"index": i, "text": t, "finish_reason": r,
                    "logprobs": self.text_logprobs(entries[i], 0) if entries is not None else None}
                   for i, (t, r) in enumerate(zip(texts, reasons))]
        return {**self._head("text_completion"), "choices": choices, "usage": usage(done)}

    def chunk(self, index: int, text: str, reason: str | None, first: bool = False,
              entries: list[TokenLogprob] | None = None, offset: int = 0) -> dict:
        if self.kind == "chat":
            delta = {"role": "assistant", "content": text} if first else ({"content": text} if text else {})
            choice = {"index": index, "delta": delta, "finish_reason": reason,
                      "logprobs": self.chat_logprobs(entries) if entries else None}
            return {**self._head("chat.completion.chunk"), "choices": [choice]}
        logprobs = self.text_logprobs(entries, offset) if entries is not None and self.logprobs is not None else None
        return {**self._head("text_completion"),
                "choices": [{"index": index, "text": text, "finish_reason": reason, "logprobs": logprobs}]}

    def usage_chunk(self, done: Done) -> dict:
        name = "chat.completion.chunk" if self.kind == "chat" else "text_completion"
        return {**self._head(name), "choices": [], "usage": usage(done)}

    def token_text(self, token: int) -> str:
        return self.tokenizer.decode([token])

    def text_logprobs(self, entries: list[TokenLogprob], offset: int) -> dict:
        """The legacy completions shape: parallel lists, `text_offset` counted from `offset`."""
        tokens = [self.token_text(e.token) for e in entries]
        offsets = []
        for text in tokens:
            offsets.append(offset)
            offset += len(text)
        return {"tokens": tokens, "token_logprobs": [e.logprob for e in entries],
                "top_logprobs": [None if e.logprob is None else {self.token_text(t): v for t, v in e.top}
                                 for e in entries],
                "text_offset": offsets}

    def chat_logprobs(self, entries: list[TokenLogprob]) -> dict:
        """The chat shape: one object per token, with its UTF-8 bytes."""
        def item(token: int, logprob: float) -> dict:
            text = self.token_text(token)
            return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}

        return {"content": [{**item(e.token, e.logprob), "top_logprobs": [item(t, v) for t, v in e.top]}
                            for e in entries]}


def usage(done: Done) -> dict:
    return {"prompt_tokens": done.prompt_tokens, "completion_tokens": done.completion_tokens,
            "total_tokens": done.prompt_tokens + done.completion_tokens}
