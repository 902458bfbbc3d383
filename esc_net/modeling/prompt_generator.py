"""Pseudo Prompt Generator (PPG): per-class correlation maps -> SAM point and mask prompts.

Notation: B images, N classes, M = B*N class maps (image-major: row b*N + n is image b, class n), h x w the grid,
P = h*w grid positions, K = N_o pseudo points per class map.

Everything is computed for all M maps at once; the only Python loops run over the K - 1 initialisation steps and
the fixed number of K-means iterations.
"""

from typing import NamedTuple, Optional, Tuple

import torch
from detectron2.config import configurable
from torch import nn

from esc_net.utils.arguments import check_choice, check_minimum

# How the pseudo mask is formed from the kept pixels (see PseudoPromptGenerator, step 5).
MASK_MODES = ("posterior", "region", "peak")


class PseudoPrompts(NamedTuple):
    """SAM prompts for every class map of a batch. Only ``masks`` carries gradients.

    Attributes:
        points: [B*N, K, 2] float32. (x, y) = (column, row) index of a grid cell, integer-valued. SAM's
            PromptEncoder built with ``input_image_size=(h, w)`` adds the half-cell shift to the cell centre.
            Real points come first, by decreasing probability with ties in raster order (so ``points[:, 0]`` is
            the map's global argmax); padding entries are (0, 0).
        labels: [B*N, K] int64. 1 for a pseudo point, -1 for padding (SAM's "not a point" label).
        masks: [B*N, 1, h, w] float32 in [0, 1], zero outside the kept pixels: the pseudo mask, in the form
            ``mask_mode`` says (see :class:`PseudoPromptGenerator`); 0.5 is SAM's decision boundary. Differentiable
            with respect to the input map.
        boxes: [B*N, 4] float32 (x0, y0, x1, y1): the grid cells at the corners of the kept region's bounding box,
            in the same cell-index convention as ``points``; None unless the generator was built ``with_boxes``
            (the box-prompt ablation).
    """

    points: torch.Tensor
    labels: torch.Tensor
    masks: torch.Tensor
    boxes: torch.Tensor


class PseudoPromptGenerator(nn.Module):
    """Turns each class's correlation map into N_o pseudo points and a pseudo mask. It has no parameters.

    For every class map independently:

    1. ``p = softmax`` over the h*w positions of the map, on the values as given: the caller chooses the
       temperature (ESC-Net scales block 1's raw CLIP cosines by a learnt logit scale; see ``ESCNet``).
    2. Kept pixels: ``p > threshold_factor / (h*w)``; with the default factor 1 these are the pixels above the
       uniform distribution. A map with no kept pixel (e.g. a perfectly uniform one) keeps its single most
       probable pixel instead, so it yields one real point there, padding for the rest, and a mask that is 1 at
       that pixel and 0 elsewhere.
    3. K-means with K = ``num_points`` on the (x, y) coordinates of the kept pixels:

       - initialisation by probability-weighted farthest-point sampling among the kept pixels, starting at the
         most probable pixel: each next centre is the kept pixel with the largest p x (squared distance to the
         nearest centre chosen so far). Separated blobs therefore get separate centres, while an isolated pixel
         that only just passed the threshold (CLIP's cosines are noisy) does not win over a confident part of the
         object: plain farthest-point sampling made such stray pixels clusters of their own and put points on
         them. The result needs no random seed. A map with fewer than K kept pixels gets one centre per kept pixel
         and K - (number of kept pixels) inactive clusters.
       - ``kmeans_iters`` Lloyd iterations (assign each kept pixel to its nearest active centre, move each centre
         to the mean of its pixels; a centre that lost all its pixels stays where it was). The means are not
         weighted by p: every sum is then a sum of integers, computed exactly, so the clustering of a map is
         bit-identical whatever else is in the batch; the probability still decides which pixels take part and
         which pixel of a cluster becomes its point.
       - ties (equal distances or probabilities) go to the lowest cluster index / lowest raster position.

    4. Per non-empty cluster, the pseudo point is the cluster's most probable pixel. Clusters left empty and
       inactive clusters give padding (label -1, point (0, 0)). Each pixel belongs to one cluster, so real points
       of a map are always distinct.
    5. The pseudo mask, zero outside the kept pixels (the clusters together cover exactly the kept pixels), and on
       them, per ``mask_mode``:

       - "posterior": the class's probability at the pixel among all classes of the vocabulary, the softmax over
         classes of the maps (``class_posterior``): CLIP's own dense zero-shot prediction in block 1, where the
         maps are CLIP's scaled cosines. Every kept pixel of a present object is positive (its class wins there,
         whether it is the strongest instance or a weaker second one), and the kept pixels of an absent class,
         where some other class wins, are negative: the spatial softmax alone cannot tell an absent class from a
         present one, since it spreads every map over the image whatever its level;
       - "region": 0.5 + 0.5 p / (the peak of p in the pixel's cluster): every kept pixel positive, each K-means
         region normalised by its own peak (the paper's "each region as a pseudo-mask", as one union);
       - "peak": p divided by the map's single maximum: SAM's mask encoder sees a
         positive logit (p above half the peak) only at the strongest peak, and a weaker second instance gets
         none.

    Points, labels, boxes and the choice of kept pixels are discrete and carry no gradient. The mask is the
    filtered probability map and stays in the autograd graph: the loss reaches the map the prompts are drawn from
    (the previous block's correlation head, and block 1's temperature) through it, as the paper trains end to
    end. Everything is computed in float32 whatever the input dtype (float16 and bfloat16 included), and outputs
    are bit-identical for identical inputs on a given device. Memory is O(B*N*h*w*K).

    Args:
        num_points: K = N_o, the number of pseudo points (and K-means clusters) per class map.
        threshold_factor: pixels with probability above ``threshold_factor / (h*w)`` are kept.
        kmeans_iters: number of Lloyd iterations after the initialisation.
        mask_mode: one of :data:`MASK_MODES` (step 5).
        with_boxes: also return the bounding box of every map's kept pixels (for a SAM block prompted with boxes).
    """

    @configurable
    def __init__(
        self, *, num_points: int, threshold_factor: float, kmeans_iters: int, mask_mode: str, with_boxes: bool = False
    ):
        super().__init__()
        check_minimum("MODEL.ESC_NET.NUM_POINTS", num_points, 1)
        check_minimum("MODEL.ESC_NET.PPG_THRESHOLD_FACTOR", threshold_factor, 0)
        check_minimum("MODEL.ESC_NET.KMEANS_ITERS", kmeans_iters, 0)
        check_choice("MODEL.ESC_NET.PSEUDO_MASK", mask_mode, MASK_MODES)
        self.mask_mode = mask_mode
        self.num_points = int(num_points)
        self.threshold_factor = float(threshold_factor)
        self.kmeans_iters = int(kmeans_iters)
        self.with_boxes = bool(with_boxes)

    @classmethod
    def from_config(cls, cfg):
        m = cfg.MODEL.ESC_NET
        return {
            "num_points": m.NUM_POINTS,
            "threshold_factor": m.PPG_THRESHOLD_FACTOR,
            "kmeans_iters": m.KMEANS_ITERS,
            "mask_mode": m.PSEUDO_MASK,
        }

    def extra_repr(self) -> str:
        return (
            f"num_points={self.num_points}, threshold_factor={self.threshold_factor}, "
            f"kmeans_iters={self.kmeans_iters}, with_boxes={self.with_boxes}, mask_mode={self.mask_mode!r}"
        )

    def class_posterior(self, corr: torch.Tensor) -> Optional[torch.Tensor]:
        """What the "posterior" mask needs of the whole vocabulary: the softmax over classes of ``corr``
        [B, N, h, w] (float32); None for the other mask modes. A caller that generates prompts for a slice of
        the classes at a time computes it once on all of them and passes the matching slice to :meth:`forward`."""
        return corr.float().softmax(dim=1) if self.mask_mode == "posterior" else None

    def forward(self, corr: torch.Tensor, posterior: Optional[torch.Tensor] = None) -> PseudoPrompts:
        """
        Args:
            corr: [B, N, h, w] correlation (or logit) maps, any floating dtype.
            posterior: [B, N, h, w] the matching slice of :meth:`class_posterior` of the whole vocabulary (mask mode
                "posterior"; computed from ``corr`` when not given, which is right when ``corr`` holds every class).

        Returns:
            PseudoPrompts with points [B*N, K, 2], labels [B*N, K], masks [B*N, 1, h, w] and boxes [B*N, 4] (or None).
        """
        if corr.dim() != 4 or not corr.is_floating_point():
            raise ValueError(
                "PseudoPromptGenerator expects a floating-point [B, N, h, w] correlation map, got "
                f"dtype {corr.dtype} and shape {tuple(corr.shape)}"
            )
        B, N, h, w = corr.shape
        if h == 0 or w == 0:
            raise ValueError(f"PseudoPromptGenerator: empty grid in correlation map of shape {tuple(corr.shape)}")
        num_pixels = h * w
        prob = corr.reshape(B * N, num_pixels).float().softmax(dim=1)  # [M, P]
        with torch.no_grad():
            points, labels, kept, boxes, assign = self._discrete_prompts(prob.detach(), (h, w))
        masks = self._masks(prob, kept, assign, corr, posterior)
        return PseudoPrompts(points, labels, masks.view(B * N, 1, h, w), boxes)

    def _masks(self, prob, kept, assign, corr, posterior) -> torch.Tensor:
        """The pseudo masks [M, P] of step 5 (prob [M, P]; kept [M, P] bool; assign [M, P] cluster ids)."""
        if self.mask_mode == "posterior":
            if posterior is None:
                posterior = self.class_posterior(corr)
            if posterior.shape != corr.shape:
                raise ValueError(
                    f"posterior of shape {tuple(posterior.shape)} does not match the maps' {tuple(corr.shape)}"
                )
            return posterior.reshape(prob.shape).float() * kept
        if self.mask_mode == "peak":
            masks = prob * kept
            return masks / masks.amax(dim=1, keepdim=True)  # the peak (kept, > 0) divides itself: exactly 1
        # "region": each cluster's pixels relative to the cluster's own peak, in [0.5, 1] where kept
        cluster = torch.where(kept, assign, self.num_points)  # pixels outside every cluster in a spare slot
        peaks = prob.new_zeros(len(prob), self.num_points + 1).scatter_reduce(1, cluster, prob, "amax")
        return (0.5 + 0.5 * prob / peaks.gather(1, cluster).clamp_min(torch.finfo(prob.dtype).tiny)) * kept

    @torch.no_grad()
    def clusters(self, corr: torch.Tensor) -> torch.Tensor:
        """The K-means cluster of every pixel, as :meth:`forward` computes it (for pictures and debugging).

        Args:
            corr: [B, N, h, w] correlation (or logit) maps.
        Returns:
            [B*N, h, w] int64: the cluster index (0..K-1) of every kept pixel, -1 elsewhere.
        """
        B, N, h, w = corr.shape
        prob = corr.reshape(B * N, h * w).float().softmax(dim=1)
        *_, kept, _, assign = self._discrete_prompts(prob, (h, w))
        return torch.where(kept, assign, -1).view(B * N, h, w)

    def _discrete_prompts(self, prob: torch.Tensor, grid: Tuple[int, int]):
        """Kept pixels, K-means points and the kept region's box of every map.

        Args:
            prob: [M, P] spatial probabilities; grid: (h, w).
        Returns:
            points [M, K, 2] float32, labels [M, K] int64, kept [M, P] bool, boxes [M, 4] float32 or None, and
            the cluster of every pixel [M, P] int64 (meaningful for kept pixels).
        """
        h, w = grid
        num_pixels = h * w
        top = prob.argmax(dim=1)  # [M], first index among ties

        kept = prob > self.threshold_factor / num_pixels  # [M, P]
        # The most probable pixel is kept whenever any pixel is, so forcing it in only changes maps with no kept
        # pixel: they fall back to that single pixel.
        kept.scatter_(1, top[:, None], True)

        # (x, y) = (column, row) of every grid position in raster order: [P, 2] int64.
        pos = torch.arange(num_pixels, device=prob.device)
        coords = torch.stack((pos % w, pos // w), dim=1)

        centres = self._farthest_point_init(coords, prob, kept, top, grid)
        assign = self._kmeans(coords, kept, centres, grid)
        points, labels = self._cluster_peaks(coords, prob, kept, assign)
        if not self.with_boxes:
            return points, labels, kept, None, assign
        # Bounding box of the kept pixels: the smallest and largest kept column and row.
        big = torch.iinfo(coords.dtype).max
        kept_xy = coords.expand(len(kept), -1, -1)
        low = torch.where(kept[..., None], kept_xy, big).amin(dim=1)
        high = torch.where(kept[..., None], kept_xy, -1).amax(dim=1)
        boxes = torch.cat((low, high), dim=1).float()
        return points, labels, kept, boxes, assign

    def _farthest_point_init(
        self, coords: torch.Tensor, prob: torch.Tensor, kept: torch.Tensor, top: torch.Tensor, grid: Tuple[int, int]
    ) -> torch.Tensor:
        """Probability-weighted farthest-point sampling among the kept pixels, starting at the most probable one.

        Args:
            coords: [P, 2] int64 pixel coordinates.
            prob: [M, P] float32 probabilities.
            kept: [M, P] bool, at least one kept pixel per map.
            top: [M] index of the most probable pixel (kept).
            grid: (h, w).

        Returns:
            centres: [M, K, 2] float32 initial centres; inactive ones (beyond the number of kept pixels) are +inf,
            which puts them out of reach of every pixel.
        """
        chosen = [top]
        inactive = [torch.zeros_like(kept[:, 0])]
        # Squared distances between integer coordinates are exact in float32, so ties resolve identically
        # everywhere.
        coords = coords.float()
        min_dist = _squared_distance(coords[top, None], grid)[:, 0]  # [M, P]
        outside = ~kept
        for _ in range(self.num_points - 1):
            far = (min_dist * prob).masked_fill(outside, -1).max(dim=1).indices
            # Distance 0 means every kept pixel already is a centre: the map has fewer kept pixels than K.
            inactive.append(min_dist.gather(1, far[:, None])[:, 0] == 0)
            chosen.append(far)
            min_dist = torch.minimum(min_dist, _squared_distance(coords[far, None], grid)[:, 0])
        centres = coords[torch.stack(chosen, dim=1)]
        return centres.masked_fill(torch.stack(inactive, dim=1)[..., None], float("inf"))

    def _kmeans(
        self, coords: torch.Tensor, kept: torch.Tensor, centres: torch.Tensor, grid: Tuple[int, int]
    ) -> torch.Tensor:
        """Lloyd iterations on the kept pixels' coordinates.

        Args:
            coords: [P, 2] int64 pixel coordinates.
            kept: [M, P] bool.
            centres: [M, K, 2] float32 initial centres, +inf for inactive ones.
            grid: (h, w).

        Returns:
            [M, P] int64 cluster index of every pixel (meaningful for kept pixels only).
        """
        M, K, _ = centres.shape
        # (x, y, 1) of every kept pixel and zeros elsewhere: one scatter-add gives per-cluster sums and counts.
        xy1 = torch.cat((coords, torch.ones_like(coords[:, :1])), dim=1)
        kept_xy1 = xy1 * kept[..., None]  # [M, P, 3] int64
        for _ in range(self.kmeans_iters):
            assign = _nearest_centre(centres, grid)
            # Integer scatter-adds are exact and order-independent, hence deterministic on CPU and CUDA and
            # independent of the rest of the batch.
            sums = kept_xy1.new_zeros(M, K, 3).scatter_add_(1, assign[..., None].expand(-1, -1, 3), kept_xy1)
            counts = sums[..., 2:]
            means = (sums[..., :2].double() / counts.clamp(min=1)).float()
            # Inactive centres (+inf) never get pixels and stay out of reach; emptied centres stay where they were.
            centres = torch.where(counts > 0, means, centres)
        return _nearest_centre(centres, grid)

    def _cluster_peaks(self, coords: torch.Tensor, prob: torch.Tensor, kept: torch.Tensor, assign: torch.Tensor):
        """The most probable pixel of every non-empty cluster, real points first by decreasing probability.

        Args:
            coords: [P, 2] int64; prob: [M, P] float32; kept: [M, P] bool; assign: [M, P] int64.

        Returns:
            points: [M, K, 2] float32 (padding (0, 0)); labels: [M, K] int64 (1 real, -1 padding).
        """
        clusters = torch.arange(self.num_points, device=assign.device)
        member = (assign[:, None] == clusters[:, None]) & kept[:, None]  # [M, K, P]
        # Kept pixels have p > 0, so -1 only wins in empty clusters; the first index wins among equal ones.
        peak_prob, peak = torch.where(member, prob[:, None], -1.0).max(dim=2)  # [M, K]
        order = _canonical_order(peak_prob, peak)
        peak, real = peak.gather(1, order), peak_prob.gather(1, order) >= 0
        points = torch.where(real[..., None], coords[peak], 0).float()
        labels = torch.where(real, 1, -1)
        return points, labels


def _canonical_order(peak_prob: torch.Tensor, peak: torch.Tensor) -> torch.Tensor:
    """The order of every map's clusters that makes its points independent of the cluster numbering: by decreasing
    probability, ties by raster position, then by cluster index (padding, probability -1, comes last).

    Args:
        peak_prob: [M, K] float32; peak: [M, K] int64.
    Returns:
        [M, K] int64, the cluster at each output position.

    The position of each cluster is its rank, counted from K x K comparisons, rather than a sort: the same
    permutation as a stable sort on (-probability, position), and one that ONNX can express (it has no stable
    sort, and a plain sort leaves the order of ties to the runtime).
    """
    K = peak.shape[1]
    index = torch.arange(K, device=peak.device)
    p_i, p_j, q_i, q_j = peak_prob[:, :, None], peak_prob[:, None, :], peak[:, :, None], peak[:, None, :]
    tie = (p_i == p_j) & ((q_i < q_j) | ((q_i == q_j) & (index[:, None] < index[None, :])))
    comes_before = (p_i > p_j) | tie  # [M, K, K]: cluster i is placed before cluster j
    rank = comes_before.sum(dim=1)  # [M, K]: how many clusters are placed before cluster j
    return torch.zeros_like(peak).scatter_(1, rank, index.expand_as(peak))


def _squared_distance(centres: torch.Tensor, grid: Tuple[int, int]) -> torch.Tensor:
    """[M, K, 2] float32 (x, y) centres -> [M, K, h*w] squared distances to every grid position (raster
    order). Separable: the per-column and per-row terms are computed once and added on the grid."""
    h, w = grid
    cols = torch.arange(w, device=centres.device, dtype=centres.dtype)
    rows = torch.arange(h, device=centres.device, dtype=centres.dtype)
    dx2 = (cols - centres[..., 0, None]).square_()  # [M, K, w]
    dy2 = (rows - centres[..., 1, None]).square_()  # [M, K, h]
    return (dy2[..., :, None] + dx2[..., None, :]).flatten(2)


def _nearest_centre(centres: torch.Tensor, grid: Tuple[int, int]) -> torch.Tensor:
    """[M, K, 2] centres -> [M, P] index of the nearest centre, the lowest index among equally near ones."""
    # min(dim).indices rather than argmin: same result, much faster on CPU for a non-innermost dim.
    return _squared_distance(centres, grid).min(dim=1).indices
