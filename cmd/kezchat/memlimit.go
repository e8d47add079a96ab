package main

import (
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
