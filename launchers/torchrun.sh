#!/usr/bin/env bash
# Every GPU of this node (or NPROC CPU ranks where there is none), Hydra overrides passed through.
# Run: launchers/torchrun.sh model=resnet56 data=synthetic grid.resolution=[51,51]
#      NPROC=2 launchers/torchrun.sh          # two gloo ranks on CPU
set -euo pipefail
if [ -z "${NPROC:-}" ]; then
  NPROC=$(python -c "import torch; print(torch.cuda.device_count())")
  if [ "$NPROC" = "0" ]; then NPROC=$(( $(nproc) > 1 ? $(nproc) / 2 : 1 )); fi
fi
exec torchrun --standalone --nproc_per_node="$NPROC" -m engine.sweep "$@"
