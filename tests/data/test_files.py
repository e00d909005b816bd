"""ManifestDataset: every record once per epoch in a seeded order, decoded to the data section's
size, the motion score in the caption, and None for a file that cannot serve."""

import json

import pytest

from megagoku.config.schema import DataConfig
from megagoku.data.files import ManifestDataset, caption_of
from megagoku.data.manifest import MediaRecord
from megagoku.data.shapes_files import write_shapes_files


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    out = tmp_path_factory.mktemp("files")
    path = write_shapes_files(out, DataConfig(image_fraction=0.3, frames=9), 10)
    with open(path, "a") as f:  # one record whose file is gone
        f.write(json.dumps({"path": "clips/gone.webm", "caption": "a red circle moving up",
                            "kind": "video", "width": 16, "height": 16, "frames": 9, "fps": 8,
                            "scores": {"motion": 3.24}}) + "\n")
    return path


def test_each_epoch_visits_every_record_once_in_a_seeded_order(manifest):
    cfg = DataConfig(kind="manifest", manifest=str(manifest), seed=5)
    ds = ManifestDataset(cfg)
    n = len(ds)
    assert n == 11
    epochs = [[ds.record(e * n + i).path for i in range(n)] for e in range(3)]
    assert all(sorted(map(str, e)) == sorted(str(r.path) for r in ds.records) for e in epochs)
    assert epochs[0] != epochs[1]
    again = ManifestDataset(cfg)
    assert [again.record(n + i).path for i in range(n)] == epochs[1]  # random access, same order


def test_samples_are_decoded_to_the_data_size_and_unreadable_ones_are_none(manifest):
    ds = ManifestDataset(DataConfig(kind="manifest", manifest=str(manifest), height=8, width=12,
                                    frames=5, fps=4.0))
    samples = [ds[i] for i in range(len(ds))]
    assert sum(s is None for s in samples) == 1 and ds.reader.stats.skipped == {"missing": 1}
    for s in samples:
        if s is not None:
            frames = 1 if s.kind == "image" else 5
            assert s.pixels.shape == (3, frames, 8, 12) and s.pixels.abs().max() <= 1


def test_motion_score_is_appended_to_the_caption(tmp_path):
    record = MediaRecord(tmp_path / "a.mp4", "a cat jumps", "video", 8, 8, 9, 8.0, {"motion": 3.24})
    assert caption_of(record) == "a cat jumps motion score: 3.2"
    assert caption_of(MediaRecord(tmp_path / "b.png", "a dog", "image", 8, 8, 1)) == "a dog"


def test_tiers_give_each_record_its_own_drawn_size(manifest):
    from megagoku.config.schema import ResolutionTier

    cfg = DataConfig(kind="manifest", manifest=str(manifest), tiers=[
        ResolutionTier("video", 8, 8, 5, 1.0), ResolutionTier("video", 16, 8, 9, 1.0),
        ResolutionTier("image", 8, 16, 1, 1.0)])
    ds = ManifestDataset(cfg)
    shapes = {}
    for position in range(len(ds) - 1):  # the last record's file is gone
        sample = ds.load(position)
        shapes[position] = tuple(sample.pixels.shape)
        allowed = [(3, 1, 8, 16)] if sample.kind == "image" else [(3, 5, 8, 8), (3, 9, 16, 8)]
        assert shapes[position] in allowed
    assert len({s for s in shapes.values() if s[1] > 1}) == 2  # both video tiers drawn
    assert all(tuple(ds.load(p).pixels.shape) == s for p, s in shapes.items())  # fixed per record


def test_pyav_decodes_only_the_frames_a_sample_needs(manifest):
    from megagoku.data.decode import decode_pyav, frames_needed, Target

    clip = next(r.path for r in ManifestDataset(DataConfig(kind="manifest", manifest=str(manifest))
                                                ).records if r.kind == "video")
    assert decode_pyav(clip, limit=3).shape[0] == 3
    assert decode_pyav(clip).shape[0] == 9
    assert frames_needed(8.0, Target(8, 8, 5, 4.0)) == 9  # every other frame of an 8 fps clip
    assert frames_needed(8.0, Target(8, 8, 5, None)) == 5


def test_files_outside_data_root_are_skipped_and_counted(manifest, tmp_path):
    """data.root confines what a manifest can make training read: a path out of it by ../, a
    symlink out of it, and an absolute path elsewhere are counted skips; the same records
    without a root are read (and /dev/zero, a device, is a counted skip either way)."""
    import os
    import shutil

    root = tmp_path / "data"
    shutil.copytree(manifest.parent, root)
    inside = [json.loads(line) for line in (root / manifest.name).read_text().splitlines()][0]
    outside = tmp_path / ("outside" + os.path.splitext(inside["path"])[1])
    shutil.copy(root / inside["path"], outside)
    os.symlink(outside, root / ("link" + outside.suffix))
    rows = [inside, {**inside, "path": f"../{outside.name}"}, {**inside, "path": outside.name.replace(
        "outside", "link")}, {**inside, "path": str(outside)}, {**inside, "path": "/dev/zero"}]
    (root / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    def read_all(**extra):
        ds = ManifestDataset(DataConfig(kind="manifest", manifest=str(root / "m.jsonl"),
                                        frames=5, **extra))
        return [ds.load(i) is not None for i in range(len(ds))], ds.reader.stats.skipped

    read, skipped = read_all(root=str(root))
    assert read == [True, False, False, False, False]
    assert skipped["outside_root"] == 4 and sum(skipped.values()) == 4  # /dev/zero is outside too
    read, skipped = read_all()
    assert read == [True, True, True, True, False] and sum(skipped.values()) == 1


def test_data_root_must_be_a_folder(manifest, tmp_path):
    with pytest.raises(ValueError, match="data.root: .*: not a folder"):
        ManifestDataset(DataConfig(kind="manifest", manifest=str(manifest),
                                   root=str(tmp_path / "nowhere")))
