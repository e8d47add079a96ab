package main

import (
	"context"
	"sync"
	"sync/atomic"
)

// forEachIndex calls fn(ctx, i) for every i in [0, n) from at most
// workers goroutines, each taking the next index as soon as its last call
// returns. The first error cancels the ctx fn is given and stops handing
// out indexes; forEachIndex returns that error, or ctx's cause once ctx
// ended, after every call has returned.
func forEachIndex(ctx context.Context, n, workers int, fn func(ctx context.Context, i int) error) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var next atomic.Int64
	var wg sync.WaitGroup
	for range min(workers, n) {
		wg.Go(func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= n || ctx.Err() != nil {
					return
				}
				if err := fn(ctx, i); err != nil {
					cancel(err)
					return
				}
			}
		})
	}
	wg.Wait()
	if ctx.Err() != nil {
		return context.Cause(ctx)
	}
	return nil
}
