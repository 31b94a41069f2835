import inspect

import numpy as np
import pytest
import soundfile
import torch
from PIL import Image

from conftest import tiny_config
from quatrix import QuatrixConfig, QuatrixLM
from quatrix.media import MODALITIES, batch_media, check_encoder, load_media, model_inputs, modality


def test_the_table_names_the_models_own_keywords_switches_and_encoders():
    keywords = inspect.signature(QuatrixLM.forward).parameters
    model = QuatrixLM(tiny_config(use_vision=True, use_audio=True))
    for m in MODALITIES.values():
        assert m.model_input in keywords
        assert isinstance(getattr(QuatrixConfig(), m.config_flag), bool)
        assert getattr(model, m.encoder) is not None
    assert model_inputs({"image": 1, "audio": 2}) == {"pixel_values": 1, "mel_values": 2}
    with pytest.raises(ValueError, match="unknown modality 'video'"):
        modality("video")


def test_check_encoder_names_what_carried_the_media():
    with pytest.raises(ValueError, match="--data x.jsonl carries audio, but the model has no audio encoder"):
        check_encoder(tiny_config(), "audio", "--data x.jsonl")
    check_encoder(tiny_config(use_vision=True), "image", "anything")


def test_files_and_tensors_come_out_as_the_model_takes_them(tmp_path):
    config = tiny_config(use_vision=True, use_audio=True)
    Image.fromarray(np.full((7, 5, 3), 255, np.uint8)).save(tmp_path / "white.png")
    image = load_media("image", tmp_path / "white.png", config)
    assert image.shape == (3, config.image_size, config.image_size) and torch.allclose(image, torch.ones(()))
    soundfile.write(tmp_path / "tone.wav", np.zeros(8000, np.float32), 8000)  # 1 s at 8 kHz
    clip = load_media("audio", tmp_path / "tone.wav", config)
    assert clip.shape == (config.sample_rate,)
    batch = batch_media("audio", [clip, clip[: config.sample_rate // 2]], config)
    assert batch.shape == (2, config.sample_rate) and batch[1, config.sample_rate // 2:].abs().sum() == 0
    with pytest.raises(ValueError, match="shorter than one 25 ms window"):
        load_media("audio", torch.zeros(3), config)
    with pytest.raises(FileNotFoundError, match="image not found"):
        load_media("image", tmp_path / "none.png", config)
