"""``python -m esc_net.data.prepare <dataset> ...``: the same command as ``esc-net-prepare``."""

from esc_net.data.prepare.cli import main

if __name__ == "__main__":
    main()
