"""ESC-Net."""
