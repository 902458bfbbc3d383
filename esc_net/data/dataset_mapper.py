"""Dataset mapper for semantic segmentation: reads an image and its label map, augments them for training."""
import copy
import logging
from typing import Dict, List, Optional

import numpy as np
import torch
from detectron2.config import configurable
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T

from .vocabulary import get_dataset_vocabulary

logger = logging.getLogger(__name__)


def build_color_augmentation() -> List[T.Augmentation]:
    """Photometric jitter (brightness, contrast, saturation), each applied with probability 1/2."""
    return [
        T.RandomApply(T.RandomBrightness(0.875, 1.125)),
        T.RandomApply(T.RandomContrast(0.5, 1.5)),
        T.RandomApply(T.RandomSaturation(0.5, 1.5)),
    ]


class SemanticSegmentationMapper:
    """Turns a Detectron2 dataset dict (``file_name``, ``sem_seg_file_name``) into model inputs.

    Training: resize the short side, crop (favouring crops not dominated by one class), colour jitter, flip, and
    pad image and labels to the crop size (labels with the ignore value) so that images smaller than the crop
    still batch. Output: ``image`` [3, H, W] uint8 in ``INPUT.FORMAT``, ``sem_seg`` [H, W] long.

    Inference: the image as read (the model resizes it itself), plus ``height``/``width``; labels are left to
    the evaluator, which reads ``sem_seg_file_name``.

    Labels are read with their own bit depth (uint8 PNG or uint16 TIFF), so ids up to 65535 survive.
    """

    @configurable
    def __init__(self, is_train: bool, *, augmentations: List[T.Augmentation], image_format: str,
                 ignore_label: int, crop_size: int, num_classes: Optional[int] = None):
        """
        Args:
            num_classes: training labels must be below this (or the ignore value); None: not checked.
        """
        self.is_train = is_train
        self.num_classes = num_classes
        self.augmentations = T.AugmentationList(augmentations)
        self.image_format = image_format
        self.ignore_label = ignore_label
        self.crop_size = crop_size

    @classmethod
    def from_config(cls, cfg, is_train: bool = True) -> Dict:
        augmentations: List[T.Augmentation] = []
        if is_train:
            augmentations.append(
                T.ResizeShortestEdge(
                    cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN, cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING
                )
            )
            if cfg.INPUT.CROP.ENABLED:
                augmentations.append(
                    T.RandomCrop_CategoryAreaConstraint(
                        cfg.INPUT.CROP.TYPE,
                        cfg.INPUT.CROP.SIZE,
                        cfg.INPUT.CROP.SINGLE_CATEGORY_MAX_AREA,
                        cfg.MODEL.ESC_NET.IGNORE_VALUE,
                    )
                )
            if cfg.INPUT.COLOR_AUG_SSD:
                augmentations.extend(build_color_augmentation())
            augmentations.append(T.RandomFlip())
        return {
            "is_train": is_train,
            "augmentations": augmentations,
            "image_format": cfg.INPUT.FORMAT,
            "ignore_label": cfg.MODEL.ESC_NET.IGNORE_VALUE,
            "crop_size": cfg.INPUT.SIZE_DIVISIBILITY,
            # the training vocabulary's size (the model checks that the training datasets share one vocabulary)
            "num_classes": len(get_dataset_vocabulary(cfg.DATASETS.TRAIN[0])) if is_train and cfg.DATASETS.TRAIN else None,
        }

    def __call__(self, dataset_dict: Dict) -> Dict:
        dataset_dict = copy.deepcopy(dataset_dict)
        file_name = dataset_dict["file_name"]
        try:
            image = utils.read_image(file_name, format=self.image_format)
        except Exception as e:
            raise IOError(f"cannot read image {file_name}: {e}") from e
        utils.check_image_size(dataset_dict, image)
        dataset_dict.setdefault("height", image.shape[0])
        dataset_dict.setdefault("width", image.shape[1])
        if not self.is_train:
            dataset_dict["image"] = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
            return dataset_dict

        label_file = dataset_dict.get("sem_seg_file_name")
        if label_file is None:
            raise KeyError(f"training image {file_name} has no 'sem_seg_file_name'")
        try:
            sem_seg = utils.read_image(label_file)
        except Exception as e:
            raise IOError(f"cannot read label map {label_file}: {e}") from e
        if sem_seg.ndim != 2:
            raise ValueError(f"label map {label_file} has shape {sem_seg.shape}; a single-channel map is expected")
        if sem_seg.shape != image.shape[:2]:
            raise ValueError(
                f"label map {label_file} is {sem_seg.shape[1]}x{sem_seg.shape[0]} but its image {file_name} is "
                f"{image.shape[1]}x{image.shape[0]} (width x height)"
            )
        if self.num_classes is not None:
            bad = (sem_seg >= self.num_classes) & (sem_seg != self.ignore_label)
            if bad.any():
                raise ValueError(
                    f"label map {label_file} holds class ids {np.unique(sem_seg[bad])[:10].tolist()} outside "
                    f"[0, {self.num_classes}) (the training vocabulary) that are not the ignore value "
                    f"{self.ignore_label}"
                )
        if sem_seg.dtype != np.uint8:
            # Detectron2 resizes non-uint8 label maps with torch, which has no nearest resize for integer types;
            # float32 holds every id up to 65535 exactly.
            sem_seg = sem_seg.astype(np.float32)
        aug_input = T.AugInput(image, sem_seg=sem_seg)
        self.augmentations(aug_input)
        image, sem_seg = aug_input.image, aug_input.sem_seg
        image, sem_seg = self._pad_to_crop(image, sem_seg)
        dataset_dict["image"] = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        dataset_dict["sem_seg"] = torch.as_tensor(sem_seg.astype(np.int64))
        return dataset_dict

    def _pad_to_crop(self, image: np.ndarray, sem_seg: np.ndarray):
        pad_h = max(self.crop_size - image.shape[0], 0)
        pad_w = max(self.crop_size - image.shape[1], 0)
        if pad_h or pad_w:
            image = np.pad(image, ((0, pad_h), (0, pad_w), (0, 0)), constant_values=0)
            sem_seg = np.pad(sem_seg, ((0, pad_h), (0, pad_w)), constant_values=self.ignore_label)
        return image, sem_seg
