"""Installs the ESC-Net Detectron2 plugin (package ``esc_net``).

This file is the project's packaging entry point and the only source of its metadata (``pyproject.toml`` only names
the build system). ``install_requires`` lists what ``esc_net`` itself imports, with the lowest release that has each
API the code calls. Detectron2 is not listed: its authors do not publish it on PyPI, so it is installed beside this
package (``scripts/setup_env.sh``, or from source as the README's "Install" section describes), and its own
requirements come with it.
"""

from setuptools import find_packages, setup

PREP = [
    # esc_net/data/prepare/pascal_context_459.py reads the PASCAL-Context .mat label files (scipy.io.loadmat).
    "scipy",
    # esc_net/data/prepare/pascal_context_59.py decodes the COCO-style RLE masks (pycocotools.mask).
    "pycocotools",
]
# Exporting ESC-Net to ONNX (esc-net-export) and running the export without PyTorch (esc_net_runtime). Each floor
# is the oldest release with which tests/test_runtime_predictor.py (an exported tiny ESC-Net against PyTorch) and
# tests/test_runtime_tokenizer.py pass (2026-12-07, torch 2.14.1, Python 3.11).
DEPLOY = [
    # The exported graphs (IR version 10, opset 20): 1.17 reads no IR version 10, and 1.18 and 1.19 have no kernel
    # for one of the image graph's ArgMax nodes.
    "onnxruntime>=1.20.1",
    # torch.onnx.export(dynamo=True) writes the graphs with onnx and onnxscript. PyTorch 2.11+ imports onnxscript's
    # _framework_apis.torch_2_11 (from 0.6.0), and before 0.7.2 an index_put of the image graph becomes a Where node
    # that ONNX Runtime refuses at run time (a broadcast of 0 by 4); onnxscript 0.7 needs onnx 1.17.
    "onnx>=1.17",
    "onnxscript>=0.7.2",
    # esc_net_runtime.tokenizer's normaliser, pre-tokeniser, BPE model and post-processor (0.13.2 is the oldest
    # release with wheels for Python 3.11, the only one tried).
    "tokenizers>=0.13.2",
]
# The Gradio page (esc-net-web-demo, demo/app.py). 6.0 moved ``theme`` from ``gr.Blocks`` to ``launch()``, where
# esc_net.demo.web passes it.
WEB = ["gradio>=6.0"]

setup(
    name="esc_net",
    version="0.1.0",
    description="ESC-Net (Effective SAM Combination) for open-vocabulary semantic segmentation, as a Detectron2 plugin",
    license="MIT",
    packages=find_packages(include=["esc_net", "esc_net.*", "esc_net_runtime", "esc_net_runtime.*"]),
    package_data={"esc_net.data.class_names": ["*.txt"]},
    python_requires=">=3.9",
    install_requires=[
        # Security floor: every torch.load passes weights_only=True, and before 2.10 that unpickler could still be
        # made to run code (CVE-2025-32434, fixed in 2.6; CVE-2026-24747, fixed in 2.10). It also covers the APIs
        # the code calls: torch.load(weights_only=) (1.13), F.scaled_dot_product_attention (2.0) and
        # load_state_dict(assign=True) (2.1).
        "torch>=2.10",
        # numpy.random.default_rng (the synthetic-shapes dataset) appeared in 1.17.
        "numpy>=1.17",
        # 3.0 added create_model(pretrained_text=...), which esc_net.modeling.clip.build passes; the other calls are
        # older (VisionTransformer.forward_intermediates: 2.32, load_checkpoint(weights_only=): 2.27).
        "open_clip_torch>=3.0",
        # PromptEncoder, TwoWayTransformer and LayerNorm2d; 1.0 is the only release on PyPI.
        "segment-anything>=1.0",
        # The VLF block's Swin blocks: 0.9.6 made SwinTransformerBlock clamp the window to the grid per axis (the
        # window_size / shift_size tuples the block relies on); timm.layers, [B, H, W, C] blocks and
        # WindowAttention.fused_attn are from 0.9.0. (open_clip 3.0 itself asks for timm>=1.0.17.)
        "timm>=0.9.6",
        # safetensors.SafetensorError (esc_net.utils.checkpoint) is exported at the package's top level from 0.3.0.
        "safetensors>=0.3.0",
        # Figure(layout="constrained") and the matplotlib.colormaps registry (charts, prompt pictures) are from 3.5.
        "matplotlib>=3.5",
        # No floor: imread/imwrite, resize, fillPoly, circle, erode/dilate, applyColorMap with COLORMAP_VIRIDIS and
        # addWeighted are all in the oldest headless release on PyPI (3.4.10), and still in 5.0's bindings.
        "opencv-python-headless",
        # The demos check every JPEG with libjpeg-turbo in strict mode before OpenCV decodes it (OpenCV fills in a
        # damaged file silently): decode_jpeg(strict=...) appeared in 1.7.
        "simplejpeg>=1.7",
        # No floor for these: esc_net calls long-standing APIs (fvcore.nn.jit_handles.get_shape is in every fvcore
        # release on PyPI; tabulate's "pipe" format; tqdm's iterator).
        "fvcore",
        "tabulate",
        "tqdm",
        # Image.open(formats=...), which the demos use to read an image's header before decoding it, is from 8.0.
        "Pillow>=8.0",
    ],
    extras_require={
        # Dataset preparation (datasets/*.py, esc-net-prepare) beyond the core requirements.
        "prep": PREP,
        # The web demo; "demo" and "web" are the same (the command-line demo needs only the core requirements).
        "demo": WEB,
        "web": WEB,
        # ONNX export and the torch-free runtime (pip install 'esc_net[deploy]').
        "deploy": DEPLOY,
        # The test suite: the runner, what the tests import, and the extras whose code they exercise. The browser
        # test also needs Debian's chromium and chromium-driver (.ci/run installs them); without them it is skipped.
        "test": [
            "pytest>=7",  # the suite runs with 7.0 (importorskip(reason=), tmp_path_factory, monkeypatch)
            # HealthCheck.function_scoped_fixture (tests/test_predictor_properties.py) appeared in 5.49.
            "hypothesis>=5.49",
            # lint and format (pyproject.toml's [tool.ruff]; .ci/run checks both), pinned: formatting differs between
            # releases, and the check must pass on every machine alike
            "ruff==0.17.6",
            "PyYAML",  # tests/conftest.py reads the tiny config
            "tensorboard",  # tests/test_prompt_vis.py reads the event files
            "huggingface_hub",  # tests/test_clip_encoder.py checks the offline hub settings
            # gradio_client.handle_file (tests/test_web_demo.py) appeared in 1.0.
            "gradio_client>=1.0",
            "httpx",
            # webdriver.Chrome(service=Service(...)) and find_element(By...) are Selenium 4 APIs.
            "selenium>=4",
            *PREP,
            *WEB,
            *DEPLOY,
        ],
    },
    entry_points={
        "console_scripts": [
            # Detectron2's default training arguments (--config-file, --num-gpus, --eval-only, ...).
            "esc-net-train=esc_net.engine:main",
            "esc-net-prepare=esc_net.data.prepare.cli:main",
            "esc-net-demo=esc_net.demo.cli:main",
            "esc-net-web-demo=esc_net.demo.web:main",
            # the laboratory's tiny CLIP and SAM (esc_net.pretrain)
            "esc-net-pretrain=esc_net.pretrain.cli:main",
            # ONNX graphs and settings for esc_net_runtime.ONNXPredictor (esc_net.export)
            "esc-net-export=esc_net.export:main",
        ],
    },
)
