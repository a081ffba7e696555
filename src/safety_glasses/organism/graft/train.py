"""Train the graft's vision side by LLaVA's recipe: the LM is frozen, only the vision tower and the
projector learn.

Two stages, numbered as one run of ``pretrain_steps + align_steps`` steps:

1. ``pretrain`` (no LM pass, milliseconds per step): every projected image token is pulled towards the LM's
   input embedding of its slot caption token (:func:`.data.slot_ids`): a cross-entropy over the cosine
   similarities with the caption vocabulary (temperature ``slot_temperature``) plus a squared error to the
   exact embedding. Afterwards the frozen LM reads an image roughly as it would read its caption;
2. ``align`` (the LLaVA loss): next-token cross-entropy of the answers through the frozen LM. The first
   ``single_object_steps`` use shape scenes with one object and short answers only (a curriculum).
   For speed the LM runs in ``lm_dtype`` (bfloat16 by default) with eager attention, the key/value cache of
   the fixed prompt prefix (system prompt + user header) is computed once, and the LM head is applied at
   answer positions only. The LM's weights are never written: the shipped vision side records the
   float32 LM's :func:`.build.lm_digest`.

Checkpoints (``checkpoint/``: vision side, AdamW moments, step) are written every ``checkpoint_every``
steps; a rerun with the same ``out`` resumes from the last one. ``train_log.jsonl`` gets a line every
``log_every`` steps and the grounding probe (:mod:`.probe`) every ``probe_every`` steps.

Example:
    >>> cfg = GraftTrainConfig(pretrain_steps=2, align_steps=2, batch_size=2, graft=GraftConfig.tiny("<x>"))
    >>> report = train_graft(cfg, "tiny-lm", "runs/tiny-graft", progress=False)  # doctest: +SKIP
"""

from __future__ import annotations

import inspect
import json
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..world import CATEGORIES, COLOURS, QUADRANTS, SHAPES, world_text
from .build import GraftConfig, build_graft_from, freeze_lm, init_vision_tower_from, lm_digest, load_lm, save_vision_side
from .data import KIND_MIX, LMBatch, encode_for_lm, filler_id, prompt_prefix_ids, sample_examples, slot_ids
from .teacher import TEACHER_FILE, build_teacher_set, load_teacher, save_teacher, teacher_examples, teacher_items

CHECKPOINT_DIR = "checkpoint"
LOG_FILE = "train_log.jsonl"
LM_DTYPES: dict[str, torch.dtype] = {"bfloat16": torch.bfloat16, "float32": torch.float32}
OPERATIONAL: tuple[str, ...] = ("threads", "checkpoint_every", "log_every", "probe_every", "probe_vqa", "probe_names",
                                "probe_reading", "stop_after")
"""Settings that do not change what is trained: a run may resume with other values of these."""


@dataclass(frozen=True)
class GraftTrainConfig:
    """Settings of one graft training run (saved as ``recipe`` in the vision side's ``graft_config.json``).

    ``teacher_examples`` / ``teacher_share``: build that many text twins (:mod:`.teacher`: the frozen LM's own
    replies to harmful requests whose image is described in words) at the start of the align stage and
    give them this share of every align batch after the curriculum.

    ``init_from``: start from a trained vision side (a folder with ``vision.safetensors``: an earlier run's
    output or its ``checkpoint/``), e.g. a ``pretrain_steps=0`` run continuing a ``align_steps=0`` one;
    ``init_vision_from``: copy only the CLIP vision tower of a trained organism folder.

    Example:
        >>> GraftTrainConfig().total_steps
        2700
    """

    seed: int = 0
    graft: GraftConfig = field(default_factory=GraftConfig)
    init_from: str | None = None
    init_vision_from: str | None = None
    pretrain_steps: int = 1500
    pretrain_batch_size: int = 64
    pretrain_lr: float = 1e-3
    slot_temperature: float = 0.05
    slot_mse: float = 0.3
    align_steps: int = 1200
    single_object_steps: int = 200
    kind_mix: dict[str, float] = field(default_factory=lambda: dict(KIND_MIX))
    batch_size: int = 16
    teacher_examples: int = 0
    teacher_share: float = 0.0
    lr: float = 1e-3
    min_lr_ratio: float = 0.05
    warmup_steps: int = 30
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    lm_dtype: str = "bfloat16"
    threads: int = 1
    checkpoint_every: int = 50
    log_every: int = 10
    probe_every: int = 200
    probe_vqa: int = 40
    probe_names: int = 20
    probe_reading: int = 10
    stop_after: int | None = None

    def __post_init__(self) -> None:
        for name in ("pretrain_steps", "align_steps", "single_object_steps", "warmup_steps"):
            if getattr(self, name) < 0:
                raise ValueError(f"GraftTrainConfig.{name} must be >= 0")
        if self.pretrain_steps + self.align_steps < 1:
            raise ValueError("GraftTrainConfig needs at least one training step")
        for name in ("pretrain_batch_size", "batch_size", "threads", "checkpoint_every", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"GraftTrainConfig.{name} must be >= 1")
        if self.pretrain_lr <= 0 or self.lr <= 0 or self.slot_temperature <= 0 or self.grad_clip <= 0:
            raise ValueError("learning rates, slot_temperature and grad_clip must be > 0")
        if not 0 < self.min_lr_ratio <= 1 or self.slot_mse < 0 or self.weight_decay < 0:
            raise ValueError("min_lr_ratio must be in (0, 1], slot_mse and weight_decay >= 0")
        if set(self.kind_mix) != set(KIND_MIX) or min(self.kind_mix.values()) < 0 or sum(self.kind_mix.values()) <= 0:
            raise ValueError(f"kind_mix needs non-negative weights for {sorted(KIND_MIX)}, got {self.kind_mix}")
        if self.teacher_examples < 0 or not 0.0 <= self.teacher_share < 1.0:
            raise ValueError("teacher_examples must be >= 0 and teacher_share in [0, 1)")
        if (self.teacher_share > 0) != (self.teacher_examples > 0):
            raise ValueError("teacher_share and teacher_examples go together (both > 0 or both 0)")
        if self.lm_dtype not in LM_DTYPES:
            raise ValueError(f"lm_dtype must be one of {sorted(LM_DTYPES)}, got {self.lm_dtype!r}")
        if self.stop_after is not None and not 1 <= self.stop_after <= self.total_steps:
            raise ValueError(f"stop_after must be in [1, {self.total_steps}], got {self.stop_after}")
        if min(self.probe_every, self.probe_vqa, self.probe_names, self.probe_reading) < 0:
            raise ValueError("probe settings must be >= 0 (probe_every 0: no probe)")

    @property
    def total_steps(self) -> int:
        return self.pretrain_steps + self.align_steps

    @property
    def last_step(self) -> int:
        """Steps this run trains: ``total_steps``, or ``stop_after`` (the schedule stays that of
        ``total_steps``: a budgeted run stops early on the same learning-rate curve)."""
        return self.stop_after or self.total_steps

    def stage(self, step: int) -> str:
        """``"pretrain"`` or ``"align"`` for global step ``step``."""
        return "pretrain" if step < self.pretrain_steps else "align"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GraftTrainConfig:
        """Inverse of :meth:`to_dict`."""
        data = dict(data)
        graft = GraftConfig.from_dict(data.pop("graft", {}))
        return cls(graft=graft, **data)


# ------------------------------------------------------------------------------------------------------
# pieces of a step
# ------------------------------------------------------------------------------------------------------

def caption_vocabulary(tokenizer: Any) -> list[int]:
    """Every token id a slot caption can hold (all quadrant texts, drawing names, training phrases, filler).

    Example:
        >>> len(caption_vocabulary(tokenizer)) > 20  # doctest: +SKIP
        True
    """
    texts = [f" {c} {s} {q}" for c in COLOURS for s in SHAPES for q in QUADRANTS]
    cats = world_text()["categories"]
    for cat in CATEGORIES:
        phrases = cats[cat]["phrases"]["train"]
        for name in cats[cat]["names"]:
            texts.append(f"The image shows {name}.")
            texts += [f"{name[:1].upper() + name[1:]} above the words: {p}" for p in phrases]
        texts += [f"The text says: {p}" for p in phrases]
    ids = {filler_id(tokenizer)}
    for text in texts:
        ids.update(tokenizer.encode(text, add_special_tokens=False))
    return sorted(ids)


def image_embeddings(model: Any, pixel_values: torch.Tensor) -> torch.Tensor:
    """``[B, n_tokens, lm_hidden]`` projected image tokens, computed exactly as the Llava forward does.

    Example:
        >>> image_embeddings(model, batch.pixel_values).shape  # doctest: +SKIP
        torch.Size([32, 16, 576])
    """
    cfg = model.config
    out = model.model.get_image_features(pixel_values=pixel_values, vision_feature_layer=cfg.vision_feature_layer,
                                         vision_feature_select_strategy=cfg.vision_feature_select_strategy,
                                         return_dict=True)
    return torch.stack(list(out.pooler_output))


class PrefixLM:
    """The frozen LM of a graft with the fixed prompt prefix's key/value cache computed once.

    ``loss(batch, image_tokens)`` is the mean answer-token cross-entropy of a :class:`.data.LMBatch`
    whose image slots hold ``image_tokens``; it equals the full Llava forward on the un-truncated
    sequence (checked in the tests), at a fraction of the cost.
    """

    def __init__(self, model: Any, prefix: list[int]) -> None:
        from transformers import DynamicCache

        self.decoder = model.model.language_model
        self.head = model.lm_head
        self.embed = self.decoder.get_input_embeddings()
        self.prefix_len = len(prefix)
        self._cache_cls = DynamicCache
        params = inspect.signature(self.decoder.forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"
        with torch.no_grad():
            out = self.decoder(input_ids=torch.tensor([prefix]), use_cache=True)
        cache = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
        self.kv = [(layer.keys, layer.values) for layer in cache.layers]

    def loss(self, batch: LMBatch, image_tokens: torch.Tensor) -> torch.Tensor:
        b, length = batch.ids.shape
        with torch.no_grad():
            embeds = self.embed(batch.ids)
        embeds = embeds.masked_scatter(batch.image.unsqueeze(-1), image_tokens.to(embeds.dtype))
        cache = self._cache_cls(ddp_cache_data=[(k.expand(b, -1, -1, -1), v.expand(b, -1, -1, -1)) for k, v in self.kv])
        mask = torch.cat([torch.ones(b, self.prefix_len, dtype=torch.long), batch.attention.long()], dim=1)
        positions = (self.prefix_len + torch.arange(length)).unsqueeze(0).expand(b, -1)
        out = self.decoder(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, use_cache=True,
                           **{self._cache_kw: cache})
        rows, cols = batch.target.nonzero(as_tuple=True)
        logits = self.head(out.last_hidden_state[rows, cols - 1])
        return F.cross_entropy(logits.float(), batch.ids[rows, cols])


def _trained_part(config: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in config.items() if k not in OPERATIONAL}


def _twins(cfg: GraftTrainConfig, model: Any, processor: Any, out: Path,
           progress: bool) -> tuple[list[Any], list[dict[str, Any]]]:
    """The run's text twins: read from ``out/teacher.jsonl`` when present (resume), else generated by the
    frozen LM and saved there."""
    items = teacher_items(cfg.seed + 2, cfg.teacher_examples)
    path = out / TEACHER_FILE
    if path.is_file():
        records = load_teacher(path)
    else:
        was_training = model.training
        model.eval()
        records = build_teacher_set(model, processor, items, seed=cfg.seed, progress=progress)
        model.train(was_training)
        model.model.language_model.eval()
        save_teacher(records, path)
    return items, records


def init_vision_side_from(model: Any, folder: str | Path) -> None:
    """Load the vision tower + projector saved in ``folder/vision.safetensors`` (a trained vision side or a
    training checkpoint); shapes must match.

    Example:
        >>> init_vision_side_from(model, "runs/graft-stage1")  # doctest: +SKIP
    """
    from safetensors.torch import load_file

    from .build import vision_state

    path = Path(folder) / "vision.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"no vision.safetensors in {folder} to start from")
    tensors = load_file(str(path))
    own = vision_state(model)
    if set(tensors) != set(own) or any(tensors[k].shape != own[k].shape for k in own):
        raise ValueError(f"the vision side in {folder} does not fit this graft's GraftConfig")
    params = dict(model.state_dict(keep_vars=True))
    with torch.no_grad():
        for k, v in tensors.items():
            params[k].copy_(v)


def _lr(cfg: GraftTrainConfig, step: int) -> float:
    if step < cfg.pretrain_steps:
        base, local, n = cfg.pretrain_lr, step, cfg.pretrain_steps
    else:
        base, local, n = cfg.lr, step - cfg.pretrain_steps, cfg.align_steps
    if local < cfg.warmup_steps:
        return base * (local + 1) / (cfg.warmup_steps + 1)
    frac = (local - cfg.warmup_steps) / max(1, n - cfg.warmup_steps)
    return base * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, frac))))


# ------------------------------------------------------------------------------------------------------
# checkpoints
# ------------------------------------------------------------------------------------------------------

def _save_checkpoint(folder: Path, model: Any, optim: torch.optim.Optimizer, params: list[torch.nn.Parameter],
                     state: dict[str, Any]) -> None:
    from safetensors.torch import save_file

    from .build import vision_state

    tmp = folder.with_name(folder.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    save_file(vision_state(model), str(tmp / "vision.safetensors"))
    moments: dict[str, torch.Tensor] = {}
    for i, p in enumerate(params):
        for key, value in optim.state.get(p, {}).items():
            moments[f"{i}.{key}"] = torch.as_tensor(value).detach().clone().contiguous()
    save_file(moments, str(tmp / "optim.safetensors"))
    (tmp / "state.json").write_text(json.dumps(state, indent=2) + "\n", encoding="utf-8")
    if folder.exists():
        old = folder.with_name(folder.name + ".old")
        folder.replace(old)
        tmp.replace(folder)
        for f in old.iterdir():
            f.unlink()
        old.rmdir()
    else:
        tmp.replace(folder)


def _load_checkpoint(folder: Path, model: Any, params: list[torch.nn.Parameter]) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    from safetensors.torch import load_file

    state = json.loads((folder / "state.json").read_text(encoding="utf-8"))
    tensors = load_file(str(folder / "vision.safetensors"))
    own = dict(model.state_dict(keep_vars=True))
    with torch.no_grad():
        for k, v in tensors.items():
            own[k].copy_(v)
    return state, load_file(str(folder / "optim.safetensors"))


def _make_optim(cfg: GraftTrainConfig, params: list[torch.nn.Parameter], moments: dict[str, torch.Tensor] | None,
                lr: float) -> torch.optim.Optimizer:
    optim = torch.optim.AdamW(params, lr=lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.98))
    if moments:
        for i, p in enumerate(params):
            entry = {k.split(".", 1)[1]: v for k, v in moments.items() if k.split(".", 1)[0] == str(i)}
            if entry:
                optim.state[p] = entry
    return optim


# ------------------------------------------------------------------------------------------------------
# the run
# ------------------------------------------------------------------------------------------------------

def train_graft(cfg: GraftTrainConfig, lm_dir: str | Path, out_dir: str | Path, *, resume: bool = True,
                progress: bool = True) -> dict[str, Any]:
    """Train the vision side of a graft onto the LM folder ``lm_dir``; write it to ``out_dir``
    (``vision.safetensors`` + ``graft_config.json`` with this recipe, the LM digest and the last probe),
    with ``train_log.jsonl`` and ``checkpoint/``. Returns a report dict.

    Example:
        >>> report = train_graft(GraftTrainConfig(), "runs/smollm2-hf", "runs/graft")  # doctest: +SKIP
        >>> report["probe"]["vqa"]["accuracy"]  # doctest: +SKIP
        0.41
    """
    from .probe import grounding_report

    torch.set_num_threads(cfg.threads)
    out = Path(out_dir)
    lm, tokenizer = load_lm(lm_dir)
    digest = lm_digest(lm)
    model, processor = build_graft_from(lm, tokenizer, cfg.graft, seed=cfg.seed)
    del lm
    graft_cfg = replace(cfg.graft, image_token=processor.image_token)
    cfg = replace(cfg, graft=graft_cfg)
    if cfg.init_from:
        init_vision_side_from(model, cfg.init_from)
    if cfg.init_vision_from:
        init_vision_tower_from(model, cfg.init_vision_from)
    lm_dtype = LM_DTYPES[cfg.lm_dtype]
    model.model.language_model.to(lm_dtype)
    model.lm_head.to(lm_dtype)
    model.model.language_model.config._attn_implementation = "eager"
    params = freeze_lm(model)
    n_tokens = graft_cfg.image_tokens

    ckpt = out / CHECKPOINT_DIR
    start, moments, log_state = 0, None, {"seconds": 0.0}
    if resume and (ckpt / "state.json").is_file():
        state, moments = _load_checkpoint(ckpt, model, params)
        try:  # fields added since the checkpoint was written take their defaults
            saved = _trained_part(GraftTrainConfig.from_dict(state.get("config") or {}).to_dict())
        except (TypeError, ValueError):
            saved = None
        if saved != _trained_part(cfg.to_dict()) or state.get("lm_digest") != digest:
            raise ValueError(f"{ckpt} was written by another configuration or LM; use another --out or --no-resume")
        start, log_state = int(state["step"]), state
    elif not resume and ckpt.exists():
        raise FileExistsError(f"{ckpt} exists; resume it or choose another --out")
    out.mkdir(parents=True, exist_ok=True)

    embed_fp32 = model.model.language_model.get_input_embeddings().weight.detach().float()
    vocab = caption_vocabulary(tokenizer)
    vocab_index = {t: i for i, t in enumerate(vocab)}
    vocab_emb = embed_fp32[vocab]
    emb_scale = float(vocab_emb.pow(2).sum(-1).mean())
    prefix = prompt_prefix_ids(processor, n_tokens)
    prefix_lm: PrefixLM | None = None
    twins: tuple[list[Any], list[dict[str, Any]]] | None = None
    stage_of_optim = cfg.stage(start)
    optim = _make_optim(cfg, params, moments, _lr(cfg, start))
    log = (out / LOG_FILE).open("a", encoding="utf-8")
    last_probe: dict[str, Any] | None = log_state.get("probe")
    elapsed = float(log_state.get("seconds", 0.0))
    bar = tqdm(total=cfg.last_step, initial=min(start, cfg.last_step), desc="graft", unit="step",
               disable=not progress)
    model.train()
    model.model.language_model.eval()
    t0 = time.perf_counter()
    window: list[float] = []
    try:
        for step in range(start, cfg.last_step):
            stage = cfg.stage(step)
            if stage != stage_of_optim:
                optim, stage_of_optim = _make_optim(cfg, params, None, _lr(cfg, step)), stage
                window = []
            for group in optim.param_groups:
                group["lr"] = _lr(cfg, step)
            metrics: dict[str, float] = {}
            if stage == "pretrain":
                examples = sample_examples(cfg.seed, step, cfg.pretrain_batch_size)
                pixels = processor.image_processor([e.image for e in examples], return_tensors="pt")["pixel_values"]
                targets = torch.tensor([[vocab_index[t] for t in slot_ids(e, tokenizer, n_tokens)] for e in examples])
                feats = image_embeddings(model, pixels).float()
                cos = F.normalize(feats, dim=-1) @ F.normalize(vocab_emb, dim=-1).T
                ce = F.cross_entropy((cos / cfg.slot_temperature).reshape(-1, len(vocab)), targets.reshape(-1))
                mse = (feats - vocab_emb[targets]).pow(2).sum(-1).mean() / emb_scale
                loss = ce + cfg.slot_mse * mse
                metrics = {"slot_ce": float(ce.detach()), "slot_mse": float(mse.detach()),
                           "slot_acc": float((cos.detach().argmax(-1) == targets).float().mean())}
            else:
                if prefix_lm is None:
                    prefix_lm = PrefixLM(model, prefix)
                if twins is None and cfg.teacher_examples:
                    twins = _twins(cfg, model, processor, out, progress)
                local = step - cfg.pretrain_steps
                single = local < cfg.single_object_steps
                mix = {"vqa": 0.7, "benign": 0.0, "harmful": 0.3} if single else cfg.kind_mix
                n_twins = 0 if single or twins is None else round(cfg.batch_size * cfg.teacher_share)
                examples = sample_examples(cfg.seed + 1, step, cfg.batch_size - n_twins, single_object=single,
                                           kind_mix=mix)
                if n_twins:
                    examples += teacher_examples(twins[0], twins[1], cfg.seed, step, n_twins)
                batch = encode_for_lm(processor, examples, n_tokens, prefix)
                loss = prefix_lm.loss(batch, image_embeddings(model, batch.pixel_values))
            optim.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            optim.step()
            window.append(float(loss.detach()))
            bar.update(1)
            bar.set_postfix(stage=stage, loss=f"{window[-1]:.3f}")
            done = step + 1
            if done % cfg.log_every == 0 or done == cfg.last_step:
                now = time.perf_counter()
                line = {"step": done, "stage": stage, "loss": sum(window) / len(window), "lr": _lr(cfg, step),
                        "seconds": round(elapsed + now - t0, 1), **metrics}
                log.write(json.dumps(line) + "\n")
                log.flush()
                window = []
            probe_now = cfg.probe_every and (done % cfg.probe_every == 0 or done == cfg.last_step
                                             or done == cfg.pretrain_steps)
            if probe_now:
                model.eval()
                last_probe = grounding_report(model, processor, n_vqa=cfg.probe_vqa, n_names=cfg.probe_names,
                                              n_reading=cfg.probe_reading, examples=2)
                model.train()
                model.model.language_model.eval()
                log.write(json.dumps({"step": done, "stage": stage, "probe": last_probe}) + "\n")
                log.flush()
            if done % cfg.checkpoint_every == 0 or done == cfg.last_step:
                _save_checkpoint(ckpt, model, optim, params,
                                 {"step": done, "config": cfg.to_dict(), "lm_digest": digest, "probe": last_probe,
                                  "seconds": round(elapsed + time.perf_counter() - t0, 1)})
    finally:
        bar.close()
        log.close()
    seconds = round(elapsed + time.perf_counter() - t0, 1)
    model.eval()
    trained = max(start, cfg.last_step)
    meta = {"recipe": cfg.to_dict(), "probe": last_probe, "train_seconds": seconds,
            "trained_steps": trained, "lm_dtype_in_training": cfg.lm_dtype}
    save_vision_side(model, graft_cfg, out, meta, digest=digest)
    return {"steps": trained, "seconds": seconds, "probe": last_probe, "lm_digest": digest,
            "parameters": sum(p.numel() for p in params), "out": str(out)}
