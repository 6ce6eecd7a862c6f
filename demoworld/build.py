"""Build the demo-world dataset: scene images, spoken captions, manifests and splits.

Everything is drawn from the seed: the same seed and size give the same files, byte for byte.
Layout of the output folder::

    images/<scene id>.png      one image per scene
    audio/<clip id>.wav        16 kHz mono 16-bit spoken captions (one or more per scene)
    train.jsonl val.jsonl test.jsonl   one line per clip: id, audio, caption, scene, image, voice, template, ...
    swap_classes.json          the words `fusemix hard-negatives` may swap (the colours)
    README.json                counts, exact settings, build time (written last)
    .build.json                the settings, written first: a re-run with other settings refuses to mix them

The test split's voices (``demoworld.speech.VOICES``) and templates (``demoworld.scenes.TEST_TEMPLATES``)
are never used in train. Re-running the same command resumes: finished audio files are kept.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from demoworld import accents, scenes, speech
from fusion.cache import atomic_write_bytes, atomic_write_json
from fusion.errors import FusemixError, InputError

logger = logging.getLogger(__name__)

FORMAT_VERSION = 3  # 2: 36 phrasings, every espeak-ng variant; 3: 44, a third of training ones background-first
SPLITS: tuple[str, ...] = ("train", "val", "test")
# Scenes per split for each named size. Train scenes get two spoken captions, val and test one.
SIZE_PRESETS: dict[str, dict[str, int]] = {
    "small": {"train": 12, "val": 4, "test": 8},
    "default": {"train": 1500, "val": 300, "test": 500},
    "large": {"train": 6000, "val": 600, "test": 1000},
}
CAPTIONS_PER_SCENE: dict[str, int] = {"train": 2, "val": 1, "test": 1}
SPLIT_TEMPLATES: dict[str, tuple[int, ...]] = {
    "train": scenes.TRAIN_TEMPLATES,
    "val": scenes.VAL_TEMPLATES,
    "test": scenes.TEST_TEMPLATES,
}
RESOLUTIONS: tuple[int, ...] = (32, 64)
JITTER = 0.08  # as in scenes.random_scene


@dataclass
class BuildConfig:
    """What `fusemix demo build` makes."""

    out: Path  # output folder
    size: str = "default"  # "small", "default", "large", or a number of scenes split like "default"
    seed: int = 0  # everything is drawn from this
    resolution: int = 32  # image side in pixels (32 on CPU, 64 for GPU runs)
    workers: int = 2  # espeak-ng synthesis threads
    progress: bool = True  # show a tqdm progress bar
    # the voice set (speech.VOICE_SETS): "english", "accented" (other languages' voices) or "simulated" (English
    # voices with simulated accents: demoworld.accents)
    voices: str = "english"


@dataclass
class ClipPlan:
    id: str
    caption: str
    template: int
    settings: speech.SpeechSettings
    noise_seed: list[int]  # seeds the clip's noise generator


@dataclass
class ScenePlan:
    id: str
    split: str
    scene: scenes.Scene
    clips: list[ClipPlan] = field(default_factory=list)


def scene_counts(size: str | int) -> dict[str, int]:
    """Scenes per split for a preset name or a total number of scenes (split in the default proportions)."""
    if isinstance(size, str) and size in SIZE_PRESETS:
        return dict(SIZE_PRESETS[size])
    try:
        total = int(size)
    except (TypeError, ValueError):
        raise InputError(f"--size must be one of {tuple(SIZE_PRESETS)} or a number of scenes, got {size!r}") from None
    if total < len(SPLITS):
        raise InputError(f"--size must be at least {len(SPLITS)} scenes (one per split), got {total}")
    weights = SIZE_PRESETS["default"]
    whole = sum(weights.values())
    counts = {s: max(1, int(total * weights[s] / whole)) for s in SPLITS}
    counts["train"] = total - counts["val"] - counts["test"]
    return counts


def _scene(combo: tuple[str, str, str, str], rng: np.random.Generator, jitter: float = JITTER) -> scenes.Scene:
    """A jittered scene of the given attributes, its shift rounded so manifests print it exactly."""
    scene = scenes.jittered_scene(combo, rng, jitter)
    return replace(scene, dx=round(scene.dx, 4), dy=round(scene.dy, 4))


def plan(config: BuildConfig) -> list[ScenePlan]:
    """Every scene and clip of the build, drawn from the seed (no files touched).

    Attribute combinations are dealt from shuffled decks of all 448, so each split covers them evenly.
    Each item has its own generator keyed by (seed, split, index), so the plan does not depend on workers.
    """
    combos = scenes.all_attribute_combinations()
    items: list[ScenePlan] = []
    for split_index, (split, count) in enumerate(scene_counts(config.size).items()):
        order: list[int] = []
        for i in range(count):
            if i % len(combos) == 0:
                deck = np.random.default_rng([config.seed, 0, split_index, i // len(combos)])
                order = list(deck.permutation(len(combos)))
            rng = np.random.default_rng([config.seed, 1, split_index, i])
            item = ScenePlan(f"{split}-{i:05d}", split, _scene(combos[order[i % len(combos)]], rng))
            for k in range(CAPTIONS_PER_SCENE[split]):
                templates = SPLIT_TEMPLATES[split]
                template = templates[int(rng.integers(len(templates)))]
                text = scenes.caption(item.scene, template, rng)
                settings = speech.draw_settings(speech.VOICE_SETS[config.voices][split], rng)
                pool = speech.ACCENT_POOLS.get(config.voices, {}).get(split, ())
                if pool:  # its own generator: everything else is drawn as for the English voices
                    accent = accents.draw_accent(pool, np.random.default_rng([config.seed, 4, split_index, i, k]))
                    settings = replace(settings, accent=accent)
                item.clips.append(
                    ClipPlan(f"{item.id}-{k}", text, template, settings, [config.seed, 2, split_index, i, k])
                )
            items.append(item)
    return items


def png_bytes(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb, mode="RGB").save(buf, format="PNG")
    return buf.getvalue()


def espeak_version() -> str:
    out = subprocess.run([speech.check_espeak(), "--version"], capture_output=True, text=True, check=False).stdout
    return out.strip()


def build_settings(config: BuildConfig) -> dict:
    """Everything that decides the files' content (not where they go or how fast they are made)."""
    return {
        "format_version": FORMAT_VERSION,
        "seed": config.seed,
        "size": str(config.size),
        "scenes_per_split": scene_counts(config.size),
        "captions_per_scene": CAPTIONS_PER_SCENE,
        "resolution": config.resolution,
        "jitter": JITTER,
        "colours": scenes.COLOURS,
        "shapes": scenes.SHAPES,
        "sizes": {s: scenes.SIZE_RADIUS[s] for s in scenes.SIZES},
        "templates": {split: {t: scenes.TEMPLATES[t] for t in SPLIT_TEMPLATES[split]} for split in SPLITS},
        "voices": speech.VOICE_SETS[config.voices],
        **({"accents": speech.ACCENT_POOLS[config.voices]} if config.voices in speech.ACCENT_POOLS else {}),
        "speed_wpm": speech.SPEED_RANGE,
        "pitch": speech.PITCH_RANGE,
        "snr_db": speech.SNR_RANGE_DB,
        "gain": speech.GAIN_RANGE,
        "noise": speech.NOISE_COLOURS,
        "pad_seconds": speech.PAD_SECONDS,
        "sample_rate": speech.SAMPLE_RATE,
        "audio_format": "WAV PCM_16 mono",
        "espeak_ng": espeak_version(),
    }


def _check_resumable(out: Path, settings: dict) -> None:
    marker = out / ".build.json"
    if marker.exists():
        previous = json.loads(marker.read_text())
        if previous != json.loads(json.dumps(settings)):
            changed = sorted(
                k for k in set(previous) | set(settings) if previous.get(k) != json.loads(json.dumps(settings)).get(k)
            )
            raise FusemixError(
                f"{out} holds a demo-world build with other settings ({', '.join(changed)}): use a new --out or delete it"
            )
    elif (out / "README.json").exists():
        raise FusemixError(f"{out} holds a finished build without {marker.name}; use a new --out or delete it")


def _synthesize(clip: ClipPlan, path: Path) -> bool:
    """Speak one clip into ``path``; False if it was already there (resume)."""
    if path.exists():
        return False
    audio = speech.speak(clip.caption, clip.settings, np.random.default_rng(clip.noise_seed))
    speech.write_wav(path, audio)
    return True


def manifest_line(item: ScenePlan, clip: ClipPlan) -> dict:
    return {
        "id": clip.id,
        "audio": f"audio/{clip.id}.wav",
        "caption": clip.caption,
        "scene": item.scene.to_dict(),
        "image": f"images/{item.id}.png",
        "voice": clip.settings.voice,
        "template": clip.template,
        "split": item.split,
        "speed": clip.settings.speed,
        "pitch": clip.settings.pitch,
        "snr_db": clip.settings.snr_db,
        "noise": clip.settings.noise,
        "gain": clip.settings.gain,
        **({"accent": clip.settings.accent} if clip.settings.accent else {}),
    }


def build(config: BuildConfig) -> dict:
    """Write the dataset into ``config.out`` and return the README dict; resumes an unfinished build."""
    if config.resolution not in RESOLUTIONS:
        raise InputError(f"--resolution must be one of {RESOLUTIONS}, got {config.resolution}")
    if config.workers < 1:
        raise InputError(f"--workers must be >= 1, got {config.workers}")
    if config.voices not in speech.VOICE_SETS:
        raise InputError(f"--voices must be one of {tuple(speech.VOICE_SETS)}, got {config.voices!r}")
    start = time.perf_counter()
    out = Path(config.out)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} exists and is not a folder")
    settings = build_settings(config)
    _check_resumable(out, settings)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "audio").mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / ".build.json", settings)
    items = plan(config)

    for item in items:  # images are cheap: render and rewrite only if different
        data = png_bytes(scenes.render(item.scene, config.resolution))
        path = out / "images" / f"{item.id}.png"
        if not path.exists() or path.read_bytes() != data:
            atomic_write_bytes(path, data)

    jobs = [(clip, out / "audio" / f"{clip.id}.wav") for item in items for clip in item.clips]
    made = 0
    with ThreadPoolExecutor(max_workers=config.workers) as pool:
        futures = [pool.submit(_synthesize, clip, path) for clip, path in jobs]
        bar = tqdm(
            as_completed(futures), total=len(futures), desc="spoken captions", unit="clip", disable=not config.progress
        )
        for future in bar:
            made += bool(future.result())
    logger.info("synthesized %d clips, %d already present", made, len(jobs) - made)

    counts: dict[str, dict[str, int]] = {}
    hashes: dict[str, str] = {}
    for split in SPLITS:
        lines = [manifest_line(item, clip) for item in items if item.split == split for clip in item.clips]
        data = "".join(json.dumps(line) + "\n" for line in lines).encode()
        atomic_write_bytes(out / f"{split}.jsonl", data)
        hashes[f"{split}.jsonl"] = hashlib.sha256(data).hexdigest()
        counts[split] = {"scenes": sum(item.split == split for item in items), "clips": len(lines)}
    readme = {
        "what": "FuseMix demo world: procedurally drawn scenes, their captions spoken by espeak-ng, train/val/test splits",
        "counts": counts,
        "total": {"scenes": len(items), "clips": len(jobs)},
        "settings": settings,
        "build_seconds": round(time.perf_counter() - start, 2),
        "clips_synthesized_this_run": made,
        "workers": config.workers,
        "manifest_sha256": hashes,
    }
    atomic_write_json(out / "swap_classes.json", scenes.SWAP_CLASSES)  # for fusemix hard-negatives
    atomic_write_json(out / "README.json", readme)
    return readme


def write_examples(out: Path, count: int = 6, seed: int = 0) -> list[dict]:
    """A few spoken prompts (test voices and templates) and ``prompts.jsonl`` listing them, for the README and UI.

    The clips are 16 kHz mono Ogg Vorbis (about 20 KB each) because they ship in git.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    combos = scenes.all_attribute_combinations()
    rng = np.random.default_rng([seed, 3])
    picks = rng.choice(len(combos), size=count, replace=False)
    lines = []
    for k, index in enumerate(picks):
        scene = _scene(combos[int(index)], rng)
        template = scenes.EXAMPLE_TEMPLATES[k % len(scenes.EXAMPLE_TEMPLATES)]
        text = scenes.caption(scene, template, rng)
        voice = speech.TEST_VOICES[k % len(speech.TEST_VOICES)]
        # moderate settings: these clips show the product, not stress it
        settings = speech.SpeechSettings(
            voice=voice, speed=140, pitch=int(rng.integers(40, 61)), snr_db=30.0, noise="pink", gain=0.7
        )
        name = f"{scene.size}_{scene.colour}_{scene.shape}_on_{scene.background}.ogg"
        atomic_write_bytes(out / name, speech.ogg_bytes(speech.speak(text, settings, rng)))
        lines.append({"audio": name, "caption": text, "scene": scene.attributes(), "voice": voice})
    atomic_write_bytes(out / "prompts.jsonl", "".join(json.dumps(line) + "\n" for line in lines).encode())
    return lines
