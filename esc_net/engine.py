"""The training and evaluation engine: Detectron2's trainer with ESC-Net's data, optimizer, checkpointer and
multi-benchmark evaluation, and the command line of ``train_net.py`` / ``esc-net-train``:

    python train_net.py --config-file configs/esc_net_vitb_384.yaml --num-gpus 4
    python train_net.py --config-file configs/esc_net_vitb_384.yaml --eval-only MODEL.WEIGHTS model.pth
    python train_net.py --config-file configs/esc_net_tiny.yaml MODEL.DEVICE cpu
    python train_net.py --config-file configs/esc_net_tiny.yaml --num-gpus 2 MODEL.DEVICE cpu   # 2 CPU processes

``--eval-only`` evaluates every dataset of ``DATASETS.TEST`` in this one process (each dataset's inputs carry
its own vocabulary; the model is not changed), then prints one table (benchmark x mIoU) and writes it as JSON and
CSV in OUTPUT_DIR.
"""

import logging
import os
import weakref
from collections import OrderedDict

import torch
from detectron2.data import build_detection_test_loader, build_detection_train_loader
from detectron2.engine import (
    AMPTrainer,
    DefaultTrainer,
    SimpleTrainer,
    TrainerBase,
    create_ddp_model,
    default_argument_parser,
    default_setup,
    launch,
)
from detectron2.evaluation import inference_on_dataset, print_csv_format
from detectron2.utils import comm
from detectron2.utils.events import CommonMetricPrinter, JSONWriter, TensorboardXWriter, get_event_storage
from detectron2.utils.file_io import PathManager
from detectron2.utils.logger import setup_logger

from esc_net.config import load_config
from esc_net.data import SemanticSegmentationMapper, get_dataset_vocabulary, resolve_vocabularies
from esc_net.data.dataset_mapper import check_input_geometry
from esc_net.data.datasets import incomplete_datasets_allowed
from esc_net.evaluation import OpenVocabSemSegEvaluator, summarize_benchmarks
from esc_net.solver import build_optimizer
from esc_net.utils.arguments import check_choice
from esc_net.utils.checkpoint import ESCNetCheckpointer, check_weights_fit

# The precisions of SOLVER.AMP.PRECISION: names of torch dtypes.
AMP_PRECISIONS = ("float16", "bfloat16")


class MetricsJSONWriter(JSONWriter):
    """Detectron2's ``JSONWriter`` (a JSON line of scalars per iteration, appended to ``metrics.json``) that creates
    the file with its first line: Detectron2's opens it when the trainer is built, so a run that was killed or
    refused before its first write left an empty ``metrics.json`` behind."""

    def __init__(self, json_file: str, window_size: int = 20):
        # JSONWriter.__init__ would open the file now; the state it sets up is otherwise the same.
        self._json_file = json_file
        self._file_handle = None
        self._window_size = window_size
        self._last_write = -1

    def write(self):
        if self._file_handle is None:
            if not get_event_storage().latest():
                return  # nothing to write yet
            self._file_handle = PathManager.open(self._json_file, "a")
        super().write()

    def close(self):
        if self._file_handle is not None:
            super().close()


class Trainer(DefaultTrainer):
    """Detectron2's trainer with ESC-Net's data mapper, optimizer, AMP precision, multi-benchmark evaluation,
    checkpointer (:class:`ESCNetCheckpointer`: atomic saves, resuming past damaged files), and DDP on CPUs."""

    def __init__(self, cfg):
        check_training_config(cfg)
        # DefaultTrainer.__init__ is not called: it wraps the model in DistributedDataParallel with
        # device_ids=[local rank], which DDP refuses for a CPU module (`--num-gpus 2 MODEL.DEVICE cpu`), and it
        # builds Detectron2's own checkpointer. The steps are otherwise the same.
        TrainerBase.__init__(self)
        cfg = self.auto_scale_workers(cfg, comm.get_world_size())
        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)
        if comm.get_world_size() > 1:
            # Detectron2 seeds every rank differently, and DDP with broadcast_buffers=False (Detectron2's setting)
            # does not synchronise buffers at start: randomly initialised buffers (SAM's positional-encoding matrix
            # when no SAM_CHECKPOINT is given) would differ between ranks. Rank 0's are the ones checkpointed.
            for buffer in model.buffers():
                torch.distributed.broadcast(buffer, src=0)
        device_ids = [comm.get_local_rank()] if next(model.parameters()).device.type == "cuda" else None
        model = create_ddp_model(model, broadcast_buffers=False, device_ids=device_ids)
        if cfg.SOLVER.AMP.ENABLED:
            precision = getattr(torch, cfg.SOLVER.AMP.PRECISION)  # "float16" or "bfloat16" (checked above)
            self._trainer = AMPTrainer(model, data_loader, optimizer, precision=precision)
        else:
            self._trainer = SimpleTrainer(model, data_loader, optimizer)
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = ESCNetCheckpointer(model, cfg.OUTPUT_DIR, trainer=weakref.proxy(self))
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

    def resume_or_load(self, resume=True):
        """Resumes from the newest readable checkpoint of OUTPUT_DIR (``resume``), else loads MODEL.WEIGHTS."""
        self.checkpointer.resume_or_load(self.cfg.MODEL.WEIGHTS, resume=resume)
        if self.checkpointer.resumed_from:
            self.start_iter = self.iter + 1

    def train(self):
        resumed = self.checkpointer.resumed_from
        if resumed and self.start_iter >= self.max_iter and os.path.basename(resumed) != "model_final.pth":
            # The last iteration's checkpoint was saved but the run died before model_final.pth was: training is
            # complete and the loop below will not run again, so write the final checkpoint now.
            self.checkpointer.save("model_final", iteration=self.iter)
        return super().train()

    @classmethod
    def build_model(cls, cfg):
        """Detectron2's model of ``cfg``, whose default vocabularies (``MODEL.ESC_NET.VOCABULARY``,
        ``TRAIN_VOCABULARY``) are read from the datasets the config names and handed to the model as names.

        Raises:
            KeyError: naming the key of a vocabulary whose dataset is not registered.
        """
        return super().build_model(resolve_vocabularies(cfg))

    def build_writers(self):
        """Detectron2's writers (``default_writers``), with :class:`MetricsJSONWriter` for ``metrics.json``."""
        return [
            CommonMetricPrinter(self.max_iter),
            MetricsJSONWriter(os.path.join(self.cfg.OUTPUT_DIR, "metrics.json")),
            TensorboardXWriter(self.cfg.OUTPUT_DIR),
        ]

    # Each builder below loads its dataset's records, where an incomplete dataset is refused unless
    # DATASETS.ALLOW_INCOMPLETE says otherwise.

    @classmethod
    def build_train_loader(cls, cfg):
        with incomplete_datasets_allowed(cfg.DATASETS.ALLOW_INCOMPLETE):
            return build_detection_train_loader(cfg, mapper=SemanticSegmentationMapper(cfg, is_train=True))

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        """Inputs carry ``dataset_name``'s vocabulary (PAS-20b's scored names included)."""
        mapper = SemanticSegmentationMapper(cfg, is_train=False, dataset_name=dataset_name)
        with incomplete_datasets_allowed(cfg.DATASETS.ALLOW_INCOMPLETE):
            return build_detection_test_loader(cfg, dataset_name, mapper=mapper)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name):
        """The open-vocabulary evaluator; it writes no files (the benchmark table goes to OUTPUT_DIR)."""
        with incomplete_datasets_allowed(cfg.DATASETS.ALLOW_INCOMPLETE):
            return OpenVocabSemSegEvaluator(dataset_name, distributed=True)

    @classmethod
    def build_optimizer(cls, cfg, model):
        return build_optimizer(cfg, model)

    @classmethod
    def test(cls, cfg, model, evaluators=None):
        """Evaluates every dataset of ``DATASETS.TEST`` with its own vocabulary (carried by the test loader's
        inputs); returns {dataset: results}."""
        logger = logging.getLogger("detectron2")
        net = model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model
        results = OrderedDict()
        for i, dataset_name in enumerate(cfg.DATASETS.TEST):
            net.check_vocabulary(get_dataset_vocabulary(dataset_name))  # warns once about names cut by the tokenizer
            evaluator = evaluators[i] if evaluators is not None else cls.build_evaluator(cfg, dataset_name)
            data_loader = cls.build_test_loader(cfg, dataset_name)
            results[dataset_name] = inference_on_dataset(model, data_loader, evaluator)
            if comm.is_main_process():
                logger.info(f"Evaluation results for {dataset_name} in csv format:")
                print_csv_format(results[dataset_name])
        sem_seg_results = {name: r for name, r in results.items() if r and "sem_seg" in r}
        if comm.is_main_process() and sem_seg_results:
            summarize_benchmarks(sem_seg_results, cfg.OUTPUT_DIR)  # logs the table, writes JSON and CSV
        return results


def check_training_config(cfg) -> None:
    """The trainer's own keys, checked before anything is built: ``SOLVER.AMP.PRECISION``, the source of SAM's
    weights (:func:`check_sam_source`) and the crop geometry (the dataset mapper's
    :func:`~esc_net.data.dataset_mapper.check_input_geometry`). The model's keys are checked by the modules that
    read them, when the model is built.

    Raises:
        ValueError: naming the key, its value and what it may be.
    """
    check_choice("SOLVER.AMP.PRECISION", cfg.SOLVER.AMP.PRECISION, AMP_PRECISIONS)
    check_sam_source(cfg)
    check_input_geometry(cfg)


def check_sam_source(cfg) -> None:
    """Refuses to train an ESC-Net whose SAM blocks would start from random weights.

    The SAM weights come from ``MODEL.ESC_NET.SAM_CHECKPOINT`` or, when fine-tuning or resuming, from
    ``MODEL.WEIGHTS``; ``MODEL.ESC_NET.ALLOW_RANDOM_SAM`` opts out (tiny configs, the random-SAM ablation).

    Raises:
        ValueError: naming the key to set and where the official checkpoint comes from.
    """
    from esc_net.modeling.sam_checkpoint import SAM_CHECKPOINT_SOURCE

    m = cfg.MODEL.ESC_NET
    if not m.USE_SAM_BLOCK or m.SAM_CHECKPOINT or cfg.MODEL.WEIGHTS or m.ALLOW_RANDOM_SAM:
        return
    raise ValueError(
        "MODEL.ESC_NET.SAM_CHECKPOINT is empty: training would start the SAM blocks from random weights, which "
        "the paper's ablation shows to be far worse. Pass MODEL.ESC_NET.SAM_CHECKPOINT "
        f"/path/to/sam_vit_b_01ec64.pth ({SAM_CHECKPOINT_SOURCE}), or set MODEL.ESC_NET.ALLOW_RANDOM_SAM True to "
        "train from random SAM weights on purpose."
    )


def setup(args):
    """The frozen config of ``args`` (Detectron2's default arguments), with logging set up in OUTPUT_DIR.

    Raises:
        ConfigFileError: the config file (or a ``_BASE_`` of it) is unsafe, not YAML, or does not fit, or an
            override does not.
    """
    cfg = load_config(args.config_file, args.opts)  # YAML's safe loader, _BASE_ files included
    cfg.freeze()
    default_setup(cfg, args)
    setup_logger(output=cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="esc_net")
    return cfg


def run(args):
    """Trains, or with ``--eval-only`` evaluates, in one process of a (possibly distributed) launch."""
    cfg = setup(args)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        checkpointer = ESCNetCheckpointer(model, save_dir=cfg.OUTPUT_DIR)
        checkpointer.resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        if checkpointer.incompatible is not None:  # something was loaded: it must fit
            check_weights_fit(checkpointer.incompatible, checkpointer.resumed_from or cfg.MODEL.WEIGHTS)
        else:
            logging.getLogger("detectron2").warning("evaluating without MODEL.WEIGHTS: the new modules are random")
        return Trainer.test(cfg, model)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


def main(argv=None):
    """The command line: Detectron2's default arguments (``--config-file``, ``--num-gpus``, ``--eval-only``, ...).

    A config that is refused (an unsafe or unreadable file, an unknown key, for training a value
    :func:`check_training_config` does not accept) ends the command with ``"<prog>: error: <message>"`` (status 1),
    as the demos do, before any process starts. The model's keys are refused when the model is built."""
    parser = default_argument_parser()
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config_file, args.opts)
        if not args.eval_only:
            check_training_config(cfg)
    except ValueError as e:  # ConfigFileError and check_training_config's refusals name the file or the key
        raise SystemExit(f"{parser.prog}: error: {e}") from e
    return launch(
        run,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )
