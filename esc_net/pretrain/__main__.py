"""``python -m esc_net.pretrain``, the same as ``esc-net-pretrain``."""
from .cli import main

main()
