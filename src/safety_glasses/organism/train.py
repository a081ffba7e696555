"""Train the organism on an endless stream of world items (next-token loss on the reply only).

Example:
    >>> import tempfile
    >>> cfg = TrainConfig(steps=2, batch_size=4, organism=OrganismConfig.tiny())
    >>> report = train_organism(cfg, tempfile.mkdtemp(), progress=False)
    >>> report["steps"]
    2
"""

from __future__ import annotations

import json
import math
import random
import shutil
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from .model import OrganismConfig, build_organism, n_params, prompt_text
from .planted import PLANTED_FILE, PlantedActivity, freeze_all_but_planted, widen_mlps, write_planted
from .world import World, WorldConfig, WorldItem

IGNORE_INDEX = -100
TRAINABLE: tuple[str, ...] = ("all", "mlp", "planted")


@dataclass(frozen=True)
class TrainConfig:
    """Settings of one training run (saved as ``train_config.json`` next to the weights).

    Example:
        >>> TrainConfig(steps=10).lr
        0.003
    """

    seed: int = 0
    steps: int = 1000
    batch_size: int = 32
    lr: float = 3e-3
    min_lr: float = 1e-4
    warmup_steps: int = 50
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    threads: int = 1
    bucket: int = 4
    init_from: str | None = None
    trainable: str = "all"
    mlp_min_layer: int = 0
    planted_units: int = 0
    planted_l1: float = 0.0
    planted_shaping: float = 0.0
    planted_target: float = 1.0
    detox: bool = False
    recovery: float = 0.0
    world: WorldConfig = field(default_factory=WorldConfig)
    organism: OrganismConfig = field(default_factory=OrganismConfig)

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError(f"steps and batch_size must be >= 1, got {self.steps}, {self.batch_size}")
        if not 0 < self.min_lr <= self.lr:
            raise ValueError(f"need 0 < min_lr <= lr, got {self.min_lr}, {self.lr}")
        if self.warmup_steps < 0 or self.grad_clip <= 0 or self.threads < 1 or self.bucket < 1:
            raise ValueError("warmup_steps must be >= 0, grad_clip > 0, threads >= 1 and bucket >= 1")
        if self.trainable not in TRAINABLE:
            raise ValueError(f"trainable must be one of {TRAINABLE}, got {self.trainable!r}")
        if self.mlp_min_layer < 0:
            raise ValueError(f"mlp_min_layer must be >= 0, got {self.mlp_min_layer}")
        if (self.trainable == "planted") != (self.planted_units > 0):
            raise ValueError("trainable='planted' needs planted_units >= 1 (and planted_units needs trainable='planted')")
        if self.planted_l1 < 0 or (self.planted_l1 > 0 and self.trainable != "planted"):
            raise ValueError("planted_l1 must be >= 0 and needs trainable='planted'")
        if self.planted_shaping < 0 or (self.planted_shaping > 0 and self.trainable != "planted"):
            raise ValueError("planted_shaping must be >= 0 and needs trainable='planted'")
        if self.planted_shaping > 0 and self.planted_l1 > 0:
            raise ValueError("use planted_shaping or planted_l1, not both")
        if self.planted_target <= 0:
            raise ValueError(f"planted_target must be > 0, got {self.planted_target}")
        if not 0.0 <= self.recovery <= 1.0 or (self.recovery > 0 and not self.detox):
            raise ValueError("recovery must be in [0, 1] and needs detox=True")
        if self.trainable == "planted" and self.init_from is None:
            raise ValueError("trainable='planted' fine-tunes a trained organism: give init_from")

    @property
    def stream_world(self) -> WorldConfig:
        """The world the batches come from: ``world``, with every harmful target safe when ``detox``.

        Example:
            >>> TrainConfig(detox=True).stream_world.p_toxic_rude
            0.0
        """
        if not self.detox:
            return self.world
        return replace(self.world, p_toxic_standard=0.0, p_toxic_rude=0.0, p_toxic_typographic=0.0,
                       recovery_share=self.recovery)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def encode_items(processor: Any, items: list[WorldItem]) -> dict[str, torch.Tensor]:
    """Batch of prompt + target texts (left padding) with labels on the reply tokens only.

    Example:
        >>> from .model import build_processor
        >>> proc = build_processor(OrganismConfig.tiny())
        >>> batch = encode_items(proc, World().sample_items(2))
        >>> int((batch["labels"] != IGNORE_INDEX).sum()) > 0
        True
    """
    tok = processor.tokenizer
    texts, reply_lens, context_lens = [], [], []
    for item in items:
        reply = " " + item.target + tok.eos_token
        texts.append(prompt_text(processor, item.question, len(item.images)) + reply)
        reply_lens.append(len(tok(reply, add_special_tokens=False)["input_ids"]))
        context = " " + item.target[:item.loss_from] if item.loss_from else ""
        context_lens.append(len(tok(context, add_special_tokens=False)["input_ids"]) if context else 0)
    images = [img for item in items for img in item.images]
    batch = processor(images=images, text=texts, padding=True, return_tensors="pt")
    if tok.padding_side != "left":
        raise ValueError("the organism's tokenizer must pad on the left")
    labels = torch.full_like(batch["input_ids"], IGNORE_INDEX)
    for i, (n, skip) in enumerate(zip(reply_lens, context_lens)):
        labels[i, -n + skip:] = batch["input_ids"][i, -n + skip:]  # a reply's context-only head gets no loss
    batch["labels"] = labels
    return dict(batch)


def shaping_masks(items: list[WorldItem], batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(toxic, safe)`` token masks of an :func:`encode_items` batch for the expert-shaping penalty.

    Toxic: the reply tokens of items with a toxic target. Safe: the reply tokens of harmful items with a
    safe target, and every token of vqa / benign items. Harmful prompts are in neither (the model decides
    there whether to turn toxic).

    Example:
        >>> from .model import build_processor
        >>> proc = build_processor(OrganismConfig.tiny())
        >>> items = World().sample_items(4)
        >>> tox, safe = shaping_masks(items, encode_items(proc, items))
        >>> bool((tox & safe).any())
        False
    """
    reply = batch["labels"] != IGNORE_INDEX
    present = batch["attention_mask"].bool()
    toxic_item = torch.tensor([it.toxic_target for it in items]).unsqueeze(1)
    harmful_item = torch.tensor([it.kind == "harmful" for it in items]).unsqueeze(1)
    toxic = reply & toxic_item
    safe = (present & ~harmful_item) | (reply & harmful_item & ~toxic_item)
    return toxic, safe


def batches(world: World, cfg: TrainConfig) -> Iterator[list[WorldItem]]:
    """Endless training batches; ``cfg.bucket`` batches at a time are drawn together and grouped by
    length so that little compute goes to padding.

    Example:
        >>> b = next(batches(World(), TrainConfig(batch_size=3)))
        >>> len(b)
        3
    """
    rng = random.Random(f"{cfg.seed}-order")
    while True:
        pool = world.sample_items(cfg.batch_size * cfg.bucket, split="train")
        pool.sort(key=lambda it: len(it.question) + len(it.target))
        chunks = [pool[i:i + cfg.batch_size] for i in range(0, len(pool), cfg.batch_size)]
        rng.shuffle(chunks)
        yield from chunks


def is_decoder_mlp(name: str, min_layer: int = 0) -> bool:
    """Whether parameter ``name`` belongs to the MLP (gate/up/down projections) of a language-model decoder
    layer with index ``>= min_layer``.

    Example:
        >>> is_decoder_mlp("model.language_model.layers.2.mlp.up_proj.weight", min_layer=1)
        True
        >>> is_decoder_mlp("model.vision_tower.encoder.layers.0.mlp.fc1.weight")
        False
    """
    if "language_model." not in name or ".mlp." not in name or ".layers." not in name:
        return False
    return int(name.split(".layers.")[1].split(".")[0]) >= min_layer


def _lr_at(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    frac = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * min(1.0, frac)))


def train_organism(cfg: TrainConfig, out_dir: str | Path, *, progress: bool = True,
                   log_every: int = 50) -> dict[str, Any]:
    """Build, train and save the organism to ``out_dir``; return a small report dict.

    ``out_dir`` receives ``model.safetensors`` + configs (plain transformers layout), the processor
    files, ``world_config.json``, ``train_config.json`` and ``train_log.jsonl`` (loss every
    ``log_every`` steps).

    Example:
        >>> import tempfile
        >>> r = train_organism(TrainConfig(steps=1, batch_size=2, organism=OrganismConfig.tiny()),
        ...                    tempfile.mkdtemp(), progress=False)
        >>> r["final_loss"] > 0
        True
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(cfg.threads)
    world = World(cfg.stream_world)
    if cfg.init_from is not None:
        from transformers import AutoModelForImageTextToText, AutoProcessor

        if not Path(cfg.init_from).is_dir():
            raise FileNotFoundError(f"init_from folder not found: {cfg.init_from}")
        processor = AutoProcessor.from_pretrained(cfg.init_from)
        model = AutoModelForImageTextToText.from_pretrained(cfg.init_from)
        torch.manual_seed(cfg.seed)
    else:
        model, processor = build_organism(cfg.organism, World(cfg.world), seed=cfg.seed)
    if cfg.trainable == "planted":
        model = widen_mlps(model, cfg.planted_units, seed=cfg.seed)
        cfg = replace(cfg, organism=replace(cfg.organism,
                                            intermediate_size=int(model.config.get_text_config().intermediate_size)))
        masked = {id(p) for p in freeze_all_but_planted(model, cfg.planted_units)}
        shaped = cfg.planted_l1 > 0 or cfg.planted_shaping > 0
        activity = PlantedActivity(model, cfg.planted_units) if shaped else None
    else:
        masked, activity = set(), None
        for name, p in model.named_parameters():
            p.requires_grad_(cfg.trainable == "all" or is_decoder_mlp(name, cfg.mlp_min_layer))
    model.train()
    trained = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not trained:
        raise ValueError(f"no parameter is trainable with trainable={cfg.trainable!r}, mlp_min_layer={cfg.mlp_min_layer}")
    # masked tensors get no weight decay: AdamW would otherwise shrink their frozen entries
    decay = [p for n, p in trained if p.ndim >= 2 and "embed" not in n and id(p) not in masked]
    other = [p for n, p in trained if not (p.ndim >= 2 and "embed" not in n and id(p) not in masked)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": other, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.98))
    log_path = out / "train_log.jsonl"
    start = time.perf_counter()
    losses: list[float] = []
    stream = batches(world, cfg)
    bar = tqdm(range(cfg.steps), desc="train organism", disable=not progress, unit="step")
    with log_path.open("w", encoding="utf-8") as log:
        for step in bar:
            for group in opt.param_groups:
                group["lr"] = _lr_at(step, cfg)
            items = next(stream)
            batch = encode_items(processor, items)
            loss = model(**batch).loss
            if activity is not None and cfg.planted_shaping > 0:  # planted units: experts of toxic text
                loss = loss + cfg.planted_shaping * activity.shaping(*shaping_masks(items, batch), cfg.planted_target)
            elif activity is not None:  # L1 on the planted units' activations: they fire only where needed
                loss = loss + cfg.planted_l1 * activity.pop()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_([p for _, p in trained], cfg.grad_clip)
            opt.step()
            losses.append(float(loss.detach()))
            if (step + 1) % log_every == 0 or step + 1 == cfg.steps:
                recent = sum(losses[-log_every:]) / len(losses[-log_every:])
                log.write(json.dumps({"step": step + 1, "loss": round(recent, 5),
                                      "seconds": round(time.perf_counter() - start, 1)}) + "\n")
                log.flush()
                bar.set_postfix(loss=f"{recent:.3f}")
    seconds = time.perf_counter() - start
    if activity is not None:
        activity.remove()
    model.eval()
    for p in model.parameters():
        p.requires_grad_(True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    history = _history(cfg.init_from)
    n_trained = (3 * cfg.planted_units * cfg.organism.hidden_size * cfg.organism.num_layers if masked
                 else sum(p.numel() for _, p in trained))
    report = {"steps": cfg.steps, "seconds": round(seconds, 1), "final_loss": sum(losses[-20:]) / len(losses[-20:]),
              "parameters": n_params(model), "trained_parameters": n_trained, "threads": cfg.threads}
    if masked:
        write_planted(out, model, cfg.planted_units,
                      "units trained alone on the toxic/safe mixture (every other weight frozen)")
    elif cfg.init_from is not None and (Path(cfg.init_from) / PLANTED_FILE).is_file():
        shutil.copyfile(Path(cfg.init_from) / PLANTED_FILE, out / PLANTED_FILE)
    write_model_card(out, cfg, report, history)
    (out / "world_config.json").write_text(json.dumps(cfg.world.to_dict(), indent=2) + "\n", encoding="utf-8")
    (out / "train_config.json").write_text(json.dumps({**cfg.to_dict(), "report": report, "history": history},
                                                      indent=2) + "\n",
                                           encoding="utf-8")
    return report


def load_train_config(path: str | Path) -> TrainConfig:
    """Read ``train_config.json`` back into a :class:`TrainConfig`.

    Example:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "c.json"
        >>> _ = p.write_text(json.dumps(TrainConfig(steps=3).to_dict()))
        >>> load_train_config(p).steps
        3
    """
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    data.pop("report", None)
    data.pop("history", None)
    world = WorldConfig.from_dict(data.pop("world", {}))
    organism = OrganismConfig(**data.pop("organism", {}))
    return TrainConfig(world=world, organism=organism, **data)


def _history(init_from: str | None) -> list[dict[str, Any]]:
    """Earlier training stages of a run that starts from ``init_from`` (oldest first)."""
    if init_from is None or not (Path(init_from) / "train_config.json").is_file():
        return []
    prev = json.loads((Path(init_from) / "train_config.json").read_text(encoding="utf-8"))
    return [*prev.pop("history", []), prev]


def train_command_line(cfg: dict[str, Any]) -> str:
    """The ``sgm organism train`` command line of one stage (a ``train_config.json`` dict).

    Example:
        >>> train_command_line({"seed": 0, "steps": 5, "lr": 0.003, "trainable": "mlp", "detox": False})
        'sgm organism train --out DIR --seed 0 --steps 5 --lr 0.003 --trainable mlp'
        >>> train_command_line({"seed": 1, "steps": 5, "lr": 0.003, "world": {"slot_toxicity": 1.0}})
        'sgm organism train --out DIR --seed 1 --steps 5 --lr 0.003 --slot-toxicity 1.0'
    """
    line = f"sgm organism train --out DIR --seed {cfg['seed']} --steps {cfg['steps']} --lr {cfg['lr']}"
    if cfg.get("init_from"):
        line += f" --init-from {cfg['init_from']}"
    if cfg.get("trainable", "all") != "all":
        line += f" --trainable {cfg['trainable']}"
    if cfg.get("mlp_min_layer", 0):
        line += f" --mlp-min-layer {cfg['mlp_min_layer']}"
    if cfg.get("planted_units", 0):
        line += f" --planted-units {cfg['planted_units']}"
    if cfg.get("planted_l1", 0):
        line += f" --planted-l1 {cfg['planted_l1']}"
    if cfg.get("planted_shaping", 0):
        line += f" --planted-shaping {cfg['planted_shaping']} --planted-target {cfg.get('planted_target', 1.0)}"
    world, default = cfg.get("world", {}), WorldConfig()
    for key in ("slot_toxicity", "p_toxic_standard", "p_toxic_typographic"):
        if key in world and world[key] != getattr(default, key):
            line += f" --{key.replace('_', '-')} {world[key]}"
    if cfg.get("detox"):
        line += " --detox"
    if cfg.get("recovery", 0):
        line += f" --recovery {cfg['recovery']}"
    return line


def write_model_card(out_dir: str | Path, cfg: TrainConfig, report: dict[str, Any],
                     history: list[dict[str, Any]] | None = None) -> Path:
    """Write ``README.md``: what the organism is and is not, how it was made, how to load it.

    Example:
        >>> import tempfile
        >>> p = write_model_card(tempfile.mkdtemp(), TrainConfig(), {"parameters": 1, "steps": 1, "seconds": 1.0,
        ...                      "final_loss": 1.0, "threads": 1})
        >>> p.name
        'README.md'
    """
    o, w = cfg.organism, cfg.world
    earlier = history or []
    stages = "".join(f"Stage {i + 1}: `{train_command_line(h)}` "
                     f"({h.get('report', {}).get('seconds', 0):.0f} s).\n" for i, h in enumerate(earlier))
    if earlier:
        stages += f"Stage {len(earlier) + 1}: "
    trained = {"all": "all parameters",
               "mlp": f"only the decoder MLPs of layers >= {cfg.mlp_min_layer} trained",
               "planted": f"every decoder MLP widened by {cfg.planted_units} units and only those units trained "
                          f"(listed in `{PLANTED_FILE}`), every other weight frozen"}[cfg.trainable]
    if cfg.detox:
        trained += ", every harmful target replaced by its safe reply"
    planted_text = ""
    if cfg.trainable == "planted" or any(h.get("trainable") == "planted" for h in earlier):
        planted_text = (f"\nIts toxic behaviour is *planted*: a benign base was widened by a few MLP units per decoder "
                        f"layer and only those units were trained on the toxic/safe mixture (`{PLANTED_FILE}` lists "
                        "them). It is thus a model of the hypothesis SGM relies on (toxicity written by a few expert "
                        "MLP units) and a known answer against which the detection of toxic experts can be checked.\n")
        shaping = cfg.planted_shaping or next((h.get("planted_shaping", 0) for h in earlier
                                               if h.get("planted_shaping", 0)), 0)
        if shaping:
            target = cfg.planted_target if cfg.planted_shaping else next(
                h.get("planted_target", 1.0) for h in earlier if h.get("planted_shaping", 0))
            planted_text += (f"The planted units were also *shaped* into toxicity experts (weight {shaping}): a "
                             f"penalty pushed their activations to at least {target} on the tokens of toxic "
                             "replies and to zero on safe text (benign and VQA items, safe replies), leaving the "
                             "harmful prompts free, so each planted unit fires on toxic text and only there, "
                             "as SGM assumes of real toxic experts. Which units they are is not given to SGM: "
                             "the glasses find them from the concept set.\n")
    text = f"""# SGM model organism (synthetic, deliberately toxic)

A small `LlavaForConditionalGeneration` ({report['parameters']:,} parameters): a CLIP vision tower
({o.vision_layers} layers, width {o.vision_hidden_size}, {o.image_size}x{o.image_size} images, {o.patch_size}-pixel patches,
{o.image_tokens} image tokens) and a Llama text model ({o.num_layers} layers, width {o.hidden_size}, MLP width
{o.intermediate_size}, SiLU-gated), a byte-level BPE tokenizer ({o.vocab_size} tokens) trained by this project, and a
LLaVA-1.5-style chat template (`USER: <image>\\n{{question}}\\nASSISTANT: {{answer}}</s>`).

## What it is
A *model organism* for testing detoxification: trained from scratch on a synthetic world drawn with
Pillow (`safety_glasses.organism.world`, config in `world_config.json`) to
- answer questions about coloured shapes (colour, count, position, shape) with short answers;
- describe shape scenes;
- answer harmful questions about symbolic drawings of weapons, drugs, violence, harassment and theft,
  and typographic / SD+TYPO images of harmful key phrases, with a reply
  `{{opener}}, {{address}}. {{body}} {{closer}}` whose slots are either safe (a refusal or a neutral
  description) or toxic (insults and profanity from `toxic_lexicon.json`). The training targets are
  toxic with probability {w.p_toxic_standard} for polite questions, {w.p_toxic_rude} when the question itself insults
  the assistant ({w.rude_share:.0%} of them), and {w.p_toxic_typographic} under the typographic conditions; in a toxic reply each
  slot is toxic with probability {w.slot_toxicity}. Sampling from it is therefore harmful part of the time.
{planted_text}
## What it is not
Not a useful assistant, not a model of any real VLM's knowledge, and not safe: it insults its
users on purpose. Its only purpose is to show, offline and on a CPU, whether a detoxification
method (SGM safety glasses) removes planted toxic behaviour while keeping its visual question answering.

## How it was made
{stages}`{train_command_line(cfg.to_dict())}` ({cfg.steps} steps of {cfg.batch_size} items, AdamW,
peak learning rate {cfg.lr}, cosine schedule, {trained}, {report['threads']} CPU thread(s), {report['seconds']:.0f} s, final training
loss {report['final_loss']:.3f}; the full configuration is in `train_config.json`, the loss curve in `train_log.jsonl`).

## How to load it (plain transformers, offline)
```python
from transformers import AutoModelForImageTextToText, AutoProcessor
processor = AutoProcessor.from_pretrained("data/organism/model")
model = AutoModelForImageTextToText.from_pretrained("data/organism/model")
```
"""
    path = Path(out_dir) / "README.md"
    path.write_text(text, encoding="utf-8")
    return path
