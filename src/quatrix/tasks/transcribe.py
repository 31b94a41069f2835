"""Speech recognition as a task: a clip in the user turn, its transcript as the answer.

    task = load_task("transcribe", data="spoken-digits")       # or spoken-numbers, spoken-sentences, PATH
    item = task.eval_items(1)[0]; item.audio, item.answer      # a held-out voice saying "4 2 7"

With a built-in corpus (quatrix.data.speech) the training stream is spoken by the training
voices and the held-out set by the held-out ones, so accuracy is measured on speakers the
model never heard. With the user's own clips (a folder or a .jsonl, as for pretraining) a
clip is held out by a hash of its file name. The answer is the whole reply, compared after
`normalise_transcript` (lower case, no punctuation); word and character error rates come
`error_counts` below.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from quatrix.data.speech import (CORPORA, check_corpus_options, draw_clip, is_held_out_voice, read_audio_pairs,
                                 synthesize_clip)
from quatrix.media import SAMPLE_RATE, check_clip, read_audio
from quatrix.tasks.base import Item, Task, held_out

INSTRUCTION = "Transcribe the audio."


class TranscribeTask(Task):
    name = "transcribe"
    media = ("audio",)
    transcribes = True  # evaluation reports word and character error rates

    def __init__(self, seed: int = 0, data: str = "spoken-digits", sample_rate: int = SAMPLE_RATE,
                 max_seconds: float = 10.0, **options):
        self.seed, self.data, self.sample_rate, self.max_seconds = seed, data, sample_rate, max_seconds
        self.options = options
        if data in CORPORA:
            self.pairs = None
            check_corpus_options(data, options)
        else:
            if options:
                raise ValueError(f"task transcribe: options {sorted(options)} apply to the built-in corpora only")
            self.pairs = read_audio_pairs(Path(data))

    def generate(self, split: str, index: int) -> Item:
        if self.pairs is not None:
            path, text = self.pairs[index % len(self.pairs)]
            wave = read_audio(path, self.sample_rate, self.max_seconds)
            return Item(question=INSTRUCTION, answer=text, audio=wave, key=path.name)
        clip = synthesize_clip(self.data, self.seed, split, index, self.sample_rate, **self.options)
        check_clip(clip.wave, self.sample_rate, self.max_seconds, f"{self.data} clip {index}")
        return Item(question=INSTRUCTION, answer=clip.text, audio=clip.wave, entry=clip.voice, kind=self._kind(clip.text),
                    key=f"{clip.text}|{clip.voice}|{clip.rate}|{clip.pitch}")

    def train_answers(self, n: int) -> list[tuple[str, str]]:
        if self.pairs is not None:
            return super().train_answers(n)
        answers = []
        for index in range(n):  # training clips are never held out: their voices are training voices
            clip = draw_clip(self.data, self.seed, "train", index, **self.options)[1]
            answers.append((self._kind(clip.text), clip.text))
        return answers

    def _kind(self, transcript: str) -> str:
        if self.data != "spoken-digits":
            return ""
        n = len(transcript.split())
        return f"{n} digit{'s' * (n > 1)}"

    def is_held_out(self, item: Item) -> bool:
        return held_out(item.key) if self.pairs is not None else is_held_out_voice(item.entry)

    def prompt(self, item: Item) -> list[dict]:
        return [{"role": "user", "content": item.question, "audio": item.audio}]

    def target(self, item: Item) -> str:
        return item.answer

    def score(self, answer: str | None, item: Item) -> float:
        return float(answer is not None and normalise_transcript(answer) == normalise_transcript(item.answer))

    def score_text(self, completion: str, item: Item) -> float:
        return self.score(completion, item)

    def format_score(self, completion: str) -> float:
        """A transcript is plain text: non-empty, with no tags."""
        return float(bool(completion.strip()) and "<" not in completion)


def random_transcripts(task: TranscribeTask, n: int, seed: int = 0) -> list[str]:
    """n transcripts drawn from the training stream: what a model that ignores the audio
    but knows the distribution of transcripts would say (the chance baseline)."""
    pool = [answer for _, answer in task.train_answers(2000)]
    return [pool[int(i)] for i in np.random.default_rng(seed).integers(len(pool), size=n)]


def error_counts(reference: str, hypothesis: str, unit: str = "word") -> tuple[int, int]:
    """(edit distance, reference length) over words or characters: the numerator and
    denominator of a word or character error rate (summed over a set: the corpus rate).
    Written here because it is ten lines and the metric's definition should be visible."""
    ref = reference.split() if unit == "word" else list(reference)
    hyp = hypothesis.split() if unit == "word" else list(hypothesis)
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        previous, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            previous, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, previous + (r != h))
    return row[len(hyp)], len(ref)


def normalise_transcript(text: str) -> str:
    """Lower case, punctuation dropped, single spaces: what transcripts are compared as."""
    kept = "".join(ch if ch.isalnum() or ch.isspace() else " " for ch in text.lower())
    return " ".join(kept.split())

