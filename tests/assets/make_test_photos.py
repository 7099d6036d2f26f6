"""Write the real test photos in tests/gt_qualitative/ (run once; the images are committed).

The photos are scikit-image's bundled sample images (`skimage.data`, public domain or CC0, see
skimage/data/README.txt), downscaled so that the short side is 256 px and saved as small files. The aspect
ratios are kept, so the center crop of the evaluation transform has work to do.

Our folder is `tests/gt_qualitative/`; the official repository spells its demo folder `tests/gt_qualitiative/`
(sic). As in the official README, `--data-path tests/` finds the photos because they sit in a sub-folder.

Usage: python tests/assets/make_test_photos.py
"""
from __future__ import annotations

from pathlib import Path

from PIL import Image
from skimage import data

OUT_DIR = Path(__file__).resolve().parents[1] / "gt_qualitative"
SHORT_SIDE = 256
# name -> skimage loader (original width x height); one PNG and three JPEGs so both decoders are exercised.
PHOTOS = {
    "astronaut.png": data.astronaut,  # 512 x 512
    "chelsea.jpg": data.chelsea,  # 451 x 300
    "coffee.jpg": data.coffee,  # 600 x 400
    "rocket.jpg": data.rocket,  # 640 x 427
}


def main() -> None:
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    for name, loader in PHOTOS.items():
        image = Image.fromarray(loader()).convert("RGB")
        scale = SHORT_SIDE / min(image.size)
        image = image.resize((round(image.width * scale), round(image.height * scale)), resample=Image.BICUBIC)
        options = {"quality": 90} if name.endswith(".jpg") else {"optimize": True}
        image.save(OUT_DIR / name, **options)
        print(f"wrote {OUT_DIR / name} {image.size}")


if __name__ == "__main__":
    main()
