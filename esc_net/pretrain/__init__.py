"""Pre-training of the tiny CLIP and SAM of the Synthetic Shapes laboratory (``esc-net-pretrain``).

Real ESC-Net starts from CLIP, pre-trained on image-caption pairs, and from SAM, pre-trained class-agnostically on
masks. Neither can be downloaded on a machine without network access, and neither exists at the size of the tiny
configs, so the laboratory makes both, with the libraries' own model classes and losses and in the official file
formats, from images of the Synthetic Shapes world:

* :mod:`.clip`: open_clip's ``CLIP`` trained with open_clip's ``ClipLoss`` on captioned images; saved as an
  open_clip state dict, which ``MODEL.ESC_NET.CLIP_PRETRAINED`` loads as it loads real CLIP weights;
* :mod:`.sam`: segment_anything's ``Sam`` (image encoder, prompt encoder, mask decoder) trained on point, box and
  mask prompts; saved as the state dict of the whole model, the format of ``sam_vit_b_01ec64.pth``, which
  ``MODEL.ESC_NET.SAM_CHECKPOINT`` loads.
"""
