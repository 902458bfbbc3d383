"""Dataset mapper for semantic segmentation: reads an image and its label map, augments them for training."""

import copy
import logging
from typing import Dict, List, Optional

import numpy as np
import torch
from detectron2.config import configurable
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T

from esc_net.data.vocabulary import get_dataset_vocabulary, shared_vocabulary
from esc_net.utils.label_maps import read_label_map

logger = logging.getLogger(__name__)


def check_input_geometry(cfg) -> None:
    """Refuses training crops that are not the CLIP input: an enabled crop must be "absolute" and
    CLIP_IMAGE_SIZE square, or every image would be resized again before CLIP.

    Raises:
        ValueError: naming both keys and their values.
    """
    size = cfg.MODEL.ESC_NET.CLIP_IMAGE_SIZE
    crop = cfg.INPUT.CROP
    if crop.ENABLED and (crop.TYPE != "absolute" or tuple(crop.SIZE) != (size, size)):
        raise ValueError(
            f"INPUT.CROP (TYPE {crop.TYPE!r}, SIZE {tuple(crop.SIZE)}) must be an 'absolute' crop of "
            f"MODEL.ESC_NET.CLIP_IMAGE_SIZE ({size}, {size}): training crops are the CLIP input"
        )


class SemanticSegmentationMapper:
    """Turns a Detectron2 dataset dict (``file_name``, ``sem_seg_file_name``) into model inputs.

    Every input carries ``vocabulary``, the class names of its dataset (the one list object, not a copy per
    image): this is how the model learns which names to score, in training and in evaluation alike.

    Training: resize the short side, crop (favouring crops not dominated by one class), SSD's colour
    augmentation (Detectron2's ``ColorAugSSDTransform``), flip, and pad image and labels to the crop size (labels
    with the ignore value) so that images smaller than the crop still batch. Output: ``image`` [3, H, W] uint8 in
    ``INPUT.FORMAT``, ``sem_seg`` [H, W] long.

    Inference: the image as read (the model resizes it itself), plus ``height``/``width``; labels are left to
    the evaluator, which reads ``sem_seg_file_name``.

    Labels are read with their own bit depth (uint8 PNG or uint16 TIFF), so ids up to 65535 survive.
    """

    @configurable
    def __init__(
        self,
        is_train: bool,
        *,
        augmentations: List[T.Augmentation],
        image_format: str,
        ignore_label: int,
        crop_size: int,
        vocabulary: Optional[List[str]] = None,
    ):
        """
        Args:
            crop_size: training images and labels smaller than this are padded to it.
            vocabulary: the class names attached to every input; training labels must be ids into it (or the
                ignore value). None: inputs carry no vocabulary (the model then refuses them).
        """
        self.is_train = is_train
        self.vocabulary = vocabulary
        self.augmentations = T.AugmentationList(augmentations)
        self.image_format = image_format
        self.ignore_label = ignore_label
        self.crop_size = crop_size

    @classmethod
    def from_config(cls, cfg, is_train: bool = True, dataset_name: Optional[str] = None) -> Dict:
        """``dataset_name``: at inference, the dataset whose vocabulary the inputs carry; in training the
        vocabulary is that of ``DATASETS.TRAIN`` (which must share one)."""
        augmentations: List[T.Augmentation] = []
        if is_train:
            check_input_geometry(cfg)
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
                # imported here: PointRend's package also registers its heads, which only training needs
                from detectron2.projects.point_rend import ColorAugSSDTransform

                augmentations.append(ColorAugSSDTransform(img_format=cfg.INPUT.FORMAT))
            augmentations.append(T.RandomFlip())
        return {
            "is_train": is_train,
            "augmentations": augmentations,
            "image_format": cfg.INPUT.FORMAT,
            "ignore_label": cfg.MODEL.ESC_NET.IGNORE_VALUE,
            "crop_size": cfg.MODEL.ESC_NET.CLIP_IMAGE_SIZE,
            "vocabulary": shared_vocabulary(cfg.DATASETS.TRAIN)
            if is_train
            else (get_dataset_vocabulary(dataset_name) if dataset_name else None),
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
        if self.vocabulary is not None:
            dataset_dict["vocabulary"] = self.vocabulary
        if not self.is_train:
            dataset_dict["image"] = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
            return dataset_dict

        label_file = dataset_dict.get("sem_seg_file_name")
        if label_file is None:
            raise KeyError(f"training image {file_name} has no 'sem_seg_file_name'")
        sem_seg = read_label_map(label_file)
        if sem_seg.shape != image.shape[:2]:
            raise ValueError(
                f"label map {label_file} is {sem_seg.shape[1]}x{sem_seg.shape[0]} but its image {file_name} is "
                f"{image.shape[1]}x{image.shape[0]} (width x height)"
            )
        if self.vocabulary is not None:
            bad = (sem_seg >= len(self.vocabulary)) & (sem_seg != self.ignore_label)
            if bad.any():
                raise ValueError(
                    f"label map {label_file} holds class ids {np.unique(sem_seg[bad])[:10].tolist()} outside "
                    f"[0, {len(self.vocabulary)}) (the training vocabulary) that are not the ignore value "
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
