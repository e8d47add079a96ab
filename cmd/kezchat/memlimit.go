package main

import (
	"math"
	"os"
	"runtime/debug"
	"strconv"
	"strings"
)

// cgroupMemoryFiles hold the container's memory limit: cgroup v2's, then
// v1's.
var cgroupMemoryFiles = []string{"/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"}

// limitMemoryToContainer sets the Go runtime's soft memory limit to 90%
// of the container's (its cgroup's memory limit), unless GOMEMLIMIT sets
// one: the garbage collector then works harder near the limit instead of
// letting the heap double past it and the kernel kill the pod. A daemon
// outside a limited cgroup keeps the runtime's default (no limit).
func limitMemoryToContainer(readFile func(string) ([]byte, error)) {
	if os.Getenv("GOMEMLIMIT") != "" {
		return
	}
	if limit, ok := cgroupMemoryLimit(readFile); ok {
		debug.SetMemoryLimit(limit / 10 * 9)
	}
}

// cgroupMemoryLimit is the first limit the cgroup files state; none for
// "max" (v2's no limit) or v1's page-counter maximum.
func cgroupMemoryLimit(readFile func(string) ([]byte, error)) (int64, bool) {
	for _, f := range cgroupMemoryFiles {
		b, err := readFile(f)
		if err != nil {
			continue
		}
		v, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
		// v1 states no limit as a huge page-aligned number.
		if err != nil || v <= 0 || v >= 1<<62 {
			return 0, false
		}
		return v, true
	}
	return 0, false
}

// serverGCPercent is the chat server's garbage collection target when a
// memory limit bounds its heap and GOGC sets none. The server's live heap
// is small (tens of MiB at 1,000 streams) and every message leaves a few
// KiB of garbage, so with Go's default of 100 it collected about once per
// doubling of very little: 400 took a tenth off the server's CPU per
// message under load (docs/benchmarks.md). The limit, not GOGC, then
// bounds the heap: near it the collector runs as often as it must.
const serverGCPercent = 400

// paceGCUnderLimit sets the GC target to percent when a memory limit is in
// effect (GOMEMLIMIT, or the container's from limitMemoryToContainer) and
// GOGC sets none; without a limit a higher target would let the heap grow
// unbounded by anything, so the default stays. It reports whether it set
// the target.
func paceGCUnderLimit(percent int) bool {
	if os.Getenv("GOGC") != "" {
		return false
	}
	if debug.SetMemoryLimit(-1) == math.MaxInt64 { // -1 reads the limit
		return false
	}
	debug.SetGCPercent(percent)
	return true
}
