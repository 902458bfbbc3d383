#!/usr/bin/env python
"""ONNX Runtime against PyTorch on one view of the paper's model: the exported image graph (``esc-net-export``)
and ``InferenceProtocol.score_views`` as the PyTorch model runs it, timed in one run, with their ratio.

    python benchmarks/benchmark_onnx.py                                   # ViT-B/16 at 384, 20 / 150 / 847 classes
    python benchmarks/benchmark_onnx.py --classes 150 --threads 1 --repeats 3
    python benchmarks/benchmark_onnx.py --config-file configs/esc_net_tiny.yaml   # a quick look

The model has random weights (CLIP_PRETRAINED "none", a random SAM): time does not depend on them. The image graph
is exported once into a temporary folder (minutes and several GB of memory for ViT-B), with its check against
PyTorch. Then, for each thread count (default: 1 and every core) and each class count, PyTorch (the model as the
predictor builds it: CPU class chunks of ``CLASS_CHUNK``) and ONNX Runtime (CPU execution provider, the thread count
as ``intra_op_num_threads``) score the same random view and class embeddings: one warm-up call each, then
``--repeats`` calls alternating between the two, the median of each. The last column is ONNX Runtime's time
divided by PyTorch's (below 1: ONNX Runtime is faster). The scores of the two are compared too (max |diff|).
"""

import argparse
import datetime
import os
import platform
import statistics
import tempfile
import time

# isort: off
import esc_net  # noqa: F401 (first: it imports fvcore without its deprecation noise)

# isort: on
import numpy as np  # noqa: E402
import onnxruntime  # noqa: E402
import torch  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402

from esc_net.config import load_config  # noqa: E402
from esc_net.export import EXPORT_FILES, export_model  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RANDOM_WEIGHTS = ["MODEL.ESC_NET.CLIP_PRETRAINED", "none", "MODEL.ESC_NET.SAM_CHECKPOINT", ""]
RANDOM_WEIGHTS += ["MODEL.ESC_NET.ALLOW_RANDOM_SAM", "True", "MODEL.DEVICE", "cpu"]


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", default=os.path.join(ROOT, "configs", "esc_net_vitb_384.yaml"))
    parser.add_argument("--classes", type=int, nargs="+", default=[20, 150, 847])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, os.cpu_count()])
    parser.add_argument("--repeats", type=int, default=2)
    return parser.parse_args()


def _timed(run) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def main() -> None:
    args = parse_args()
    cfg = load_config(args.config_file, RANDOM_WEIGHTS)
    torch.manual_seed(0)
    model = build_model(cfg).eval()  # as the predictor runs it
    with tempfile.TemporaryDirectory() as folder:
        weights = os.path.join(folder, "model.pth")
        torch.save({"model": model.state_dict()}, weights)
        cfg.MODEL.WEIGHTS = weights
        started = time.perf_counter()
        settings = export_model(cfg, folder)
        export_seconds = time.perf_counter() - started
        graph = os.path.join(folder, EXPORT_FILES["image"])
        graph_mb = sum(os.path.getsize(os.path.join(folder, f)) for f in os.listdir(folder) if f != "model.pth") / 2**20
        print(
            f"# {datetime.date.today()}, {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
            f"torch {torch.__version__}, onnxruntime {onnxruntime.__version__}; {os.path.basename(args.config_file)}, "
            f"one {model.image_size}x{model.image_size} view, class cap {model.inference.max_classes_per_view}"
        )
        print(f"# export: {export_seconds:.0f} s, {graph_mb:.0f} MB on disk; check: {settings['verification']}")
        print("| threads | classes | PyTorch s | ONNX Runtime s | max abs diff | ONNX Runtime / PyTorch |")
        print("|---|---|---|---|---|---|")
        generator = torch.Generator().manual_seed(0)
        view = torch.randn(1, 3, model.image_size, model.image_size, generator=generator)
        for threads in args.threads:
            torch.set_num_threads(threads)
            options = onnxruntime.SessionOptions()
            options.intra_op_num_threads = threads
            session = onnxruntime.InferenceSession(graph, options, providers=["CPUExecutionProvider"])
            for count in args.classes:
                text = torch.nn.functional.normalize(torch.randn(count, settings["embedding_dim"]), dim=-1)
                feed = {"views": view.numpy(), "class_embeddings": text.numpy()}
                results = {}

                def run_torch():
                    with torch.no_grad():
                        results["torch"] = model.inference.score_views(model, view, text).numpy()

                def run_onnx():
                    results["onnx"] = session.run(None, feed)[0]

                run_torch(), run_onnx()  # warm-up
                times = {"torch": [], "onnx": []}
                for _ in range(args.repeats):
                    times["torch"].append(_timed(run_torch))
                    times["onnx"].append(_timed(run_onnx))
                t, o = statistics.median(times["torch"]), statistics.median(times["onnx"])
                diff = float(np.abs(results["torch"] - results["onnx"]).max())
                print(f"| {threads} | {count} | {t:.2f} | {o:.2f} | {diff:.1e} | {o / t:.2f} |", flush=True)


if __name__ == "__main__":
    main()
