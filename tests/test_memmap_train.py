"""Training from memory-mapped shards: batches gathered by index equal the in-memory path, bit for bit."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from fusemix import train as train_cli
from fusion import train as train_module
from fusion.cache import MANIFEST, LatentRows, atomic_save_npy, load_latents, open_latents, shard_name, write_latents

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def split_into_shards(folder: Path, sizes: list[int]) -> None:
    """Rewrite a one-shard cache as several shards of ``sizes`` rows (what a long extraction leaves)."""
    manifest = json.loads((folder / MANIFEST).read_text())
    array = np.load(folder / shard_name(0))
    assert sum(sizes) == len(array)
    starts = np.cumsum([0] + sizes)
    for i, (lo, hi) in enumerate(zip(starts[:-1], starts[1:], strict=True)):
        atomic_save_npy(folder / shard_name(i), array[lo:hi])
    manifest["shards"] = [{"file": shard_name(i), "count": n} for i, n in enumerate(sizes)]
    (folder / MANIFEST).write_text(json.dumps(manifest))


def make_caches(root: Path, n: int, captions: int, tokens: int | None = None) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    z = rng.standard_normal((n, 6))
    audio = z @ rng.standard_normal((6, 20))
    if tokens:
        audio = audio[:, None, :] + 0.1 * rng.standard_normal((n, tokens, 20))
    text = np.repeat(z, captions, axis=0) @ rng.standard_normal((6, 12)) + 0.05 * rng.standard_normal(
        (n * captions, 12)
    )
    clips = [f"c{i}" for i in range(n)]
    caption_clips = [c for c in clips for _ in range(captions)]
    order = rng.permutation(len(caption_clips))  # captions stored shuffled
    a = write_latents(root / "audio", audio.astype(np.float32), clips, clips, {"modality": "audio"})
    t = write_latents(
        root / "text",
        text[order].astype(np.float32),
        [f"{caption_clips[j]}#{j}" for j in order],
        [caption_clips[j] for j in order],
        {"modality": "text"},
    )
    return a, t


def test_take_equals_indexing_the_joined_shards(tmp_path):
    audio, _ = make_caches(tmp_path, 50, 1, tokens=3)
    whole = load_latents(audio).array.copy()
    split_into_shards(audio, [7, 20, 1, 22])
    rows = np.random.default_rng(1).integers(0, 50, size=80)  # unsorted, with repeats, across every shard
    for mmap in (True, False):
        cache = open_latents(audio, mmap=mmap)
        assert isinstance(cache.array, LatentRows) and cache.array.shape == (50, 3, 20) and cache.dim == 20
        np.testing.assert_array_equal(cache.array.take(rows), whole[rows])
        cache.array.release()
        np.testing.assert_array_equal(cache.array.take(rows[::-1]), whole[rows[::-1]])
    assert open_latents(audio).array.take(np.array([], dtype=np.int64)).shape == (0, 3, 20)
    with pytest.raises(IndexError, match=r"\[0, 50\)"):
        open_latents(audio).array.take(np.array([50]))


def train_result(audio: Path, text: Path, out: Path, *extra: str) -> tuple[dict, list[float]]:
    args = ["--audio-latents", str(audio), "--text-latents", str(text), "--out", str(out), "--no-progress"]
    args += ["--epochs", "2", "--batch-size", "32", "--shared-dim", "16", "--dropout", "0.2", "--val-fraction", "0.1"]
    assert train_cli.main([*args, *extra]) == 0
    weights = load_file(str(out / "checkpoint" / "diffusion_pytorch_model.safetensors"))
    state = json.loads((out / "checkpoint" / "trainer_state.json").read_text())
    return weights, [h["loss"] for h in state["history"]]


@pytest.mark.parametrize("tokens", [None, 4], ids=["pooled", "tokens"])
def test_memmap_training_equals_in_memory_training(tmp_path, monkeypatch, tokens):
    audio, text = make_caches(tmp_path, 120, 3, tokens=tokens)
    extra = ["--audio-adapter", "sparse", "--keep", "2"] if tokens else []
    one_shard = train_result(audio, text, tmp_path / "one-shard", *extra)
    split_into_shards(audio, [50, 30, 40])
    split_into_shards(text, [100, 1, 259])
    mapped = train_result(audio, text, tmp_path / "mmap", *extra)
    original = train_module.load_train_data
    monkeypatch.setattr(train_module, "load_train_data", lambda cfg: original(cfg, mmap=False))
    in_memory = train_result(audio, text, tmp_path / "ram", *extra)
    assert mapped[1] == in_memory[1] == one_shard[1] and len(mapped[1]) == 2
    for key, value in in_memory[0].items():
        assert torch.equal(mapped[0][key], value), key
        assert torch.equal(one_shard[0][key], value), key


def mapped_kib(path: Path) -> int | None:
    """Resident KiB of this process's mappings of ``path`` (Linux /proc/self/smaps); None where unavailable."""
    smaps = Path("/proc/self/smaps")
    if not smaps.is_file():
        return None
    total, inside = 0, False
    for line in smaps.read_text().splitlines():
        fields = line.split()
        if (
            fields and "-" in fields[0] and len(fields) >= 5
        ):  # a mapping's header line: addresses perms offset dev inode [path]
            inside = len(fields) == 6 and fields[5] == str(path)
        elif inside and fields[0] == "Rss:":
            total += int(fields[1])
    return total


def test_take_reads_rows_without_making_the_shard_resident(tmp_path):
    """Random rows of a mapped shard are read by offset: none of its pages join the resident set (indexing the
    mapping instead maps whole 64 KiB neighbourhoods per row, i.e. most of the shard per batch)."""
    rng = np.random.default_rng(3)
    array = rng.standard_normal((4096, 2, 64)).astype(np.float16)
    folder = write_latents(tmp_path / "c", array, [str(i) for i in range(4096)], [str(i) for i in range(4096)], {})
    rows = open_latents(folder).array
    shard = folder / shard_name(0)
    if mapped_kib(shard) is None:
        pytest.skip("needs /proc/self/smaps")
    picked = rng.integers(0, 4096, size=512)
    np.testing.assert_array_equal(rows.take(picked), array[picked].astype(np.float32))
    np.testing.assert_array_equal(rows.take(picked, dtype=np.float16), array[picked])
    assert mapped_kib(shard) == 0
    rows.shards[0][picked]  # the mapping itself, indexed directly, does become resident: the probe sees pages
    assert mapped_kib(shard) > 0
