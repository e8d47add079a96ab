// Command kubectl-kezchat is a kubectl plugin for KezChat instances: on the
// PATH, `kubectl kezchat status` runs it. It reads what the operator made
// and reports; it changes nothing in the cluster, and never reads a Secret.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sort"
	"syscall"

	"github.com/spf13/pflag"
)

// Stamped at build time with -ldflags "-X main.version=... ".
var (
	version = "dev"
	commit  = "unknown"
)

// command runs one subcommand with its own arguments.
type command func(ctx context.Context, args []string, stdout, stderr io.Writer) error

type subcommand struct {
	run     command
	summary string
}

var commands = map[string]subcommand{
	"status":       {runStatus, "every KezChat's health, versions, URL, storage and last backup"},
	"logs":         {runLogs, "logs of one component (server, sig-server, nats) of one KezChat"},
	"vapid-key":    {runVAPIDKey, "the Web Push (VAPID) public key of a KezChat"},
	"port-forward": {runPortForward, "reach a KezChat's web app on localhost, without an Ingress"},
	"report":       {runReport, "a redacted bundle (tar.gz) for a bug report; never holds a Secret"},
	"version":      {runVersion, "print the plugin's version"},
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	os.Exit(run(ctx, os.Args[1:], os.Stdout, os.Stderr))
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		usage(stderr)
		if len(args) == 0 {
			return 2
		}
		return 0
	}
	sub, ok := commands[args[0]]
	if !ok {
		fmt.Fprintf(stderr, "kubectl kezchat: unknown command %q\n\n", args[0])
		usage(stderr)
		return 2
	}
	if err := sub.run(ctx, args[1:], stdout, stderr); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return 0
		}
		fmt.Fprintf(stderr, "kubectl kezchat %s: %v\n", args[0], err)
		var u usageError
		if errors.As(err, &u) {
			return 2
		}
		return 1
	}
	return 0
}

// usageError is a command line the command cannot run (exit status 2).
type usageError struct{ msg string }

func (u usageError) Error() string { return u.msg }

func usagef(format string, args ...any) error { return usageError{fmt.Sprintf(format, args...)} }

func usage(w io.Writer) {
	fmt.Fprintln(w, "kubectl kezchat: look after KezChat instances\n\nUsage: kubectl kezchat <command> [flags]\n\nCommands:")
	names := make([]string, 0, len(commands))
	for n := range commands {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(w, "  %-13s %s\n", n, commands[n].summary)
	}
	fmt.Fprintln(w, "\nEach command takes kubectl's --kubeconfig, --context and -n/--namespace;\nrun 'kubectl kezchat <command> --help' for its flags.")
}

func runVersion(_ context.Context, _ []string, stdout, _ io.Writer) error {
	fmt.Fprintf(stdout, "kubectl-kezchat %s (commit %s)\n", version, commit)
	return nil
}
