"""Dataset preparation: one module per dataset, run through one command.

    esc-net-prepare <dataset> [--root DIR] [options]      # or: python -m esc_net.data.prepare <dataset> ...

The datasets are ``ade20k_150``, ``ade20k_847``, ``coco_stuff``, ``pascal_context_459``, ``pascal_context_59``,
``voc`` (each converts an official download into the label maps that registration loads) and
``synthetic_shapes`` (generates the embedded default dataset). ``esc-net-prepare <dataset> --help`` lists the
options; datasets/README.md describes the downloads. The scripts ``datasets/prepare_*.py`` and
``datasets/generate_synthetic_shapes.py`` run the same commands.

Every dataset module has ``add_arguments(parser)`` and ``run(args)``, which :mod:`esc_net.data.prepare.cli`
wires into sub-commands, and a function (``prepare_voc``, ...) to call from Python. This package imports
nothing itself, so that registration can use :mod:`esc_net.data.prepare.common` without loading the converters.
"""
