"""Run a ``DemoRecipe`` (``generator.recipe``) step by step and write its preset folder.

A finished step records its settings in ``WORK/steps/NAME.json``; a re-run skips finished steps with the same
settings and continues unfinished ones (the builds, extraction and the trainers resume), so an interrupted run is
re-run with the same command. A finished step with other settings stops the run, naming the settings. Every step
calls the library (``demoworld.build``, ``fusion.extract``, ``fusion.train``, ``generator.train_translator``,
``generator.train_image_model``) with the configs ``generator.recipe`` gives it.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fusion.cache import atomic_write_json, concat_latents, load_latents
from fusion.errors import FusemixError
from generator.recipe import (
    DemoRecipe,
    Layout,
    bank_captions,
    caption_split,
    image_model_configs,
    preset_json,
    train_config,
    translator_config,
)

logger = logging.getLogger(__name__)

STEPS_DIR = "steps"


def _plain(value: Any) -> Any:
    """JSON's view of a settings value (paths as strings, tuples as lists), so recorded and current compare."""
    return json.loads(json.dumps(value, default=str))


def run_step(layout: Layout, name: str, settings: dict, work: Callable[[], Any], outputs: list[Path]) -> bool:
    """Run ``work`` unless step ``name`` already finished with the same settings; True when it ran."""
    marker = layout.work / STEPS_DIR / f"{name}.json"
    settings = _plain(settings)
    if marker.is_file() and all(p.exists() for p in outputs):
        done = json.loads(marker.read_text())
        if done == settings:
            logger.info("step %s: done already (%s)", name, marker)
            return False
        changed = sorted(k for k in set(done) | set(settings) if done.get(k) != settings.get(k))
        raise FusemixError(
            f"step {name} in {layout.work} was made with other settings ({', '.join(changed)}); "
            "use another --work folder or delete that step's output"
        )
    logger.info("step %s", name)
    started = time.perf_counter()
    work()
    atomic_write_json(marker, settings)
    logger.info("step %s done in %.1f s", name, time.perf_counter() - started)
    return True


def make_default(recipe: DemoRecipe, work: str | Path, out: str | Path) -> Path:
    """Run every step of ``recipe`` in ``work`` and write the preset to ``out``; returns ``out``."""
    recipe.check()
    layout = Layout(Path(work))
    _build_worlds(recipe, layout)
    _extract_all(recipe, layout)
    _translator_world_caches(recipe, layout)
    _metric_world_caches(recipe, layout)
    _train_adapters(recipe, layout)
    _train_translator(recipe, layout)
    _train_image_model(recipe, layout)
    _train_translator(recipe, layout, tuned=True)  # against the image model: after it
    return write_preset(recipe, layout, Path(out))


def _build_worlds(recipe: DemoRecipe, layout: Layout) -> None:
    from demoworld.build import BuildConfig, build

    worlds = [("world", layout.world, recipe.world_size, recipe.world_seed, "english")]
    if recipe.extra_world_size is not None:
        worlds.append(("world_extra", layout.extra_world, recipe.extra_world_size, recipe.extra_world_seed, "english"))
    if recipe.translator_world_size is not None:
        size, seed = recipe.translator_world_size, recipe.translator_world_seed
        worlds.append(("world_translator", layout.translator_world, size, seed, "english"))
    if recipe.accent_size is not None:  # for training, or the translator's snap metric alone
        worlds.append(("world_accent", layout.accent_world, recipe.accent_size, recipe.accent_world_seed, "accented"))
    if recipe.sim_world_size is not None:
        worlds.append(("world_sim", layout.sim_world, recipe.sim_world_size, recipe.sim_world_seed, "simulated"))
    for name, folder, size, seed, voices in worlds:
        cfg = BuildConfig(out=folder, size=size, seed=seed, resolution=recipe.resolution, progress=False, voices=voices)
        settings = asdict(cfg)
        if voices == "english":  # recorded only when not the default, so worlds built before it existed still match
            settings.pop("voices")
        run_step(layout, name, settings, lambda cfg=cfg: build(cfg), [folder / "README.json"])


def _extract_all(recipe: DemoRecipe, layout: Layout) -> None:
    """Latents of the training, validation and test splits, the extra training clips, the caption bank, and the
    hard negatives (the training captions with their colours swapped)."""
    jobs = [(layout.world, split, split) for split in ("train", "val", "test")]
    folders = {"extra_train": layout.extra_world, "accent_train": layout.accent_world, "sim_train": layout.sim_world}
    jobs += [(folders[name], "train", name) for _, name in recipe.extra_training()]
    for world, split, name in jobs:
        _extract(recipe, layout, "audio", world / f"{split}.jsonl", name)
        _extract(recipe, layout, "text", world / f"{split}.jsonl", name)
    run_step(
        layout, "bank", {"bank": bank_captions(recipe)}, lambda: _write_bank(recipe, layout), [layout.bank_manifest]
    )
    _extract(recipe, layout, "text", layout.bank_manifest, "bank")
    for world, split, name in jobs:
        if split != "train":
            continue
        captions = _paraphrases(recipe, layout, world, name) if recipe.paraphrases else world / "train.jsonl"
        if recipe.hard_negatives:
            _swaps(recipe, layout, world, captions, name)
    extras = recipe.extra_training()
    if not extras:
        return  # one world: training reads its caches as they are
    # (modality, cache name of a training split, joined name); the plain captions also feed the translator
    joins = [("audio", lambda n: n, "train_all"), ("text", lambda n: n, "train_all")]
    if recipe.paraphrases:
        joins.append(("text", lambda n: caption_split(recipe, n), caption_split(recipe, "train_all")))
    if recipe.hard_negatives:
        joins.append(("text", lambda n: f"swaps_{n}", "swaps_all"))
    for modality, name, joined in joins:
        _join(layout, modality, name("train"), [(prefix, name(split)) for prefix, split in extras], joined)


def _join(layout: Layout, modality: str, first: str, then: list[tuple[str, str]], joined: str) -> None:
    """Step ``{modality}_{joined}``: cache ``first``, then each (prefix, cache) of ``then`` with its ids prefixed."""
    sources = [("", layout.latents(modality, first))] + [(prefix, layout.latents(modality, s)) for prefix, s in then]
    out = layout.latents(modality, joined)
    run_step(layout, f"{modality}_{joined}", {"sources": sources}, lambda: concat_latents(sources, out), [out])


def _translator_world_caches(recipe: DemoRecipe, layout: Layout) -> None:
    """The translator world's training clips and captions, joined after the adapters' own training caches."""
    if recipe.translator_world_size is None:
        return
    own = "train_all" if recipe.joined else "train"  # the adapters' training caches
    for modality in ("audio", "text"):
        _extract(recipe, layout, modality, layout.translator_world / "train.jsonl", "translator_train")
        _join(layout, modality, own, [("translator-", "translator_train")], "translator_all")


def _metric_world_caches(recipe: DemoRecipe, layout: Layout) -> None:
    """The accented world's training clips and captions, when only the translator's snap metric reads them."""
    if recipe.translator_metric_world_size is None or recipe.accent_world_size is not None:
        return  # none, or already extracted for training
    for modality in ("audio", "text"):
        _extract(recipe, layout, modality, layout.accent_world / "train.jsonl", "accent_train")


def _paraphrases(recipe: DemoRecipe, layout: Layout, world: Path, name: str) -> Path:
    """A world's training clips, each with its caption and its scene in other training phrasings, and their latents
    (the cache FuseMix trains on); the plain caption cache stays for the translator and evaluation."""
    from demoworld.paraphrase import write_paraphrases

    manifest = layout.work / f"paraphrases_{name}.jsonl"
    settings = {"captions": world / "train.jsonl", "paraphrases": recipe.paraphrases, "seed": recipe.world_seed}

    def write() -> None:
        write_paraphrases(world / "train.jsonl", manifest, recipe.paraphrases, recipe.world_seed)

    run_step(layout, f"paraphrases_{name}", settings, write, [manifest])
    _extract(recipe, layout, "text", manifest, caption_split(recipe, name))
    return manifest


def _swaps(recipe: DemoRecipe, layout: Layout, world: Path, captions: Path, name: str) -> None:
    """The colour-swapped versions of a world's training captions (`fusemix hard-negatives`), with their size
    substituted versions when the recipe has ``hard_negative_sizes``, and their latents."""
    from demoworld.scenes import SIZE_SUBSTITUTES
    from fusion.hard_negatives import load_swap_classes, write_swap_manifest

    manifest = layout.swap_manifest(name)
    classes = world / "swap_classes.json"
    settings = {"captions": captions, "swap_classes": classes, "limit": recipe.hard_negative_limit}
    substitutes = SIZE_SUBSTITUTES if recipe.hard_negative_sizes else None
    if substitutes:  # recorded only when used, so steps finished before substitutes existed still match
        settings["substitutes"] = substitutes

    def write() -> None:
        write_swap_manifest(captions, load_swap_classes(classes), manifest, recipe.hard_negative_limit, substitutes)

    run_step(layout, f"swaps_{name}", settings, write, [manifest])
    _extract(recipe, layout, "text", manifest, f"swaps_{name}")


def _write_bank(recipe: DemoRecipe, layout: Layout) -> None:
    lines = [json.dumps({"id": scene_id, "captions": caps}) for scene_id, caps in bank_captions(recipe)]
    tmp = layout.bank_manifest.with_name(f".{layout.bank_manifest.name}.tmp")
    tmp.parent.mkdir(parents=True, exist_ok=True)
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(layout.bank_manifest)


def _extract(recipe: DemoRecipe, layout: Layout, modality: str, manifest: Path, split: str) -> None:
    from fusion.extract import ExtractConfig, extract

    encoder = recipe.audio_encoder if modality == "audio" else recipe.text_encoder
    tokens = recipe.audio_tokens if modality == "audio" else recipe.text_tokens
    out = layout.latents(modality, split)
    # augmented views only for training clips: evaluation reads the clean rows anyway
    augment = recipe.audio_augment if modality == "audio" and split.endswith("train") else 0
    cfg = ExtractConfig(
        encoder=encoder, manifest=manifest, out=out, tokens=tokens, device=recipe.device, progress=False,
        augment=augment, augment_seed=recipe.augment_seed,
    )  # fmt: skip
    settings = {"encoder": encoder, "manifest": manifest, "tokens": tokens}
    if augment:  # recorded only when used, so steps finished before augmentation existed still match
        settings.update(augment=augment, augment_seed=recipe.augment_seed)
    run_step(layout, f"extract_{modality}_{split}", settings, lambda: extract(cfg), [out])


def _train_adapters(recipe: DemoRecipe, layout: Layout) -> None:
    """FuseMix adapters (resumed when a checkpoint is there), then their retrieval scores on the test split."""
    from fusion.adapters import FuseMixAdapters
    from fusion.evaluate import evaluate, load_pairs
    from fusion.train import ADDED_DEFAULTS, resumable, train

    cfg = train_config(recipe, layout)
    settings = _settings(cfg, ADDED_DEFAULTS)

    def fit() -> None:
        train(replace(cfg, resume=resumable(cfg)))

    run_step(layout, "fusemix", settings, fit, [layout.adapters])

    def score() -> None:
        model = FuseMixAdapters.from_pretrained(layout.adapters).eval()
        pairs = load_pairs(layout.latents("audio", "test"), layout.latents("text", "test"))
        metrics = evaluate(model, pairs)
        atomic_write_json(layout.work / "fusemix_eval.json", metrics)
        logger.info("test split: text->audio R@1 %.3f", metrics["text_to_audio"]["R@1"])

    run_step(layout, "eval", settings, score, [layout.work / "fusemix_eval.json"])


def _train_translator(recipe: DemoRecipe, layout: Layout, tuned: bool = False) -> None:
    """The MSE translator, or (``tuned``) its fine-tune against the image model when the recipe has one."""
    from generator.train_translator import ADDED_DEFAULTS, checkpoint_manager, train_translator

    if tuned and recipe.translator_tune is None:
        return
    cfg = translator_config(recipe, layout, tuned=tuned)

    def fit() -> None:
        train_translator(cfg, resume=checkpoint_manager(cfg).latest() is not None)

    settings = _settings(cfg, ADDED_DEFAULTS)
    run_step(layout, "translator_tune" if tuned else "translator", settings, fit, [Path(cfg.out)])


def _train_image_model(recipe: DemoRecipe, layout: Layout) -> None:
    """Both stages train into one folder; the second resumes the first's training state with more steps and the
    translator (a change the image-model trainer allows on resume)."""
    from generator.train_image_model import checkpoint_manager, train_image_model

    if recipe.reuse_image_model:
        _reuse_image_model(layout)
        return
    base, tuned = image_model_configs(recipe, layout)
    states = TokenStates(recipe.device)  # both stages encode the same captions: once is enough

    def fit_base() -> None:
        train_image_model(base, resume=checkpoint_manager(base).latest() is not None, encoder=states)

    def fit_tuned() -> None:
        train_image_model(tuned, resume=True, encoder=states)

    if not (layout.work / STEPS_DIR / "image_tuned.json").is_file():  # once tuned, the base state is gone
        run_step(layout, "image_base", _settings(base), fit_base, [layout.image_model])
    run_step(layout, "image_tuned", _settings(tuned), fit_tuned, [layout.image_model])


def _reuse_image_model(layout: Layout) -> None:
    """The shipped image model, copied into the work folder (the step records the weights' hash)."""
    import hashlib

    from generator.presets import shipped_path

    source = shipped_path("checkpoints") / "demo" / "image_model"
    weights = sorted(source.rglob("*.safetensors"))
    if not weights:
        raise FusemixError(f"reuse_image_model: no shipped image model at {source}")
    digest = hashlib.sha256(b"".join(hashlib.sha256(p.read_bytes()).digest() for p in weights)).hexdigest()
    run_step(layout, "image_reused", {"sha256": digest}, lambda: copy_model(source, layout.image_model),
             [layout.image_model])  # fmt: skip


class TokenStates:
    """The image model's caption encoder (MiniLM token states), loaded on first use; remembers what it encoded."""

    def __init__(self, device: str = "cpu") -> None:
        self.device = device
        self._encoder = None
        self._done: dict[tuple[str, ...], torch.Tensor] = {}

    def __call__(self, texts: list[str]) -> torch.Tensor:
        key = tuple(texts)
        if key not in self._done:
            if self._encoder is None:
                from generator.conditioning import MAX_TOKENS, TokenStateEncoder

                self._encoder = TokenStateEncoder(max_tokens=MAX_TOKENS, device=self.device)
            self._done[key] = self._encoder(texts)
        return self._done[key]


# fields of a trainer's config that say where or how it runs, not what it makes
RUN_FIELDS = frozenset({"out", "resume", "no_progress", "progress", "device"})


def _settings(cfg: Any, added: dict | None = None) -> dict:
    """A trainer config's settings as a step records them (its input folders included: they are under WORK); the
    ``added`` fields (trainer's ADDED_DEFAULTS) only when set otherwise, so steps finished before they existed match."""
    added = added or {}
    return {
        f.name: getattr(cfg, f.name)
        for f in fields(cfg)
        if f.name not in RUN_FIELDS and (f.name not in added or getattr(cfg, f.name) != added[f.name])
    }


def store_half(folder: Path) -> None:
    """Rewrite a model folder's safetensors in float16 (loads back into float32 models unchanged, ~1e-4 off)."""
    from safetensors.torch import load_file, save_file

    for path in folder.glob("*.safetensors"):
        tensors = load_file(str(path))
        tmp = path.with_name(f".{path.name}.tmp")
        save_file({k: v.half() if v.is_floating_point() else v for k, v in tensors.items()}, str(tmp))
        tmp.replace(path)


def copy_model(src: Path, dst: Path, half: bool = False, leave: tuple[str, ...] = ()) -> None:
    """Copy a trained model folder without its training state (and the ``leave`` patterns), replacing ``dst``."""
    from fusion.training import fresh_tmp_dir, replace_dir

    tmp = fresh_tmp_dir(dst)
    shutil.rmtree(tmp)
    skip = shutil.ignore_patterns("optimizer*", "extra.safetensors", "training_state*", ".*", *leave)
    shutil.copytree(src, tmp, ignore=skip)
    if half:
        store_half(tmp)
    replace_dir(tmp, dst)


def bank_points(adapters: Path, latents: np.ndarray) -> torch.Tensor:
    """The bank captions' points in S through the preset's own (stored) text tower."""
    from fusion.adapters import FuseMixAdapters

    model = FuseMixAdapters.from_pretrained(adapters).eval()
    return model.embed("text", torch.from_numpy(np.asarray(latents, dtype=np.float32)))


def write_preset(recipe: DemoRecipe, layout: Layout, out: Path) -> Path:
    """Copy the trained parts into ``out``, with the caption bank's points in S and preset.json."""
    from generator.caption_bank import save_caption_bank

    out.mkdir(parents=True, exist_ok=True)
    copy_model(layout.adapters, out / "adapters", half=recipe.half)
    # the translator folder is its own checkpoint: the preset keeps the model and translator_config.json
    translator = Path(translator_config(recipe, layout).out)  # the fine-tune's folder when the recipe has one
    copy_model(translator, out / "translator", half=recipe.half, leave=("trainer_state.json", "train_config.json"))
    copy_model(layout.image_model, out / "image_model")
    bank = load_latents(layout.latents("text", "bank"))
    save_caption_bank(out / "caption_bank", list(bank.texts), bank_points(out / "adapters", bank.array))
    atomic_write_json(out / "preset.json", preset_json(recipe))
    return out
