"""Where a judged run's misses are: accuracy per group of clips (voice, phrasing, the true background, ...), so an
error that one voice or one word makes is seen as that, not as noise spread over the split."""

from __future__ import annotations

from collections.abc import Sequence

from demoworld.judge import ATTRIBUTES
from fusion.errors import InputError


def group_of(item: dict, key: str) -> str:
    """The value of ``key`` in a manifest row: a top-level field ("voice", "template") or a scene field
    ("scene.background"); one clear line for a key the row does not have."""
    value: object = item
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            raise InputError(f"clip {item.get('id')!r} has no field {key!r} (e.g. voice, template, scene.background)")
        value = value[part]
    return str(value)


def accuracy_by(clips: Sequence[dict], items: Sequence[dict], key: str) -> dict[str, dict[str, float]]:
    """Per group (most clips first): its clip count and, per attribute, the share of its clips judged right.
    ``clips``: a run's judged clips ({"id", "correct"}); ``items``: the split's manifest rows, matched by id."""
    by_id = {it["id"]: it for it in items}
    groups: dict[str, list[dict]] = {}
    for clip in clips:
        if clip["id"] not in by_id:
            raise InputError(f"clip {clip['id']!r} is not in the split's manifest")
        groups.setdefault(group_of(by_id[clip["id"]], key), []).append(clip["correct"])
    table = {}
    for name, rows in sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0])):
        table[name] = {"clips": len(rows), **{a: sum(r[a] for r in rows) / len(rows) for a in ATTRIBUTES}}
    return table
