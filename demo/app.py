#!/usr/bin/env python
"""``python demo/app.py ...``: the ``esc-net-web-demo`` command (a Gradio page), kept at its documented path.

The code lives in :mod:`esc_net.demo.web`; ``python demo/app.py --help`` lists the options.
"""

from typing import Optional, Sequence

from esc_net.demo.web import main as _main


def main(argv: Optional[Sequence[str]] = None) -> None:
    _main(argv, prog="app.py")


if __name__ == "__main__":
    main()
