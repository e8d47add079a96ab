package app

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"sync"
	"time"
)

// daemon is what the chat server and the sig-server share: bound
// listeners, the parts to close once they stop, and the order of a stop.
type daemon struct {
	log             *slog.Logger
	http            *listeners
	shutdownTimeout time.Duration
	closers         []func() error
	// started runs once the listeners serve; stopping runs when the
	// daemon is asked to stop, before the listeners shut down.
	started, stopping func()
	runOnce           sync.Once
}

// URL is the API's address as http://host:port.
func (d *daemon) URL() string { return "http://" + d.Addr().String() }

// Addr is the address the API listens on.
func (d *daemon) Addr() net.Addr { return d.http.api.Addr() }

// Run serves until ctx ends or a listener fails, then stops: requests in
// flight get the shutdown timeout to finish, and every part is closed, the
// last made first. It returns the listener's error, or the first error in
// closing. A daemon runs once.
func (d *daemon) Run(ctx context.Context) error {
	err := errors.New("it has run already")
	d.runOnce.Do(func() { err = d.run(ctx) })
	return err
}

func (d *daemon) run(ctx context.Context) error {
	d.http.serve()
	if d.started != nil {
		d.started()
	}
	serveErr := d.http.wait(ctx, d.log)
	if d.stopping != nil {
		d.stopping()
	}
	shutdownCtx, cancel := context.WithTimeout(context.Background(), d.shutdownTimeout)
	defer cancel()
	d.http.shutdown(shutdownCtx, d.log)
	closeErr := d.close()
	if serveErr != nil {
		return serveErr
	}
	if closeErr != nil {
		return closeErr
	}
	d.log.Info("stopped")
	return nil
}

// Close releases a daemon that will not Run: listeners and parts.
func (d *daemon) Close() error {
	err := errors.New("it is running or has run")
	d.runOnce.Do(func() {
		d.http.close()
		err = d.close()
	})
	return err
}

// onClose registers f to run when the daemon stops. Parts close in the
// reverse of the order they were made, so a store, made first, closes
// last.
func (d *daemon) onClose(f func() error) { d.closers = append(d.closers, f) }

// close closes the parts, the last made first, and returns the first
// error.
func (d *daemon) close() error {
	var first error
	for i := len(d.closers) - 1; i >= 0; i-- {
		if err := d.closers[i](); err != nil {
			d.log.Error("closing", "err", err)
			if first == nil {
				first = err
			}
		}
	}
	d.closers = nil
	return first
}
