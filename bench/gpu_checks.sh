#!/usr/bin/env bash
# Everything that needs a CUDA GPU, in one go: the extraction bench at the released sizes (random
# weights; batches of 300 s, as a GPU wants them), the `gpu` tests (the SSL teachers' batch invariance
# and bf16 among them), the teachers bench (every teacher, SSL ones at torchaudio's large sizes), then
# the decoding bench (paper-size student, greedy vs modified beam search vs CTC greedy), then the student
# bench (Zipformer vs Conformer training step at 1000 s batches). Each
# step's output is kept in OUT (default gpu-checks/) and a failing step does not stop the next one.
#
#   bash bench/gpu_checks.sh [OUT]        # PYTHON=... picks the interpreter (default python3)
#
# Needs mt2kd's dependencies importable by that interpreter; on a machine without internet, bring
# them as wheels (bash scripts/wheelhouse DEST --have FILE, on a machine with internet). mt2kd itself
# is this checkout, seen through a link called mt2kd (an installed copy lacks mt2kd.tests).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-gpu-checks}
py=${PYTHON:-python3}
mkdir -p "$out"
pkg=$(mktemp -d)
trap 'rm -rf "$pkg"' EXIT
ln -s "$PWD" "$pkg/mt2kd"
export PYTHONPATH="$pkg${PYTHONPATH:+:$PYTHONPATH}"
"$py" -c 'import mt2kd.tests, sys; print("mt2kd from", mt2kd.__file__, "on Python", sys.version.split()[0])' || exit 1
export PYTHONUNBUFFERED=1
status=0
step() {  # step NAME COMMAND...: run, keep the output in OUT/NAME.txt, remember a failure
    local name=$1; shift
    echo "== $name: $*"
    "$@" 2>&1 | tee "$out/$name.txt"
    local rc=${PIPESTATUS[0]}
    echo "== $name: exit $rc"
    [ "$rc" -eq 0 ] || status=1
}
step nvidia-smi nvidia-smi
step extract-bench "$py" bench/extract_bench.py --size large --device cuda --repeat 100 --max-duration 300 \
    --shard-hours 0.25 --workers 1,2 --decode-threads 6
step tests "$py" -m pytest -m gpu -q -p no:cacheprovider tests
step teachers-bench "$py" bench/teachers_bench.py --device cuda  # whisper, beats, ecapa, hubert, wavlm, wav2vec2, whisper-text
step decode-bench "$py" bench/decode_bench.py --device cuda
step student-bench "$py" bench/student_bench.py --device cuda
exit $status
