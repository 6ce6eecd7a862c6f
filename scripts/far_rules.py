"""Other rules for translate mode's far clips, scored without drawing: the scene each clip would be drawn as under
the preset's rule and under alternatives, counted right per attribute over validation splits (stop 37's table).

    .venv/bin/python scripts/far_rules.py --bank-cache runs/probe/latents_bank \\
        --split val2=runs/latents/val2:runs/val2/val.jsonl valsim=runs/latents/valsim:runs/valsim/val.jsonl \\
        --refit acc=runs/latents/acctrain:runs/acctrain/train.jsonl --margin 0.01

Splits are NAME=AUDIO_CACHE:MANIFEST as for `scripts/translator_decisions.py` (whose "translate" row is the
"preset" row here). Rows, each background / shape colour / shape / size clips right, totals then each split:

- ``retrieve``: the nearest bank caption in S; ``preset``: the translation's nearest anchor by L2 within the
  translator's snap, its anchor by the metric beyond, retrieve's scene beyond the preset's handoff;
- ``handoff H``: the same with handoff H;
- ``blend W``: beyond the snap, the anchor with the best metric score / 2 + W x logit scale x the best cosine in S
  between the clip and a bank caption of the anchor's scene (an ensemble with retrieve);
- ``pull B``: the clip's point moved B of the way to its nearest bank caption in S before it is translated;
- ``l2 below D``: the L2 nearest anchor up to distance D, the metric beyond;
- ``confident M``: beyond the snap, retrieve's scene wherever S's two nearest scenes lie more than M cosine apart;
- ``marginal T``: beyond the snap, per-attribute decoding: the metric's scores / T as a softmax over the scenes,
  each attribute's value by its summed mass, the scene with the most probable values (``retrieve marginal T``: the
  same over retrieve's cosines x logit scale). Both stop 42's, neither ahead on every attribute;
- ``refit NAME shrink S``: the metric refitted (``generator.snap_metric``) on NAME's clips, AUDIO_CACHE:MANIFEST
  with a ``scene`` per clip, which the translator must never have trained on;
- ``--margin M``: also ``retrieve`` and ``preset`` on the clips whose two nearest scenes in S lie within M cosine
  (where S itself barely decides);
- ``--ensemble P ...`` (with ``--refit``): the preset and presets P (other adapters and translators over the same
  image model, anchors and caption bank) as one: ``ensemble retrieve`` by the mean cosine over their spaces,
  ``ensemble hH`` the mean of their translations, snapped by a metric refitted on the first ``--refit`` clips, handed
  to ensemble retrieve beyond H (the preset's handoff and each ``--handoffs``). Seeds of S disagree on the clips
  each barely decides; joined, they get more backgrounds and colours right (stop 39).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from demoworld import scenes
from demoworld.judge import ATTRIBUTES
from fusion.adapters import FuseMixAdapters
from fusion.cache import load_latents
from fusion.errors import FusemixError
from generator.caption_bank import group_heads, load_caption_bank
from generator.image_text import image_text_encoder
from generator.presets import load_preset
from generator.snap_metric import fit_snap_metric
from generator.translator import Translator

Scene = tuple[str, ...]


def scene_key(scene: dict) -> Scene:
    return tuple(scene[a] for a in ATTRIBUTES)


@dataclass
class Split:
    points: torch.Tensor  # (clips, shared dim), unit norm
    truth: list[Scene]
    bank_scores: torch.Tensor  # (clips, anchors): best cosine in S to a bank caption of each anchor's scene
    retrieved: list[Scene]  # retrieve mode's scene
    source: tuple[str, str] = ("", "")  # (cache, manifest) it was read from


@dataclass
class World:
    """What every rule reads: the preset's parts, each anchor's scene and the bank's captions by anchor."""

    translator: Translator
    adapters: FuseMixAdapters
    handoff: float
    bank: torch.Tensor  # (captions, shared dim)
    bank_anchor: torch.Tensor  # (captions,): the anchor of each bank caption's scene
    anchor_scene: list[Scene]

    def split(self, cache: str, manifest: str) -> Split:
        latents = load_latents(Path(cache))
        rows = {r["id"]: r for r in map(json.loads, Path(manifest).open())}
        points = F.normalize(self.adapters.embed("audio", torch.from_numpy(latents.array[:]).float()), dim=-1)
        cosine = points @ self.bank.T
        index = self.bank_anchor.expand(len(points), -1)
        scores = torch.full((len(points), len(self.anchor_scene)), -2.0).scatter_reduce(1, index, cosine, "amax")
        retrieved = [self.anchor_scene[i] for i in self.bank_anchor[cosine.argmax(1)].tolist()]
        truth = [scene_key(rows[i]["scene"]) for i in latents.ids]
        return Split(points, truth, scores, retrieved, (cache, manifest))


def load_world(preset_name: str, translator: str | None, bank_cache: str) -> World:
    preset = load_preset(preset_name)
    model = Translator.from_pretrained(translator or str(preset.translator)).eval()
    if not model.config.metric:
        raise ValueError("the translator has no snap metric (train-translator --snap --snap-metric-audio)")
    cache = load_latents(Path(bank_cache))
    heads = list(group_heads(cache.texts, cache.clip_ids).values())
    canonical = image_text_encoder(preset.kind)(heads).flatten(1).float()
    nearest = torch.cdist(model.anchor_embeds.float().flatten(1), canonical).argmin(1).tolist()
    anchor_scene = [scene_key(scenes.parse_caption(heads[j])) for j in nearest]
    captions, bank = load_caption_bank(preset.caption_bank)
    of_scene = {s: i for i, s in enumerate(anchor_scene)}
    bank_anchor = torch.tensor([of_scene[scene_key(scenes.parse_caption(c))] for c in captions])
    adapters = FuseMixAdapters.from_pretrained(str(preset.adapters)).eval()
    return World(model, adapters, preset.handoff, bank, bank_anchor, anchor_scene)


def decide(world: World, split: Split, translator: Translator | None = None, handoff: float | None = None,
           blend: float = 0.0, pull: float = 0.0, l2_below: float = 0.0, marginal: float = 0.0,
           confident: float = 0.0) -> list[Scene]:  # fmt: skip
    """The scene each clip is drawn as under one rule (defaults: the preset's)."""
    model = translator or world.translator
    points = split.points
    if pull:
        near = world.bank[(points @ world.bank.T).argmax(1)]
        points = F.normalize(points + pull * (near - points), dim=-1)
    raw = model.translate(points)
    distance, l2_anchor = model.nearest_anchor(raw)
    scores = model.metric_scores(raw) / 2 + blend * float(world.adapters.logit_scale()) * split.bank_scores
    metric = (marginal_scores(world.anchor_scene, scores / marginal) if marginal else scores).argmax(1)
    handoff = world.handoff if handoff is None else handoff
    sure = (s_margin(split) > confident).tolist() if confident else [False] * len(points)
    picked = []
    for k, d in enumerate(distance.tolist()):
        if (handoff > 0 and d > handoff) or (sure[k] and d > model.config.snap):
            picked.append(split.retrieved[k])
        else:
            near = d <= max(model.config.snap, l2_below)
            picked.append(world.anchor_scene[int(l2_anchor[k] if near else metric[k])])
    return picked


def s_margin(split: Split) -> torch.Tensor:
    """Per clip, how far apart in cosine its two nearest scenes in S lie (small: S barely decides)."""
    top = split.bank_scores.topk(2, dim=1).values
    return top[:, 0] - top[:, 1]


def marginal_scores(anchor_scene: list[Scene], logits: torch.Tensor) -> torch.Tensor:
    """Each anchor's summed log-marginals: per attribute, the log of the softmax mass of anchors sharing its value."""
    logp = logits.float().log_softmax(1)
    total = torch.zeros_like(logp)
    for a in range(len(ATTRIBUTES)):
        values = sorted({s[a] for s in anchor_scene})
        of = torch.tensor([values.index(s[a]) for s in anchor_scene])
        marg = torch.stack([logp[:, of == v].logsumexp(1) for v in range(len(values))], 1)
        total += marg[:, of]
    return total


def by_marginals(world: World, split: Split, scale: float) -> list[Scene]:
    """Retrieve decoded per attribute: the scenes' best cosines x ``scale`` as logits."""
    picked = marginal_scores(world.anchor_scene, split.bank_scores * scale).argmax(1).tolist()
    return [world.anchor_scene[i] for i in picked]


class Ensemble:
    """Presets' (adapters, translator) pairs as one: a split's points joined side by side, the translations averaged
    in the image model's conditioning (the first translator's anchors and metric), retrieve by the mean cosine."""

    def __init__(self, worlds: list[World], refit_split: tuple[str, str], shrink: float) -> None:
        first = worlds[0]
        for other in worlds[1:]:
            same = torch.equal(other.translator.anchor_embeds, first.translator.anchor_embeds)
            if not same or not torch.equal(other.bank_anchor, first.bank_anchor):
                raise ValueError("--ensemble presets must share the image model's anchors and the caption bank")
        self.worlds, self._joined = worlds, {}
        members, dim = [w.translator for w in worlds], first.translator.config.in_dim
        mean = copy.deepcopy(first.translator)
        mean.translate = lambda p: torch.stack(
            [m.translate(p[:, k * dim : (k + 1) * dim]).float() for k, m in enumerate(members)]
        ).mean(0)
        self.translator = refit(first, self.join(first.split(*refit_split)), shrink, mean)

    def join(self, split: Split) -> Split:
        """``split`` read by every member: points side by side, retrieve by the mean cosine."""
        if split.source not in self._joined:
            parts = [split] + [w.split(*split.source) for w in self.worlds[1:]]
            cosine = torch.stack([p.points @ w.bank.T for p, w in zip(parts, self.worlds, strict=True)]).mean(0)
            first = self.worlds[0]
            retrieved = [first.anchor_scene[i] for i in first.bank_anchor[cosine.argmax(1)].tolist()]
            points = torch.cat([p.points for p in parts], 1)
            self._joined[split.source] = Split(points, split.truth, split.bank_scores, retrieved, split.source)
        return self._joined[split.source]


def parse_spec(spec: str) -> tuple[str, str, str]:
    """NAME=CACHE:MANIFEST -> its three parts; a ValueError naming the spec otherwise."""
    name, _, rest = spec.partition("=")
    cache, _, manifest = rest.rpartition(":")
    if not (name and cache and manifest):
        raise ValueError(f"{spec!r} is not NAME=CACHE:MANIFEST")
    return name, cache, manifest


def right(picked: list[Scene], truth: list[Scene], rows: list[int]) -> list[int]:
    """Clips right per attribute among ``rows``."""
    return [sum(picked[k][a] == truth[k][a] for k in rows) for a in range(len(ATTRIBUTES))]


def refit(world: World, split: Split, shrink: float, translator: Translator | None = None) -> Translator:
    """A copy of the translator (default: the world's) with its metric fitted on the clips of ``split``."""
    fitted = copy.deepcopy(translator or world.translator)
    of_scene = {s: i for i, s in enumerate(world.anchor_scene)}
    fit_snap_metric(fitted, split.points, torch.tensor([of_scene[s] for s in split.truth]), shrink)
    return fitted


def rules(world: World, a: argparse.Namespace):
    """(label, rule) pairs; a rule maps a split to the scene of each clip."""
    out = [("retrieve", lambda s: s.retrieved), ("preset", lambda s: decide(world, s))]
    out += [(f"handoff {h:g}", lambda s, h=h: decide(world, s, handoff=h)) for h in a.handoffs]
    out += [(f"blend {w:g}", lambda s, w=w: decide(world, s, blend=w)) for w in a.blends]
    out += [(f"pull {b:g}", lambda s, b=b: decide(world, s, pull=b)) for b in a.pulls]
    out += [(f"l2 below {d:g}", lambda s, d=d: decide(world, s, l2_below=d)) for d in a.l2_below]
    out += [(f"confident {m:g}", lambda s, m=m: decide(world, s, confident=m)) for m in a.confident]
    out += [(f"marginal {t:g}", lambda s, t=t: decide(world, s, marginal=t)) for t in a.marginals]
    scale = float(world.adapters.logit_scale())
    out += [(f"retrieve marginal {t:g}", lambda s, t=t: by_marginals(world, s, scale / t)) for t in a.marginals]
    for spec in a.refit:
        name, cache, manifest = parse_spec(spec)
        clips = world.split(cache, manifest)  # read once for every shrink
        for shrink in a.shrinks:
            model = refit(world, clips, shrink)
            out.append((f"refit {name} shrink {shrink:g}", lambda s, m=model: decide(world, s, translator=m)))
    if a.ensemble:
        worlds = [world] + [load_world(p, None, a.bank_cache) for p in a.ensemble]
        ens = Ensemble(worlds, parse_spec(a.refit[0])[1:], a.shrinks[0])
        out.append(("ensemble retrieve", lambda s: ens.join(s).retrieved))
        for h in (world.handoff, *a.handoffs):
            out.append(
                (f"ensemble h{h:g}", lambda s, h=h: decide(world, ens.join(s), translator=ens.translator, handoff=h))
            )
    return out


def table(world: World, splits: dict[str, Split], a: argparse.Namespace) -> list[str]:
    lines, picks = [], []
    for label, rule in rules(world, a):
        cells, total, picked = [], [0] * len(ATTRIBUTES), {name: rule(split) for name, split in splits.items()}
        picks.append((label, picked))
        for name, split in splits.items():
            counts = right(picked[name], split.truth, list(range(len(split.truth))))
            total = [t + c for t, c in zip(total, counts, strict=True)]
            cells.append(f"{name} {'/'.join(map(str, counts))}")
        lines.append(f"{label:26s} {'/'.join(map(str, total)):20s} " + "  ".join(cells))
    for label, picked in picks[:2] if a.margin else ():  # retrieve and preset where S barely decides
        cells = []
        for name, split in splits.items():
            rows = (s_margin(split) < a.margin).nonzero().flatten().tolist()
            cells.append(f"{name} {'/'.join(map(str, right(picked[name], split.truth, rows)))} of {len(rows)}")
        lines.append(f"{label + f' margin<{a.margin:g}':26s} " + "  ".join(cells))
    return lines


@torch.no_grad()
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="demo")
    p.add_argument("--translator", help="translator folder (default: the preset's)")
    p.add_argument("--bank-cache", required=True, help="text cache of the caption bank, grouped by scene id")
    p.add_argument("--split", nargs="+", required=True, metavar="NAME=CACHE:MANIFEST")
    p.add_argument("--handoffs", nargs="*", type=float, default=[])
    p.add_argument("--blends", nargs="*", type=float, default=[])
    p.add_argument("--pulls", nargs="*", type=float, default=[])
    p.add_argument("--l2-below", nargs="*", type=float, default=[])
    p.add_argument("--confident", nargs="*", type=float, default=[], help="S margins handing far clips to retrieve")
    p.add_argument("--marginals", nargs="*", type=float, default=[], help="temperatures of per-attribute decoding")
    p.add_argument("--refit", nargs="*", default=[], metavar="NAME=CACHE:MANIFEST")
    p.add_argument("--shrinks", nargs="*", type=float, default=[0.5], help="shrinks of each --refit")
    p.add_argument("--margin", type=float, default=0.0)
    p.add_argument("--ensemble", nargs="*", default=[], metavar="PRESET", help="presets joined with --preset")
    a = p.parse_args(argv)
    try:
        if a.ensemble and not a.refit:
            raise ValueError("--ensemble needs --refit (the clips its snap metric is fitted on)")
        specs = [parse_spec(spec) for spec in a.split + a.refit]  # before any model loads: fail early
        world = load_world(a.preset, a.translator, a.bank_cache)
        splits = {name: world.split(cache, manifest) for name, cache, manifest in specs[: len(a.split)]}
        lines = table(world, splits, a)
    except (FusemixError, ValueError, OSError, KeyError) as err:
        print(f"far_rules: {err}", file=sys.stderr)
        return 1
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
