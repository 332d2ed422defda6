#!/usr/bin/env bash
# fio-compare.sh: proof that `raftline bench fsync` measures the truth. For each of its two 4 KiB
# steps it runs fio's equivalent job on the same directory right before and right after our
# measurement of that step, and prints the p50 fdatasync latencies side by side with the ratio
# (target: within ±30% on a quiet machine):
#   buffered:  fio --rw=write --ioengine=sync --fdatasync=1 --bs=4k
#   fast path: fio --rw=write --ioengine=io_uring --direct=1 --iodepth=1 --fdatasync=1 --bs=4k
# Both sides write a fresh file fallocate'd to --size (fio does fallocate(fd, 0, 0, size) too) and
# fdatasync after every 4 KiB write. Ours is the library step `raftline bench fsync` runs
# (example fdatasync_probe = measure_fdatasync); then the whole command runs once, to show its tables.
# The disk is shared and noisy: ROUNDS repeats the fio/ours/fio triple and the median ratio counts.
#
#   usage: bench/fio-compare.sh [DIR]       (default DIR: /tmp/raftline-fio-compare, on the ext4 disk)
#   env:   RUNTIME=5 (seconds per job)  ROUNDS=3  SIZE_MIB=256
#          PREFIX="chrt -f 20" runs fio and ours alike under that prefix (e.g. real-time priority,
#          to keep other tenants' compiles from adding scheduler delay to every fdatasync wake-up)
# Needs fio and python3 (apt-get install -y fio). Scratch files are removed at the end.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
DIR=${1:-/tmp/raftline-fio-compare}
RUNTIME=${RUNTIME:-5}
ROUNDS=${ROUNDS:-3}
read -r -a PREFIX_CMD <<< "${PREFIX:-}"
SIZE_MIB=${SIZE_MIB:-256}
for t in fio python3 cargo; do
  command -v "$t" >/dev/null || { echo "missing $t: apt-get install -y fio" >&2; exit 1; }
done
TARGET=${CARGO_TARGET_DIR:-$HERE/../target}
# Two builds: a target filter (--example) would otherwise apply to both packages and skip the binary.
(cd "$HERE/.." && cargo build --release --quiet -p raftline-tools && \
  cargo build --release --quiet -p raftline-bench --example fdatasync_probe)
PROBE="$TARGET/release/examples/fdatasync_probe"
RAFTLINE="$TARGET/release/raftline"
CREATED_DIR=""
[ -d "$DIR" ] || { mkdir -p "$DIR"; CREATED_DIR=1; }
TMP=$(mktemp -d)
cleanup() {
  rm -f "$DIR"/fiocmp.* ; rm -rf "$TMP"
  if [ -n "$CREATED_DIR" ]; then rmdir "$DIR" 2>/dev/null || true; fi
}
trap cleanup EXIT

idle() { # machine idle % over 1 s: other load on these cores skews every figure
  python3 - <<'PY'
import time
def s():
    v=list(map(int,open('/proc/stat').readline().split()[1:])); return sum(v), v[3]+v[4]
a=s(); time.sleep(1); b=s(); print("%.0f" % (100.0*(b[1]-a[1])/max(1,b[0]-a[0])))
PY
}

# fio_p50 OUT fio-args... ; writes fio's p50 fdatasync latency (µs) to OUT
fio_p50() {
  local out=$1; shift
  timeout $((RUNTIME + 60)) ${PREFIX_CMD[@]+"${PREFIX_CMD[@]}"} fio --output-format=json --output="$TMP/fio.json" --name=fiocmp \
    --directory="$DIR" --rw=write --bs=4k --fdatasync=1 --size="${SIZE_MIB}m" --runtime="$RUNTIME" "$@" >/dev/null
  rm -f "$DIR"/fiocmp.*
  python3 -c 'import json,sys; print("%.1f" % (json.load(open(sys.argv[1]))["jobs"][0]["sync"]["lat_ns"]["percentile"]["50.000000"] / 1e3))' \
    "$TMP/fio.json" > "$out"
}

ours_p50() { # ours_p50 OUT PATH
  ${PREFIX_CMD[@]+"${PREFIX_CMD[@]}"} "$PROBE" "$DIR" "$2" "$RUNTIME" "$SIZE_MIB" > "$TMP/ours.json"
  python3 -c 'import json,sys; m=json.load(open(sys.argv[1])); print("%.1f" % m["fdatasync"]["us_p50"])' "$TMP/ours.json" > "$1"
}

echo "dir $DIR, ${RUNTIME}s per job, $ROUNDS rounds, prefix '${PREFIX:-}', machine idle before: $(idle)%"
echo "fio: $(fio --version)"
printf '%-10s %-6s %12s %12s %12s %8s\n' "job" "round" "fio before" "raftline" "fio after" "ratio"
for job in buffered direct-uring; do
  if [ "$job" = buffered ]; then FIO_ARGS=(--ioengine=sync); else FIO_ARGS=(--ioengine=io_uring --direct=1 --iodepth=1); fi
  for round in $(seq 1 "$ROUNDS"); do
    fio_p50 "$TMP/before" "${FIO_ARGS[@]}"
    ours_p50 "$TMP/ours" "$job"
    fio_p50 "$TMP/after" "${FIO_ARGS[@]}"
    python3 - "$job" "$round" "$TMP" >> "$TMP/rows" <<'PY'
import sys
job, rnd, tmp = sys.argv[1:4]
b, o, a = (float(open("%s/%s" % (tmp, n)).read()) for n in ("before", "ours", "after"))
print("%s %s %.1f %.1f %.1f %.3f" % (job, rnd, b, o, a, o / ((b + a) / 2.0)))
PY
    tail -1 "$TMP/rows" | awk '{printf "%-10s %-6s %12s %12s %12s %8s\n", $1, $2, $3, $4, $5, $6}'
  done
done
echo "machine idle after: $(idle)%"
python3 - "$TMP/rows" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
for job in ("buffered", "direct-uring"):
    rs = sorted(float(r[5]) for r in rows if r[0] == job)
    fio = statistics.median(float(x) for r in rows if r[0] == job for x in (r[2], r[4]))
    ours = statistics.median(float(r[3]) for r in rows if r[0] == job)
    m = statistics.median(rs)
    agree = lambda r: "agree (within ±30%)" if 0.7 <= r <= 1.3 else "DISAGREE (outside ±30%)"
    print("%-12s p50 fdatasync: fio median %.1f µs, raftline median %.1f µs: ratio of medians %.2f -> %s;"
          " median of round ratios %.2f -> %s" % (job, fio, ours, ours / fio, agree(ours / fio), m, agree(m)))
print("round ratio = raftline / mean(fio right before, fio right after); on a bimodal (busy) disk the")
print("round ratios scatter when before/after land in different modes, the ratio of medians does not")
PY
echo
echo "the whole command once, for its tables: $RAFTLINE bench fsync --dir $DIR --duration $RUNTIME --size $SIZE_MIB"
"$RAFTLINE" bench fsync --dir "$DIR" --duration "$RUNTIME" --size "$SIZE_MIB" || [ $? -eq 2 ]
