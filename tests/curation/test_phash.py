"""Perceptual hashes: an orthonormal DCT; copies (JPEG, resized, brightened) within a few bits,
unrelated images far apart; the clip hash summarises all keyframes; near_duplicates keeps the
best-scoring copy and agrees with a brute-force greedy pass; bad input raises ValueError."""

import io

import cv2
import numpy as np
import pytest
from PIL import Image, ImageEnhance

from megagoku.curation.phash import clip_phash, dct_matrix, hamming, near_duplicates, phash


def scene(seed: int, h: int = 192, w: int = 256) -> np.ndarray:
    """Large soft blobs and a few discs: structure at the scales pHash looks at."""
    rng = np.random.default_rng(seed)
    noise = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    image = cv2.normalize(cv2.GaussianBlur(noise, (0, 0), 8), None, 0, 255, cv2.NORM_MINMAX)
    for _ in range(4):
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        centre = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        cv2.circle(image, centre, int(rng.integers(10, 50)), colour, -1)
    return image


def jpeg(image: np.ndarray, quality: int = 40) -> np.ndarray:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "JPEG", quality=quality)
    return np.array(Image.open(buffer).convert("RGB"))


def resized_and_brightened(image: np.ndarray) -> np.ndarray:
    smaller = Image.fromarray(image).resize((230, 173), Image.BILINEAR)
    return np.array(ImageEnhance.Brightness(smaller).enhance(1.15))


def test_the_dct_matrix_is_orthonormal_and_a_dct():
    for n in (8, 32):
        d = dct_matrix(n)
        assert np.allclose(d @ d.T, np.eye(n), atol=1e-12)
    d = dct_matrix(32)
    coefficients = d @ np.full((32, 32), 5.0) @ d.T  # a flat image is all DC
    assert coefficients[0, 0] == pytest.approx(5.0 * 32)
    assert np.abs(coefficients.ravel()[1:]).max() < 1e-9
    x = np.cos(np.pi * (2 * np.arange(32) + 1) * 3 / 64)  # DCT basis 3
    assert np.argmax(np.abs(d @ x)) == 3


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_copies_stay_within_a_few_bits(seed):
    original = scene(seed)
    h = phash(original)
    assert 0 <= h < 2 ** 64 and bin(h).count("1") > 16
    for copy in (jpeg(original), resized_and_brightened(original),
                 jpeg(resized_and_brightened(original))):
        assert hamming(h, phash(copy)) <= 6


def test_unrelated_images_are_far_apart():
    hashes = [phash(scene(seed)) for seed in range(5)]
    for i in range(5):
        for j in range(i + 1, 5):
            assert hamming(hashes[i], hashes[j]) > 20, (i, j)


def test_clip_hash_summarises_the_keyframes_not_just_the_middle_one():
    a, b = scene(0), scene(1)
    assert clip_phash(np.stack([a] * 7)) == phash(a)
    assert clip_phash([a] * 7) == phash(a)
    mostly_a = clip_phash(np.stack([a, a, b, a, a]))  # b sits in the middle
    assert hamming(mostly_a, phash(a)) < hamming(mostly_a, phash(b))
    assert clip_phash(np.stack([a, b, a]), keyframes=1) == phash(b)
    with pytest.raises(ValueError, match="at least one frame"):
        clip_phash([])
    with pytest.raises(ValueError, match="T, H, W, 3"):
        clip_phash(a)
    with pytest.raises(ValueError, match="one size"):
        clip_phash([a, a[:100]])


def test_hamming_counts_differing_bits():
    assert hamming(0, 0) == 0
    assert hamming(0b1011, 0b0001) == 2
    assert hamming(0, 2 ** 64 - 1) == 64
    for bad in (-1, 2 ** 64, 1.5, "ff"):
        with pytest.raises(ValueError, match="pHash"):
            hamming(bad, 0)


def test_near_duplicates_keeps_the_best_copy_and_distinct_items():
    a, b = phash(scene(0)), phash(scene(1))
    a_copy = phash(jpeg(scene(0)))
    assert near_duplicates([(a, 0.2), (a_copy, 0.9), (b, 0.5)], max_distance=6) == [1, 2]
    assert near_duplicates([(a, 0.9), (a_copy, 0.2)], max_distance=6) == [0]
    assert near_duplicates([(a, 0.5), (a, 0.5)], max_distance=0) == [0]  # tie: earlier wins
    assert near_duplicates([(a, 0.1), (b, 0.2)], max_distance=6) == [0, 1]
    assert near_duplicates([], max_distance=6) == []
    assert near_duplicates([(a, 1.0), (b, 2.0)], max_distance=64) == [1]


def test_an_item_is_not_dropped_for_resembling_a_dropped_one():
    # 0 and 2 are 8 bits apart, each 4 from 1: 1 goes (near 0), so 2 stays.
    x, y, z = 0, 0xF, 0xFF
    assert near_duplicates([(x, 3.0), (y, 2.0), (z, 1.0)], max_distance=4) == [0, 2]


def test_near_duplicates_matches_a_brute_force_greedy_pass():
    rng = np.random.default_rng(0)
    centres = [int(v) for v in rng.integers(0, 2 ** 63, 40, dtype=np.int64)]
    items = []
    for _ in range(400):  # clusters of copies with 0..9 flipped bits
        h = centres[int(rng.integers(0, 40))]
        for bit in rng.choice(64, int(rng.integers(0, 10)), replace=False):
            h ^= 1 << int(bit)
        items.append((h, float(rng.integers(0, 50))))  # integer scores: many ties
    for d in (0, 3, 6, 11):
        kept = []
        for i in sorted(range(len(items)), key=lambda i: (-items[i][1], i)):
            if all(hamming(items[i][0], items[j][0]) > d for j in kept):
                kept.append(i)
        assert near_duplicates(items, d) == sorted(kept), d


@pytest.mark.parametrize("frame", [np.zeros((32, 32), np.uint8), np.zeros((32, 32, 3)),
                                   np.zeros((32, 32, 4), np.uint8), None])
def test_bad_frames_raise(frame):
    with pytest.raises(ValueError, match="uint8 RGB frame"):
        phash(frame)


def test_bad_near_duplicate_input_raises():
    with pytest.raises(ValueError, match="max_distance"):
        near_duplicates([(1, 1.0)], max_distance=-1)
    with pytest.raises(ValueError, match="pairs"):
        near_duplicates([1], max_distance=2)
    with pytest.raises(ValueError, match="real score"):
        near_duplicates([(1, float("nan"))], max_distance=2)
