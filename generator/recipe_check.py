"""The check that a preset folder is what a ``DemoRecipe`` (``generator.recipe``) writes.

``check_preset(recipe, folder)`` compares, key by key, what the folder records with what ``generator.recipe``
would write: the trainers' recorded configs (``adapters/train_config.json``, ``translator/translator_config.json``,
``image_model/train_config.json``), the models' configs (adapters, translator, UNet, scheduler), ``preset.json``,
the caption bank's captions, the storage dtype, and the counts the training records (clips, steps, captions).

Not compared, by design: where a run wrote and read (``out`` and input folders, which name the machine's paths;
for an input folder only whether one was given), how it ran (``resume``, ``progress``, ``device``), and measured
results (loss, relative MSE, seconds). A key the folder lacks compares as the trainer's default, the rule a resumed
run follows for configs saved before a field existed. A key the folder records that the current trainer does not
know is reported: the current code cannot reproduce it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

from generator.recipe import (
    DemoRecipe,
    Layout,
    bank_captions,
    image_model_configs,
    preset_json,
    train_config,
    training_clips,
    translator_config,
)

INPUT_FIELDS = frozenset(
    {
        "audio_latents",
        "text_latents",
        "hard_negatives",
        "adapters",
        "translator",
        "image_model",
        "canonical_bank",
        "init_from",
        "metric_audio_latents",
        "metric_text_latents",
    }
)
RUN_FIELDS = frozenset({"out", "resume", "no_progress", "progress", "device"})
RESULT_FIELDS = frozenset(
    {
        "step",
        "loss",
        "num_captions",
        "num_rows",
        "relative_mse",
        "relative_mse_audio",
        "distill_error",
        "distill_error_start",
        "metric_clips",
        "seconds",
    }
)


def check_preset(recipe: DemoRecipe, folder: str | Path) -> list[str]:
    """Every way ``folder`` differs from what ``recipe`` writes, one line each (empty: it matches)."""
    folder = Path(folder)
    layout = Layout(Path("WORK"))  # folders are compared only for being given, so any work folder does
    _, tuned = image_model_configs(recipe, layout)
    diffs = _compare_config(folder, "adapters/train_config.json", train_config(recipe, layout))
    diffs += _compare_config(folder, "translator/translator_config.json", translator_config(recipe, layout))
    diffs += _compare_config(folder, "image_model/train_config.json", tuned)
    diffs += _compare(folder, "preset.json", _read(folder / "preset.json"), preset_json(recipe))
    diffs += _compare_models(recipe, folder)
    diffs += _compare_records(recipe, folder)
    return diffs


def _read(path: Path) -> Any:
    from generator.preset_parts import read_json

    return read_json(path, "preset part")


def _plain(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def _compare(folder: Path, name: str, recorded: dict, expected: dict) -> list[str]:
    keys = list(expected) + [k for k in recorded if k not in expected]
    return [
        f"{name}: {k}: preset {_plain(recorded.get(k, '(missing)'))!r}, recipe {_plain(expected.get(k, '(missing)'))!r}"
        for k in keys
        if _plain(recorded.get(k)) != _plain(expected.get(k))
    ]


def _compare_config(folder: Path, name: str, cfg: Any) -> list[str]:
    """A trainer's recorded config against the one the recipe gives it (rules in the module docstring)."""
    recorded = _read(folder / name)
    defaults = {f.name: f.default for f in fields(cfg)}
    expected = asdict(cfg)
    diffs = []
    for key, want in expected.items():
        if key in RUN_FIELDS:
            continue
        got = recorded.get(key, defaults[key])
        if key in INPUT_FIELDS:
            got, want = ("given" if got else None), ("given" if want else None)
        if _plain(got) != _plain(want):
            diffs.append(f"{name}: {key}: preset {got!r}, recipe {want!r}")
    for key in recorded:
        if key not in expected and key not in RESULT_FIELDS:
            diffs.append(f"{name}: {key}: preset {recorded[key]!r}, unknown to the current trainer")
    return diffs


def _compare_models(recipe: DemoRecipe, folder: Path) -> list[str]:
    """Model configs: each side built through its class, so defaults and derived values (shared_dim) agree."""
    from diffusers import DPMSolverMultistepScheduler, UNet2DConditionModel

    from fusion.adapters import FuseMixAdapters
    from generator.demo_model import build_unet, sampling_scheduler, training_scheduler
    from generator.train_translator import new_translator
    from generator.translator import Translator

    recorded = FuseMixAdapters.load_config(str(folder / "adapters"))
    dims = {"audio_dim": recorded.get("audio_dim"), "text_dim": recorded.get("text_dim")}  # the encoders' widths
    adapters = FuseMixAdapters(**dims, **_adapter_kwargs(recipe))
    diffs = _compare_built(folder, "adapters/config.json", FuseMixAdapters.from_config(recorded), adapters)
    token_dim = _text_width()
    cfg = translator_config(recipe, Layout(Path("WORK")))
    shipped = Translator.from_config(Translator.load_config(str(folder / "translator")))
    anchors = len(bank_captions(recipe))  # a snapping translator keeps one anchor per bank scene
    translator = new_translator(cfg, adapters.shared_dim, _max_tokens(), token_dim, anchors)
    diffs += _compare_built(folder, "translator/config.json", shipped, translator)
    unet = build_unet(recipe.resolution, token_dim, tuple(recipe.image_widths))
    shipped = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(str(folder / "image_model/unet")))
    diffs += _compare_built(folder, "image_model/unet/config.json", shipped, unet)
    sched = DPMSolverMultistepScheduler.load_config(str(folder / "image_model/scheduler"))
    diffs += _compare_built(
        folder,
        "image_model/scheduler/scheduler_config.json",
        DPMSolverMultistepScheduler.from_config(sched),
        sampling_scheduler(training_scheduler()),
    )
    return diffs


def _compare_built(folder: Path, name: str, recorded: Any, expected: Any) -> list[str]:
    public = lambda config: {k: v for k, v in dict(config).items() if not k.startswith("_")}  # noqa: E731
    return _compare(folder, name, public(recorded.config), public(expected.config))


def _adapter_kwargs(recipe: DemoRecipe) -> dict:
    """FuseMixAdapters arguments of the recipe (the trainer reads the token counts from the caches)."""
    cfg = train_config(recipe, Layout(Path("WORK")))
    return {
        "shared_dim": cfg.shared_dim,
        "num_blocks": cfg.num_blocks,
        "expansion": cfg.expansion,
        "dropout": cfg.dropout,
        "lock_text": cfg.lock_text,
        "audio_adapter": cfg.audio_adapter,
        "audio_tokens": recipe.audio_tokens,
        "keep": cfg.keep,
        "sparse_mode": cfg.sparse_mode,
        "text_adapter": cfg.text_adapter,
        "text_tokens": recipe.text_tokens,
        "text_keep": cfg.text_keep,
        "token_blocks": cfg.token_blocks,
        "audio_parts": cfg.audio_parts,
        "audio_part_dropout": cfg.audio_part_dropout,
        "heads": cfg.heads,
    }


def _text_width() -> int:
    """Width of the image model's text encoder (MiniLM token states), read from its config, not by loading it."""
    from fusion.offline import minilm_l6_v2

    return int(json.loads((minilm_l6_v2() / "config.json").read_text())["hidden_size"])


def _max_tokens() -> int:
    from generator.conditioning import MAX_TOKENS

    return MAX_TOKENS


def _compare_records(recipe: DemoRecipe, folder: Path) -> list[str]:
    """What the runs recorded that follows from the recipe: counts, the caption bank, the storage dtype."""
    clips = training_clips(recipe)
    batch = min(recipe.batch_size, clips)
    state = _read(folder / "adapters/trainer_state.json")
    expected = {"epoch": recipe.epochs, "train_clips": clips, "batch_pairs": batch, "steps_per_epoch": clips // batch}
    # every demo caption names two colours (one swap) and one size (one substitute); runs before the record existed
    # (the shipped adapters) are compared only when the recipe has the sizes
    if recipe.hard_negatives and (recipe.hard_negative_sizes or "hard_negatives_per_caption" in state):
        expected["hard_negatives_per_caption"] = 1 + recipe.hard_negative_sizes
    diffs = _compare(folder, "adapters/trainer_state.json", {k: state.get(k) for k in expected}, expected)
    captions = [text for _, caps in bank_captions(recipe) for text in caps]
    if not recipe.translator_audio_points:  # trained on the bank; else on the training pairs (their count varies)
        recorded = _read(folder / "translator/translator_config.json").get("num_captions")
        diffs += _compare(folder, "translator/translator_config.json", {"num_captions": recorded}, {"num_captions": len(set(captions))})  # fmt: skip
    recorded = _read(folder / "image_model/train_config.json").get("step")
    diffs += _compare(folder, "image_model/train_config.json", {"step": recorded}, {"step": recipe.image_steps})
    if _read(folder / "caption_bank/captions.json") != captions:
        diffs.append(f"caption_bank/captions.json: captions differ from the recipe's bank ({len(captions)} captions)")
    want = "F16" if recipe.half else "F32"
    for part in ("adapters", "translator"):
        for path in sorted((folder / part).glob("*.safetensors")):
            got = _dtypes(path)
            if got != {want}:
                diffs.append(f"{part}/{path.name}: dtype: preset {sorted(got)}, recipe {want} (half={recipe.half})")
    return diffs


def _dtypes(path: Path) -> set[str]:
    """The floating dtypes a safetensors file stores (header only)."""
    with path.open("rb") as f:
        header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
    return {v["dtype"] for k, v in header.items() if k != "__metadata__" and v["dtype"].startswith(("F", "BF"))}
