#!/usr/bin/env bash
# The four studies at a small size, for checking that a change moves no number:
#   bash benchmarks/small_studies.sh OUT [BASELINE]
# runs leaf, layer-transfer, targeted-face and adversarial-regularisation into OUT/<study> and,
# with BASELINE (the OUT of the same script on an earlier commit), compares each study's
# results.json digit for digit with benchmarks/compare_leaf_results.py. About 10-20 minutes on
# two CPU cores. Run from the repository root after `source scripts/setup.sh`.
set -euo pipefail
out=$1
baseline=${2:-}
mkdir -p "$out"
run() {
    local study=$1
    shift
    robustlab run "$study" --out "$out/$study" "$@" > "$out/$study.log" 2>&1
    echo "$study: done"
}
run leaf --set data.limit=300 --set 'models.*.epochs=2' --set 'curves.*.eps=[0.03]'
run layer-transfer --set data.limit=300 --set 'blocks=[2,9]' --set epochs=1
run targeted-face --set attack.settings.iterations=50 --set sweep.limit=20
run adversarial-regularisation --set data.limit=600 --set 'models.*.epochs=2' --set limit=50
if [ -n "$baseline" ]; then
    for study in leaf layer-transfer targeted-face adversarial-regularisation; do
        echo -n "$study: "
        python benchmarks/compare_leaf_results.py "$out/$study" "$baseline/$study"
    done
fi
