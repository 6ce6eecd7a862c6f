"""`fusemix train-translator`: learn shared space -> image-model conditioning from captions alone.

    fusemix train-translator --adapters runs/fusemix/checkpoint --text-latents latents/text_train \
        --out runs/translator                                   # demo image model (MiniLM token states)
    fusemix train-translator --kind stable-diffusion --image-model path/to/sd15 --adapters ... --text-latents ... --out ...
    fusemix train-translator ... --out runs/translator --resume   # continue after an interruption
    fusemix train-translator ... --objective both --audio-latents latents/audio_train   # distil through the
                                    # frozen image model, and train on where the paired audio clips land too

Real Stable Diffusion weights (--kind stable-diffusion): this machine is offline, so download an SD-family
pipeline in diffusers layout (unet/, vae/, scheduler/, text_encoder/, tokenizer/, model_index.json, safetensors)
where there is a network, e.g. `hf download stable-diffusion-v1-5/stable-diffusion-v1-5`, and pass its folder to
--image-model; extract the captions with the adapters' text encoder. Distillation runs the UNet twice per row and
step (and, with --distill-images generate, draws every caption once with --distill-steps steps): use a GPU
(--device cuda) for real weights.

OUT is rewritten atomically after every epoch; an existing OUT is only continued (--resume), never overwritten.
"""

from __future__ import annotations

import argparse
from dataclasses import fields

from fusion.errors import InputError
from generator.image_text import KINDS
from generator.train_translator import TranslatorConfig, check_config, train_translator
from generator.translator import ARCHS
from generator.translator_distill import DISTILL_IMAGES, OBJECTIVES


def add_objective_options(p: argparse.ArgumentParser, d: TranslatorConfig) -> None:
    """What the translator is trained against (MSE or distillation through the image model), its architecture and
    where it starts."""
    p.add_argument(
        "--objective",
        choices=OBJECTIVES,
        default=d.objective,
        help="mse: regress the image model's text encoding; distill: match the frozen denoiser's predictions "
        "under it; both: mse + --distill-weight x distill (default: %(default)s)",
    )
    p.add_argument("--distill-weight", type=float, default=d.distill_weight, help="weight of distill in 'both'")
    p.add_argument(
        "--distill-images",
        choices=DISTILL_IMAGES,
        default=d.distill_images,
        help="images of a caption for distillation: render (the demo world's scene), generate (drawn once by the "
        "image model), auto (render for demo, generate for stable-diffusion)",
    )
    p.add_argument("--distill-steps", type=int, default=d.distill_steps, help="steps per image drawn (generate)")
    p.add_argument(
        "--arch",
        choices=ARCHS,
        default=d.arch,
        help="mlp: a residual MLP writes every token at once; queries: one learned query per token reads S through "
        "--num-blocks transformer blocks; mixture: the MLP writes --components candidates and picks the best-scored "
        "one, trained winner-take-all, meant to draw one of two scenes where a point lies between them instead of "
        "their blend; on the demo it did not remove the blank fields (README) (default: %(default)s)",
    )
    p.add_argument(
        "--width",
        type=int,
        default=d.width,
        help="hidden width of an mlp or mixture translator, after one projection from S, so a wide S (several heads "
        "joined) need not make the translator wide; on the demo, 256-512 over the shipped 1,024-wide S got more sizes "
        "wrong (README) (default: the width of S)",
    )
    p.add_argument(
        "--components",
        type=int,
        default=d.components,
        help="candidate conditionings of --arch mixture (default: %(default)s)",
    )
    p.add_argument(
        "--neighbour-mix",
        type=float,
        default=d.neighbour_mix,
        help="share of each batch's rows moved part of the way (up to the midpoint) toward a neighbouring scene's "
        "point in S, keeping their own target, meant to make the translator pick the nearer scene where a clip lands "
        "between two instead of a blend; alone it drew more blends on the demo, not fewer; with --snap it is the "
        "shipped translator's (README) (default: %(default)s)",
    )
    p.add_argument(
        "--init-from",
        default=None,
        metavar="TRANSLATOR",
        help="start from this translator's weights (same --arch, --num-blocks and --width), e.g. an mse run to "
        "fine-tune with --objective distill or both (default: a fresh translator)",
    )


def add_snap_options(p: argparse.ArgumentParser, d: TranslatorConfig) -> None:
    """Where an output far from every scene goes at inference: snapped to a scene, judged by L2 or a metric."""
    p.add_argument(
        "--snap",
        type=float,
        default=d.snap,
        metavar="DIST",
        help="keep the --canonical-bank scenes' conditionings as anchors; at inference an output farther than DIST "
        "(L2) from every anchor is replaced by the nearest, so a clip heard between two scenes draws one of them, "
        "not a blend; 0: never (default: %(default)s)",
    )
    p.add_argument(
        "--snap-metric-audio",
        dest="metric_audio_latents",
        default=None,
        metavar="CACHE",
        help="with --snap and --snap-metric-text: audio cache of clips the run does not train on (e.g. the accented "
        "world's training clips, other voices); far outputs snap to the anchor nearest by the Mahalanobis metric of "
        "the translator's errors on them, not by L2 (default: L2)",
    )
    p.add_argument(
        "--snap-metric-text",
        dest="metric_text_latents",
        default=None,
        metavar="CACHE",
        help="the caption cache paired by clip id with --snap-metric-audio",
    )
    p.add_argument(
        "--snap-metric-shrink",
        dest="metric_shrink",
        type=float,
        default=d.metric_shrink,
        help="the metric's error covariance shrunk toward isotropic: 0 raw, 1 plain L2 (default: %(default)s)",
    )


def parse_args(argv: list[str] | None) -> tuple[TranslatorConfig, bool]:
    """The run's configuration, and whether to resume it."""
    d = TranslatorConfig(adapters="", text_latents="", out="")
    p = argparse.ArgumentParser(
        prog="fusemix train-translator",
        description=__doc__.split("\n")[0],
        epilog=__doc__.split("\n\n")[2],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--adapters", required=True, help="FuseMix adapters folder (fusemix train's OUT/checkpoint)")
    p.add_argument("--text-latents", required=True, help="caption latent cache from fusemix extract")
    p.add_argument("--out", required=True, help="translator folder to write")
    p.add_argument("--kind", choices=KINDS, default=d.kind, help="image model kind (default: %(default)s)")
    p.add_argument(
        "--image-model",
        default=None,
        help="SD-family pipeline folder or id (kind stable-diffusion; see below for real weights); for kind demo "
        "with distillation, the demo pipeline folder (default: the shipped checkpoints/demo/image_model)",
    )
    p.add_argument(
        "--audio-latents",
        default=None,
        help="audio latent cache paired by clip id with --text-latents (the adapters' audio encoder): also train "
        "on where the clips land in S, with their captions' targets (default: captions only)",
    )
    p.add_argument(
        "--canonical-bank",
        default=None,
        metavar="CACHE",
        help="caption cache grouped by id (e.g. a caption bank) whose first caption per group follows one phrasing: "
        "its captions join the rows, and every row targets the first caption of the group nearest its caption in S "
        "(one answer per scene instead of the mean of its phrasings; default: each row its own caption)",
    )
    p.add_argument(
        "--no-audio-views",
        dest="audio_views",
        action="store_false",
        help="with an --audio-latents cache holding augmented views (extract --augment), use each clip's own row "
        "only (default: every view is a row too)",
    )
    add_objective_options(p, d)
    add_snap_options(p, d)
    for name in ("epochs", "batch_size", "num_blocks", "seed"):
        p.add_argument(f"--{name.replace('_', '-')}", type=int, default=getattr(d, name))
    for name in ("lr", "weight_decay", "noise", "audio_noise", "dropout"):
        p.add_argument(f"--{name.replace('_', '-')}", type=float, default=getattr(d, name))
    p.add_argument("--device", default=d.device)
    p.add_argument("--no-progress", dest="progress", action="store_false")
    p.add_argument("--resume", action="store_true", help="continue the interrupted run in OUT (same configuration)")
    a = p.parse_args(argv)
    if a.kind == "stable-diffusion" and not a.image_model:
        raise InputError("--kind stable-diffusion needs --image-model (pipeline folder or hub id)")
    if a.epochs < 1 or a.batch_size < 1 or a.noise < 0:
        raise InputError("--epochs and --batch-size must be >= 1 and --noise >= 0")
    cfg = TranslatorConfig(**{f.name: getattr(a, f.name) for f in fields(TranslatorConfig)})
    check_config(cfg)
    return cfg, a.resume


def parse_config(argv: list[str] | None) -> TranslatorConfig:
    """The run's configuration alone."""
    return parse_args(argv)[0]


def main(argv: list[str] | None = None) -> int:
    cfg, resume = parse_args(argv)
    out = train_translator(cfg, resume=resume)
    print(f"translator written to {out}")
    return 0
