"""``python -m esc_net.pretrain``, the same as ``esc-net-pretrain``."""

from esc_net.pretrain.cli import main

main()
