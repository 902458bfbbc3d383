"""Pseudo Prompt Generator on constructed correlation maps."""

import pytest
import torch

from conftest import default_cfg
from esc_net.modeling.prompt_generator import PseudoPromptGenerator, PseudoPrompts, _canonical_order


def generator(**changes) -> PseudoPromptGenerator:
    """The generator of the default config (N_o = 5, threshold factor 1, 7 K-means iterations, posterior mask),
    with ``changes`` to its arguments."""
    return PseudoPromptGenerator(default_cfg(), **changes)


def blobs(grid, centres, amplitudes, sigmas):
    """[h, w] map: a sum of isotropic Gaussians with the given (x, y) centres, peak values and widths."""
    h, w = grid
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    out = torch.zeros(h, w)
    for (cx, cy), amp, sigma in zip(centres, amplitudes, sigmas):
        out += amp * torch.exp(-((xs - cx) ** 2 + (ys - cy) ** 2) / (2 * sigma**2))
    return out


def spikes(grid, cells, values):
    """[h, w] map, zero except the given (x, y) cells."""
    out = torch.zeros(grid)
    for (x, y), v in zip(cells, values):
        out[y, x] = v
    return out


def real_points(prompts, i):
    """The real (label 1) points of map i as a list of (x, y) integer tuples."""
    keep = prompts.labels[i] == 1
    return [tuple(int(v) for v in p) for p in prompts.points[i][keep]]


def check_invariants(prompts, corr, num_points, threshold_factor=1.0, mask_mode="posterior"):
    """Properties every output must have, checked for all maps at once (the mask for the given mode)."""
    B, N, h, w = corr.shape
    M, K = B * N, num_points
    assert isinstance(prompts, PseudoPrompts)
    assert prompts.points.shape == (M, K, 2) and prompts.points.dtype == torch.float32
    assert prompts.labels.shape == (M, K) and prompts.labels.dtype == torch.int64
    assert prompts.masks.shape == (M, 1, h, w) and prompts.masks.dtype == torch.float32
    assert not prompts.points.requires_grad and not prompts.labels.requires_grad
    assert prompts.masks.requires_grad == corr.requires_grad
    assert prompts.boxes is None

    points, labels = prompts.points, prompts.labels
    real = labels == 1
    assert ((labels == 1) | (labels == -1)).all()
    # Real points first (sorted by probability), so the label row is 1...1 -1...-1, and never without a point.
    assert (real[:, :-1] >= real[:, 1:]).all() and real[:, 0].all()
    assert (points == points.round()).all()
    assert (points[~real] == 0).all()
    x, y = points[..., 0].long(), points[..., 1].long()
    assert ((x >= 0) & (x < w) & (y >= 0) & (y < h)).all()

    prob = corr.detach().float().reshape(M, h * w).softmax(dim=1)
    kept = prob > threshold_factor / (h * w)
    kept[torch.arange(M), prob.argmax(dim=1)] = True
    index = (y * w + x).clamp(max=h * w - 1)
    # Real points are kept pixels, distinct within a map, and the first one is the map's most probable cell.
    assert kept.gather(1, index)[real].all()
    same = (index[:, :, None] == index[:, None, :]) & real[:, :, None] & real[:, None, :]
    assert (same.sum(dim=2) == real.long()).all()
    assert (index[:, 0] == prob.argmax(dim=1)).all()
    assert (real.sum(dim=1) <= kept.sum(dim=1).clamp(max=K)).all()
    # Points of a map come by decreasing probability, equal ones in raster order.
    point_prob = prob.gather(1, index).masked_fill(~real, -1)
    assert (point_prob[:, :-1] >= point_prob[:, 1:]).all()
    tie = (point_prob[:, :-1] == point_prob[:, 1:]) & real[:, 1:]
    assert (index[:, :-1] < index[:, 1:])[tie].all()

    masks = prompts.masks.detach().reshape(M, h * w)
    assert ((masks >= 0) & (masks <= 1)).all()
    assert (masks[~kept] == 0).all()
    if mask_mode == "peak":
        assert (masks.amax(dim=1) == 1).all()
        expected = prob * kept
        torch.testing.assert_close(masks, expected / expected.amax(dim=1, keepdim=True), rtol=0, atol=1e-6)
    else:  # the class's share among the classes of the maps, on the kept pixels
        posterior = corr.detach().float().softmax(dim=1).reshape(M, h * w)
        torch.testing.assert_close(masks, posterior * kept, rtol=0, atol=1e-6)


@pytest.mark.parametrize("grid", [(24, 24), (12, 20)])
@pytest.mark.parametrize("num_classes", [1, 2, 300])
def test_shapes_dtypes_and_invariants_on_random_maps(grid, num_classes):
    torch.manual_seed(num_classes)
    corr = 3 * torch.randn(2, num_classes, *grid)
    ppg = generator(num_points=5)
    prompts = ppg(corr)
    check_invariants(prompts, corr, 5)
    # Random maps at this scale keep far more than 5 pixels: nearly every map gets all 5 points.
    assert (prompts.labels == 1).sum(dim=1).float().mean() > 4.5


def test_single_blob_points_lie_in_the_blob():
    centre, sigma = (15, 8), 2.5
    corr = blobs((24, 24), [centre], [8.0], [sigma])[None, None]
    prompts = generator(num_points=5)(corr)
    check_invariants(prompts, corr, 5)
    pts = real_points(prompts, 0)
    assert len(pts) == 5
    assert pts[0] == centre
    for x, y in pts:
        assert (x - centre[0]) ** 2 + (y - centre[1]) ** 2 <= (2 * sigma) ** 2


@pytest.mark.parametrize("kmeans_iters", [0, 7])  # the initialisation alone already separates the blobs
@pytest.mark.parametrize(
    "centres, amplitudes, sigmas",
    [
        ([(3, 3), (20, 4), (10, 20)], [8.0, 6.0, 4.0], [1.5, 1.5, 1.5]),
        # A wide, strong blob and a small, weaker one: the small one still gets its own point.
        ([(6, 6), (20, 19)], [8.0, 5.0], [3.0, 0.7]),
        ([(2, 12), (21, 12)], [6.0, 6.0], [1.5, 1.5]),
    ],
)
def test_separated_blobs_each_get_a_point(centres, amplitudes, sigmas, kmeans_iters):
    corr = blobs((24, 24), centres, amplitudes, sigmas)[None, None]
    prompts = generator(num_points=5, kmeans_iters=kmeans_iters)(corr)
    check_invariants(prompts, corr, 5)
    pts = real_points(prompts, 0)

    def near(p, c, s):
        return (p[0] - c[0]) ** 2 + (p[1] - c[1]) ** 2 <= (3 * s + 1) ** 2

    for c, s in zip(centres, sigmas):
        assert any(near(p, c, s) for p in pts), f"no point near blob {c}: {pts}"
    for p in pts:
        assert any(near(p, c, s) for c, s in zip(centres, sigmas)), f"point {p} outside every blob"


def test_kmeans_spreads_points_along_an_elongated_region():
    corr = torch.zeros(1, 1, 24, 24)
    corr[0, 0, 10:12, 2:22] = 5.0  # a 2 x 20 bar of equal values
    prompts = generator(num_points=5, kmeans_iters=7)(corr)
    check_invariants(prompts, corr, 5)
    xs = sorted(x for x, _ in real_points(prompts, 0))
    assert len(xs) == 5
    # Five clusters of a 20-long bar are ~4 long each: their points are spread, one per segment.
    assert all(b - a >= 3 for a, b in zip(xs, xs[1:])), xs
    assert xs[0] <= 5 and xs[-1] >= 17, xs


def test_lloyd_iterations_balance_the_clusters():
    # Two clusters on one round blob. The initialisation puts the second centre on the rim, so its cluster is a
    # small cap whose best pixel lies away from the peak; K-means turns the split into two halves, whose second
    # half's best pixel is next to the peak.
    corr = blobs((24, 24), [(15, 8)], [8.0], [2.5])[None, None]
    init_only = real_points(generator(num_points=2, kmeans_iters=0)(corr), 0)
    lloyd = real_points(generator(num_points=2, kmeans_iters=7)(corr), 0)
    assert init_only[0] == lloyd[0] == (15, 8)
    assert abs(lloyd[1][0] - 15) + abs(lloyd[1][1] - 8) == 1
    assert abs(init_only[1][0] - 15) + abs(init_only[1][1] - 8) > 1


def test_uniform_map_falls_back_to_the_global_argmax():
    ppg = generator(num_points=5)
    prompts = ppg(torch.zeros(1, 1, 24, 24))
    assert prompts.labels.tolist() == [[1, -1, -1, -1, -1]]
    assert (prompts.points == 0).all()  # first cell among the tied maxima
    expected = torch.zeros(1, 1, 24, 24)
    expected[..., 0, 0] = 1
    assert torch.equal(prompts.masks, expected)

    # No pixel passes a very high threshold: the single most probable cell is the point and the mask.
    corr = blobs((24, 24), [(7, 17)], [8.0], [2.0])[None, None]
    prompts = generator(num_points=5, threshold_factor=1e6)(corr)
    check_invariants(prompts, corr, 5, threshold_factor=1e6)
    assert prompts.labels.tolist() == [[1, -1, -1, -1, -1]]
    assert real_points(prompts, 0) == [(7, 17)]
    assert prompts.masks.sum() == 1 and prompts.masks[0, 0, 17, 7] == 1


def test_fewer_kept_pixels_than_points_gives_padding_without_duplicates():
    cells = [(4, 20), (5, 20), (18, 2)]  # two neighbours and a far one
    corr = spikes((24, 24), cells, [10.0, 12.0, 11.0])[None, None]
    prompts = generator(num_points=5)(corr)
    check_invariants(prompts, corr, 5)
    assert prompts.labels.tolist() == [[1, 1, 1, -1, -1]]
    assert real_points(prompts, 0) == [(5, 20), (18, 2), (4, 20)]  # by decreasing probability
    assert (prompts.points[0, 3:] == 0).all()
    assert (prompts.masks[0, 0] > 0).sum() == 3

    # A grid with fewer cells than points.
    torch.manual_seed(0)
    corr = torch.randn(2, 3, 2, 2)
    prompts = generator(num_points=5)(corr)
    check_invariants(prompts, corr, 5)
    assert ((prompts.labels == 1).sum(dim=1) <= 4).all()
    assert (prompts.labels[:, 4] == -1).all()


def test_maps_do_not_interfere_and_batching_does_not_change_results():
    """Every map's prompts depend on that map alone, except the "posterior" mask, which reads the class's share among
    the classes of its image: given that share, a map alone gives what it gives inside the batch."""
    grid = (24, 24)
    maps = [
        blobs(grid, [(15, 8)], [8.0], [2.5]),
        blobs(grid, [(3, 3), (20, 4), (10, 20)], [8.0, 6.0, 4.0], [1.5, 1.5, 1.5]),
        torch.zeros(grid),
        blobs(grid, [(6, 6), (20, 19)], [8.0, 5.0], [3.0, 0.7]),
        spikes(grid, [(4, 20), (5, 20), (18, 2)], [10.0, 12.0, 11.0]),
        3 * torch.randn(grid, generator=torch.Generator().manual_seed(1)),
    ]
    corr = torch.stack(maps).view(2, 3, *grid)
    check_invariants(generator(num_points=5)(corr), corr, 5)
    ppg = generator(num_points=5, with_boxes=True)
    batched, posterior = ppg(corr), ppg.class_posterior(corr)
    for i, m in enumerate(maps):
        b, n = divmod(i, 3)
        alone = ppg(m[None, None], posterior[b, n][None, None])
        for got, want in zip(batched, alone):
            assert torch.equal(got[i], want[0]), f"map {i} differs when computed inside the batch"
    assert not torch.equal(batched.masks[0], ppg(maps[0][None, None]).masks[0])  # alone, the cat is the only class

    # The same inside a large random batch.
    torch.manual_seed(2)
    corr = 3 * torch.randn(2, 300, *grid)
    batched, posterior = ppg(corr), ppg.class_posterior(corr)
    for b, n in [(0, 0), (0, 137), (1, 299)]:
        alone = ppg(corr[b : b + 1, n : n + 1], posterior[b : b + 1, n : n + 1])
        for got, want in zip(batched, alone):
            assert torch.equal(got[b * 300 + n], want[0])


def test_deterministic():
    torch.manual_seed(3)
    corr = 3 * torch.randn(2, 200, 24, 24)
    ppg = generator(num_points=5, with_boxes=True)
    first, second = ppg(corr), ppg(corr)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_input_is_processed_in_float32(dtype):
    torch.manual_seed(4)
    corr = (3 * torch.randn(2, 50, 12, 20)).to(dtype).requires_grad_()
    prompts = generator(num_points=5)(corr)
    check_invariants(prompts, corr, 5)
    ppg = generator(num_points=5, with_boxes=True)
    for a, b in zip(ppg(corr), ppg(corr.detach().float())):
        assert torch.equal(a.detach(), b)


def test_bad_input_raises_clear_errors():
    ppg = generator()
    with pytest.raises(ValueError, match=r"\[B, N, h, w\].*shape \(3, 24, 24\)"):
        ppg(torch.randn(3, 24, 24))
    with pytest.raises(ValueError, match="floating-point"):
        ppg(torch.zeros(1, 2, 24, 24, dtype=torch.long))
    with pytest.raises(ValueError, match="empty grid"):
        ppg(torch.zeros(1, 2, 0, 24))
    with pytest.raises(ValueError, match=r"MODEL\.ESC_NET\.NUM_POINTS must be at least 1, got 0"):
        generator(num_points=0)
    with pytest.raises(ValueError, match=r"MODEL\.ESC_NET\.KMEANS_ITERS must be at least 0, got -1"):
        generator(kmeans_iters=-1)
    with pytest.raises(ValueError, match=r"MODEL\.ESC_NET\.PPG_THRESHOLD_FACTOR must be at least 0, got -0.5"):
        generator(threshold_factor=-0.5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_cuda_matches_cpu(dtype):
    # Integer-valued maps: no probability lies within rounding distance of the threshold, so CPU and CUDA
    # (whose softmax rounds differently) must keep the same pixels and give the same prompts.
    torch.manual_seed(5)
    corr = torch.randint(-3, 4, (4, 847, 24, 24)).to(dtype)
    ppg = generator(num_points=5)
    cpu = ppg(corr)
    cuda = ppg(corr.cuda())
    check_invariants(PseudoPrompts(*(t.cpu() for t in cuda[:3]), None), corr, 5)
    assert torch.equal(cuda.points.cpu(), cpu.points)
    assert torch.equal(cuda.labels.cpu(), cpu.labels)
    torch.testing.assert_close(cuda.masks.cpu(), cpu.masks, rtol=1e-5, atol=1e-6)
    again = ppg(corr.cuda())
    for a, b in zip(cuda[:3], again[:3]):
        assert torch.equal(a, b)


def test_mask_carries_gradients_to_the_map_and_points_do_not_depend_on_autograd():
    """The pseudo mask stays in the autograd graph (the paper trains end to end); points, labels and the kept set
    are the same whether or not the input requires gradients."""
    torch.manual_seed(0)
    corr = (torch.randn(2, 3, 12, 12) * 2).requires_grad_(True)
    ppg = generator(num_points=4)
    prompts = ppg(corr)
    check_invariants(prompts, corr, 4)
    weights = torch.randn(prompts.masks.shape, generator=torch.Generator().manual_seed(1))
    (prompts.masks * weights).sum().backward()
    grad = corr.grad.reshape(6, -1)
    kept = prompts.masks.detach().reshape(6, -1) > 0
    assert (grad.abs().sum(dim=1) > 0).all()  # every map gets a gradient ...
    assert (grad[kept].abs() > 0).float().mean() > 0.9  # ... at (almost) every kept pixel
    plain = ppg(corr.detach())
    assert torch.equal(plain.points, prompts.points) and torch.equal(plain.labels, prompts.labels)
    torch.testing.assert_close(plain.masks, prompts.masks.detach(), rtol=0, atol=0)


def test_boxes_bound_the_kept_pixels():
    corr = torch.full((1, 2, 10, 12), -5.0)
    corr[0, 0, 2:5, 3:9] = 5.0  # rows 2-4, columns 3-8
    corr[0, 1, 7, 1] = 5.0
    corr[0, 1, 0, 10] = 5.0
    prompts = generator(num_points=3, with_boxes=True)(corr)
    assert prompts.boxes.dtype == torch.float32
    torch.testing.assert_close(prompts.boxes, torch.tensor([[3.0, 2.0, 8.0, 4.0], [1.0, 0.0, 10.0, 7.0]]))


def clip_like_maps(scale=100.0):
    """Block 1's input on a 24x24 grid: CLIP cosines (about 0.2 off target, 0.28-0.30 on it, noise 0.01) times the
    logit scale, for 4 classes: "cat" with a strong instance (cos 0.30) and a weaker second one (0.28), "dog"
    present elsewhere, "fish" absent, and "floor", the stuff under everything else. Returns (maps [1, 4, 24, 24],
    the cat's two instances and the dog's object as [24, 24] bool masks)."""
    g = torch.Generator().manual_seed(0)
    ys, xs = torch.meshgrid(torch.arange(24.0), torch.arange(24.0), indexing="ij")
    disc = lambda cx, cy, r: (xs - cx) ** 2 + (ys - cy) ** 2 <= r * r  # noqa: E731
    cat1, cat2, dog = disc(6, 6, 3.7), disc(17, 16, 3.2), disc(18, 5, 3.0)
    objects = cat1 | cat2 | dog
    cos = 0.2 + 0.01 * torch.randn(4, 24, 24, generator=g)
    cos[0][cat1] += 0.10
    cos[0][cat2] += 0.08
    cos[1][dog] += 0.09
    cos[2] -= 0.02  # fish: nowhere
    cos[3][~objects] += 0.05  # floor wins off the objects
    return (cos * scale)[None], (cat1, cat2, dog)


def test_posterior_mask_covers_every_instance_and_nothing_of_an_absent_class():
    """On CLIP-like maps at block 1's temperature, the pseudo mask SAM's mask encoder sees is positive (> 0.5) on
    every kept pixel of both cat instances, the weaker one included, and of the dog, and nowhere for the absent fish."""
    maps, (cat1, cat2, dog) = clip_like_maps()
    prompts = generator(num_points=5)(maps)
    check_invariants(prompts, maps, 5)
    masks = prompts.masks[:, 0]
    kept = masks > 0
    for cls, instances in ((0, (cat1, cat2)), (1, (dog,))):
        for instance in instances:
            assert kept[cls][instance].sum() >= 10  # the instance is kept ...
            assert (masks[cls][kept[cls] & instance] > 0.5).all()  # ... and every kept pixel of it is positive
        assert not (kept[cls] & ~torch.stack(instances).any(0)).any()
    assert kept[2].any() and not (masks[2] > 0.5).any()  # the fish keeps pixels (spatial softmax) but none positive


def test_region_mask_is_positive_on_every_kept_pixel_and_peak_mask_only_at_the_peak():
    """The two other readings on the same maps: "region" makes every kept pixel positive, each region relative to
    its own peak; "peak" (the first reading) leaves the weaker cat instance without any positive pixel."""
    maps, (cat1, cat2, _) = clip_like_maps()
    region = generator(num_points=5, mask_mode="region")(maps).masks[:, 0]
    kept = region > 0
    assert (region[kept] > 0.5).all() and kept[0][cat2].sum() >= 10
    for instance in (cat1, cat2):  # each instance is a region with its own peak at 1
        assert region[0][instance].max() == 1
    peak = generator(num_points=5, mask_mode="peak")(maps)
    check_invariants(peak, maps, 5, mask_mode="peak")
    assert not (peak.masks[0, 0][cat2] > 0.5).any()
    assert (peak.masks[0, 0][cat1] > 0.5).sum() < cat1.sum() / 2
    with pytest.raises(
        ValueError, match=r"MODEL\.ESC_NET\.PSEUDO_MASK must be one of \['posterior', 'region', 'peak'\]"
    ):
        generator(mask_mode="union")


def test_posterior_of_a_slice_equals_the_whole_vocabularys():
    """A caller that runs the classes in chunks passes each chunk the posterior over the whole vocabulary; the masks
    are then those of one call on every class."""
    maps, _ = clip_like_maps()
    ppg = generator(num_points=3)
    whole = ppg(maps).masks
    posterior = ppg.class_posterior(maps)
    parts = torch.cat([ppg(maps[:, s], posterior[:, s]).masks for s in (slice(0, 1), slice(1, 4))])
    torch.testing.assert_close(parts, whole, rtol=0, atol=0)
    with pytest.raises(ValueError, match="does not match"):
        ppg(maps[:, :1], posterior)


def test_the_canonical_order_is_a_stable_sort_by_probability_then_position():
    """The pseudo points' order, counted from comparisons (an ONNX graph has no stable sort), is the one two stable
    sorts give: decreasing probability, then raster position, then cluster index; ties and padding included."""
    generator = torch.Generator().manual_seed(0)
    peak_prob = torch.randint(0, 4, (500, 6), generator=generator).float() / 4  # many equal probabilities
    peak_prob[peak_prob == 0] = -1  # empty clusters (padding)
    peak = torch.randint(0, 5, (500, 6), generator=generator)  # and equal positions
    order = peak.argsort(dim=1, stable=True)
    expected = order.gather(1, peak_prob.gather(1, order).argsort(dim=1, descending=True, stable=True))
    assert torch.equal(_canonical_order(peak_prob, peak), expected)
