"""Presets: which audio encoder, text encoder, adapters, translator and image model make up an audio-to-image system.

A preset is a folder holding ``preset.json``; relative paths in it resolve against the folder. The embedded
default ``demo`` ships in ``checkpoints/demo``. Names of real models map to the hub ids they need; the
adapters and translator for them are trained with ``fusemix train`` / ``fusemix train-translator`` and their
folders given in a preset folder of your own.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fusion.errors import CheckpointError, ModelUnavailableError
from generator.preset_parts import check_preset_parts, read_json

MODES = ("translate", "retrieve")  # audio -> conditioning through the translator, or nearest bank caption as prompt
SHIPPED = ("checkpoints", "examples")  # folders that ship with the package (pyproject: generator.checkpoints, ...)


def shipped_path(name: str) -> Path:
    """The shipped folder ``name`` (``checkpoints`` or ``examples``): the one place their location is decided.

    An installed wheel holds them inside this package (``generator/checkpoints``, ``generator/examples``: package
    data mapped from the repository's top-level folders by pyproject.toml); a source checkout or an editable
    install finds them at the repository root.
    """
    if name not in SHIPPED:
        raise ValueError(f"shipped folder must be one of {SHIPPED}, got {name!r}")
    here = Path(__file__).resolve().parent
    installed = here / name
    return installed if installed.is_dir() else here.parent / name


CHECKPOINTS = shipped_path("checkpoints")

# Named presets: the shipped demo folder, and real SD-family pipelines (hub ids; need a network or a local copy).
PRESETS: dict[str, dict] = {
    "demo": {"folder": str(CHECKPOINTS / "demo")},
    "sd15": {"image_model": "stable-diffusion-v1-5/stable-diffusion-v1-5", "kind": "stable-diffusion"},
    "sd-turbo": {"image_model": "stabilityai/sd-turbo", "kind": "stable-diffusion"},
}


@dataclass
class Preset:
    """A resolved preset; paths are absolute or hub ids."""

    folder: Path | None  # the preset folder (None for a bare named preset)
    kind: str  # "demo" (pixel UNet on MiniLM token states) or "stable-diffusion" (any SD-family diffusers pipeline)
    audio_encoder: str  # name for fusion.encoders.load_encoder
    text_encoder: str  # name for fusion.encoders.load_encoder (pooled text latents fed to the text adapter)
    adapters: str  # FuseMixAdapters folder
    translator: str  # Translator folder
    image_model: str  # diffusers pipeline folder or hub id
    caption_bank: str | None  # folder with captions.json + points.safetensors ("what it heard", retrieve mode)
    steps: int = 20  # default denoising steps
    guidance: float = 3.0  # default classifier-free guidance scale
    mode: str = "translate"  # default mode (MODES); a preset whose translator trails its bank may choose retrieve
    # translate mode hands a clip whose translation lies farther than this (L2) from every scene anchor of the
    # translator to retrieve: the image model draws the nearest bank caption, as retrieve mode would; 0: never
    handoff: float = 0.0


def _resolve(folder: Path, value: str | None) -> str | None:
    if value is None:
        return None
    path = folder / value
    return str(path) if path.exists() else value


def load_preset(name_or_folder: str) -> Preset:
    """A named preset or a preset folder; one clear error when parts are missing."""
    entry = PRESETS.get(name_or_folder)
    folder = Path(entry["folder"]) if entry and "folder" in entry else Path(name_or_folder)
    if entry is not None and "folder" not in entry:
        raise ModelUnavailableError(
            f"preset {name_or_folder!r} drives {entry['image_model']!r}: it needs that model (download it with a network) "
            "and FuseMix adapters + a translator trained for it (fusemix train, fusemix train-translator), listed in a "
            "preset folder's preset.json; pass that folder as --preset"
        )
    spec = folder / "preset.json"
    if not spec.is_file():
        known = ", ".join(PRESETS)
        raise ModelUnavailableError(f"no preset {name_or_folder!r}: not one of {known} and {spec} does not exist")
    raw = read_json(spec, "preset")
    if not isinstance(raw, dict):
        raise CheckpointError(f"{spec}: expected a JSON object")
    missing = [k for k in ("audio_encoder", "text_encoder", "adapters", "translator", "image_model") if k not in raw]
    if missing:
        raise ModelUnavailableError(f"{spec} lacks {', '.join(missing)}")
    mode = raw.get("mode", "translate")
    if mode not in MODES:
        raise ModelUnavailableError(f"{spec}: mode must be one of {MODES}, got {mode!r}")
    handoff = raw.get("handoff", 0.0)
    if not isinstance(handoff, (int, float)) or handoff < 0 or (handoff > 0 and not raw.get("caption_bank")):
        raise ModelUnavailableError(
            f"{spec}: handoff must be a number >= 0, and > 0 needs a caption_bank; got {handoff!r}"
        )
    preset = Preset(
        folder=folder,
        kind=raw.get("kind", "demo"),
        audio_encoder=_resolve(folder, raw["audio_encoder"]),
        text_encoder=_resolve(folder, raw["text_encoder"]),
        adapters=_resolve(folder, raw["adapters"]),
        translator=_resolve(folder, raw["translator"]),
        image_model=_resolve(folder, raw["image_model"]),
        caption_bank=_resolve(folder, raw.get("caption_bank")),
        steps=int(raw.get("steps", 20)),
        guidance=float(raw.get("guidance", 3.0)),
        mode=mode,
        handoff=float(handoff),
    )
    check_preset_parts(preset)  # every saved part readable and matching, before any model loads
    return preset
