package main

import (
	"io/fs"
	"math"
	"runtime/debug"
	"testing"
)

func TestCgroupMemoryLimitIsReadFromV2ThenV1(t *testing.T) {
	tests := []struct {
		name  string
		files map[string]string
		want  int64
		ok    bool
	}{
		{"v2 limit", map[string]string{"/sys/fs/cgroup/memory.max": "268435456\n"}, 268435456, true},
		{"v2 no limit", map[string]string{"/sys/fs/cgroup/memory.max": "max\n"}, 0, false},
		{"v1 limit", map[string]string{"/sys/fs/cgroup/memory/memory.limit_in_bytes": "536870912\n"}, 536870912, true},
		{"v1 no limit", map[string]string{"/sys/fs/cgroup/memory/memory.limit_in_bytes": "9223372036854771712\n"}, 0, false},
		{"no cgroup files", map[string]string{}, 0, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			read := func(name string) ([]byte, error) {
				if s, ok := tc.files[name]; ok {
					return []byte(s), nil
				}
				return nil, fs.ErrNotExist
			}
			got, ok := cgroupMemoryLimit(read)
			if got != tc.want || ok != tc.ok {
				t.Errorf("cgroupMemoryLimit = %d, %v; want %d, %v", got, ok, tc.want, tc.ok)
			}
		})
	}
}

func TestServerGCIsPacedHigherOnlyUnderAMemoryLimitAndWithoutGOGC(t *testing.T) {
	prevLimit, prevPercent := debug.SetMemoryLimit(-1), debug.SetGCPercent(100)
	t.Cleanup(func() { debug.SetMemoryLimit(prevLimit); debug.SetGCPercent(prevPercent) })
	for _, tc := range []struct {
		name  string
		gogc  string
		limit int64
		want  int
	}{
		{"a limit, no GOGC", "", 256 << 20, 400},
		{"no limit", "", math.MaxInt64, 100},
		{"GOGC set", "150", 256 << 20, 100},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("GOGC", tc.gogc)
			debug.SetMemoryLimit(tc.limit)
			debug.SetGCPercent(100)
			paceGCUnderLimit(serverGCPercent)
			if got := debug.SetGCPercent(100); got != tc.want {
				t.Errorf("GC percent = %d, want %d", got, tc.want)
			}
		})
	}
}
