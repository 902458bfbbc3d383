"""Multi-process training on the CPU (Detectron2's launch with gloo): two processes with one image each take the
same optimizer steps as one process with both images, and two single-process "machines" on localhost train
together and write one checkpoint."""

import os
import subprocess
import sys

import cv2
import pytest
import torch

from conftest import RANDOM_BACKBONES, REPO_ROOT, free_port
from esc_net import engine
from esc_net.data.synthetic_shapes import generate_synthetic_shapes, split_dirs
from esc_net.utils.checkpoint import read_checkpoint_file

pytestmark = pytest.mark.slow  # starts process groups

CONFIG = os.path.join(REPO_ROOT, "configs", "esc_net_tiny_shapes.yaml")


@pytest.fixture(scope="module")
def two_images(tmp_path_factory):
    """Two 64x64 training images whose pixels all carry a label, mirrored left-right so that the mapper's random
    flip (the only random augmentation left) changes nothing: every run sees exactly the same two inputs."""
    root = str(tmp_path_factory.mktemp("datasets"))
    generate_synthetic_shapes(root, num_train=2, num_val=1, image_size=64, ignore_band=0)
    for folder in split_dirs(root, "train"):
        for name in os.listdir(folder):
            path = os.path.join(folder, name)
            array = cv2.imread(path, cv2.IMREAD_UNCHANGED)
            array[:, 32:] = array[:, :32][:, ::-1]
            cv2.imwrite(path, array)
    return root


def _opts(output_dir):
    # IMS_PER_BATCH is the total over all processes: 2 images per step in every run. SGD, because AdamW divides
    # by the root of the squared gradients, which turns float rounding in near-zero gradients into full steps.
    return [
        *RANDOM_BACKBONES,
        "OUTPUT_DIR",
        str(output_dir),
        "SOLVER.MAX_ITER",
        "2",
        "SOLVER.CHECKPOINT_PERIOD",
        "1000",
        "SOLVER.OPTIMIZER",
        "SGD",
        "SOLVER.BASE_LR",
        "0.01",
        "SOLVER.IMS_PER_BATCH",
        "2",
        "INPUT.COLOR_AUG_SSD",
        "False",
        "DATASETS.TEST",
        "()",
        "SEED",
        "7",
    ]


def _run(argv, datasets):
    # No GPU even where there is one: the point is gloo and DDP on CPU modules.
    env = dict(os.environ, DETECTRON2_DATASETS=datasets, CUDA_VISIBLE_DEVICES="")
    return subprocess.Popen(
        [sys.executable, os.path.join(REPO_ROOT, "train_net.py"), "--config-file", CONFIG, *argv],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _finish(process):
    output, _ = process.communicate(timeout=400)
    assert process.returncode == 0, output[-4000:]


def _weights(output_dir):
    return read_checkpoint_file(os.path.join(output_dir, "model_final.pth"))["model"]


def _assert_same_weights(got, expected):
    assert got.keys() == expected.keys()
    for name, value in expected.items():
        torch.testing.assert_close(got[name], value, rtol=0, atol=1e-5, msg=lambda m: f"{name}: {m}")


def test_two_cpu_processes_take_the_steps_of_one_process_with_both_images(two_images, tmp_path, monkeypatch):
    monkeypatch.setenv("DETECTRON2_DATASETS", two_images)
    single = tmp_path / "single"
    args = engine.default_argument_parser().parse_args(["--config-file", CONFIG, *_opts(single)])
    engine.run(args)
    expected = _weights(str(single))

    double = tmp_path / "double"
    port = free_port()
    _finish(
        _run(
            ["--num-gpus", "2", "--dist-url", f"tcp://127.0.0.1:{port}", *_opts(double), "MODEL.DEVICE", "cpu"],
            two_images,
        )
    )
    _assert_same_weights(_weights(str(double)), expected)

    # The same steps on two single-process "machines" that meet over TCP on localhost. Each machine has its
    # own output folder, as separate machines would: only the first (global rank 0) writes checkpoints.
    port = free_port()
    machines = [
        _run(
            [
                "--num-gpus",
                "1",
                "--num-machines",
                "2",
                "--machine-rank",
                str(rank),
                "--dist-url",
                f"tcp://127.0.0.1:{port}",
                *_opts(tmp_path / f"machine{rank}"),
            ],
            two_images,
        )
        for rank in range(2)
    ]
    for process in machines:
        _finish(process)
    assert [f for f in os.listdir(tmp_path / "machine0") if f.endswith(".pth")] == ["model_final.pth"]
    machine1 = tmp_path / "machine1"
    assert not (machine1.exists() and [f for f in os.listdir(machine1) if f.endswith(".pth")])
    _assert_same_weights(_weights(str(tmp_path / "machine0")), expected)
