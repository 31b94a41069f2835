"""Continuous batching for the server: requests join and leave one running batch between
decode steps.

One thread owns the model. Each step it admits waiting requests while the batch has room
(each is prefilled alone, its `n` choices sharing that prefill, then merged into the batch
cache with `Cache.merge`), runs one decode step for every running sequence together, samples
each request with its own settings and seeded generator, streams text deltas to the request's
sink, and drops finished or cancelled sequences (`Cache.select`). Written here rather than
taken from a serving library because it drives Quatrix's own cache layouts (H + r floats per
token for Q-Compass, 2r for SAVO), which those libraries do not know.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from quatrix.detokenize import INCOMPLETE, IncrementalDecoder
from quatrix.engine import Cache, Sampling, prefill_logits_to_keep, sample_next


class QueueFull(Exception):
    """The waiting queue is at its bound: answer 429."""


@dataclass
class TokenLogprob:
    """One token's log-probability under the model's distribution (fp32, before temperature,
    top-k or top-p) and the `k` most likely tokens at its position, as (id, log-probability).
    The first token of a prompt has no log-probability (None) and no alternatives."""

    token: int
    logprob: float | None
    top: list[tuple[int, float]]


def logprob_entries(logits: Tensor, tokens: Tensor, k: int) -> list[TokenLogprob]:
    """[N, V] logits and the [N] tokens that followed them -> one entry per row."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    chosen = logp.gather(-1, tokens[:, None])[:, 0]
    if k:
        values, ids = logp.topk(k, dim=-1)
        top = [list(zip(i, v)) for i, v in zip(ids.tolist(), values.tolist())]
    else:
        top = [[] for _ in range(len(tokens))]
    return [TokenLogprob(t, lp, tp) for t, lp, tp in zip(tokens.tolist(), chosen.tolist(), top)]


@dataclass
class Delta:
    """New text of one choice; finish_reason ("stop" | "length") on its last delta. With
    log-probabilities asked for, the entries of the tokens generated since the last delta
    (text held back at a possible stop string or a split character still has its tokens
    here: an entry comes once, with the first delta after its token). The stop token that
    ended a choice has an entry too, though it adds no text."""

    index: int
    text: str
    finish_reason: str | None = None
    logprobs: list[TokenLogprob] = field(default_factory=list)


@dataclass
class Echo:
    """The prompt's tokens (with their log-probabilities when asked), sent before any Delta."""

    entries: list[TokenLogprob]


@dataclass
class Done:
    prompt_tokens: int
    completion_tokens: int


@dataclass
class Failed:
    message: str


@dataclass(eq=False)  # compared by identity: two requests with equal fields are still two requests
class Request:
    """One API request: a prompt, `n` choices, sampling and limits. `sink` is called from
    the scheduler thread with Delta, then one Done (or one Failed)."""

    prompt: list[int]
    max_tokens: int
    sink: Callable[[object], None]
    sampling: Sampling = Sampling(temperature=1.0)
    n: int = 1
    stop: tuple[str, ...] = ()
    seed: int | None = None
    media: dict[str, Tensor] = field(default_factory=dict)  # model kwargs of shape [1, ...]
    logprobs: int | None = None  # None: no log-probabilities; K: each token's and the K most likely
    echo: bool = False  # send the prompt's tokens (Echo) first; max_tokens 0 then only scores the prompt
    cancelled: threading.Event = field(default_factory=threading.Event)
    id: int = 0

    def cancel(self) -> None:
        """Stop decoding this request (a client went away); its sequences leave the batch at
        the next step."""
        self.cancelled.set()


class _Choice:
    """One sequence: its tokens, decoded incrementally (stop strings held back)."""

    def __init__(self, request: Request, index: int, tokenizer, hidden: frozenset[int]):
        self.request, self.index = request, index
        self.decoder = IncrementalDecoder(tokenizer, hidden)
        self.finished = False
        self.pending: list[TokenLogprob] = []  # log-probabilities not yet sent with a delta

    @property
    def tokens(self) -> list[int]:
        return self.decoder.tokens

    def feed(self, token: int | None, limit_hit: bool, entry: TokenLogprob | None = None) -> Delta | None:
        """Add a token (None = a stop token came) and return the text that is now safe to send.
        Hidden tokens (role and media-slot tokens) count but are not shown."""
        if token is not None:
            self.decoder.add(token)
        if entry is not None:  # a stop token's entry too (it ends the text but was generated), as vLLM gives it
            self.pending.append(entry)
        text = self.decoder.text()
        reason = "stop" if token is None else ("length" if limit_hit else None)
        cut = _first_stop(text, self.request.stop, self.decoder.sent)
        if cut is not None:
            text, reason = text[:cut], "stop"
        if reason is None:
            if text.endswith(INCOMPLETE):  # the rest of a multi-byte character is still to come
                return None
            piece = self.decoder.take(text, len(text) - _stop_prefix_len(text, self.request.stop))
            return self._delta(piece, None) if piece else None
        self.finished = True
        return self._delta(self.decoder.take(text), reason)

    def _delta(self, text: str, reason: str | None) -> Delta:
        entries, self.pending = self.pending, []
        return Delta(self.index, text, reason, entries)


def _first_stop(text: str, stops: tuple[str, ...], sent: int) -> int | None:
    """Where the earliest stop string starts in text (searching only what was not sent)."""
    hits = [i for s in stops if (i := text.find(s, max(0, sent - len(s) + 1))) >= 0]
    return min(hits) if hits else None


def _stop_prefix_len(text: str, stops: tuple[str, ...]) -> int:
    """Length of the longest end of `text` that could begin a stop string: held back."""
    best = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), best, -1):
            if text.endswith(s[:k]):
                best = k
                break
    return best


class Scheduler:
    """The batching loop. `submit` is thread-safe; `start`/`stop` run the loop in a thread.

    max_batch bounds the sequences decoded together (a request takes n of them);
    max_queue bounds the requests waiting for room (beyond it `submit` raises QueueFull): a
    request that fits in the batch now never counts against it.
    """

    def __init__(self, model, tokenizer, *, stop_token_ids, hidden_token_ids=(), max_batch: int = 16,
                 max_queue: int = 64, precision: Callable[[], object] = contextlib.nullcontext):
        if max_batch < 1 or max_queue < 0:
            raise ValueError(f"max_batch must be >= 1 and max_queue >= 0, got {max_batch}, {max_queue}")
        self.model, self.tokenizer = model.eval(), tokenizer
        self.device = next(model.parameters()).device
        self.stop_ids = torch.tensor(sorted(set(stop_token_ids)), dtype=torch.long, device=self.device)
        self.hidden = frozenset(hidden_token_ids)  # generated but not shown: role and media-slot tokens
        self.max_batch, self.max_queue = max_batch, max_queue
        self.precision = precision  # a context factory the model runs in (bf16 autocast, say)
        self.waiting: deque[Request] = deque()
        self.lock = threading.Condition()
        self.ids = itertools.count(1)
        self.rows: list[_Choice] = []  # the running batch, one entry per cache row
        self.cache: Cache | None = None
        self.logits: Tensor | None = None  # [rows, V]: the next token's logits per row
        self.generators: dict[int, torch.Generator] = {}
        self.thread: threading.Thread | None = None
        self.running = False
        self.steps = 0  # decode steps run (for tests and /health)
        self.largest_batch = 0

    # ------------------------------------------------------------------ control
    def start(self) -> None:
        self.running = True
        self.thread = threading.Thread(target=self._loop, name="quatrix-scheduler", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        with self.lock:
            self.running = False
            self.lock.notify_all()
        if self.thread is not None:
            self.thread.join(timeout=30)

    def submit(self, request: Request) -> Request:
        if request.n > self.max_batch:
            raise ValueError(f"n={request.n} is more than the server decodes at once (max_batch={self.max_batch})")
        with self.lock:
            room = self.max_batch - len(self.rows) - sum(r.n for r in self.waiting)  # admitted at the next step
            if request.n > room and len(self.waiting) >= self.max_queue:
                raise QueueFull(f"server busy: {len(self.waiting)} requests are waiting (limit {self.max_queue}); "
                                f"retry later")
            request.id = next(self.ids)
            self.waiting.append(request)
            self.lock.notify_all()
        return request

    @property
    def load(self) -> dict:
        return {"running_sequences": len(self.rows), "waiting_requests": len(self.waiting),
                "max_batch": self.max_batch, "max_queue": self.max_queue, "largest_batch": self.largest_batch,
                "decode_steps": self.steps}

    # ------------------------------------------------------------------ the loop
    def _loop(self) -> None:
        with torch.inference_mode(), self.precision():
            while True:
                with self.lock:
                    while self.running and not self.rows and not self.waiting:
                        self.lock.wait()
                    if not self.running:
                        break
                    admitted = []
                    while self.waiting and (self.waiting[0].cancelled.is_set()
                                            or len(self.rows) + sum(r.n for r in admitted) + self.waiting[0].n
                                            <= self.max_batch):
                        request = self.waiting.popleft()
                        if not request.cancelled.is_set():
                            admitted.append(request)
                try:
                    for request in admitted:
                        self._admit(request)
                    if self.rows:
                        self._step()
                except Exception as e:  # never let one bad step hang every client: fail what is running
                    self._fail_running(f"generation failed: {type(e).__name__}: {e}")
        for choice in self.rows:  # shutting down: tell whoever is still waiting
            choice.request.sink(Failed("the server is shutting down"))
        for request in self.waiting:
            request.sink(Failed("the server is shutting down"))

    def _fail_running(self, message: str) -> None:
        for request, _ in itertools.groupby(self.rows, key=lambda c: c.request):
            request.sink(Failed(message))
        self.rows, self.cache, self.logits = [], None, None
        self.generators.clear()

    def _admit(self, request: Request) -> None:
        """Prefill alone, share the prefill among the n choices, merge into the batch."""
        try:
            ids = torch.tensor([request.prompt], dtype=torch.long, device=self.device)
            cache = Cache(self.model, 1, len(request.prompt) + request.max_tokens) if request.max_tokens else None
            media = {k: v.to(self.device) for k, v in request.media.items()}
            keep = None if request.echo else prefill_logits_to_keep(ids, self.model.config)
            every = self.model(ids, cache=cache, logits_to_keep=keep, **media)["logits"]  # [1, L or 1, V]
        except (ValueError, RuntimeError) as e:
            request.sink(Failed(f"could not run the prompt: {e}"))
            return
        if request.echo:
            first = TokenLogprob(request.prompt[0], None, [])
            rest = (logprob_entries(every[0, :-1], ids[0, 1:], request.logprobs) if request.logprobs is not None
                    else [TokenLogprob(t, None, []) for t in request.prompt[1:]])
            request.sink(Echo([first, *rest]))
        if not request.max_tokens:  # scored, nothing to generate
            request.sink(Done(len(request.prompt), 0))
            return
        logits = every[:, -1]  # [1, V]
        if request.n > 1:
            cache.repeat_interleave(request.n)
            logits = logits.expand(request.n, -1)
        generator = torch.Generator(device=self.device)
        generator.manual_seed(request.seed if request.seed is not None else int(torch.randint(2**62, ())))
        self.generators[request.id] = generator
        self.cache = cache if self.cache is None else Cache.merge([self.cache, cache])
        self.logits = logits if self.logits is None else torch.cat([self.logits, logits])
        self.rows += [_Choice(request, i, self.tokenizer, self.hidden) for i in range(request.n)]
        self.largest_batch = max(self.largest_batch, len(self.rows))

    def _step(self) -> None:
        """Sample every row's next token, deliver text, drop finished rows, decode the rest."""
        tokens = torch.zeros(len(self.rows), dtype=torch.long, device=self.device)
        start = 0
        for request, group in itertools.groupby(self.rows, key=lambda c: c.request):
            n = len(list(group))
            tokens[start : start + n] = sample_next(self.logits[start : start + n], request.sampling,
                                                    self.generators[request.id])
            start += n
        stopped = torch.isin(tokens, self.stop_ids).tolist()
        entries = self._logprobs(tokens)
        for row, (choice, token, stop) in enumerate(zip(self.rows, tokens.tolist(), stopped)):
            request = choice.request
            if request.cancelled.is_set():
                choice.finished = True
                continue
            delta = choice.feed(None if stop else token, limit_hit=len(choice.tokens) + 1 >= request.max_tokens,
                                entry=entries.get(row))
            if delta is not None:
                request.sink(delta)
        keep = [i for i, c in enumerate(self.rows) if not c.finished]
        self._finish_requests()
        if len(keep) < len(self.rows):
            self.rows = [self.rows[i] for i in keep]
            if not keep:
                self.cache = self.logits = None
                return
            self.cache.select(keep)
            tokens = tokens[keep]
        self.logits = self.model(tokens[:, None], cache=self.cache, check_values=False)["logits"][:, -1]
        self.steps += 1

    def _logprobs(self, tokens: Tensor) -> dict[int, TokenLogprob]:
        """Row -> its sampled token's entry, for the rows whose request asked for log-probabilities."""
        asked = [i for i, c in enumerate(self.rows) if c.request.logprobs is not None]
        if not asked:
            return {}
        rows = torch.tensor(asked, device=self.device)
        k = max(self.rows[i].request.logprobs for i in asked)
        found = logprob_entries(self.logits[rows], tokens[rows], k)
        for i, entry in zip(asked, found):
            entry.top = entry.top[: self.rows[i].request.logprobs]
        return dict(zip(asked, found))

    def _finish_requests(self) -> None:
        """Send Done to each request whose choices have all finished."""
        for request, group in itertools.groupby(self.rows, key=lambda c: c.request):
            choices = list(group)
            if all(c.finished for c in choices) and request.id in self.generators:
                del self.generators[request.id]
                if not request.cancelled.is_set():
                    request.sink(Done(len(request.prompt), sum(len(c.tokens) for c in choices)))

