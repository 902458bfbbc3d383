"""Semantic-segmentation evaluation for the open-vocabulary benchmarks, built on Detectron2's ``SemSegEvaluator``.

Detectron2's evaluator gathers the confusion matrices of all processes and computes the metrics from them
(mIoU, fwIoU, per-class IoU, mACC, pACC, per-class accuracy, in percent). This subclass keeps both and changes
how one image's prediction is counted, for the open-vocabulary protocol:

* the model scores the dataset's ``vocabulary`` (metadata), which may hold more names than the evaluated
  ``stuff_classes``; with ``background_index`` (PAS-20b), every prediction on a vocabulary index from
  ``background_index`` on counts as the evaluated class ``background_index`` ("background"). This evaluator is
  the one place that applies the rule; registration only states it in the metadata;
* an output is either ``"sem_seg"`` scores [N_vocab, H, W] or ``"sem_seg_labels"``, the [H, W] map of vocabulary
  indices of the model's bounded-memory ``INFERENCE_OUTPUT "labels"``;
* label maps keep their bit depth, so 16-bit maps (A-847 and PC-459, ignore value 65535) are read as they are;
* predictions, label maps and metadata that do not fit raise errors naming the file or the dataset;
* the result counts the images scored (``"images"``), so that a dataset accepted incomplete says so;
* Detectron2's boundary IoU and its per-image RLE predictions are not computed (the first only exists below 255
  classes; the second would be gathered into memory for a whole benchmark, and nothing here reads it);
* two conventions for classes absent from the ground truth, from the same confusion matrix: ``mIoU`` leaves
  them out even where they are predicted (Detectron2's current rule, and the one under which the published
  PC-459 figures of CAT-Seg and FC-CLIP reproduce: users who counted them got 14.6 instead of 19.0 and 13.8
  instead of 18.2, cvlab-kaist/CAT-Seg issue 24, bytedance/fc-clip issue 27); ``mIoU-union`` counts every class
  that is in the ground truth or the prediction, a predicted but absent class with IoU 0. The paper tables are
  compared with ``mIoU``; the two differ most on large vocabularies, where many absent classes win a few pixels;
* a dataset whose metadata hold ``class_groups`` (``{"seen": [names], "unseen": [names]}``, the classes seen and
  unseen in segmentation training) also gets the mean IoU of each group, ``mIoU-<group>``, and their harmonic
  mean ``hIoU`` (the usual figure of zero-shot segmentation, which rewards neither group alone), and for every
  ordered pair of groups the share of one group's pixels predicted as a class of the other, ``<group>-as-<other>``
  (in percent): the bias of a zero-shot model towards the names it was trained on shows as ``unseen-as-seen``, a
  model that lets new names spread over what it knows as ``seen-as-unseen``.
"""

import math
from typing import Dict, Mapping, Sequence

import numpy as np
import torch
from detectron2.data import MetadataCatalog
from detectron2.evaluation import SemSegEvaluator
from detectron2.utils.comm import all_gather

from esc_net.data.vocabulary import get_dataset_vocabulary
from esc_net.utils.label_maps import read_label_map

__all__ = ["OpenVocabSemSegEvaluator", "group_confusion", "group_means", "union_miou"]


def union_miou(conf_matrix: np.ndarray) -> float:
    """Mean IoU (percent) over the classes in the ground truth or the prediction: a class predicted somewhere but
    absent from the ground truth counts with IoU 0.

    Args:
        conf_matrix: Detectron2's [K + 1, K + 1] matrix, entry [p, g] = pixels predicted p with ground truth g (the
            last row and column for ignored pixels, left out here).
    """
    counts = conf_matrix[:-1, :-1].astype(float)
    tp, pos_pred, pos_gt = counts.diagonal(), counts.sum(axis=1), counts.sum(axis=0)
    union = pos_gt + pos_pred - tp
    valid = union > 0
    return float(100.0 * np.mean(tp[valid] / union[valid])) if valid.any() else math.nan


def group_means(metrics: Mapping[str, float], groups: Mapping[str, Sequence[str]]) -> Dict[str, float]:
    """The mean IoU of each group of classes, and the harmonic mean of the "seen" and "unseen" groups.

    Args:
        metrics: an evaluator's results with ``IoU-<class>`` entries in percent (NaN: absent from the ground truth).
        groups: group name -> class names.
    Returns:
        ``{"mIoU-<group>": mean over the group's classes that have an IoU}`` (NaN for a group without any), plus
        ``"hIoU"`` = 2 s u / (s + u) when both "seen" and "unseen" have a mean (0 when both are 0).
    """
    means = {}
    for group, names in groups.items():
        unknown = [n for n in names if f"IoU-{n}" not in metrics]
        if unknown:
            raise KeyError(f"class_groups[{group!r}] names classes the results do not have: {unknown}")
        values = [metrics[f"IoU-{n}"] for n in names if not math.isnan(metrics[f"IoU-{n}"])]
        means[f"mIoU-{group}"] = sum(values) / len(values) if values else math.nan
    seen, unseen = means.get("mIoU-seen", math.nan), means.get("mIoU-unseen", math.nan)
    if not (math.isnan(seen) or math.isnan(unseen)):
        means["hIoU"] = 2 * seen * unseen / (seen + unseen) if seen + unseen > 0 else 0.0
    return means


def group_confusion(
    conf_matrix: np.ndarray, class_names: Sequence[str], groups: Mapping[str, Sequence[str]]
) -> Dict[str, float]:
    """For every ordered pair of class groups (g, o), the percentage of the labelled pixels of g's classes that are
    predicted as one of o's classes: ``{"<g>-as-<o>": value}`` (NaN where g has no labelled pixel).

    Args:
        conf_matrix: Detectron2's [K + 1, K + 1] matrix, entry [p, g] = pixels predicted p with ground truth g.
        class_names: the K evaluated class names, in matrix order.
        groups: group name -> class names (each in ``class_names``).
    """
    index = {name: i for i, name in enumerate(class_names)}
    unknown = sorted({n for names in groups.values() for n in names if n not in index})
    if unknown:
        raise KeyError(f"class_groups name classes that are not evaluated: {unknown}")
    counts = conf_matrix[:-1, :-1].astype(float)
    members = {group: [index[n] for n in names] for group, names in groups.items()}
    shares = {}
    for group, truth in members.items():
        total = counts[:, truth].sum()
        for other, predicted in members.items():
            if other != group:
                taken = counts[np.ix_(predicted, truth)].sum()
                shares[f"{group}-as-{other}"] = float(100.0 * taken / total) if total > 0 else math.nan
    return shares


class OpenVocabSemSegEvaluator(SemSegEvaluator):
    """Detectron2's ``SemSegEvaluator`` for open vocabularies (see the module docstring for what differs).

    Metadata of ``dataset_name`` that is read: ``stuff_classes`` (the K evaluated classes), ``ignore_label``,
    ``vocabulary`` (the scored names; ``stuff_classes`` where absent), ``background_index`` and ``class_groups``
    (both optional).
    :meth:`evaluate` returns ``{"sem_seg": {"mIoU", "fwIoU", "IoU-<class>"..., "mACC", "pACC", "ACC-<class>"...}}``
    in percent, as Detectron2 computes them, and ``"images"``, the number of images scored: a class absent from the
    ground truth has NaN IoU and accuracy and is left out of the means, even where it was predicted.
    """

    def __init__(self, dataset_name: str, distributed: bool = True):
        """
        Args:
            dataset_name: a dataset registered in DatasetCatalog and MetadataCatalog.
            distributed: gather the confusion matrices of all processes in :meth:`evaluate`; only the main
                process then returns results.
        """
        meta = MetadataCatalog.get(dataset_name)
        missing = [k for k in ("stuff_classes", "ignore_label") if not hasattr(meta, k)]
        if missing:
            raise KeyError(f"metadata of dataset {dataset_name!r} lacks {missing}, needed for evaluation")
        # Loads the dataset's records (for the file_name -> sem_seg_file_name lookup) and reads the metadata.
        super().__init__(dataset_name, distributed=distributed)
        self._compute_boundary_iou = False
        self._ignore_label = int(self._ignore_label)
        if 0 <= self._ignore_label < self._num_classes:
            raise ValueError(
                f"dataset {dataset_name!r}: ignore_label {self._ignore_label} is also a class id "
                f"(there are {self._num_classes} classes)"
            )
        self._vocabulary_size = len(get_dataset_vocabulary(dataset_name))
        self._background_index = meta.get("background_index", None)
        if self._background_index is None:
            if self._vocabulary_size != self._num_classes:
                raise ValueError(
                    f"dataset {dataset_name!r} scores {self._vocabulary_size} vocabulary names for "
                    f"{self._num_classes} evaluated classes but has no 'background_index' saying how to map them"
                )
        elif not 0 <= self._background_index < self._num_classes:
            raise ValueError(
                f"dataset {dataset_name!r}: background_index {self._background_index} is not an evaluated "
                f"class id in [0, {self._num_classes})"
            )

    def reset(self):
        super().reset()
        self._images = 0

    def process(self, inputs, outputs):
        """
        Args:
            inputs: dataset dicts with ``file_name`` and, where present, ``sem_seg_file_name`` (else it is looked
                up in the registered dataset by ``file_name``, since Detectron2's test-time mapper drops it).
            outputs: dicts whose ``"sem_seg"`` is a score tensor [N_vocab, H, W] at the image's original size,
                on any device and of any floating dtype, or whose ``"sem_seg_labels"`` is the [H, W] map of
                vocabulary indices.

        Raises:
            ValueError: scores of the wrong shape or holding NaN, labels out of the vocabulary, or a label map
                that does not match the prediction.
        """
        for inp, out in zip(inputs, outputs):
            if "sem_seg_labels" in out:
                pred = self._checked_labels(out["sem_seg_labels"], inp["file_name"])
            else:
                pred = self._predicted_classes(out["sem_seg"], inp["file_name"])
            gt = self._load_labels(self._gt_file(inp), pred.shape)
            labelled = gt != self._ignore_label
            # Detectron2's layout: entry [p, g] counts pixels predicted p whose ground truth is g; ignored pixels
            # are left out here rather than counted in the extra last column.
            self._conf_matrix += np.bincount(
                (self._num_classes + 1) * pred[labelled] + gt[labelled], minlength=self._conf_matrix.size
            ).reshape(self._conf_matrix.shape)
            self._images += 1

    def evaluate(self):
        """
        Returns:
            Detectron2's ``{"sem_seg": {metric: value in percent}}`` on the main process (see the class
            docstring); None on the others when distributed.

        Raises:
            ValueError: no labelled pixel was evaluated (every metric would be 0 / 0).
        """
        # every process calls this gather, as Detectron2's own in super().evaluate()
        images = sum(all_gather(self._images)) if self._distributed else self._images
        # An empty matrix is reported below as an error rather than as NaN metrics and division warnings.
        with np.errstate(divide="ignore", invalid="ignore"):
            results = super().evaluate()
        if results is None:
            return None
        if not self._conf_matrix.any():
            raise ValueError(
                f"no labelled pixel of {self._dataset_name!r} was evaluated: the confusion matrix is empty"
            )
        results["sem_seg"]["images"] = images
        results["sem_seg"]["mIoU-union"] = union_miou(self._conf_matrix)
        groups = MetadataCatalog.get(self._dataset_name).get("class_groups", None)
        if groups:
            results["sem_seg"].update(group_means(results["sem_seg"], groups))
            results["sem_seg"].update(group_confusion(self._conf_matrix, self._class_names, groups))
        return results

    def _gt_file(self, inp: dict) -> str:
        if "sem_seg_file_name" in inp:
            return inp["sem_seg_file_name"]
        if inp["file_name"] not in self.input_file_to_gt_file:
            raise KeyError(
                f"{inp['file_name']} has no 'sem_seg_file_name' and is not an image of dataset {self._dataset_name!r}"
            )
        return self.input_file_to_gt_file[inp["file_name"]]

    def _predicted_classes(self, scores: torch.Tensor, file_name: str) -> np.ndarray:
        """[N_vocab, H, W] scores -> int64 [H, W] evaluated class ids (argmax, then the background rule)."""
        if scores.dim() != 3 or scores.shape[0] != self._vocabulary_size:
            raise ValueError(
                f"prediction for {file_name}: expected scores of shape [{self._vocabulary_size}, H, W] "
                f"(one map per vocabulary name of {self._dataset_name!r}), got {tuple(scores.shape)}"
            )
        if torch.isnan(scores).any():
            raise ValueError(
                f"prediction for {file_name}: the scores hold NaN ({int(torch.isnan(scores).sum())} values); "
                "an argmax over them would be meaningless"
            )
        return self._evaluated_classes(scores.argmax(dim=0))  # on the model's device: only [H, W] goes to the CPU

    def _checked_labels(self, labels: torch.Tensor, file_name: str) -> np.ndarray:
        """[H, W] vocabulary indices -> int64 [H, W] evaluated class ids (the background rule)."""
        labels = labels.long()
        in_vocabulary = not labels.numel() or 0 <= int(labels.min()) <= int(labels.max()) < self._vocabulary_size
        if labels.dim() != 2 or not in_vocabulary:
            raise ValueError(
                f"prediction for {file_name}: expected a label map [H, W] of indices into the "
                f"{self._vocabulary_size} vocabulary names of {self._dataset_name!r}, got shape {tuple(labels.shape)}"
                + (f" with values in [{int(labels.min())}, {int(labels.max())}]" if labels.numel() else "")
            )
        return self._evaluated_classes(labels)

    def _evaluated_classes(self, pred: torch.Tensor) -> np.ndarray:
        """Vocabulary indices -> evaluated class ids: the background rule of PAS-20b, nothing elsewhere."""
        if self._background_index is not None:
            pred = pred.clamp_max(self._background_index)
        return pred.cpu().numpy().astype(np.int64, copy=False)

    def _load_labels(self, gt_file: str, pred_shape) -> np.ndarray:
        """Reads a single-channel label map (uint8/uint16 values kept) and checks it against the prediction."""
        gt = read_label_map(gt_file)
        if gt.shape != tuple(pred_shape):
            raise ValueError(
                f"label map {gt_file} has size {gt.shape} (H, W) but the prediction has {tuple(pred_shape)}: "
                "predictions must be at the image's original height and width"
            )
        gt = gt.astype(np.int64)
        bad = ((gt < 0) | (gt >= self._num_classes)) & (gt != self._ignore_label)
        if bad.any():
            raise ValueError(
                f"label map {gt_file} contains values {np.unique(gt[bad])[:10].tolist()} outside "
                f"[0, {self._num_classes}) that are not the ignore label {self._ignore_label}"
            )
        return gt
