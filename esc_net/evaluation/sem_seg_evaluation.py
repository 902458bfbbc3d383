"""Semantic-segmentation evaluation for open-vocabulary benchmarks (DESIGN.md section 4).

The metrics are exactly those of Detectron2's ``SemSegEvaluator``; what this evaluator adds for the
open-vocabulary protocol is:

* a scored vocabulary that can be larger than the evaluated classes (PAS-20b: every prediction on a vocabulary
  index >= ``background_index`` counts as the "background" class);
* 16-bit label maps (A-847 and PC-459 have more classes than fit into a uint8 PNG, ignore value 65535);
* one vectorised ``bincount`` per image into an int64 confusion matrix, cheap even for 847 classes;
* clear errors for label maps that do not match the prediction or contain unknown class ids.
"""

import logging
import os
from collections import OrderedDict
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from PIL import Image

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import DatasetEvaluator
from detectron2.utils import comm
from detectron2.utils.file_io import PathManager
from detectron2.utils.logger import create_small_table

from esc_net.data.vocabulary import get_dataset_vocabulary

__all__ = ["OpenVocabSemSegEvaluator", "segmentation_metrics"]


def segmentation_metrics(conf_matrix: np.ndarray, class_names: Sequence[str]) -> Dict[str, float]:
    """Detectron2's semantic-segmentation metrics, in percent, from a confusion matrix.

    Args:
        conf_matrix: int array [K, K]; entry [g, p] counts the labelled pixels of ground-truth class g that were
            predicted as class p (ignored pixels are not counted).
        class_names: the K evaluated class names.

    Returns:
        ``{"mIoU", "fwIoU", "IoU-<class>"..., "mACC", "pACC", "ACC-<class>"...}``. As in Detectron2, a class that
        never occurs in the ground truth gets NaN IoU and accuracy and is left out of mIoU, fwIoU and mACC, even
        where it was predicted (its false positives still lower the IoU of the classes they belong to).
    """
    num_classes = len(class_names)
    if conf_matrix.shape != (num_classes, num_classes):
        raise ValueError(f"confusion matrix of shape {conf_matrix.shape} does not match {num_classes} class names")
    tp = conf_matrix.diagonal().astype(np.float64)
    pos_gt = conf_matrix.sum(axis=1).astype(np.float64)
    pos_pred = conf_matrix.sum(axis=0).astype(np.float64)
    total = pos_gt.sum()
    if total == 0:
        raise ValueError("no labelled pixel was evaluated: the confusion matrix is empty")

    valid = pos_gt > 0  # pos_gt > 0 implies union > 0, so IoU and accuracy share one validity mask
    acc = np.full(num_classes, np.nan)
    iou = np.full(num_classes, np.nan)
    acc[valid] = tp[valid] / pos_gt[valid]
    iou[valid] = tp[valid] / (pos_gt[valid] + pos_pred[valid] - tp[valid])

    res = OrderedDict()
    res["mIoU"] = 100 * iou[valid].mean()
    res["fwIoU"] = 100 * np.sum(iou[valid] * pos_gt[valid] / total)
    for name, value in zip(class_names, iou):
        res[f"IoU-{name}"] = 100 * value
    res["mACC"] = 100 * acc[valid].mean()
    res["pACC"] = 100 * tp.sum() / total
    for name, value in zip(class_names, acc):
        res[f"ACC-{name}"] = 100 * value
    return res


class OpenVocabSemSegEvaluator(DatasetEvaluator):
    """Accumulates a confusion matrix over a dataset and reports mIoU, fwIoU, mACC, pACC and per-class values.

    Metadata of ``dataset_name`` that is read: ``stuff_classes`` (the K evaluated classes), ``ignore_label``,
    ``vocabulary`` (the scored names; ``stuff_classes`` where absent) and ``background_index`` (optional).

    With ``write_predictions=True`` every processed image's predicted class map (evaluated class ids, after the
    background rule) is written as a single-channel PNG — uint8 when K <= 256, else uint16 — to
    ``<output_dir>/sem_seg_predictions/<dataset_name>/<image file stem>.png`` by the process that handled it.
    """

    def __init__(
        self,
        dataset_name: str,
        distributed: bool = True,
        output_dir: Optional[str] = None,
        write_predictions: bool = False,
    ):
        """
        Args:
            dataset_name: a dataset registered in DatasetCatalog and MetadataCatalog.
            distributed: gather the confusion matrices of all processes in :meth:`evaluate`; only the main
                process then returns results.
            output_dir: where predictions are written when ``write_predictions`` is set.
            write_predictions: write one predicted label PNG per image (see the class docstring).
        """
        self._logger = logging.getLogger(__name__)
        self._dataset_name = dataset_name
        self._distributed = distributed
        meta = MetadataCatalog.get(dataset_name)
        missing = [k for k in ("stuff_classes", "ignore_label") if not hasattr(meta, k)]
        if missing:
            raise KeyError(f"metadata of dataset {dataset_name!r} lacks {missing}, needed for evaluation")
        self._class_names: List[str] = list(meta.stuff_classes)
        self._num_classes = len(self._class_names)
        self._ignore_label = int(meta.ignore_label)
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
        if write_predictions and not output_dir:
            raise ValueError("write_predictions=True needs an output_dir")
        self._prediction_dir = None
        if write_predictions:
            self._prediction_dir = os.path.join(output_dir, "sem_seg_predictions", dataset_name)
            PathManager.mkdirs(self._prediction_dir)
        self._gt_file_by_image = None  # built on first need: dataset dicts can be expensive to load
        self.reset()

    def reset(self):
        self._conf_matrix = np.zeros((self._num_classes, self._num_classes), dtype=np.int64)

    def process(self, inputs, outputs):
        """
        Args:
            inputs: dataset dicts with ``file_name`` and, ideally, ``sem_seg_file_name`` (else it is looked up in
                the registered dataset by ``file_name``, since Detectron2's test-time mapper drops it).
            outputs: dicts whose ``"sem_seg"`` is a score tensor [N_vocab, H, W] at the image's original size,
                on any device and of any floating dtype, or whose ``"sem_seg_labels"`` is the [H, W] map of
                vocabulary indices (the model's bounded-memory ``INFERENCE_OUTPUT "labels"``).

        Raises:
            ValueError: scores of the wrong shape or holding NaN, labels out of the vocabulary, or a label map
                that does not match the prediction.
        """
        for inp, out in zip(inputs, outputs):
            gt_file = self._gt_file(inp)
            if "sem_seg_labels" in out:
                pred = self._checked_labels(out["sem_seg_labels"], inp["file_name"])
            else:
                pred = self._predicted_classes(out["sem_seg"], inp["file_name"])
            gt = self._load_labels(gt_file, pred.shape)
            labelled = gt != self._ignore_label
            self._conf_matrix += np.bincount(
                gt[labelled] * self._num_classes + pred[labelled], minlength=self._conf_matrix.size
            ).reshape(self._conf_matrix.shape)
            if self._prediction_dir:
                self._write_prediction(pred, inp["file_name"])

    def evaluate(self):
        """
        Returns:
            ``{"sem_seg": {metric: value in percent}}`` (see :func:`segmentation_metrics`) on the main process;
            None on the others when distributed, as Detectron2's evaluators do.
        """
        conf_matrix = self._conf_matrix
        if self._distributed:
            comm.synchronize()
            matrices = comm.gather(self._conf_matrix, dst=0)
            if not comm.is_main_process():
                return None
            conf_matrix = np.sum(matrices, axis=0)
        res = segmentation_metrics(conf_matrix, self._class_names)
        self._logger.info(
            f"Semantic segmentation on {self._dataset_name}:\n"
            + create_small_table({k: res[k] for k in ("mIoU", "fwIoU", "mACC", "pACC")})
        )
        return OrderedDict({"sem_seg": res})

    def _gt_file(self, inp: dict) -> str:
        if "sem_seg_file_name" in inp:
            return inp["sem_seg_file_name"]
        if self._gt_file_by_image is None:
            self._gt_file_by_image = {
                d["file_name"]: d["sem_seg_file_name"] for d in DatasetCatalog.get(self._dataset_name)
            }
        if inp["file_name"] not in self._gt_file_by_image:
            raise KeyError(
                f"{inp['file_name']} has no 'sem_seg_file_name' and is not an image of dataset "
                f"{self._dataset_name!r}"
            )
        return self._gt_file_by_image[inp["file_name"]]

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
        if labels.dim() != 2 or (labels.numel() and not 0 <= int(labels.min()) <= int(labels.max()) < self._vocabulary_size):
            raise ValueError(
                f"prediction for {file_name}: expected a label map [H, W] of indices into the "
                f"{self._vocabulary_size} vocabulary names of {self._dataset_name!r}, got shape {tuple(labels.shape)}"
                + (f" with values in [{int(labels.min())}, {int(labels.max())}]" if labels.numel() else "")
            )
        return self._evaluated_classes(labels)

    def _evaluated_classes(self, pred: torch.Tensor) -> np.ndarray:
        if self._background_index is not None:
            pred = pred.clamp_max(self._background_index)
        return pred.cpu().numpy().astype(np.int64, copy=False)

    def _load_labels(self, gt_file: str, pred_shape) -> np.ndarray:
        """Reads a single-channel label map (uint8/uint16 values kept) and checks it against the prediction."""
        with PathManager.open(gt_file, "rb") as f:
            gt = np.asarray(Image.open(f))
        if gt.ndim != 2 or not np.issubdtype(gt.dtype, np.integer):
            raise ValueError(
                f"label map {gt_file}: expected a single-channel integer image of class ids, "
                f"got an array of shape {gt.shape} and dtype {gt.dtype}"
            )
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

    def _write_prediction(self, pred: np.ndarray, file_name: str):
        dtype = np.uint8 if self._num_classes <= 256 else np.uint16
        stem = os.path.splitext(os.path.basename(file_name))[0]
        with PathManager.open(os.path.join(self._prediction_dir, stem + ".png"), "wb") as f:
            Image.fromarray(pred.astype(dtype)).save(f, format="PNG")
