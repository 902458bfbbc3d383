"""Installs the ESC-Net Detectron2 plugin (package ``esc_net``)."""
from setuptools import find_packages, setup

setup(
    name="esc_net",
    version="0.1.0",
    description="ESC-Net (Effective SAM Combination) for open-vocabulary semantic segmentation, "
    "as a Detectron2 plugin",
    packages=find_packages(include=["esc_net", "esc_net.*"]),
    package_data={"esc_net.data.class_names": ["*.txt"]},
    python_requires=">=3.9",
    install_requires=[
        # Every torch.load passes weights_only=True; before 2.10 that unpickler could still be made to run code
        # (CVE-2025-32434, fixed in 2.6; CVE-2026-24747, fixed in 2.10).
        "torch>=2.10",
        "torchvision",
        "open_clip_torch>=2.20",
        "segment-anything>=1.0",
        "timm>=0.9",
        "safetensors",
        "opencv-python-headless>=4.5,<5",
        "pycocotools",
        "scipy",
        "tqdm",
        "Pillow",
        # detectron2's runtime requirements (our setup script installs detectron2's files without them)
        "numpy<2",
        "fvcore<0.1.6",
        "iopath<0.1.10",
        "omegaconf>=2.1,<2.4",
        "hydra-core>=1.1",
        "yacs>=0.1.8",
        "termcolor>=1.1",
        "tabulate",
        "cloudpickle",
        "tensorboard",
        "black",
        "packaging",
        "matplotlib",
    ],
    extras_require={
        # the web demo (demo/app.py)
        "web": ["gradio>=5"],
        # the test suite; its browser test also needs Debian's chromium and chromium-driver (.ci/run installs them)
        "test": ["pytest>=7", "pytest-timeout", "hypothesis>=6", "gradio>=5", "gradio_client", "httpx", "selenium>=4"],
    },
)
