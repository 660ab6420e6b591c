"""A held-out check from images that no split of ``dpe.data`` uses: does a model generalise?

    python benchmarks/heldout.py build --downloads DIR --out data/heldout
    python -m dpe.evaluate --images data/heldout --methods identity,autocontrast,dpe-g --seeds 0,1,2

The test split shares sources (patients, phantoms, slides) with the training split, so it
flatters a model that learned the look of its sources. These images come from files that no
source in ``dpe/data.py`` reads. ``build`` writes 8-bit grayscale PNGs in three groups:

- ``ct``: the abdominal stent CT volume that Debian's ``python3-imageio`` ships
  (``imageio/resources/images/stent.npz``, 256x128x128, values 0-2000), 4 axial slices 32 apart,
  each in a wide window (0.5-99.5% of the volume) and a narrow one (the volume's 25-95% of
  non-zero values), upscaled 2x to 256² (Lanczos);
- ``mri``: a brain MR slice from Debian's ``python3-guiqwt`` (``tests/brain.png``, 256²; its
  ``mr-brain.dcm`` decodes to an offset, noisy array and is left out), the coronal T1 slice of
  the ``dipy`` wheel (``dipy/data/files/t1_coronal_slice.npy``, 256²) and 3 slices (one per
  axis) of the MNI152 2009a T1 template in the ``nilearn`` wheel, centre-cropped to 176²;
- ``mri-raw``: the same five MR slices as their packages store them, not windowed: the guiqwt
  PNG as it is (its brain reaches 0.51 at the 99.5th percentile), the dipy slice's own values
  (already 0-1, one bright outlier: 99.5% at 0.85) and the MNI slices over 255 (the template is
  stored 0-255; its top at 0.88-0.94). A clean image that does not reach white is common (an
  export scaled to a volume's maximum, an 8-bit PNG from a viewer) and is the opposite case to
  ``mri``: an enhancer that always stretches to white is right on one and wrong on the other;
- ``fundus``: scikit-image's ``microaneurysms.png`` (102², gray), upscaled 2x.

Each image but ``mri-raw``'s is windowed to [0, 1] from its own percentiles, as ``dpe.data``
does for raw intensities.
``--downloads`` is a folder where the three packages were unpacked (the script says how to get
them when a file is missing); nothing is fetched at run time. No fluorescence image outside the
data build was found in a registry package (``stardist``'s ``img3d.tif`` is 31x61x57).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image

FILES = {
    "stent": "usr/lib/python3/dist-packages/imageio/resources/images/stent.npz",
    "guiqwt_brain": "usr/lib/python3/dist-packages/guiqwt/tests/brain.png",
    "dipy_t1": "dipy/data/files/t1_coronal_slice.npy",
    "mni_t1": "nilearn/datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
}
HOWTO = """\
mkdir -p DIR && cd DIR
apt-get download python3-imageio python3-guiqwt
for f in *.deb; do dpkg-deb -x "$f" .; done
pip download --no-deps nilearn==0.14.1 dipy==1.12.1
unzip -o nilearn-*.whl 'nilearn/datasets/data/mni*'
unzip -o dipy-*.whl dipy/data/files/t1_coronal_slice.npy"""


def window(a: np.ndarray, lo: float, hi: float) -> np.ndarray:
    return np.clip((a.astype(np.float64) - lo) / max(hi - lo, 1e-9), 0.0, 1.0)


def save(a01: np.ndarray, path: Path, scale: int = 1) -> None:
    img = Image.fromarray(np.round(a01 * 255).astype(np.uint8))
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.Resampling.LANCZOS)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)


def build(downloads: Path, out: Path) -> int:
    import nibabel
    import skimage

    missing = [f for f in FILES.values() if not (downloads / f).is_file()]
    if missing:
        print(f"missing under {downloads}: {missing}\nget them with:\n{HOWTO}", file=sys.stderr)
        return 2
    n = 0
    vol = np.load(downloads / FILES["stent"])["arr_0"]
    wide = np.percentile(vol, [0.5, 99.5])
    narrow = np.percentile(vol[vol > 0], [25, 95])
    for z in (64, 96, 128, 160):
        for name, (lo, hi) in (("wide", wide), ("narrow", narrow)):
            save(window(vol[z], lo, hi), out / "ct" / f"stent_z{z:03d}_{name}.png", scale=2)
            n += 1

    mr = np.asarray(Image.open(downloads / FILES["guiqwt_brain"]).convert("L"), dtype=np.float64)
    save(window(mr, *np.percentile(mr, [0.5, 99.5])), out / "mri" / "guiqwt_brain.png")
    save(mr / 255, out / "mri-raw" / "guiqwt_brain.png")
    n += 2
    t1 = np.load(downloads / FILES["dipy_t1"])
    save(window(t1, *np.percentile(t1, [0.5, 99.5])), out / "mri" / "dipy_t1_coronal.png")
    save(np.clip(t1, 0.0, 1.0), out / "mri-raw" / "dipy_t1_coronal.png")
    n += 2
    mni = np.asarray(nibabel.load(downloads / FILES["mni_t1"]).dataobj, dtype=np.float64)
    lo, hi = np.percentile(mni, [0.5, 99.5])
    cx, cy, cz = (s // 2 for s in mni.shape)
    views = {"axial": mni[:, :, cz + 10].T, "coronal": mni[:, cy, :].T, "sagittal": mni[cx - 20].T}
    for name, sl in views.items():
        sl = sl[::-1]  # superior / anterior up
        h, w = sl.shape
        r, c = max(0, (h - 176) // 2), max(0, (w - 176) // 2)
        sl = sl[r : r + 176, c : c + 176]
        save(window(sl, lo, hi), out / "mri" / f"mni_t1_{name}.png")
        save(sl / 255, out / "mri-raw" / f"mni_t1_{name}.png")  # stored 0-255
        n += 2

    ma = skimage.io.imread(Path(skimage.data.__file__).parent / "microaneurysms.png")
    save(ma / 255.0, out / "fundus" / "microaneurysms.png", scale=2)
    n += 1
    print(f"{n} images -> {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="write the held-out PNGs")
    b.add_argument("--downloads", type=Path, required=True)
    b.add_argument("--out", type=Path, default=Path("data/heldout"))
    args = parser.parse_args(argv)
    return build(args.downloads, args.out)


if __name__ == "__main__":
    sys.exit(main())
