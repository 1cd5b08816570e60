#!/usr/bin/env python3
"""Write a demo portrait JPEG (scikit-image's astronaut photo) for the quick start's curl."""
from __future__ import annotations

import sys
from pathlib import Path

from PIL import Image
from skimage import data


def main(path: str) -> None:
    """Write the photo to ``path`` unless it is already there."""
    target = Path(path)
    if target.exists():
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(data.astronaut()).resize((1024, 1024), Image.Resampling.LANCZOS)
    image.save(target, "JPEG", quality=92)


if __name__ == "__main__":
    main(sys.argv[1])
