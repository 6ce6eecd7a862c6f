"""The recipe of the embedded default (``checkpoints/demo``): every setting in one dataclass, run step by step.

    fusemix demo make-default --work runs/demo-default               # the shipped recipe (hours on CPU)
    fusemix demo make-default --tiny --out /tmp/tiny                  # the same steps at toy size (minutes on CPU)
    fusemix demo make-default --check                                 # do the shipped configs equal the recipe?

Steps (each writes under WORK; the preset goes to OUT):

1. ``world``, ``world_extra``: build the demo world, and a second build (another seed) whose training split adds
   training clips (its val/test splits go unused); ``world_translator`` (with ``translator_world_size``): a build
   whose training clips only the translator reads;
2. ``extract_*``: audio and text latents (token latents when ``audio_tokens``/``text_tokens`` are set) of the
   training, validation and test splits, the extra world's training split, and of the caption bank (every scene
   combination x image template, both size words); ``swaps_*``: the training captions with their two colours
   exchanged, and their text latents (hard negatives); ``paraphrases_*`` (with ``paraphrases``): each training
   clip's caption plus its scene in other training phrasings, and their latents (``text_train_paraphrased``, what
   FuseMix then trains on; the swaps are of these); ``train_all``/``swaps_all``: the two worlds' caches joined
   (with no extra world, training reads the main world's caches as they are); ``*_translator_all``: those joined
   with the translator world's training clips and captions;
3. ``fusemix``: FuseMix adapters (``fusion.train``), then ``eval``: retrieval on the test split;
4. ``translator``: shared space -> the image model's token states, trained on the bank captions (or, with
   ``translator_audio_points``, on the training captions and where their clips land in S);
5. ``image_base``, ``image_tuned``: the demo image model on captions, then continued to ``image_steps`` with part of
   each batch conditioned through the translator (so translated prompts work); or, with ``reuse_image_model``,
   ``image_reused``: the shipped image model, copied;
6. ``translator_tune`` (with ``translator_tune``): the translator fine-tuned against the image model's denoiser
   (distillation), starting from step 4's;
7. ``preset``: adapters + translator (float16 when ``half``), image model, caption bank points in S, preset.json.

``generator.recipe_run`` runs the steps; ``generator.recipe_check`` compares a preset folder with a recipe. This
module holds only the settings and what each step is given, so both read the same source.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class DemoRecipe:
    """Every setting behind a demo preset. ``DEFAULT`` (below) made the shipped ``checkpoints/demo``; the field
    defaults are the earlier default, ``WHISPER_TOKENS``."""

    name: str = "default"  # the recipe's name (RECIPES key); recorded nowhere
    # -- demo worlds
    world_size: str = (
        "default"  # `fusemix demo build --size`: 1,500/300/500 scenes, two spoken captions per train scene
    )
    world_seed: int = 0  # seed of the main world (its test split is the README's yardstick)
    extra_world_size: str | None = "4600"  # a second build adding its 3,000 training scenes (6,000 clips); None: none
    extra_world_seed: int = 1  # seed of the second build (must differ from world_seed)
    # a further build whose training clips only the translator reads (`train-translator --audio-latents`): where
    # clips the adapters never trained on land, as a user's do (no gain measured: README); None: the adapters' own
    # training clips alone
    translator_world_size: str | None = None
    translator_world_seed: int = 3  # its seed (must differ from world_seed and extra_world_seed)
    # a build whose training clips speak accented English (`fusemix demo build --voices accented`: espeak-ng's Hindi
    # and Russian voices), joined after the other training clips; None: none
    accent_world_size: str | None = None
    accent_world_seed: int = 4  # its seed (must differ from the other worlds')
    # a build spoken with simulated accents (`fusemix demo build --voices simulated`: the English training voices,
    # each clip bent by sound changes of the training pool; demoworld.accents), joined after the other training clips;
    # None: none
    sim_world_size: str | None = None
    sim_world_seed: int = 5  # its seed (must differ from the other worlds')
    resolution: int = 32  # image side of the worlds' scenes and of the image model
    # -- encoders and latents
    audio_encoder: str = "whisper-tiny.en-10s"  # frozen audio encoder (fusion.encoders name)
    text_encoder: str = "all-MiniLM-L6-v2"  # frozen text encoder
    audio_tokens: int | None = 32  # tokens per clip in the audio cache (`extract --tokens`); None: pooled vectors
    text_tokens: int | None = 16  # token states per caption in the text cache; None: pooled vectors
    bank_scenes: int | None = None  # caption bank: all 448 scene combinations x training templates, or the first N
    audio_augment: int = 0  # augmented views per training clip (`extract --augment K`; fusion.augment); 0: none
    augment_seed: int = 0  # seeds the views (`extract --augment-seed`)
    # each training clip also pairs with its scene in this many other training phrasings (demoworld.paraphrase), one
    # drawn per epoch, so S keeps what is said rather than how; 0: its own caption only
    paraphrases: int = 0
    hard_negatives: bool = False  # NegCLIP: each caption's colour-swapped version is an extra negative for its audio
    hard_negative_limit: int = 2  # swapped versions per caption, at most
    # each caption with its size word replaced by the other size's ("big" -> "little") is a further negative, after
    # its swap (demoworld.scenes.SIZE_SUBSTITUTES): a batch rarely holds the scene that differs by size alone
    hard_negative_sizes: bool = False
    # -- FuseMix adapters (fusion.train.TrainConfig)
    epochs: int = 40  # passes over the training clips
    batch_size: int = 512  # pairs per step before mixing
    lr: float = 1e-3  # peak AdamW learning rate
    min_lr: float = 1e-6  # learning rate at the end of the cosine decay
    warmup_steps: int = 100  # linear warm-up steps
    weight_decay: float = 0.1  # AdamW weight decay on matrices
    alpha: float = 1.0  # FuseMix mixing: λ ~ Beta(alpha, alpha)
    dropout: float = 0.2  # dropout inside the towers' blocks
    num_blocks: int = 2  # residual MLP blocks per tower
    expansion: int = 4  # block hidden width = expansion x input width
    shared_dim: int | None = None  # width of S; None: 512 (text width with lock_text)
    lock_text: bool = False  # text tower = identity (audio lands in the text encoder's space)
    audio_keep: int | None = 16  # sparse audio tower keeps this many of audio_tokens; None: MLP tower (pooled)
    text_keep: int | None = 16  # sparse text tower keeps this many of text_tokens; None: MLP tower (pooled)
    sparse_mode: str = "topk"  # how sparse towers pick tokens: "topk" or "slots"
    token_blocks: int = 1  # transformer blocks over a sparse tower's kept tokens
    audio_parts: int = 1  # encoders side by side in each audio latent, read as parts x audio_tokens (fusion.sparse)
    audio_part_dropout: tuple[float, ...] | None = None  # per part: chance training blanks it for a clip
    fusemix_seed: int = 0  # seeds the adapters' init, data order, captions, λ and dropout
    # adapters trained this many times, seeds fusemix_seed, +1, ..., and joined: S is their spaces side by side, an
    # ensemble read as one space (`fusemix train --heads`); each head costs one training
    fusemix_heads: int = 1
    # -- translator (generator.train_translator.TranslatorConfig)
    translator_epochs: int = 60  # passes over the bank captions
    translator_batch_size: int = 256  # captions per step
    translator_lr: float = 1e-3  # AdamW peak, cosine to lr/100
    translator_weight_decay: float = 0.01  # AdamW weight decay
    translator_noise: float = 0.05  # Gaussian noise on the unit S points while training (audio/text gap)
    translator_blocks: int = 2  # residual blocks of the translator
    translator_dropout: float = 0.1  # dropout inside them
    translator_arch: str = "mlp"  # "mlp", "queries" (learned per-token queries) or "mixture" (generator.translator)
    translator_width: int | None = None  # hidden width of an mlp translator (`--width`); None: the width of S
    translator_components: int = 2  # candidates of a "mixture" translator (`train-translator --components`)
    translator_seed: int = 0  # seeds init, order and noise
    # share of rows moved toward a neighbouring scene's point, keeping their target (`train-translator
    # --neighbour-mix`), meant to make the translator pick the nearer of two scenes; alone no gain measured, with
    # translator_snap the best of the translators tried (README, stop 32)
    translator_neighbour_mix: float = 0.0
    # an output farther than this (L2) from every bank scene's conditioning snaps to the nearest (`train-translator
    # --snap`; needs translator_canonical); 0: never
    translator_snap: float = 0.0
    # the far outputs snap by the Mahalanobis metric of the translator's errors on the accented world's training
    # clips (built with accent_world_seed at this size, or at accent_world_size when that is set: the same world),
    # which the translator never trains on (`train-translator --snap-metric-audio/-text`); None: by L2
    translator_metric_world_size: str | None = None
    translator_metric_shrink: float = 0.5  # the metric's covariance shrunk toward isotropic (`--snap-metric-shrink`)
    # train the translator on the training pairs (each clip's point in S and its caption's point, both with the
    # caption's conditioning as target) instead of the bank captions alone (`train-translator --audio-latents`)
    translator_audio_points: bool = False
    # every translator row targets the first caption of its nearest caption-bank scene (`train-translator
    # --canonical-bank`): one phrasing per scene, so the regression has one answer per scene, not the mean of many
    translator_canonical: bool = False
    # then fine-tune it against the frozen image model (`train-translator --init-from --objective`): "distill"
    # (match the denoiser's predictions) or "both" (+ the MSE); None: the MSE translator as it is. Runs after the
    # image model, whose denoiser it matches
    translator_tune: str | None = None
    translator_tune_epochs: int = 2  # passes of the fine-tune
    translator_tune_lr: float = 1e-4  # its AdamW peak (cosine to lr/100)
    # -- image model (generator.train_image_model.ImageModelConfig)
    # keep the shipped image model (checkpoints/demo/image_model) instead of training one: its text path, which
    # `retrieve` mode uses, does not depend on S, and training it takes hours on a CPU without AVX-512 (bf16 runs at
    # ~1 GFLOP/s there; 4 s a step in float32); False trains it with the settings below (minutes on a GPU)
    reuse_image_model: bool = False
    image_base_steps: int = 3000  # steps on captions only
    image_steps: int = 4200  # total steps: after the base, the rest also conditions through the translator
    image_batch_size: int = 32  # scenes per step
    image_lr: float = 5e-4  # AdamW peak learning rate
    image_warmup_steps: int = 200  # linear warm-up, then cosine to lr/10
    image_weight_decay: float = 0.01  # AdamW weight decay
    image_widths: tuple[int, ...] = (32, 64, 96)  # UNet block widths
    image_cond_dropout: float = 0.1  # share of conditions replaced by the empty prompt (guidance)
    image_cond_noise: float = 0.1  # noise on the token states it is conditioned on
    image_ema_decay: float = 0.999  # EMA of weights, saved as the model
    image_checkpoint_every: int = 250  # steps between the trainer's checkpoints
    image_translated_fraction: float = 0.5  # share of each fine-tuning batch conditioned through the translator
    image_translator_noise: float = 0.05  # noise on the caption's S point before translating it
    image_bf16: bool = True  # bf16 autocast while training the image model
    image_seed: int = 0  # seeds the image model's init, scenes and noise
    # -- preset
    half: bool = True  # store adapters and translator weights in float16 (loaded back as float32)
    mode: str = "retrieve"  # the preset's default generation mode (generator.presets.MODES)
    # the preset's handoff (generator.presets.Preset): translate mode draws a clip whose translation lies farther than
    # this from every scene anchor as retrieve mode would; needs translator_snap (its anchors); 0: never
    handoff: float = 0.0
    steps: int = 20  # the preset's default denoising steps
    guidance: float = 3.0  # the preset's default guidance scale
    kind: str = "demo"  # image model kind (the demo pixel UNet)
    device: str = field(default="cpu", compare=False)  # where the trainers run; not a setting of the result

    @property
    def joined(self) -> bool:
        """Whether the adapters train on several worlds' joined caches (``train_all``) or one world's (``train``)."""
        return any(size is not None for size in (self.extra_world_size, self.accent_world_size, self.sim_world_size))

    @property
    def accent_size(self) -> str | None:
        """Size of the accented world: built for training (``accent_world_size``) or the snap metric alone."""
        return self.accent_world_size if self.accent_world_size is not None else self.translator_metric_world_size

    def extra_training(self) -> list[tuple[str, str]]:
        """(id prefix, cache split) of each training world joined after the main one's, in order."""
        extras = [("extra-", "extra_train")] if self.extra_world_size is not None else []
        extras += [("accent-", "accent_train")] if self.accent_world_size is not None else []
        return extras + ([("sim-", "sim_train")] if self.sim_world_size is not None else [])

    def check(self) -> None:
        """Settings that cannot work together, named, before anything runs."""
        if self.extra_world_size is not None and self.extra_world_seed == self.world_seed:
            raise ValueError(f"extra_world_seed must differ from world_seed ({self.world_seed}): same clips twice")
        seeds = (self.world_seed, self.extra_world_seed)
        if self.translator_world_size is not None and self.translator_world_seed in seeds:
            raise ValueError("translator_world_seed must differ from world_seed and extra_world_seed: same clips twice")
        if self.accent_world_size is not None and self.accent_world_seed in (*seeds, self.translator_world_seed):
            raise ValueError("accent_world_seed must differ from the other worlds' seeds: the same scenes twice")
        others = (*seeds, self.translator_world_seed, self.accent_world_seed)
        if self.sim_world_size is not None and self.sim_world_seed in others:
            raise ValueError("sim_world_seed must differ from the other worlds' seeds: the same scenes twice")
        metric_size = self.translator_metric_world_size
        if metric_size is not None and (self.translator_snap <= 0 or self.accent_world_size not in (None, metric_size)):
            raise ValueError(
                "translator_metric_world_size needs translator_snap and, with accent_world_size, equals it"
            )
        if self.translator_world_size is not None and not self.translator_audio_points:
            raise ValueError("translator_world_size needs translator_audio_points (its clips are audio rows)")
        if self.image_steps <= self.image_base_steps:
            raise ValueError(f"image_steps ({self.image_steps}) must exceed image_base_steps ({self.image_base_steps})")
        if self.translator_tune not in (None, "distill", "both"):
            raise ValueError(f"translator_tune must be None, 'distill' or 'both', got {self.translator_tune!r}")
        towers = {"audio": (self.audio_tokens, self.audio_keep), "text": (self.text_tokens, self.text_keep)}
        for modality, (tokens, keep) in towers.items():
            if (tokens is None) != (keep is None):
                raise ValueError(f"{modality}_keep needs {modality}_tokens and the other way round")
            parts = self.audio_parts if modality == "audio" else 1
            if keep is not None and not 1 <= keep <= tokens * parts:
                raise ValueError(
                    f"{modality}_keep must be in [1, {modality}_tokens x parts={tokens * parts}], got {keep}"
                )
        if self.fusemix_heads < 1 or (self.fusemix_heads > 1 and self.lock_text):
            raise ValueError(f"fusemix_heads must be >= 1 (1 with lock_text), got {self.fusemix_heads}")
        if self.hard_negative_sizes and not self.hard_negatives:
            raise ValueError("hard_negative_sizes needs hard_negatives (the sizes join the swapped captions)")
        if self.handoff < 0 or (self.handoff > 0 and self.translator_snap <= 0):
            raise ValueError(f"handoff must be >= 0, and > 0 needs translator_snap (its anchors); got {self.handoff}")


# The default until stop 22 (README: "Whisper tokens"): 32 Whisper tiny.en tokens of which the audio tower keeps 16,
# MiniLM token states, two worlds; the field defaults above. Shipped trained on 9,000 format-1 clips.
WHISPER_TOKENS = DemoRecipe(name="whisper-tokens")
# The audio latent that knows what was said: Whisper's own greedy transcript read by MiniLM, colour-swapped hard
# negatives, one world (the transcript costs ~0.45 CPU-s a clip), and the image model reused (its text path does not
# depend on S; training it is hours on this CPU).
TRANSCRIPT = replace(
    WHISPER_TOKENS,
    name="transcript",
    audio_encoder="whisper-tiny.en-transcript",
    hard_negatives=True,
    extra_world_size=None,
    reuse_image_model=True,
    epochs=120,  # 40 epochs left it far behind on every split; 120 gained on all (README, issue 17)
    audio_keep=32,  # keep every transcript token: keeping 16 of 32 lost the background (README, issue 17)
    alpha=0.2,  # λ mostly near 0 or 1: token sequences of different phrasings do not line up (picked on val R@1)
    translator_audio_points=True,  # +0.13 / +0.18 / +0.17 in translate mode on the test split (README, issue 18)
)
# The same with Whisper's encoder states beside the transcript in every token (768 wide: ~2x the training time).
CONCAT = replace(TRANSCRIPT, name="concat", audio_encoder="concat:whisper-tiny.en-10s+whisper-tiny.en-transcript")
# The shipped default (issue 17): that concat cache read as one sequence of 2 x 32 tokens (Whisper's, then the
# transcript's), one part blanked now and then in training (Whisper's 0.4 of the time, the transcript's 0.2) so
# neither carries a clip alone, and every training clip paired with its scene in 5 more training phrasings, so S
# keeps what is said, not how it is worded; its translator regresses one phrasing per scene (issue 18: text ->
# translator 0.57 -> 1.00 background on the test split). Shipped trained on the format-3 world, whose 34 training
# phrasings include 12 that name the background first (stop 24: background 0.925 -> 0.96 on the validation split,
# 0.865 -> 0.925 on test; `make demo` 6 of 6), and, since stop 29, a second format-3 world's 3,000 training clips
# (README).
DEFAULT = replace(
    CONCAT,
    name="default",
    audio_parts=2,
    audio_part_dropout=(0.4, 0.2),
    audio_keep=64,
    paraphrases=5,
    translator_canonical=True,
    # twice the training clips: a second world's 3,000 (seed 2), 60 epochs so the steps stay those of 120 over 3,000
    # (stop 29, 600 validation clips, images: background 0.967 -> 0.987 in retrieve mode, 0.967 -> 0.985 in translate;
    # the held-out splits moved within noise: README)
    extra_world_size="default",
    extra_world_seed=2,
    epochs=60,
    # no translator_tune: 2 epochs of MSE + distillation lifted translate mode on the validation split (0.970 / 0.980
    # / 0.990 / 0.990 -> 0.985 / 0.985 / 0.995 / 0.995) but lost 1-4 clips an attribute on every held-out split,
    # most on the Kokoro speakers (stop 26, README); 6 epochs on the joined S cut the denoiser's error 9x and changed
    # one of 4,800 judged attributes on 1,200 validation clips (a shape lost; stop 42, README)
    # translate mode by default since stop 32: a translator trained with neighbour mix whose outputs off every
    # scene's conditioning (farther than 3) snap to the nearest scene's, so a clip heard between two scenes draws
    # one of them, not a blank field. On the 900 validation clips (English and Vietnamese voices) it is ahead of
    # retrieve on every attribute (813 / 854 / 897 / 897 right against 811 / 851 / 895 / 895; README)
    translator_neighbour_mix=1.0,
    translator_snap=3.0,
    mode="translate",
    # since stop 33 the far outputs snap by the metric of the translator's errors on accented clips it never trains
    # on (Hindi and Russian voices), not by L2: on the 900 validation clips, 7 more Vietnamese backgrounds right and
    # 1 colour fewer (README)
    translator_metric_world_size="default",
    # since stop 36 translate mode hands the clips whose translation lies farther than 10.5 from every scene to
    # retrieve: on 2,448 validation clips (English, Vietnamese and simulated accents, and the accent probe) 4 more
    # shapes right and the same backgrounds, colours and sizes (the smallest threshold with the most right; README)
    handoff=10.5,
    # since stop 40 S is two adapters side by side, seeds 0 and 1 (`fusemix train --heads 2`: retrieve by the mean of
    # their cosines, one translator reading both): on the 2,448 validation clips translate mode gets 48 backgrounds,
    # 19 colours and 6 sizes right that the single space missed, against 20, 7 and 3 the other way, and shapes 1
    # against 2 (README)
    fusemix_heads=2,
    # the translator stays as wide as S (translator_width None, 1,024 with two heads): narrower ones (256-512, under
    # 30 MB) got 7-17 more sizes wrong on the 2,448 validation clips, where another translator seed moved one (stop
    # 41, README)
)
# The same with one augmented view of every training clip before the frozen encoders (tempo, pitch, reverb, noise,
# band-limiting; fusion.augment): +0.025 background on the espeak-ng test split, but -0.03 on Flite, -0.025 on
# Kokoro and one of the six example clips swapped (README, issue 17's ablation), so not the default.
# The experiments below were measured with one space (before stop 40), and keep it so they rebuild what was measured.
AUGMENTED = replace(DEFAULT, name="augmented", audio_augment=1, fusemix_heads=1)
# The default plus a third world spoken in accented English (`fusemix demo build --voices accented`: espeak-ng's Hindi
# and Russian voices), 40 epochs over its 9,000 clips (the default's steps). On the validation split in a Vietnamese
# accent no training run hears, it hears "large" as "small" (stop 30: nearest caption, size 10 clips lost against 1
# gained; README), so not the default.
ACCENTED = replace(DEFAULT, name="accented", accent_world_size="default", epochs=40, fusemix_heads=1)
# The default plus a third world spoken with simulated accents (`--voices simulated`: the English training voices,
# each clip bent by 2-4 sound changes of the training pool; demoworld.accents), 40 epochs over the 9,000 clips.
SIMULATED = replace(DEFAULT, name="simulated", sim_world_size="default", epochs=40, fusemix_heads=1)
# The default with each training caption's size-substituted version ("big" -> "little") as a second hard negative
# beside its colour swap (hard_negative_sizes). Stop 38, 2,448 validation clips: 2-3 more sizes right in both modes,
# 14-17 fewer backgrounds and 3-8 fewer colours and shapes (README), so not the default.
SIZE_NEGATIVES = replace(DEFAULT, name="size-negatives", hard_negative_sizes=True, fusemix_heads=1)
# An earlier default (README: "locked text"): pooled Whisper and MiniLM, a locked text tower, one world.
LOCKED_TEXT = replace(
    WHISPER_TOKENS,
    name="locked-text",
    extra_world_size=None,
    audio_tokens=None,
    text_tokens=None,
    audio_keep=None,
    text_keep=None,
    lock_text=True,
    epochs=300,
    batch_size=1024,
    dropout=0.3,
    half=False,
    mode="translate",
)
# Every step at toy size (a few minutes on two CPU cores, mostly model loading): tests the recipe, not for use.
TINY = replace(
    DEFAULT,
    name="tiny",
    audio_augment=1,  # the tiny run also exercises augmented views,
    paraphrases=2,  # ... joins of paraphrased caches over two worlds,
    translator_tune="both",  # ... the translator's distillation fine-tune,
    reuse_image_model=False,  # ... and the image model's own training steps
    world_size="small",
    extra_world_size="12",
    translator_world_size="12",  # ... a world only the translator reads,
    accent_world_size="12",  # ... a third training world in accented English (whose clips fit the snap metric),
    sim_world_size="12",  # ... a fourth in simulated accents,
    hard_negative_sizes=True,  # ... size substitutes beside the colour swaps,
    translator_metric_world_size="12",
    bank_scenes=4,
    epochs=2,
    batch_size=16,
    warmup_steps=2,
    translator_epochs=2,
    image_base_steps=3,
    image_steps=5,
    image_batch_size=4,
    image_warmup_steps=1,
    image_widths=(16, 32),
    image_checkpoint_every=100,
)
RECIPES: dict[str, DemoRecipe] = {
    r.name: r
    for r in (
        DEFAULT,
        AUGMENTED,
        ACCENTED,
        SIMULATED,
        SIZE_NEGATIVES,
        WHISPER_TOKENS,
        TRANSCRIPT,
        CONCAT,
        LOCKED_TEXT,
        TINY,
    )
}


@dataclass(frozen=True)
class Layout:
    """Where each step writes under the work folder."""

    work: Path

    @property
    def world(self) -> Path:
        return self.work / "world"

    @property
    def extra_world(self) -> Path:
        return self.work / "world_extra"

    @property
    def accent_world(self) -> Path:
        return self.work / "world_accent"

    @property
    def sim_world(self) -> Path:
        return self.work / "world_sim"

    @property
    def translator_world(self) -> Path:
        return self.work / "world_translator"

    def latents(self, modality: str, split: str) -> Path:
        """Cache of ``split`` (train, test, extra_train, train_all, bank) for ``modality``."""
        return self.work / "latents" / f"{modality}_{split}"

    def swap_manifest(self, split: str) -> Path:
        """The colour-swapped captions of ``split`` (train, extra_train): the hard negatives' manifest."""
        return self.work / f"swaps_{split}.jsonl"

    @property
    def bank_manifest(self) -> Path:
        return self.work / "bank.jsonl"

    @property
    def fusemix(self) -> Path:
        return self.work / "fusemix"

    @property
    def adapters(self) -> Path:
        return self.work / "fusemix" / "checkpoint"

    @property
    def translator(self) -> Path:
        return self.work / "translator"

    @property
    def translator_tuned(self) -> Path:
        return self.work / "translator_tuned"

    @property
    def image_model(self) -> Path:
        return self.work / "image_model"


# ---------------------------------------------------------------- what each trainer is given


def train_config(recipe: DemoRecipe, layout: Layout):
    """The adapters' TrainConfig (its ``train_config.json`` is what ``--check`` compares)."""
    from fusion.train import TrainConfig

    joined = recipe.joined  # several worlds' caches are joined; one world's are used as they are
    return TrainConfig(
        audio_latents=str(layout.latents("audio", "train_all" if joined else "train")),
        text_latents=str(layout.latents("text", caption_split(recipe, "train_all" if joined else "train"))),
        out=str(layout.fusemix),
        epochs=recipe.epochs,
        batch_size=recipe.batch_size,
        lr=recipe.lr,
        min_lr=recipe.min_lr,
        warmup_steps=recipe.warmup_steps,
        weight_decay=recipe.weight_decay,
        alpha=recipe.alpha,
        hard_negatives=_hard_negatives(recipe, layout),
        hard_negative_limit=recipe.hard_negative_limit,
        dropout=recipe.dropout,
        num_blocks=recipe.num_blocks,
        expansion=recipe.expansion,
        shared_dim=recipe.shared_dim,
        lock_text=recipe.lock_text,
        audio_adapter="mlp" if recipe.audio_keep is None else "sparse",
        keep=recipe.audio_keep,
        text_adapter="mlp" if recipe.text_keep is None else "sparse",
        text_keep=recipe.text_keep,
        sparse_mode=recipe.sparse_mode,
        token_blocks=recipe.token_blocks,
        audio_parts=recipe.audio_parts,
        audio_part_dropout=None if recipe.audio_part_dropout is None else list(recipe.audio_part_dropout),
        val_fraction=0.0,
        bf16=False,
        seed=recipe.fusemix_seed,
        heads=recipe.fusemix_heads,
        no_progress=True,
    )


def caption_split(recipe: DemoRecipe, split: str) -> str:
    """The caption cache FuseMix trains on for ``split``: its paraphrased version when the recipe has them."""
    return f"{split}_paraphrased" if recipe.paraphrases else split


def _hard_negatives(recipe: DemoRecipe, layout: Layout) -> str | None:
    if not recipe.hard_negatives:
        return None
    return str(layout.latents("text", "swaps_all" if recipe.joined else "swaps_train"))


def translator_config(recipe: DemoRecipe, layout: Layout, tuned: bool | None = None):
    """The shipped translator's TranslatorConfig (its ``translator_config.json`` is what ``--check`` compares):
    the fine-tune's when ``translator_tune`` is set, else the MSE run's; ``tuned=False``: the MSE run's."""
    base = _translator_base_config(recipe, layout)
    if tuned is None:
        tuned = recipe.translator_tune is not None
    if not tuned:
        return base
    return replace(
        base, out=str(layout.translator_tuned), init_from=str(layout.translator), objective=recipe.translator_tune,
        epochs=recipe.translator_tune_epochs, lr=recipe.translator_tune_lr,
        # the denoiser it matches: the shipped one when reused (the trainer's default), else the recipe's own
        image_model=None if recipe.reuse_image_model else str(layout.image_model),
    )  # fmt: skip


def _translator_base_config(recipe: DemoRecipe, layout: Layout):
    from generator.train_translator import TranslatorConfig

    pairs = recipe.translator_audio_points
    metric = recipe.translator_metric_world_size is not None
    split = "train_all" if recipe.joined else "train"
    split = split if recipe.translator_world_size is None else "translator_all"
    return TranslatorConfig(
        adapters=str(layout.adapters),
        text_latents=str(layout.latents("text", split if pairs else "bank")),
        audio_latents=str(layout.latents("audio", split)) if pairs else None,
        canonical_bank=str(layout.latents("text", "bank")) if recipe.translator_canonical else None,
        out=str(layout.translator),
        kind=recipe.kind,
        image_model=None,
        epochs=recipe.translator_epochs,
        batch_size=recipe.translator_batch_size,
        lr=recipe.translator_lr,
        weight_decay=recipe.translator_weight_decay,
        noise=recipe.translator_noise,
        num_blocks=recipe.translator_blocks,
        dropout=recipe.translator_dropout,
        arch=recipe.translator_arch,
        width=recipe.translator_width,
        components=recipe.translator_components,
        seed=recipe.translator_seed,
        neighbour_mix=recipe.translator_neighbour_mix,
        snap=recipe.translator_snap,
        metric_audio_latents=str(layout.latents("audio", "accent_train")) if metric else None,
        metric_text_latents=str(layout.latents("text", "accent_train")) if metric else None,
        metric_shrink=recipe.translator_metric_shrink,
        progress=False,
        device=recipe.device,
    )


def image_model_configs(recipe: DemoRecipe, layout: Layout) -> tuple[Any, Any]:
    """The image model's two stages: captions only, then continued with the translator's outputs.

    The second stage's ``train_config.json`` is the one the preset keeps (and ``--check`` compares).
    """
    from generator.train_image_model import ImageModelConfig

    base = ImageModelConfig(
        out=str(layout.image_model),
        steps=recipe.image_base_steps,
        batch_size=recipe.image_batch_size,
        lr=recipe.image_lr,
        warmup_steps=recipe.image_warmup_steps,
        weight_decay=recipe.image_weight_decay,
        resolution=recipe.resolution,
        widths=tuple(recipe.image_widths),
        cond_dropout=recipe.image_cond_dropout,
        cond_noise=recipe.image_cond_noise,
        ema_decay=recipe.image_ema_decay,
        checkpoint_every=recipe.image_checkpoint_every,
        seed=recipe.image_seed,
        translator=None,
        adapters=None,
        translated_fraction=recipe.image_translated_fraction,
        translator_noise=recipe.image_translator_noise,
        bf16=recipe.image_bf16,
        progress=False,
        device=recipe.device,
    )
    adapters = None if recipe.lock_text else str(layout.adapters)  # locked text: S is MiniLM's own pooled space
    tuned = replace(base, steps=recipe.image_steps, translator=str(layout.translator), adapters=adapters)
    return base, tuned


def preset_json(recipe: DemoRecipe) -> dict:
    """The preset's ``preset.json``: its parts (folders next to it) and default steps, guidance and mode."""
    return {
        "kind": recipe.kind,
        "audio_encoder": recipe.audio_encoder,
        "text_encoder": recipe.text_encoder,
        "adapters": "adapters",
        "translator": "translator",
        "image_model": "image_model",
        "caption_bank": "caption_bank",
        "steps": recipe.steps,
        "guidance": recipe.guidance,
        "mode": recipe.mode,
        **({"handoff": recipe.handoff} if recipe.handoff else {}),
    }


def bank_captions(recipe: DemoRecipe) -> list[tuple[str, list[str]]]:
    """The caption bank as (scene id, captions): every training-template caption of each scene combination."""
    from demoworld import scenes

    combos = scenes.all_attribute_combinations()
    by_combo: dict[int, list[str]] = {}
    for text, index in scenes.training_captions():
        by_combo.setdefault(index, []).append(text)
    items = list(by_combo.items())[: recipe.bank_scenes]
    return [("{2}_{1}_{0}_on_{3}".format(*combos[index]), caps) for index, caps in items]


def training_clips(recipe: DemoRecipe) -> int:
    """How many training clips the worlds give the adapters (the shipped trainer_state's ``train_clips``)."""
    from demoworld.build import CAPTIONS_PER_SCENE, scene_counts

    sizes = [recipe.world_size, recipe.extra_world_size, recipe.accent_world_size, recipe.sim_world_size]
    sizes = [size for size in sizes if size is not None]
    return sum(scene_counts(size)["train"] * CAPTIONS_PER_SCENE["train"] for size in sizes)
