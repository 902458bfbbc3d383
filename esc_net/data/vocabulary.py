"""The class names a model scores for a registered dataset (its open vocabulary), and the model's default
vocabularies read from a config's datasets."""

from typing import List, Optional, Sequence, Tuple, Union

from detectron2.config import CfgNode
from detectron2.data import MetadataCatalog

from esc_net_runtime.vocabulary_rules import check_vocabulary


def get_dataset_vocabulary(dataset_name: str) -> List[str]:
    """The names the model scores for ``dataset_name``: its metadata ``vocabulary``, else ``stuff_classes``.

    The two differ only where the evaluation protocol scores more names than it evaluates (PAS-20b scores the
    PASCAL-Context classes too and counts them as background).
    """
    meta = MetadataCatalog.get(dataset_name)
    names = meta.get("vocabulary", None) or meta.get("stuff_classes", None)
    if not names:
        raise KeyError(
            f"dataset {dataset_name!r} has no 'vocabulary' or 'stuff_classes' metadata: is it registered? "
            "(importing esc_net registers the benchmarks; see datasets/README.md)"
        )
    return list(names)


def resolve_vocabulary(source: Union[str, Sequence[str]]) -> List[str]:
    """The class names ``source`` stands for: a string names a registered dataset (:func:`get_dataset_vocabulary`),
    a list holds the names themselves (checked by :func:`check_vocabulary`)."""
    if isinstance(source, str):
        return get_dataset_vocabulary(source)
    return check_vocabulary(source)


def default_vocabulary_source(cfg) -> Tuple[Optional[Union[str, List[str]]], str]:
    """What the model's default vocabulary comes from (``MODEL.ESC_NET.VOCABULARY``, else ``DATASETS.TEST[0]``),
    and the config key that names it: ``(None, "")`` when neither does."""
    source = cfg.MODEL.ESC_NET.VOCABULARY
    if source:
        return source, "MODEL.ESC_NET.VOCABULARY"
    if cfg.DATASETS.TEST:
        return cfg.DATASETS.TEST[0], "DATASETS.TEST[0]"
    return None, ""


def resolve_vocabularies(cfg: CfgNode) -> CfgNode:
    """A copy of ``cfg`` whose ``MODEL.ESC_NET.VOCABULARY`` and ``TRAIN_VOCABULARY`` hold class names: the names
    they list, the vocabulary of the dataset they name, or, when None, that of ``DATASETS.TEST[0]`` and the one
    shared by ``DATASETS.TRAIN`` (None when those are empty). The model takes names and reads no catalog: call this
    where the config is read, after registering the datasets (train_net.py and ``ESCNetPredictor`` do; so should
    code that hands the config to Detectron2's ``DefaultPredictor`` or ``DefaultTrainer``).

    Raises:
        KeyError: naming the key whose dataset is not registered.
        ValueError: ``DATASETS.TRAIN``'s datasets have different vocabularies, or a listed vocabulary is not valid.
    """
    resolved = cfg.clone()
    resolved.defrost()
    m = resolved.MODEL.ESC_NET
    source, key = default_vocabulary_source(cfg)
    try:
        m.VOCABULARY = resolve_vocabulary(source) if source else None
        if m.TRAIN_VOCABULARY:
            key = "MODEL.ESC_NET.TRAIN_VOCABULARY"
            m.TRAIN_VOCABULARY = resolve_vocabulary(m.TRAIN_VOCABULARY)
        else:
            key = "DATASETS.TRAIN"
            m.TRAIN_VOCABULARY = shared_vocabulary(cfg.DATASETS.TRAIN)
    except KeyError as error:
        raise KeyError(f"{key}: {error.args[0]}") from error
    if cfg.is_frozen():
        resolved.freeze()
    return resolved


def shared_vocabulary(dataset_names: Sequence[str]) -> Optional[List[str]]:
    """The one vocabulary of ``dataset_names`` (None for no dataset); a model trains on one vocabulary at a time.

    Raises:
        ValueError: the datasets have different vocabularies.
    """
    vocabularies = {tuple(get_dataset_vocabulary(name)) for name in dataset_names}
    if len(vocabularies) > 1:
        raise ValueError(
            f"the datasets {list(dataset_names)} have different vocabularies; ESC-Net trains on one vocabulary at a "
            "time"
        )
    return list(vocabularies.pop()) if vocabularies else None
