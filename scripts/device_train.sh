#!/usr/bin/env bash
# Train on the GPU machine the `device` tool lends: join the parts scripts/device_pack.sh made
# (carried over the previous calls), then run python -m dpe.train on CUDA for MINUTES; the
# exported weights (fp16, only when validation improves) and the log land in $OUT.
# Usage (there): bash scripts/device_train.sh MINUTES [python -m dpe.train flags ...]
# DEVICE (default cuda) and WORKERS (batch-making processes, default 12) may be set.
set -euo pipefail
minutes=${1:?usage: scripts/device_train.sh MINUTES [dpe.train flags]}
shift
out=${OUT:-out/device}
mkdir -p "$out"
if [ ! -f data/manifest.csv ]; then
    cat .gpu/part-* | xz -d | tar -x  # fails loudly if a part is missing or cut short
fi
if [ -d .gpu/wheels ] && [ ! -d .gpu/site/pydicom ]; then
    python3 -m pip install -q --no-index --no-deps --target .gpu/site .gpu/wheels/*.whl
fi
export PYTHONPATH="$PWD/.gpu/site:$PWD" PYTHONUNBUFFERED=1
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
python3 -m dpe.train --device "${DEVICE:-cuda}" --loader-workers "${WORKERS:-12}" --threads 2 \
    --minutes "$minutes" --checkpoint-dir /tmp/ckpt --out-dir "$out" "$@" 2>&1 | tee "$out/train.log"
