#!/usr/bin/env python
"""``python demo/demo.py ...``: the ``esc-net-demo`` command, kept at its documented path.

The code lives in :mod:`esc_net.demo.cli`; ``python demo/demo.py --help`` lists the options.
"""

from typing import Optional, Sequence

from esc_net.demo.cli import *  # noqa: F401,F403  (the names this file used to define)
from esc_net.demo.cli import main as _main


def main(argv: Optional[Sequence[str]] = None) -> None:
    _main(argv, prog="demo.py")


if __name__ == "__main__":
    main()
