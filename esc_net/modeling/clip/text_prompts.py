"""Class names -> text prompts, and prompt embeddings -> one embedding per class.

A class name may list synonyms separated by commas ("sofa, couch"). Every name used is put in every template. The
class embedding is built in two averaging steps, each over L2-normalised vectors and followed by re-normalisation:

    synonym embedding  s = normalize(mean_t normalize(text(template_t(synonym))))
    class embedding      = s of the first synonym                      (synonym_mode "first")
                           normalize(mean over the class's synonyms s)  (synonym_mode "average")
"""

from typing import List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from esc_net_runtime.prompts import SYNONYM_MODES, check_templates, prompt_list
from esc_net_runtime.vocabulary_rules import split_synonyms

__all__ = [
    "SYNONYM_MODES",
    "check_templates",
    "split_synonyms",
    "build_prompts",
    "pool_prompt_embeddings",
    "synonym_class_matrix",
]


def build_prompts(class_names: Sequence[str], templates: Sequence[str], synonym_mode: str) -> Tuple[List[str], Tensor]:
    """:func:`esc_net_runtime.prompts.prompt_list`: the S * T prompts, and the class index of each used synonym as
    an [S] int64 tensor."""
    prompts, owners = prompt_list(class_names, templates, synonym_mode)
    return prompts, torch.tensor(owners, dtype=torch.long)


def synonym_class_matrix(synonym_to_class: Tensor, num_classes: int) -> Tensor:
    """[S] class index of each used synonym -> [num_classes, S] float32, 1 where synonym s belongs to class n."""
    return F.one_hot(synonym_to_class, num_classes).T.float()


def pool_prompt_embeddings(prompt_embeddings: Tensor, synonym_classes: Tensor, num_templates: int) -> Tensor:
    """Averages prompt embeddings into class embeddings (the two steps of the module docstring).

    Args:
        prompt_embeddings: [S * T, D], in the order of :func:`build_prompts`, not necessarily normalised.
        synonym_classes: [N, S] :func:`synonym_class_matrix` (a matrix rather than an index list: the exported text
            encoder takes it as an input, and the class count stays a dimension of the graph).
    Returns:
        [N, D], L2-normalised.
    """
    per_template = F.normalize(prompt_embeddings, dim=-1).unflatten(0, (-1, num_templates))
    synonyms = F.normalize(per_template.mean(dim=1), dim=-1)  # [S, D]
    # normalize(mean) == normalize(sum): the per-class synonym count is a positive factor that normalisation removes.
    return F.normalize(synonym_classes.to(synonyms) @ synonyms, dim=-1)
