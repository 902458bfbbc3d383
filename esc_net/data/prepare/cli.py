"""The dataset preparation command, ``esc-net-prepare <dataset> [--root DIR] [options]``.

Each sub-command prepares one dataset under the dataset root (``--root``, else ``$DETECTRON2_DATASETS``, else
``./datasets``); ``esc-net-prepare <dataset> --help`` describes its input, output and options.
"""

import argparse
import logging
import sys
from types import ModuleType
from typing import Any, Optional, Sequence

from esc_net.data.prepare import (
    ade20k_150,
    ade20k_847,
    coco_stuff,
    pascal_context_59,
    pascal_context_459,
    synthetic_shapes,
    voc,
)

__all__ = ["COMMANDS", "PROG", "build_parser", "main", "prepare"]

PROG = "esc-net-prepare"
# Sub-command -> module with add_arguments(parser) and run(args); the module's docstring is the command's help.
COMMANDS = {
    "ade20k_150": ade20k_150,
    "ade20k_847": ade20k_847,
    "coco_stuff": coco_stuff,
    "pascal_context_59": pascal_context_59,
    "pascal_context_459": pascal_context_459,
    "voc": voc,
    "synthetic_shapes": synthetic_shapes,
}


def _configure(parser: argparse.ArgumentParser, module: ModuleType) -> None:
    parser.add_argument("--root", default=None, help="dataset root (default: $DETECTRON2_DATASETS, else ./datasets)")
    module.add_arguments(parser)
    parser.set_defaults(run=module.run)


def build_parser(dataset: Optional[str] = None) -> argparse.ArgumentParser:
    """The parser of ``esc-net-prepare`` (one sub-command per dataset), or, given ``dataset``, the parser of that
    dataset's command alone (named after the running script, as ``datasets/prepare_*.py`` use it)."""
    formatter = argparse.RawDescriptionHelpFormatter
    if dataset is not None:
        if dataset not in COMMANDS:
            raise ValueError(f"unknown dataset {dataset!r}; choose one of {sorted(COMMANDS)}")
        parser = argparse.ArgumentParser(description=COMMANDS[dataset].__doc__, formatter_class=formatter)
        _configure(parser, COMMANDS[dataset])
        return parser
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=formatter)
    commands = parser.add_subparsers(dest="dataset", metavar="DATASET", required=True)
    for name, module in COMMANDS.items():
        summary = module.__doc__.strip().splitlines()[0]
        command = commands.add_parser(name, help=summary, description=module.__doc__, formatter_class=formatter)
        _configure(command, module)
    return parser


def prepare(argv: Optional[Sequence[str]] = None, dataset: Optional[str] = None) -> Any:
    """Parses the command line ``argv`` (default ``sys.argv[1:]``) and prepares the dataset it names.

    Returns what the dataset's ``run`` returns: the written/skipped counts of the conversion (a dict of them per
    split for ``coco_stuff``), or the dataset folder for ``synthetic_shapes``.
    """
    args = build_parser(dataset).parse_args(argv)
    return args.run(args)


def main(argv: Optional[Sequence[str]] = None, dataset: Optional[str] = None) -> None:
    """The console entry point: :func:`prepare` with progress logged at INFO level.

    A missing or inconsistent input (FileNotFoundError, FileExistsError, ValueError, whose messages name the file
    and its download) ends the process with the message and exit status 1 instead of a traceback.
    """
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        prepare(argv, dataset)
    except (FileNotFoundError, FileExistsError, ValueError) as error:
        sys.exit(f"error: {error}")
