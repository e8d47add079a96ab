#!/usr/bin/env bash
# hack/fuzz.sh TARGET PACKAGE FUZZTIME: `make fuzz`'s run of one fuzz target.
#
# Go 1.26's fuzzing coordinator can stop a -fuzztime run with "context
# deadline exceeded" when a worker is mid-input as the time runs out, with
# no failing input found (golang/go#75804, fixed in Go 1.27). Such a run is
# repeated once; a run that wrote a failing input, or failed any other way,
# fails at once.
set -u
target=$1 pkg=$2 fuzztime=$3
corpus="$pkg/testdata/fuzz/$target"
for attempt in 1 2; do
	before=$(ls "$corpus" 2>/dev/null | wc -l)
	out=$(${GO:-go} test -run='^$' -fuzz="^$target\$" -fuzztime="$fuzztime" "$pkg" 2>&1)
	rc=$?
	printf '%s\n' "$out"
	[ "$rc" -eq 0 ] && exit 0
	after=$(ls "$corpus" 2>/dev/null | wc -l)
	if [ "$after" -ne "$before" ] || ! grep -q '^    context deadline exceeded$' <<<"$out"; then
		exit "$rc"
	fi
	echo "fuzz: $target ended on Go's fuzztime race (golang/go#75804), no failing input written (attempt $attempt)" >&2
done
exit 1
