package main

import (
	"fmt"
	"slices"
	"time"
)

// latencies summarizes a sample of durations.
type latencies struct {
	n             int
	p50, p99, max time.Duration
}

// summarize sorts ds in place and reads nearest-rank percentiles: the value
// below or at which q of the sample lies, never an interpolation between
// two measurements.
func summarize(ds []time.Duration) latencies {
	if len(ds) == 0 {
		return latencies{}
	}
	slices.Sort(ds)
	return latencies{n: len(ds), p50: percentile(ds, 0.50), p99: percentile(ds, 0.99), max: ds[len(ds)-1]}
}

// percentile of a sorted, non-empty sample, nearest rank.
func percentile(sorted []time.Duration, q float64) time.Duration {
	rank := int(q*float64(len(sorted)) + 0.999999999) // ceil without float surprises at exact ranks
	return sorted[min(max(rank, 1), len(sorted))-1]
}

// fmtDuration prints milliseconds with enough precision for latencies of a
// fraction of a millisecond, and seconds for long spans.
func fmtDuration(d time.Duration) string {
	switch {
	case d >= 10*time.Second:
		return fmt.Sprintf("%.1fs", d.Seconds())
	case d >= time.Second:
		return fmt.Sprintf("%.2fs", d.Seconds())
	case d >= 10*time.Millisecond:
		return fmt.Sprintf("%.1fms", float64(d)/float64(time.Millisecond))
	default:
		return fmt.Sprintf("%.2fms", float64(d)/float64(time.Millisecond))
	}
}
