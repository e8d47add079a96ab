// Command kezchat-bench is kez-chat's load generator: it measures a chat
// server's throughput, latency, memory per idle stream and Web Push rate,
// and several replicas on NATS JetStream against one on SQLite. It runs the
// servers it measures as `kezchat server` processes of the binary it is
// given, with a local push service and NATS servers of its own in this
// process, none of which the kezchat binary links.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := runBench(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return
		}
		fmt.Fprintf(os.Stderr, "kezchat-bench: %v\n", err)
		os.Exit(1)
	}
}

// newFlagSet returns the bench's flag set, whose usage opens with synopsis.
func newFlagSet(synopsis string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("kezchat-bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: kezchat-bench [flags]\n\n%s\n\n", synopsis)
		fs.PrintDefaults()
	}
	return fs
}

// defaultKezchat is the kezchat binary beside this one (make bench builds
// both into bin/), else the one on PATH.
func defaultKezchat() string {
	if p := beside("kezchat"); p != "" {
		return p
	}
	if p, err := exec.LookPath("kezchat"); err == nil {
		return p
	}
	return "kezchat"
}

// beside is the path of the file name in this binary's directory, or ""
// when there is none.
func beside(name string) string {
	if exe, err := os.Executable(); err == nil {
		p := filepath.Join(filepath.Dir(exe), name)
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	return ""
}
