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

__all__ = ["SYNONYM_MODES", "check_templates", "split_synonyms", "build_prompts", "pool_prompt_embeddings"]


def build_prompts(class_names: Sequence[str], templates: Sequence[str], synonym_mode: str) -> Tuple[List[str], Tensor]:
    """:func:`esc_net_runtime.prompts.prompt_list`: the S * T prompts, and the class index of each used synonym as
    an [S] int64 tensor."""
    prompts, owners = prompt_list(class_names, templates, synonym_mode)
    return prompts, torch.tensor(owners, dtype=torch.long)


def pool_prompt_embeddings(
    prompt_embeddings: Tensor, synonym_to_class: Tensor, num_classes: int, num_templates: int
) -> Tensor:
    """Averages prompt embeddings into class embeddings (the two steps of the module docstring).

    Args:
        prompt_embeddings: [S * T, D], in the order of :func:`build_prompts`, not necessarily normalised.
        synonym_to_class: [S] int64 class index of each synonym.
    Returns:
        [num_classes, D], L2-normalised.
    """
    dim = prompt_embeddings.shape[-1]
    per_template = F.normalize(prompt_embeddings, dim=-1).view(-1, num_templates, dim)
    synonyms = F.normalize(per_template.mean(dim=1), dim=-1)  # [S, D]
    # normalize(mean) == normalize(sum): the per-class synonym count is a positive factor that normalisation removes.
    summed = synonyms.new_zeros(num_classes, dim).index_add(0, synonym_to_class.to(synonyms.device), synonyms)
    return F.normalize(summed, dim=-1)
