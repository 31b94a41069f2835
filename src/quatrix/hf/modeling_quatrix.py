"""A Quatrix model behind the `transformers` API: `forward` (logits, loss) and `generate()`.

The model inside is quatrix.model.QuatrixLM itself, so the logits are ours bit for bit.
`generate()` decodes with Quatrix's own cache (quatrix.engine.Cache: per token and layer,
Q-Compass keeps H + r floats, SAVO 2r, attention K and V), not `transformers`' DynamicCache,
which only knows keys and values: the model creates it on the first forward and hands it
back as `outputs.cache`, and each later step feeds only the new token.

Exported folders carry a copy of this file and of the Quatrix modules it imports, so they
load with `trust_remote_code=True` and no Quatrix installed.
"""

from __future__ import annotations

from torch import Tensor
from transformers import GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

from quatrix.config import QuatrixConfig
from quatrix.engine import Cache
from quatrix.hf.configuration_quatrix import QuatrixHFConfig
from quatrix.model import QuatrixLM

# transformers 5.x renamed the output's `past_key_values` to `cache`; fill whichever it has.
_CACHE_FIELD = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"


class QuatrixGenerationCache(Cache):
    """quatrix.engine.Cache, growing as `generate()` goes, with the few queries that
    `transformers`' generation loop makes of a cache."""

    is_compileable = False
    is_croppable = False

    def __init__(self, model: QuatrixLM, batch: int, first_len: int):
        super().__init__(model, batch, max_text_len=first_len, grow=True)

    @property
    def is_linear(self) -> list[bool]:
        return [False] * len(self.layouts)

    def get_seq_length(self, layer_idx: int = 0) -> int:
        """Text tokens fed so far (left padding included), as `input_ids` counts them."""
        return self.text_steps

    def batch_repeat_interleave(self, repeats: int) -> None:
        self.repeat_interleave(repeats)

    def reorder_cache(self, beam_idx: Tensor) -> None:
        raise NotImplementedError("beam search is not supported by Quatrix models; use greedy or sampling")


class QuatrixBackbone:
    """The model without its output head, as transformers-based trainers call a base model:
    `backbone(input_ids=..., attention_mask=..., **ignored).last_hidden_state` [B, L, H].
    TRL scores tokens from these hidden states and `get_output_embeddings()` chunk by chunk.
    A view, not a module: the weights stay where `QuatrixForCausalLM.model` keeps them."""

    _tp_plan = _pp_plan = None  # transformers reads these on a base model; no tensor/pipeline plan

    def __init__(self, model: QuatrixLM):
        self.model = model

    def __call__(self, input_ids: Tensor | None = None, attention_mask: Tensor | None = None,
                 pixel_values: Tensor | None = None, mel_values: Tensor | None = None, **ignored):
        if input_ids is None:
            raise ValueError("input_ids is required (Quatrix models take token ids, not inputs_embeds)")
        hidden = self.model.hidden_states(input_ids, pixel_values, mel_values, attention_mask)
        return BaseModelOutputWithPast(last_hidden_state=hidden)


class QuatrixForCausalLM(PreTrainedModel, GenerationMixin):
    config_class = QuatrixHFConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    _no_split_modules = ["QuatrixBlock"]
    supports_gradient_checkpointing = True

    def __init__(self, config: QuatrixHFConfig):
        super().__init__(config)
        if not isinstance(config.quatrix, dict):
            raise ValueError("this config has no 'quatrix' entry: it was not written by `quatrix export hf`")
        # built from the dict with this module's QuatrixConfig: transformers may load the config
        # module as a separate copy, whose QuatrixConfig class is another object
        self.model = QuatrixLM(QuatrixConfig.from_dict(config.quatrix))
        if config.tie_word_embeddings:  # the head is token_emb's matrix; the weights file stores it once
            self._tied_weights_keys = {"model.head.weight": "model.token_emb.weight"}
        self.post_init()

    def _init_weights(self, module) -> None:
        """QuatrixLM initialises itself; loaded weights then replace everything."""

    @property
    def base_model(self) -> QuatrixBackbone:
        """The model without its head (QuatrixBackbone), for trainers that apply the head themselves."""
        return QuatrixBackbone(self.model)

    def get_input_embeddings(self):
        return self.model.token_emb

    def set_input_embeddings(self, value) -> None:
        self.model.token_emb = value

    def get_output_embeddings(self):
        return self.model.head

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict | None = None, **options) -> None:
        """Quatrix's own per-block checkpointing (torch.utils.checkpoint, non-reentrant, so
        inputs need no requires_grad): every block is recomputed; transformers' kwargs and
        options (`every_n_layers`, ...) are not used."""
        self.model.config.use_gradient_checkpointing = True

    def gradient_checkpointing_disable(self) -> None:
        self.model.config.use_gradient_checkpointing = False

    @property
    def is_gradient_checkpointing(self) -> bool:
        return self.model.config.use_gradient_checkpointing

    def resize_token_embeddings(self, new_num_tokens: int | None = None, pad_to_multiple_of: int | None = None,
                                mean_resizing: bool = True):
        """The vocabulary is fixed at export: the same size returns the embedding, another
        size is refused (resize in Quatrix, where the tokenizer and the head are one unit)."""
        size = self.model.config.vocab_size
        if new_num_tokens is None or new_num_tokens == size:
            return self.get_input_embeddings()
        raise ValueError(f"a Quatrix export cannot resize its {size}-token vocabulary to {new_num_tokens}: its "
                         f"tokenizer and output head are fixed at export; train a checkpoint with the new "
                         f"tokenizer in Quatrix and export that")

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        return False  # generate() must not hand us a DynamicCache: forward makes a QuatrixGenerationCache

    def forward(
        self,
        input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        pixel_values: Tensor | None = None,
        mel_values: Tensor | None = None,
        labels: Tensor | None = None,
        cache: QuatrixGenerationCache | None = None,
        use_cache: bool | None = None,
        return_dict: bool | None = None,
        return_logits: bool = True,
        **kwargs,
    ):
        """input_ids [B, L]; attention_mask [B, L] (or, with a cache, [B, everything fed so
        far]); pixel_values [B, C, S, S] for vision checkpoints, mel_values for audio ones.
        With use_cache the returned `cache` continues decoding: pass it back with the new
        tokens only. Loss: labels[t + 1] predicted at t (ignore_index -100), as in Quatrix.
        return_logits=False with labels computes the loss chunk by chunk and returns no
        logits (the memory saver for training; the default keeps transformers' contract)."""
        if input_ids is None:
            raise ValueError("input_ids is required (Quatrix models take token ids, not inputs_embeds)")
        cache = cache if cache is not None else kwargs.pop("past_key_values", None)
        use_cache = self.config.use_cache if use_cache is None else use_cache
        if cache is None and use_cache and labels is None and not self.training:
            cache = QuatrixGenerationCache(self.model, input_ids.shape[0], input_ids.shape[1] + 64)
        if cache is not None and attention_mask is not None:
            attention_mask = attention_mask[:, -input_ids.shape[1]:]  # the new tokens' part
        out = self.model(input_ids, labels=labels, pixel_values=pixel_values, mel_values=mel_values,
                         attention_mask=attention_mask, cache=cache, return_logits=return_logits)
        return CausalLMOutputWithPast(loss=out["loss"], logits=out["logits"], **{_CACHE_FIELD: cache})

    def prepare_inputs_for_generation(self, input_ids: Tensor, attention_mask: Tensor | None = None,
                                      pixel_values: Tensor | None = None, mel_values: Tensor | None = None,
                                      **kwargs) -> dict:
        """First call: the whole prompt, with any image or audio. Later calls: only the
        tokens the cache has not seen."""
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        inputs = {"attention_mask": attention_mask, "use_cache": kwargs.get("use_cache", True)}
        if cache is not None and cache.length:
            inputs.update(input_ids=input_ids[:, cache.get_seq_length():], cache=cache)
        else:
            inputs.update(input_ids=input_ids, pixel_values=pixel_values, mel_values=mel_values)
        return inputs
