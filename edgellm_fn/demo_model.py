"""Where the packaged demo model lives (trained by ``examples/train_demo_model.py``)."""

from __future__ import annotations

from pathlib import Path


def demo_model_dir() -> Path:
    """The Hugging Face checkpoint directory of the embedded demo model.

    Raises:
      FileNotFoundError: the package was installed without its data files.
    """
    path = Path(__file__).resolve().parent / "assets" / "demo_model"
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"{path}: demo model missing (expected config.json there); the package data were not "
            "installed, or run examples/train_demo_model.py --out <dir> to train one"
        )
    return path
