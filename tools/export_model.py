#!/usr/bin/env python
"""ESC-Net as ONNX graphs for ONNX Runtime: the same command as ``esc-net-export`` (see :mod:`esc_net.export`).

    # the laboratory's trained default
    python tools/export_model.py --config-file configs/esc_net_tiny_shapes.yaml --output output/onnx_tiny_shapes \\
        --opts MODEL.WEIGHTS output/esc_net_tiny_shapes/model_final.pth
    # the paper's ViT-B/16 model (a few minutes and about 7 GB of memory)
    python tools/export_model.py --config-file configs/esc_net_vitb_384.yaml --output output/onnx_vitb \\
        --opts MODEL.WEIGHTS model_final.pth
"""

# isort: off
import esc_net  # noqa: F401 (first: it imports fvcore without its deprecation noise)

# isort: on
from esc_net.export import main  # noqa: E402

if __name__ == "__main__":
    main()
