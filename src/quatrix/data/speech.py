"""Speech with transcripts, made locally or read from the user's files, for the audio plugin.

  spoken-digits     1..max_digits digits read one by one ("4 2 7")
  spoken-numbers    a whole number below `limit` read as a number ("427")
  spoken-sentences  short sentences from a small grammar ("the red dog sees a small box")
  PATH              a folder of .wav/.flac files each with a same-named .txt transcript, or a
                    .jsonl of {"audio": path, "text": transcript} (paths relative to the file)

The built-in corpora are synthesized by the espeak-ng engine, with no network and no root:
the `espeakng-loader` wheel (`pip install espeakng-loader`, the `audio` extra) ships the
library and its voice data and is driven here through its C API (`ctypes`); without it an
`espeak-ng` program on the PATH (apt) is used. What a clip says and how (its text, voice,
speaking rate and pitch) is a function of (seed, split, index), drawn from one seeded
generator, and espeak-ng's noise generator (breathy voices) is seeded from the same
triple, not the clock. The samples still depend a little on what the process synthesized
before: espeak-ng carries its pitch "flutter" from one utterance to the next, so a clip
made twice in one process differs by a few samples in length and well under 1% in energy.
A corpus made in a fresh process, in order, is the same every time; a training corpus is
synthesized once and cached (`speech_corpus`), and every run reads the very same samples;
evaluation clips are made afresh, first thing in the process. Voices are English accents crossed with
espeak's voice variants; the variants in HELD_OUT_VARIANTS are never used for training, so
evaluation hears speakers the model has not heard.

Every clip, synthesized or read, ends as float32 mono at the model's sample rate: other rates
are resampled (a polyphase filter, `scipy.signal.resample_poly`), stereo is averaged.
"""

from __future__ import annotations

import ctypes
import hashlib
import io
import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from quatrix.data.pairs import read_pairs
from quatrix.media import SAMPLE_RATE, pad_waves, read_audio, resample
from quatrix.progress import Progress
from quatrix.specs import parse_spec

CORPORA = ("spoken-digits", "spoken-numbers", "spoken-sentences")
AUDIO_SUFFIXES = (".wav", ".flac")
ACCENTS = ("en", "en-us", "en-gb-x-rp", "en-gb-scotland", "en-029", "en-us-nyc", "en-gb-x-gbclan", "en-gb-x-gbcwmd")
VARIANTS = ("f1", "f2", "f3", "f4", "f5", "m1", "m2", "m3", "m4", "m5", "m6", "m7", "m8", "Alex", "Andy", "Annie",
            "adam", "anika", "aunty", "belinda", "benjamin", "boris", "david", "ed", "edward", "grandma", "grandpa",
            "gustave", "ian", "john", "linda", "michel", "norbert", "paul", "quincy", "rob", "robert", "shelby",
            "steph", "travis", "victor", "zac")
HELD_OUT_VARIANTS = ("f4", "m6", "Annie", "john", "steph", "victor")  # never heard in training
RATES = (130, 210)  # words per minute
PITCHES = (25, 75)  # espeak's 0..100 scale
_WORDS = {
    "adjective": ("red", "green", "blue", "small", "big", "old", "new", "happy", "quiet", "bright"),
    "noun": ("dog", "cat", "bird", "house", "tree", "car", "boat", "ball", "book", "box", "lamp", "river"),
    "verb": ("sees", "likes", "finds", "moves", "holds", "paints", "follows", "wants"),
}


def voices(split: str) -> list[str]:
    """espeak voice names ("en-us+f3") for the training or the held-out ("eval") speakers."""
    if split not in ("train", "eval"):
        raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
    held = split == "eval"
    return [f"{a}+{v}" for a in ACCENTS for v in VARIANTS if (v in HELD_OUT_VARIANTS) == held]


def is_held_out_voice(voice: str) -> bool:
    return voice.rpartition("+")[2] in HELD_OUT_VARIANTS


def speech_text(corpus: str, rng: np.random.Generator, max_digits: int = 3, limit: int = 1000) -> tuple[str, str]:
    """(what is spoken, its transcript) for one clip of a built-in corpus."""
    if corpus == "spoken-digits":
        text = " ".join(str(d) for d in rng.integers(0, 10, int(rng.integers(1, max_digits + 1))))
        return text, text
    if corpus == "spoken-numbers":
        text = str(int(rng.integers(0, limit)))
        return text, text
    if corpus == "spoken-sentences":
        def w(kind):
            return _WORDS[kind][int(rng.integers(len(_WORDS[kind])))]
        text = f"the {w('adjective')} {w('noun')} {w('verb')} a {w('adjective')} {w('noun')}"
        return text, text
    raise ValueError(f"unknown speech corpus {corpus!r}; built-in: {', '.join(CORPORA)}")


@dataclass
class Clip:
    wave: Tensor  # [T] float32 in [-1, 1] at SAMPLE_RATE (or the rate asked for)
    text: str  # the transcript
    voice: str = ""
    rate: int = 0
    pitch: int = 0


def synthesize_clip(corpus: str, seed: int, split: str, index: int, sample_rate: int = SAMPLE_RATE,
                    **options) -> Clip:
    """Clip `index` of a built-in corpus, for the training or the held-out voices: a pure
    function of its arguments (and the espeak-ng version)."""
    spoken, clip = draw_clip(corpus, seed, split, index, **options)
    noise_seed = _stable(f"{corpus}|{seed}|{split}|{index}")
    wave, native = espeak().synthesize(spoken, clip.voice, clip.rate, clip.pitch, noise_seed)
    clip.wave = resample(wave, native, sample_rate)
    return clip


def draw_clip(corpus: str, seed: int, split: str, index: int, **options) -> tuple[str, Clip]:
    """What clip `index` says and how (its text, voice, rate, pitch), without synthesizing it:
    (the text to speak, a Clip with an empty wave)."""
    rng = np.random.default_rng([seed, ("train", "eval").index(split), index, _stable(corpus)])
    spoken, transcript = speech_text(corpus, rng, **options)
    names = voices(split)
    voice = names[int(rng.integers(len(names)))]
    rate, pitch = int(rng.integers(RATES[0], RATES[1] + 1)), int(rng.integers(PITCHES[0], PITCHES[1] + 1))
    return spoken, Clip(torch.zeros(0), transcript, voice, rate, pitch)


def _stable(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=4).digest(), "little")


# ---------------------------------------------------------------------- the espeak-ng engine
class _Espeak:
    """espeak-ng in this process through its C API (speak_lib.h). The engine is global to
    the process, so there is one instance (`espeak()`), made on first use."""

    def __init__(self):
        import espeakng_loader

        self.lib = ctypes.CDLL(espeakng_loader.get_library_path())
        self.lib.espeak_Synth.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint,
                                          ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
        self.lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        # espeak-ng's noise generator (breathy voices) is seeded from the clock unless told
        self.set_seed = getattr(self.lib, "espeak_ng_SetRandSeed", None)
        if self.set_seed is not None:
            self.set_seed.argtypes = [ctypes.c_long]
        data = espeakng_loader.get_data_path().encode()
        self.rate = self.lib.espeak_Initialize(2, 0, data, 0)  # AUDIO_OUTPUT_SYNCHRONOUS
        if self.rate <= 0:
            raise RuntimeError(f"espeak-ng failed to initialise (data: {data.decode()})")
        self.chunks: list[np.ndarray] = []
        callback_type = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)
        self.callback = callback_type(self._receive)  # kept referenced: the library calls it
        self.lib.espeak_SetSynthCallback(self.callback)

    def _receive(self, samples, n, events) -> int:
        if n > 0:
            self.chunks.append(np.ctypeslib.as_array(samples, shape=(n,)).copy())
        return 0  # 0: go on

    def synthesize(self, text: str, voice: str, rate: int, pitch: int, seed: int = 0) -> tuple[np.ndarray, int]:
        if self.set_seed is not None:
            self.set_seed(seed)
        if self.lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise ValueError(f"espeak-ng has no voice {voice!r}")
        self.lib.espeak_SetParameter(1, rate, 0)  # espeakRATE
        self.lib.espeak_SetParameter(3, pitch, 0)  # espeakPITCH
        self.chunks = []
        data = text.encode()
        if self.lib.espeak_Synth(data, len(data) + 1, 0, 0, 0, 0, None, None) != 0:
            raise RuntimeError(f"espeak-ng could not synthesize {text!r}")
        self.lib.espeak_Synchronize()
        wave = np.concatenate(self.chunks) if self.chunks else np.zeros(0, np.int16)
        return wave.astype(np.float32) / 32768.0, self.rate


class _EspeakProgram:
    """The `espeak-ng` program (apt-get install espeak-ng), one process per clip. It has no
    option to seed its noise generator, so breathy voices vary from run to run this way."""

    def __init__(self, path: str):
        self.path = path

    def synthesize(self, text: str, voice: str, rate: int, pitch: int, seed: int = 0) -> tuple[np.ndarray, int]:
        import soundfile

        done = subprocess.run([self.path, "-v", voice, "-s", str(rate), "-p", str(pitch), "--stdout", text],
                              capture_output=True, check=False)
        if done.returncode != 0 or not done.stdout:
            raise ValueError(f"espeak-ng could not speak with voice {voice!r}: {done.stderr.decode().strip()}")
        wave, rate_hz = soundfile.read(io.BytesIO(done.stdout), dtype="float32")
        return wave, rate_hz


_ENGINE = None


def espeak():
    """The speech engine: the espeakng-loader library if installed, else the espeak-ng program."""
    global _ENGINE
    if _ENGINE is None:
        try:
            _ENGINE = _Espeak()
        except ImportError:
            program = shutil.which("espeak-ng")
            if program is None:
                raise RuntimeError("the built-in speech corpora need espeak-ng: pip install espeakng-loader "
                                   "(or quatrix[audio]), or apt-get install espeak-ng") from None
            _ENGINE = _EspeakProgram(program)
    return _ENGINE


# ---------------------------------------------------------------------- audio files
def read_audio_pairs(path: Path) -> list[tuple[Path, str]]:
    """(audio path, transcript) pairs from a folder of clips with .txt transcripts or a .jsonl."""
    return read_pairs(Path(path), "audio", AUDIO_SUFFIXES, "transcript", ", ".join(CORPORA))


# ---------------------------------------------------------------------- a cached corpus
CACHE_VERSION = 1


def speech_corpus(corpus: str, n: int, seed: int, cache_dir: str | Path, split: str = "train",
                  sample_rate: int = SAMPLE_RATE, **options) -> dict:
    """The first n clips of a built-in corpus, synthesized once and cached in one .npz
    (int16 samples end to end, their offsets, transcripts and voices); later runs read the
    cache. Returns {"waves": int16 [sum T], "offsets": [n + 1], "texts", "voices"}."""
    from quatrix.io import atomic_path

    key = json.dumps([corpus, n, seed, split, sample_rate, sorted(options.items()), CACHE_VERSION])
    path = Path(cache_dir) / f"{corpus}-{split}-{n}-{hashlib.blake2b(key.encode(), digest_size=6).hexdigest()}.npz"
    if path.is_file():
        try:
            with np.load(path) as f:
                return {"waves": f["waves"], "offsets": f["offsets"], "texts": list(f["texts"]),
                        "voices": list(f["voices"])}
        except (OSError, ValueError, KeyError):
            path.unlink()  # a damaged cache is made again
    progress = Progress(f"synthesizing {corpus}", 0, n, unit="clips")
    clips = []
    for i in range(n):
        clips.append(synthesize_clip(corpus, seed, split, i, sample_rate, **options))
        progress.update(i + 1)
    progress.close()
    waves = np.concatenate([np.round(c.wave.numpy().clip(-1, 1) * 32767).astype(np.int16) for c in clips])
    offsets = np.cumsum([0] + [c.wave.numel() for c in clips])
    data = {"waves": waves, "offsets": offsets, "texts": np.array([c.text for c in clips]),
            "voices": np.array([c.voice for c in clips])}
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **data)
    return {**data, "texts": list(data["texts"]), "voices": list(data["voices"])}


def parse_audio_spec(spec: str) -> tuple[str, dict]:
    """'spoken-digits:n=4000,max_digits=2' -> ('spoken-digits', {'n': 4000, 'max_digits': 2})."""
    name, options = parse_spec(spec, "audio data")
    if name in CORPORA:
        check_corpus_options(name, options, extra=("n",))
        return name, options
    return spec, {}


def check_corpus_options(corpus: str, options: dict, extra: tuple[str, ...] = ()) -> None:
    """Refuse options a built-in corpus does not take, naming the ones it does."""
    allowed = {"spoken-digits": {"max_digits"}, "spoken-numbers": {"limit"}}.get(corpus, set()) | set(extra)
    unknown = set(options) - allowed
    if unknown:
        raise ValueError(f"{corpus}: unknown option(s) {sorted(unknown)}; it takes {sorted(allowed) or 'none'}")


class AudioTextSource:
    """example(i) -> ([T] waveform at the model's rate, transcript), deterministic in (seed,
    i); `size` examples. A built-in corpus is its first `n` training-voice clips (default
    DEFAULT_CLIPS), cached on disk; a path is the user's files, read as they are needed."""

    DEFAULT_CLIPS = 4000
    key = "mel_values"  # the model's keyword for this medium

    def __init__(self, spec: str, sample_rate: int, max_seconds: float, seed: int = 0, cache_dir: str | Path = ".",
                 log=print):
        self.sample_rate, self.max_seconds, self.seed = sample_rate, max_seconds, seed
        name, options = parse_audio_spec(spec)
        if name in CORPORA:
            n = int(options.pop("n", self.DEFAULT_CLIPS))
            self.corpus = speech_corpus(name, n, seed, cache_dir, "train", sample_rate, **options)
            self.pairs = None
            self.size = n
            longest = int(np.diff(self.corpus["offsets"]).max()) / sample_rate
            if longest > max_seconds:
                raise ValueError(f"{spec}: its longest clip is {longest:.2f} s, longer than the model's "
                                 f"{max_seconds} s (config.audio_max_seconds)")
        else:
            self.corpus, self.pairs = None, read_audio_pairs(Path(spec))
            self.size = len(self.pairs)

    def example(self, index: int) -> tuple[Tensor, str]:
        if self.corpus is not None:
            a, b = self.corpus["offsets"][index : index + 2]
            wave = torch.from_numpy(self.corpus["waves"][a:b].astype(np.float32) / 32767.0)
            return wave, str(self.corpus["texts"][index])
        path, text = self.pairs[index]
        return read_audio(path, self.sample_rate, self.max_seconds), text

    @staticmethod
    def stack(waves: list[Tensor]) -> Tensor:
        return pad_waves(waves)
