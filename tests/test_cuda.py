"""ESC-Net on a CUDA GPU: the same scores as on the CPU, bfloat16 autocast in inference and training, and
Detectron2's AMP trainer. Skipped where no GPU is present (the CPU suite covers the rest)."""

import copy

import pytest
import torch
from detectron2.engine import AMPTrainer, SimpleTrainer
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from conftest import tiny_cfg
from esc_net.solver import build_optimizer

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

VOCABULARY = ["red circle", "blue square", "grass", "sky", "road", "person"]


def _inputs(count=2, seed=0, labels=False):
    g = torch.Generator().manual_seed(seed)
    inputs = []
    for _ in range(count):
        x = {
            "image": torch.randint(0, 256, (3, 64, 64), dtype=torch.uint8, generator=g),
            "height": 48,
            "width": 80,
            "vocabulary": VOCABULARY,
        }
        if labels:
            x["sem_seg"] = torch.randint(0, len(VOCABULARY), (64, 64), generator=g)
        inputs.append(x)
    return inputs


@pytest.fixture(scope="module")
def cpu_model():
    torch.manual_seed(0)
    return build_model(tiny_cfg()).eval()


@pytest.fixture(scope="module")
def cuda_model(cpu_model):
    return copy.deepcopy(cpu_model).to("cuda")


@pytest.mark.parametrize("mode", ["whole", "sliding"])
def test_cuda_scores_match_cpu(cpu_model, cuda_model, mode):
    cpu_model.inference = cpu_model.inference.replace(mode=mode)
    cuda_model.inference = cuda_model.inference.replace(mode=mode)
    inputs = _inputs()
    cpu = [o["sem_seg"] for o in cpu_model(inputs)]
    gpu = [o["sem_seg"] for o in cuda_model(inputs)]
    for a, b in zip(cpu, gpu):
        assert b.device.type == "cuda" and b.shape == (len(VOCABULARY), 48, 80)
        # TF32 convolutions (cuDNN's default) shift scores a little, which can move a pseudo point or flip a
        # near-tie: small differences are allowed, different maps are not.
        assert (a.argmax(0) == b.cpu().argmax(0)).float().mean() > 0.95
        assert (a - b.cpu()).abs().mean() < 1e-2


def test_bfloat16_autocast_inference(cuda_model):
    cuda_model.inference = cuda_model.inference.replace(mode="sliding")
    inputs = _inputs(seed=1)
    full = [o["sem_seg"] for o in cuda_model(inputs)]
    with torch.autocast("cuda", dtype=torch.bfloat16):
        half = [o["sem_seg"] for o in cuda_model(inputs)]
    for a, b in zip(full, half):
        assert torch.isfinite(b).all() and b.shape == a.shape
        diff = (a - b.float()).abs().mean()
        assert diff < 0.05, f"mean |float32 - bfloat16| score difference {diff:.3f}"
        # A random model scores many classes almost alike, so near-ties flip; where float32's winner is clearest
        # (the quarter of pixels with the largest top-1 / top-2 margin), bfloat16 mostly picks the same class
        # (89% on an H100; a broken bfloat16 path agrees on about 1 pixel in 6).
        top2 = a.topk(2, dim=0).values
        margin = top2[0] - top2[1]
        clear = margin >= margin.flatten().quantile(0.75)
        agreement = (a.argmax(0) == b.argmax(0))[clear].float().mean()
        assert agreement > 0.75, f"bfloat16 agrees with float32 on {agreement:.1%} of the clearest pixels"


def test_bfloat16_autocast_with_class_cap(cuda_model):
    previous = cuda_model.inference
    cuda_model.inference = previous.replace(mode="sliding", max_classes_per_view=3)
    try:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            outputs = cuda_model(_inputs(seed=3))
    finally:
        cuda_model.inference = previous
    assert all(o["sem_seg"].shape == (len(VOCABULARY), 48, 80) and torch.isfinite(o["sem_seg"]).all() for o in outputs)


def test_bfloat16_autocast_training_step():
    torch.manual_seed(0)
    model = build_model(tiny_cfg("MODEL.DEVICE", "cuda", "MODEL.ESC_NET.BLOCK_LOSS_WEIGHT", 0.4)).train()
    optimizer = build_optimizer(tiny_cfg(), model)
    batch = _inputs(count=4, labels=True)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        losses = model(batch)
    assert set(losses) == {"loss_sem_seg", "loss_block0", "loss_block1"}
    loss = sum(losses.values())
    assert torch.isfinite(loss) and loss.dtype == torch.float32
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    optimizer.step()


def _train(make_trainer, steps=30):
    """Loss on a fixed batch before and after ``steps`` steps of ``trainer_cls`` from the same initial weights."""
    torch.manual_seed(0)
    model = build_model(tiny_cfg("MODEL.DEVICE", "cuda")).train()
    batch = _inputs(count=4, labels=True, seed=2)
    trainer = make_trainer(model, [batch] * steps, build_optimizer(tiny_cfg(), model))

    def loss():
        with torch.no_grad():
            return float(sum(model(batch).values()))

    first = loss()
    with EventStorage():
        for step in range(steps):
            trainer.iter = step
            trainer.run_step()
    return first, loss()


@pytest.mark.parametrize("precision", [torch.float16, torch.bfloat16])
def test_detectron2_amp_trainer_trains_like_float32(precision):
    """SOLVER.AMP.ENABLED makes DefaultTrainer use AMPTrainer (SOLVER.AMP.PRECISION, with a gradient scaler). The
    full-model gradient clipping inside our optimizer must see unscaled gradients, or AMP would train differently."""
    fp32_first, fp32_last = _train(SimpleTrainer)
    amp_first, amp_last = _train(lambda *args: AMPTrainer(*args, precision=precision))
    assert amp_first == pytest.approx(fp32_first, rel=1e-3)
    assert fp32_last < 0.95 * fp32_first and amp_last < 0.95 * amp_first
    assert amp_last == pytest.approx(fp32_last, rel=0.1)
