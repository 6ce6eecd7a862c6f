"""`fusemix train`: train FuseMix adapters on cached audio and caption latents.

    fusemix train --audio-latents latents/audio --text-latents latents/text --out runs/fusemix
    fusemix train ... --out runs/fusemix --resume          # continue after an interruption
    fusemix train --audio-latents latents/audio_tokens32 ... --audio-adapter sparse --keep 4   # token latents
    fusemix train ... --hard-negatives latents/text-swaps   # captions with two colours swapped as extra negatives
        # (the cache: `fusemix hard-negatives --captions M --swap-classes F --out swaps.jsonl`, then
        #  `fusemix extract` of swaps.jsonl with the caption cache's encoder and --tokens)
    accelerate launch --multi_gpu --num_processes 2 -m fusemix train ...   # several processes, data split
        # (on a machine without CUDA this runs CPU processes over gloo; `torchrun --nproc_per_node 2 -m fusemix
        #  train ...` does the same; `accelerate launch --cpu` starts only one process)

The defaults are the demo recipe's (generator.recipe.DEFAULT). The towers follow the caches unless given: a token
cache (`fusemix extract --tokens K`) gets a sparse tower keeping min(16, K) tokens, a pooled cache an MLP tower.
The flags that matter most: --hard-negatives (binding colours to what they describe), --epochs for your data size
(the recipe's 60 suit ~6k clips; ~3k clips want ~120), and token caches on both sides (sparse towers keep which
word goes with which); on transcript caches keep every token (--keep K): keeping 16 of 32 dropped the background,
said last (README).
A concat:A+B token cache of two equal widths (Whisper states + transcript, extracted by this version) is read by
default as the recipe reads it, --audio-parts 2 --keep 2K --audio-part-dropout 0.4 0.2: A's tokens then B's, every
token kept, one part blanked now and then so the transcript carries a clip on its own (--audio-parts 1 reads it as
K wide tokens); with one caption per clip that says exactly what the audio says, give several captions
per clip (a manifest's "captions" list) or S learns the wording (the demo recipe's paraphrases; README).

The checkpoint (OUT/checkpoint) is rewritten atomically after every epoch; `fusemix eval --checkpoint OUT` reads it.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from fusion.adapters import AUDIO_ADAPTERS, TEXT_ADAPTERS
from fusion.cache import open_latents
from fusion.sparse import SPARSE_MODES
from fusion.train import TrainConfig, train

AUTO = "auto"  # tower kind chosen from the cache
AUTO_KEEP = 16  # tokens an auto sparse tower keeps (the recipe's)
AUTO_PART_DROPOUT = (0.4, 0.2)  # the recipe's part dropout on a two-part concat cache (Whisper states, transcript)

# (flag, type, help) of the numeric options; their defaults come from TrainConfig
NUMERIC_OPTIONS = [
    ("epochs", int, "passes over the clips"),
    ("batch-size", int, "pairs per step before mixing (over all processes)"),
    ("lr", float, "peak AdamW learning rate"),
    ("min-lr", float, "final learning rate of the cosine decay"),
    ("warmup-steps", int, "linear warm-up steps"),
    ("weight-decay", float, "AdamW weight decay"),
    ("alpha", float, "FuseMix lambda ~ Beta(alpha, alpha)"),
    ("dropout", float, "dropout in the MLP blocks"),
    ("num-blocks", int, "residual MLP blocks per tower"),
    ("expansion", int, "block hidden width = expansion x dim"),
    ("shared-dim", int, "shared space width (default 512; text dim with --lock-text)"),
    ("val-fraction", float, "share of clips held out for validation retrieval each epoch"),
    ("seed", int, "random seed"),
    ("heads", int, "runs alike but for the seed (SEED, SEED+1, ...), joined: an ensemble as one space (K x time)"),
    ("hard-negative-limit", int, "hard negatives per caption, at most (with --hard-negatives)"),
]


def add_tower_options(p: argparse.ArgumentParser, defaults: TrainConfig) -> None:
    """The towers' flags: kinds (auto from the caches), tokens kept, sparse mode and token blocks."""
    p.add_argument(
        "--audio-adapter",
        choices=(AUTO, *AUDIO_ADAPTERS),
        default=AUTO,
        help="audio tower kind (auto: sparse on a token cache, mlp on pooled latents)",
    )
    p.add_argument(
        "--keep",
        type=int,
        default=None,
        help=f"sparse adapter: tokens kept per clip (K keeps all; needs a --tokens cache; default min({AUTO_KEEP}, K))",
    )
    p.add_argument(
        "--text-adapter",
        choices=(AUTO, *TEXT_ADAPTERS),
        default=AUTO,
        help="text tower kind (auto: as --audio-adapter; mlp with --lock-text); sparse keeps which word goes with which",
    )
    p.add_argument(
        "--text-keep",
        type=int,
        default=None,
        help=f"sparse text adapter: tokens kept per caption (default min({AUTO_KEEP}, K))",
    )
    p.add_argument(
        "--sparse-mode",
        choices=SPARSE_MODES,
        default=defaults.sparse_mode,
        help="sparse adapter: topk (scored selection) or slots (learned query slots)",
    )
    p.add_argument(
        "--audio-parts",
        type=int,
        default=None,
        help="sparse audio adapter: encoders side by side in each latent, read as A's tokens, then B's (default: "
        "2 on a concat:A+B token cache of equal widths, keeping all 2K tokens, with --audio-part-dropout "
        f"{' '.join(map(str, AUTO_PART_DROPOUT))}; else 1)",
    )
    p.add_argument(
        "--audio-part-dropout",
        type=float,
        nargs="+",
        default=defaults.audio_part_dropout,
        metavar="P",
        help="with --audio-parts: per part, the chance that training blanks it for an item (at most one part), "
        "e.g. 0.4 0.2 so the transcript must carry a clip without Whisper's states",
    )
    p.add_argument(
        "--token-blocks",
        type=int,
        default=defaults.token_blocks,
        help="sparse adapters: transformer blocks over the kept tokens",
    )


def build_parser() -> argparse.ArgumentParser:
    defaults = TrainConfig(audio_latents="", text_latents="", out="")
    p = argparse.ArgumentParser(
        prog="fusemix train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--audio-latents", required=True, help="audio latent cache folder (one row per clip)")
    p.add_argument("--text-latents", required=True, help="caption latent cache folder (one row per caption)")
    p.add_argument("--out", required=True, help="run folder; the checkpoint goes to OUT/checkpoint")
    for name, kind, help_ in NUMERIC_OPTIONS:
        field = name.replace("-", "_")
        p.add_argument(
            f"--{name}",
            type=kind,
            default=getattr(defaults, field),
            help=f"{help_} (default {getattr(defaults, field)})",
        )
    add_tower_options(p, defaults)
    p.add_argument(
        "--hard-negatives",
        default=None,
        metavar="CACHE",
        help="text latent cache of the captions' swapped versions (ids <caption id>#swapK): extra negatives (NegCLIP)",
    )
    p.add_argument("--lock-text", action="store_true", help="text tower = identity (audio lands in text space)")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return p


def cache_tokens(folder: str) -> int | None:
    """K of a token cache, None for pooled latents or a missing folder (training then names what is missing)."""
    if not Path(folder).is_dir():
        return None
    rows = open_latents(Path(folder), mmap=True).array
    return int(rows.shape[1]) if rows.ndim == 3 else None


def cache_part_dims(folder: str) -> list[int] | None:
    """Widths of the encoders side by side in a cache's latents (``concat:A+B``; recorded by `fusemix extract`)."""
    if not Path(folder).is_dir():
        return None
    return open_latents(Path(folder), mmap=True).meta.get("part_dims")


def resolve_towers(args: dict) -> None:
    """Replace ``auto`` towers by what the caches hold: sparse keeping min(AUTO_KEEP, K) tokens, or mlp; a concat
    token cache of equal parts is read as its parts (the recipe's: every token kept, part dropout)."""
    resolve_parts(args)
    towers = (("audio_adapter", "keep", "audio_latents"), ("text_adapter", "text_keep", "text_latents"))
    for kind, keep, cache in towers:
        if args[kind] != AUTO:
            continue
        tokens = None if kind == "text_adapter" and args["lock_text"] else cache_tokens(args[cache])
        args[kind] = "mlp" if tokens is None else "sparse"
        if tokens is not None and args[keep] is None:
            parts = args["audio_parts"] if kind == "audio_adapter" else 1
            args[keep] = tokens * parts if parts > 1 else min(AUTO_KEEP, tokens)


def resolve_parts(args: dict) -> None:
    """``--audio-parts`` unset: 2+ on a sparse-able concat token cache of equal part widths, with the recipe's part
    dropout unless given; 1 otherwise."""
    if args["audio_parts"] is not None:
        return
    dims = cache_part_dims(args["audio_latents"]) if args["audio_adapter"] in (AUTO, "sparse") else None
    split = bool(dims) and len(set(dims)) == 1 and cache_tokens(args["audio_latents"]) is not None
    args["audio_parts"] = len(dims) if split else 1
    if split and args["audio_part_dropout"] is None and len(dims) == len(AUTO_PART_DROPOUT):
        args["audio_part_dropout"] = list(AUTO_PART_DROPOUT)


def parse_config(argv: list[str] | None = None) -> TrainConfig:
    args = vars(build_parser().parse_args(argv))
    resolve_towers(args)
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in args.items() if k in names})


def main(argv: list[str] | None = None) -> int:
    ckpt = train(parse_config(argv))
    print(f"checkpoint: {ckpt}")
    return 0
