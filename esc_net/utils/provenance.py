"""Where a written artefact came from: the command, the code's commit, the threads and torch's version (the model
zoo's manifest and the ONNX export record it)."""

import os
import subprocess
import sys
from typing import Any, Dict, Optional

import torch

__all__ = ["provenance"]


def provenance() -> Dict[str, Any]:
    """How this process was run: its command line, the project's git commit (and whether tracked files differed
    from it), torch's thread count and version."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

    def git(*args: str) -> Optional[str]:
        try:
            done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    status = git("status", "--porcelain", "--untracked-files=no")
    return {
        "command": " ".join([os.path.basename(sys.argv[0])] + sys.argv[1:]),
        "commit": git("rev-parse", "HEAD"),
        "uncommitted_changes": None if status is None else bool(status),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }
