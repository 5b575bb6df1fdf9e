"""Training's pieces: the masked heatmap loss, its targets, the augmentation and the schedule."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from conftest import REPO, TINY_CONFIG

from algorithm.codec import HeatmapCodec
from algorithm.preprocessing import NORMALIZATIONS, normalize
from training.augment import (CROP_MARGIN, RING_RADIUS, RING_REACH, RING_STROKE, WINDOW_MOST, AugmentConfig, augment,
                              random_affine, random_flip, random_intensity, random_inversion, random_occlusion,
                              random_overlays, random_rings, random_tight_crop, random_tone_curve, random_window,
                              standardize)
from training.loss import heatmap_loss
from training.config import TrainConfig
from training.schedule import learning_rate_at

HEIGHT, WIDTH, STRIDE, SIGMA = 128, 96, 2, 1.5
CODEC = HeatmapCodec(HEIGHT, WIDTH, STRIDE, SIGMA)


def cross_entropy(logits: np.ndarray, target: np.ndarray) -> float:
    """-sum(q log softmax(logits)) with q the target scaled to sum 1, written out in numpy."""
    flat = logits.ravel().astype(np.float64)
    log_softmax = flat - flat.max() - np.log(np.exp(flat - flat.max()).sum())
    q = target.ravel().astype(np.float64)
    return float(-(q / q.sum() * log_softmax).sum())


@pytest.fixture
def batch():
    torch.manual_seed(0)
    points = torch.tensor([[[20.3, 30.7], [np.nan, np.nan], [70.0, 100.2]],
                           [[50.5, 60.5], [10.0, 11.0], [np.nan, np.nan]]])
    targets, weights = CODEC.encode(points, xp=torch)
    logits = torch.randn(targets.shape, requires_grad=True)
    return logits, targets, weights


def test_loss_is_the_mean_cross_entropy_over_present_landmarks_only(batch):
    logits, targets, weights = batch
    present = [(0, 0), (0, 2), (1, 0), (1, 1)]
    expected = np.mean([cross_entropy(logits[b, k].detach().numpy(), targets[b, k].numpy()) for b, k in present])
    assert heatmap_loss(logits, targets, weights).item() == pytest.approx(expected, rel=1e-5)


def test_a_missing_landmark_contributes_nothing(batch):
    logits, targets, weights = batch
    assert not targets[0, 1].any() and not targets[1, 2].any()
    assert weights.tolist() == [[1, 0, 1], [1, 1, 0]]
    loss = heatmap_loss(logits, targets, weights)
    loss.backward()
    assert logits.grad[0, 1].abs().max() == 0 and logits.grad[1, 2].abs().max() == 0
    assert logits.grad[0, 0].abs().max() > 0
    changed = logits.detach().clone()
    changed[0, 1] = torch.randn_like(changed[0, 1]) * 50
    changed[1, 2] = 7.0
    assert heatmap_loss(changed, targets, weights).item() == pytest.approx(loss.item(), rel=1e-6)


def test_a_batch_without_any_landmark_has_zero_loss():
    logits = torch.randn(2, 3, HEIGHT // STRIDE, WIDTH // STRIDE)
    assert heatmap_loss(logits, torch.zeros_like(logits), torch.zeros(2, 3)).item() == 0.0


def test_the_loss_is_lowest_when_the_softmax_is_the_target(batch):
    _, targets, _ = batch
    present, weight = targets[:1, :1], torch.ones(1, 1)
    ideal = torch.log(present.clamp_min(1e-30))
    entropy = cross_entropy(ideal[0, 0].numpy(), present[0, 0].numpy())
    assert heatmap_loss(ideal, present, weight).item() == pytest.approx(entropy, rel=1e-4)
    shifted = torch.roll(ideal, shifts=2, dims=3)
    assert heatmap_loss(shifted, present, weight).item() > entropy + 0.1


def test_targets_peak_at_the_landmark_and_vanish_outside_the_frame():
    points = torch.tensor([[[40.0, 60.0], [-3.0, 50.0], [WIDTH + 1.0, 5.0], [30.0, HEIGHT - 1.0]]])
    targets, weights = CODEC.encode(points, xp=torch)
    assert weights.tolist() == [[1, 0, 0, 1]]
    assert targets.shape == (1, 4, HEIGHT // STRIDE, WIDTH // STRIDE)
    decoded, _ = CODEC.decode(targets[0, :1].numpy())
    np.testing.assert_allclose(decoded[0], [40.0, 60.0], atol=0.35 * STRIDE)
    assert not targets[0, 1].any() and not targets[0, 2].any()
    assert targets[0, 3].max() > 0.5  # on the centre of the last row: still inside


def test_the_codec_draws_the_same_targets_from_a_torch_batch_as_from_numpy_images():
    rng = np.random.default_rng(5)
    points = rng.uniform([-8, -8], [WIDTH + 8, HEIGHT + 8], size=(3, 6, 2))
    points[1, 2] = np.nan
    targets, weights = CODEC.encode(torch.from_numpy(points), xp=torch)
    for image, image_points in enumerate(points):
        expected_targets, expected_weights = CODEC.encode(image_points)
        np.testing.assert_allclose(targets[image].numpy(), expected_targets, atol=1e-6)
        np.testing.assert_array_equal(weights[image].numpy(), expected_weights)


def dot_images(points: np.ndarray, sigma: float = 1.5) -> torch.Tensor:
    """(B, 1, H, W) black images, each with one bright Gaussian dot at its (x, y)."""
    ys, xs = np.mgrid[0:HEIGHT, 0:WIDTH]
    dots = [np.exp(-((xs - x) ** 2 + (ys - y) ** 2) / (2 * sigma**2)) for x, y in points]
    return torch.from_numpy(np.stack(dots)[:, None].astype(np.float32))


def dot_positions(images: torch.Tensor) -> np.ndarray:
    """(B, 2) centroid of each image's brightness."""
    weights = images[:, 0].numpy().astype(np.float64)
    ys, xs = np.mgrid[0:HEIGHT, 0:WIDTH]
    total = weights.sum(axis=(1, 2))
    return np.stack([(weights * xs).sum(axis=(1, 2)) / total, (weights * ys).sum(axis=(1, 2)) / total], axis=1)


@pytest.mark.parametrize("config", [
    AugmentConfig(),
    AugmentConfig(rotation_degrees=35, scale=0.3, translation=0.1),
], ids=["default", "strong"])
def test_random_affine_moves_the_landmark_with_the_image(config):
    rng = np.random.default_rng(1)
    points = np.stack([rng.uniform(35, WIDTH - 35, 16), rng.uniform(40, HEIGHT - 40, 16)], axis=1)
    warped, moved = random_affine(dot_images(points), torch.from_numpy(points).float()[:, None, :], config,
                                  torch.Generator().manual_seed(2))
    assert warped.shape == (16, 1, HEIGHT, WIDTH) and moved.shape == (16, 1, 2)
    found = dot_positions(warped)
    assert np.linalg.norm(found - moved[:, 0].numpy(), axis=1).max() < 1.0
    assert np.linalg.norm(moved[:, 0].numpy() - points, axis=1).max() > 2.0  # the images did move


def test_a_squeeze_across_moves_the_landmarks_across_only():
    rng = np.random.default_rng(5)
    points = np.stack([rng.uniform(35, WIDTH - 35, 16), rng.uniform(40, HEIGHT - 40, 16)], axis=1)
    across = AugmentConfig(rotation_degrees=0, scale=0, translation=0, aspect=0.45)
    warped, moved = random_affine(dot_images(points), torch.from_numpy(points).float()[:, None, :], across,
                                  torch.Generator().manual_seed(6))
    assert np.linalg.norm(dot_positions(warped) - moved[:, 0].numpy(), axis=1).max() < 1.0
    np.testing.assert_allclose(moved[:, 0, 1].numpy(), points[:, 1], atol=1e-4)
    factors = (moved[:, 0, 0].numpy() - (WIDTH - 1) / 2) / (points[:, 0] - (WIDTH - 1) / 2)
    assert factors.min() < 0.85 and factors.max() > 1.15 and (factors >= np.exp(-0.45) - 1e-4).all()


def test_overlays_and_inversion_change_only_the_chosen_images():
    images = torch.rand(8, 1, HEIGHT, WIDTH, generator=torch.Generator().manual_seed(7)) * 0.5
    torch.testing.assert_close(random_overlays(images, 0.0, torch.Generator()), images)
    torch.testing.assert_close(random_inversion(images, 0.0, torch.Generator()), images)
    marked = random_overlays(images, 1.0, torch.Generator().manual_seed(8))
    changed = (marked != images).float().mean(dim=(1, 2, 3))
    assert (changed > 0.005).all() and (changed < 0.5).all()  # text and a ruler, not the whole image
    brightest = images.amax(dim=(1, 2, 3), keepdim=True)
    assert torch.equal(marked[marked != images], brightest.expand_as(images)[marked != images])
    inverted = random_inversion(images, 1.0, torch.Generator())
    low, high = images.amin(dim=(1, 2, 3), keepdim=True), images.amax(dim=(1, 2, 3), keepdim=True)
    torch.testing.assert_close(inverted, low + high - images)


def test_occlusion_hides_boxes_about_landmarks_under_the_mean_grey():
    images = torch.rand(8, 1, HEIGHT, WIDTH, generator=torch.Generator().manual_seed(12))
    points = torch.tensor([[WIDTH * 0.3, HEIGHT * 0.4]]).expand(8, 1, 2)  # one landmark, at the same place in all
    torch.testing.assert_close(random_occlusion(images, points, 0.0, torch.Generator()), images)
    hidden = random_occlusion(images, points, 1.0, torch.Generator().manual_seed(13))
    changed = hidden != images
    mean = images.mean(dim=(1, 2, 3), keepdim=True).expand_as(images)
    assert torch.equal(hidden[changed], mean[changed])
    x, y = int(WIDTH * 0.3), int(HEIGHT * 0.4)
    assert changed[:, 0, y, x].all()  # a box about the landmark covers it (shifted by at most half its size)
    share = changed.float().mean(dim=(1, 2, 3))
    assert (share > 0.05**2).all() and (share <= 2 * 0.15**2 + 1e-6).all()
    missing = torch.full((8, 1, 2), float("nan"))
    torch.testing.assert_close(random_occlusion(images, missing, 1.0, torch.Generator()), images)


def test_rings_are_drawn_bright_about_the_landmarks():
    images = torch.rand(8, 1, HEIGHT, WIDTH, generator=torch.Generator().manual_seed(16)) * 0.5
    points = torch.tensor([[WIDTH * 0.5, HEIGHT * 0.5]]).expand(8, 1, 2)  # one landmark, in the middle
    torch.testing.assert_close(random_rings(images, points, 0.0, torch.Generator()), images)
    ringed = random_rings(images, points, 1.0, torch.Generator().manual_seed(17))
    changed = ringed != images
    brightest = images.amax(dim=(1, 2, 3), keepdim=True).expand_as(images)
    assert torch.equal(ringed[changed], brightest[changed])
    share = changed.float().mean(dim=(1, 2, 3))
    assert (share > 0).all() and (share < 0.02).all()  # thin rings, not discs
    rows, columns = torch.nonzero(changed[:, 0], as_tuple=True)[1:]
    reach = (RING_REACH + RING_RADIUS[1] + RING_STROKE[1]) * HEIGHT  # shift, radius and stroke at their largest
    assert (columns - WIDTH * 0.5).abs().max() <= reach and (rows - HEIGHT * 0.5).abs().max() <= reach
    missing = torch.full((8, 1, 2), float("nan"))
    torch.testing.assert_close(random_rings(images, missing, 1.0, torch.Generator()), images)


def test_a_tight_crop_keeps_a_box_about_the_landmarks_and_fills_the_rest_with_its_mean_grey():
    images = torch.rand(8, 1, HEIGHT, WIDTH, generator=torch.Generator().manual_seed(18))
    corners = torch.tensor([[WIDTH * 0.3, HEIGHT * 0.2], [WIDTH * 0.7, HEIGHT * 0.8]])
    points = torch.cat([corners, torch.full((1, 2), float("nan"))]).expand(8, 3, 2)  # a missing one bounds nothing
    torch.testing.assert_close(random_tight_crop(images, points, 0.0, torch.Generator()), images)
    cropped = random_tight_crop(images, points, 1.0, torch.Generator().manual_seed(19))
    changed = cropped != images
    for image, crop, filled in zip(images[:, 0], cropped[:, 0], changed[:, 0]):
        rows, columns = torch.nonzero(~filled, as_tuple=True)
        size = corners[1] - corners[0]
        low = corners[0] - CROP_MARGIN[1] * size - 1
        high = corners[1] + CROP_MARGIN[1] * size + 1
        assert columns.min() >= low[0] and columns.max() <= high[0] and rows.min() >= low[1] and rows.max() <= high[1]
        assert columns.min() <= corners[0, 0] - CROP_MARGIN[0] * size[0] + 1  # the margin is kept
        assert rows.max() >= corners[1, 1] + CROP_MARGIN[0] * size[1] - 1
        torch.testing.assert_close(crop[filled], image[~filled].mean().expand(int(filled.sum())))
    one = torch.tensor([[WIDTH * 0.5, HEIGHT * 0.5]]).expand(8, 1, 2)  # no box about a single landmark
    torch.testing.assert_close(random_tight_crop(images, one, 1.0, torch.Generator()), images)


def test_a_tone_curve_keeps_the_order_and_range_of_grey_levels_but_bends_them():
    unit = torch.rand(6, 1, HEIGHT, WIDTH, generator=torch.Generator().manual_seed(14))
    unit[:, 0, 0, :2] = torch.tensor([0.0, 1.0])  # each image reaches both ends of the range
    toned = random_tone_curve(unit, 0.6, torch.Generator().manual_seed(15))
    assert toned.shape == unit.shape
    torch.testing.assert_close(toned[:, 0, 0, :2], torch.tensor([0.0, 1.0]).expand(6, 2))
    for before, after in zip(unit.flatten(1), toned.flatten(1)):
        assert (after[before.argsort()].diff() >= -1e-6).all()  # brighter stays brighter
        assert (after - before).abs().max() > 0.02  # and the curve is not the identity
    flat = random_tone_curve(unit, 0.0, torch.Generator().manual_seed(15))  # equal slopes: the identity
    torch.testing.assert_close(flat, unit)


def test_a_burned_in_window_clips_both_ends_of_the_grey_range_and_stretches_the_rest():
    unit = torch.rand(8, 1, HEIGHT, WIDTH, generator=torch.Generator().manual_seed(16))
    windowed = random_window(unit, 1.0, torch.Generator().manual_seed(17))
    black, white = (windowed == 0).flatten(1).float().mean(1), (windowed == 1).flatten(1).float().mean(1)
    assert black.max() < WINDOW_MOST + 0.02 and white.max() < WINDOW_MOST + 0.02  # clipped at most so far
    assert (black > 0.05).sum() >= 4 and (white > 0.05).sum() >= 4  # each end drawn on its own, mostly clearly
    for before, after in zip(unit.flatten(1), windowed.flatten(1)):
        assert (after[before.argsort()].diff() >= 0).all()  # brighter stays brighter
        inside = (after > 0) & (after < 1)
        slope = (after[inside].max() - after[inside].min()) / (before[inside].max() - before[inside].min())
        assert slope > 1  # the rest stretched to the whole range
    torch.testing.assert_close(random_window(unit, 0.0, torch.Generator().manual_seed(17)), unit)


def test_the_default_augmentation_draws_nothing_for_the_clinic_steps():
    """Off means off: the default augmentation is flip, affine and intensity alone, drawing the same numbers
    from the generator as before the clinic steps existed; turned on, they change the batch."""
    images = torch.rand(4, 1, HEIGHT, WIDTH, generator=torch.Generator().manual_seed(9))
    points = torch.rand(4, 3, 2, generator=torch.Generator().manual_seed(10)) * 50
    generator = torch.Generator().manual_seed(11)
    flipped = random_flip(images, points, AugmentConfig().horizontal_flip, generator)
    warped = random_affine(*flipped, AugmentConfig(), generator)
    expected = random_intensity(warped[0], AugmentConfig(), generator), warped[1]
    default = augment(images, points, AugmentConfig(), torch.Generator().manual_seed(11))
    torch.testing.assert_close(default, expected)
    every_step = AugmentConfig(aspect=0.45, overlays=1.0, invert=1.0, occlusion=1.0, tone=0.6, rings=1.0, window=1.0)
    clinic = augment(images, points, every_step, torch.Generator().manual_seed(11))
    assert not torch.allclose(default[0], clinic[0]) and not torch.allclose(default[1], clinic[1])


def test_random_affine_without_any_change_is_the_identity():
    points = np.array([[30.2, 40.7], [60.0, 90.5]])
    images = dot_images(points)
    still = AugmentConfig(rotation_degrees=0, scale=0, translation=0)
    warped, moved = random_affine(images, torch.from_numpy(points).float()[:, None, :], still, torch.Generator())
    torch.testing.assert_close(warped, images, atol=1e-5, rtol=0)
    np.testing.assert_allclose(moved[:, 0].numpy(), points, atol=1e-4)


def test_random_flip_mirrors_the_landmark_with_the_image():
    points = np.array([[30.2, 40.7], [60.0, 90.5], [10.0, 20.0], [70.4, 33.3]])
    images = dot_images(points)
    flipped, moved = random_flip(images, torch.from_numpy(points).float()[:, None, :], 0.5, torch.Generator().manual_seed(0))
    was_flipped = np.abs(moved[:, 0, 0].numpy() - points[:, 0]) > 1e-6
    assert was_flipped.any() and not was_flipped.all()  # probability 0.5 over four images
    np.testing.assert_allclose(moved[was_flipped, 0, 0].numpy(), WIDTH - 1 - points[was_flipped, 0], atol=1e-4)
    assert np.linalg.norm(dot_positions(flipped) - moved[:, 0].numpy(), axis=1).max() < 1.0


def test_random_intensity_restandardises_each_image():
    images = torch.rand(4, 1, HEIGHT, WIDTH, generator=torch.Generator().manual_seed(3)) * 200 + 50
    jittered = random_intensity(images, AugmentConfig(), torch.Generator().manual_seed(4))
    assert jittered.shape == images.shape
    torch.testing.assert_close(jittered.mean(dim=(1, 2, 3)), torch.zeros(4), atol=1e-4, rtol=0)
    torch.testing.assert_close(jittered.std(dim=(1, 2, 3)), torch.ones(4), atol=1e-4, rtol=0)


@pytest.mark.parametrize("normalization", NORMALIZATIONS)
def test_training_normalises_augmented_images_as_the_container_does(normalization):
    """After the intensity jitter, training normalises each image again; the model must see what the container's
    `normalize` gives it (torch's standard deviation divides by n - 1, numpy's by n)."""
    images = torch.rand(3, 1, HEIGHT, WIDTH, generator=torch.Generator().manual_seed(6)).mul(50).round()
    expected = np.stack([normalize(image[0], normalization) for image in images.numpy()])[:, None]
    np.testing.assert_allclose(standardize(images, normalization).numpy(), expected, atol=1e-3)


def test_learning_rate_warms_up_then_decays_to_zero():
    config = TrainConfig(learning_rate=0.01, warmup_epochs=4, epochs=24)
    assert [learning_rate_at(config, e) for e in range(4)] == pytest.approx([0.0025, 0.005, 0.0075, 0.01])
    assert learning_rate_at(config, 4) == pytest.approx(0.01)
    assert learning_rate_at(config, 14) == pytest.approx(0.005)  # half-way through the cosine
    assert learning_rate_at(config, 24) == pytest.approx(0.0, abs=1e-12)
    decay = [learning_rate_at(config, e) for e in range(4, 25)]
    assert all(a >= b for a, b in zip(decay, decay[1:]))


def test_the_tiny_configuration_builds_a_model_of_the_codec_shape():
    config = TrainConfig.from_dict(json.loads(TINY_CONFIG.read_text()))
    model = config.build_model(num_landmarks=5).eval()
    with torch.no_grad():
        output = model(torch.zeros(2, 1, config.input_height, config.input_width))
    assert tuple(output.shape) == (2, 5, *config.codec().heatmap_shape)


def test_unknown_configuration_keys_are_refused():
    with pytest.raises(ValueError, match="lerning_rate"):
        TrainConfig.from_dict({"lerning_rate": 0.1})
    assert math.isclose(TrainConfig.from_dict({"augment": {"gamma": 0.0}}).augment.gamma, 0.0)


def test_the_clinic_recipe_loads_and_augments_a_batch_to_standardised_images():
    config = TrainConfig.from_dict(json.loads((REPO / "training" / "configs" / "clinic.json").read_text()))
    assert config.augment.aspect > 0 and config.augment.overlays > 0 and config.augment.invert > 0
    assert config.augment.tone > 0
    images = torch.rand(6, 1, HEIGHT, WIDTH, generator=torch.Generator().manual_seed(12))
    points = torch.rand(6, 4, 2, generator=torch.Generator().manual_seed(13)) * 60 + 20
    augmented, moved = augment(images, points, config.augment, torch.Generator().manual_seed(14))
    assert torch.isfinite(augmented).all() and moved.shape == points.shape
    torch.testing.assert_close(augmented.std(dim=(1, 2, 3)), torch.ones(6), atol=1e-3, rtol=0)
