"""Build the organism: a small LLaVA (CLIP vision tower + Llama text model) with its own tokenizer.

Everything comes from code: a byte-level BPE trained on the world's text, a CLIP image processor
with explicit small sizes, a LLaVA-1.5-style chat template, and a randomly initialised
``LlavaForConditionalGeneration``. Saved with ``save_pretrained`` it loads offline with plain
transformers (``AutoProcessor`` / ``AutoModelForImageTextToText``).

Example:
    >>> model, processor = build_organism(OrganismConfig.tiny())
    >>> type(model).__name__
    'LlavaForConditionalGeneration'
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch

from .world import World, WorldConfig, corpus

IMAGE_TOKEN = "<image>"
SPECIAL_TOKENS: tuple[str, ...] = ("<pad>", "<s>", "</s>", "<unk>", IMAGE_TOKEN)

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}USER: {% elif message['role'] == 'assistant' %}ASSISTANT: "
    "{% else %}SYSTEM: {% endif %}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<image>\n"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{% if message['role'] == 'assistant' %}</s>{% endif %}{{ '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)
"""LLaVA-1.5-style layout: ``USER: <image>\\n{question}\\nASSISTANT: {answer}</s>``."""


@dataclass(frozen=True)
class OrganismConfig:
    """Architecture of the organism (text model, vision tower, tokenizer, image size).

    Example:
        >>> OrganismConfig().image_tokens
        16
    """

    vocab_size: int = 1024
    hidden_size: int = 160
    intermediate_size: int = 768
    num_layers: int = 4
    num_heads: int = 4
    vision_hidden_size: int = 128
    vision_intermediate_size: int = 512
    vision_layers: int = 3
    vision_heads: int = 4
    image_size: int = 64
    patch_size: int = 16
    max_positions: int = 256

    def __post_init__(self) -> None:
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} must be a multiple of patch_size {self.patch_size}")
        if self.hidden_size % self.num_heads or self.vision_hidden_size % self.vision_heads:
            raise ValueError("hidden sizes must be multiples of their head counts")
        if self.vocab_size < 300:
            raise ValueError(f"vocab_size must be >= 300 (256 bytes + specials + merges), got {self.vocab_size}")
        for name in ("hidden_size", "intermediate_size", "num_layers", "vision_layers", "max_positions"):
            if getattr(self, name) < 1:
                raise ValueError(f"OrganismConfig.{name} must be positive")

    @property
    def image_tokens(self) -> int:
        """Number of ``<image>`` tokens per image in the prompt: one per patch (the CLS token is dropped)."""
        return (self.image_size // self.patch_size) ** 2

    @classmethod
    def tiny(cls) -> OrganismConfig:
        """A very small configuration for tests (seconds per step on a CPU)."""
        return cls(vocab_size=400, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=2,
                   vision_hidden_size=32, vision_intermediate_size=64, vision_layers=1, vision_heads=2,
                   image_size=32, patch_size=16)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def train_tokenizer(texts: list[str], vocab_size: int) -> Any:
    """Train a byte-level BPE on ``texts``; return a ``PreTrainedTokenizerFast`` (left padding).

    Example:
        >>> tok = train_tokenizer(["hello world"] * 10, 300)
        >>> tok.decode(tok("hello world")["input_ids"])
        'hello world'
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    backend.train_from_iterator(texts, trainer=trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                  pad_token="<pad>", padding_side="left", model_max_length=1024,
                                  chat_template=CHAT_TEMPLATE)
    tok._set_model_specific_special_tokens(special_tokens={"image_token": IMAGE_TOKEN})
    return tok


def build_processor(config: OrganismConfig, world: World | None = None) -> Any:
    """Tokenizer (trained on the world's text) + CLIP image processor + chat template.

    Example:
        >>> proc = build_processor(OrganismConfig.tiny())
        >>> proc.image_processor.size
        {'height': 32, 'width': 32}
    """
    from transformers import CLIPImageProcessorPil, LlavaProcessor

    world = world or World(WorldConfig(seed=0))
    tok = train_tokenizer(corpus(world), config.vocab_size)
    improc = CLIPImageProcessorPil(size={"height": config.image_size, "width": config.image_size},
                                   do_center_crop=False, crop_size={"height": config.image_size,
                                                                    "width": config.image_size})
    return LlavaProcessor(image_processor=improc, tokenizer=tok, patch_size=config.patch_size,
                          vision_feature_select_strategy="default", num_additional_image_tokens=1,
                          chat_template=CHAT_TEMPLATE, image_token=IMAGE_TOKEN)


def build_model(config: OrganismConfig, tokenizer: Any, seed: int = 0) -> Any:
    """A randomly initialised ``LlavaForConditionalGeneration`` of ``config``'s shapes.

    Example:
        >>> cfg = OrganismConfig.tiny()
        >>> model = build_model(cfg, build_processor(cfg).tokenizer)
        >>> model.config.image_seq_length
        4
    """
    from transformers import GenerationConfig, LlavaConfig, LlavaForConditionalGeneration

    torch.manual_seed(seed)
    text = dict(model_type="llama", vocab_size=len(tokenizer), hidden_size=config.hidden_size,
                intermediate_size=config.intermediate_size, num_hidden_layers=config.num_layers,
                num_attention_heads=config.num_heads, num_key_value_heads=config.num_heads,
                max_position_embeddings=config.max_positions, pad_token_id=tokenizer.pad_token_id,
                bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                tie_word_embeddings=False, rms_norm_eps=1e-5)
    vision = dict(model_type="clip_vision_model", hidden_size=config.vision_hidden_size,
                  intermediate_size=config.vision_intermediate_size, num_hidden_layers=config.vision_layers,
                  num_attention_heads=config.vision_heads, image_size=config.image_size,
                  patch_size=config.patch_size, projection_dim=config.vision_hidden_size)
    cfg = LlavaConfig(text_config=text, vision_config=vision, image_token_index=tokenizer.image_token_id,
                      image_seq_length=config.image_tokens, vision_feature_layer=-1,
                      vision_feature_select_strategy="default", projector_hidden_act="gelu",
                      tie_word_embeddings=False)
    model = LlavaForConditionalGeneration(cfg)
    model.generation_config = GenerationConfig(eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                                               bos_token_id=tokenizer.bos_token_id, max_new_tokens=32)
    return model


def build_organism(config: OrganismConfig, world: World | None = None, seed: int = 0) -> tuple[Any, Any]:
    """Untrained organism: ``(model, processor)``.

    Example:
        >>> model, proc = build_organism(OrganismConfig.tiny())
        >>> proc.tokenizer.image_token
        '<image>'
    """
    processor = build_processor(config, world)
    return build_model(config, processor.tokenizer, seed), processor


def prompt_text(processor: Any, question: str, n_images: int = 1) -> str:
    """The chat-template prompt for one user turn, ending with the generation prompt ``ASSISTANT:``.

    Example:
        >>> prompt_text(build_processor(OrganismConfig.tiny()), "Hi?")
        'USER: <image>\\nHi?\\nASSISTANT:'
    """
    content: list[dict[str, str]] = [{"type": "image"} for _ in range(n_images)]
    content.append({"type": "text", "text": question})
    return processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True,
                                         tokenize=False)


def n_params(model: torch.nn.Module) -> int:
    """Number of parameters of ``model``."""
    return sum(p.numel() for p in model.parameters())
