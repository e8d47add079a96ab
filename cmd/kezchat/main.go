// Command kezchat is the whole of kez-chat in one binary: the chat server,
// and the client commands that chat with one from a terminal.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sort"
	"syscall"
)

// Stamped at build time with -ldflags "-X main.version=... ".
var (
	version = "dev"
	commit  = "unknown"
	date    = "unknown"
)

// command runs one subcommand with its own arguments.
type command func(ctx context.Context, args []string, stdout, stderr io.Writer) error

type subcommand struct {
	run     command
	summary string
}

var commands = map[string]subcommand{
	"server":        {runServer, "run the chat server"},
	"operator":      {runOperator, "run the KezChat Kubernetes operator"},
	"sig-server":    {runSigServer, "run the sig-server, the signed directory of identities' keys"},
	"nats-exporter": {runNATSExporter, "serve a nats-server's monitoring endpoint as Prometheus metrics"},
	"keys":          {runKeys, "publish, add a device to, or revoke from the identity's key document"},
	"keygen":        {runKeygen, "create an identity (signing and encryption keys)"},
	"register":      {runRegister, "register a handle for the identity"},
	"lookup":        {runLookup, "show a handle's public record"},
	"send":          {runSend, "send an encrypted message, or a file"},
	"group":         {runGroup, "create, change, list and send to groups"},
	"react":         {runReact, "react to a message with an emoji"},
	"inbox":         {runInbox, "read (and optionally acknowledge) the inbox"},
	"listen":        {runListen, "follow the inbox live, acknowledging as messages arrive"},
	"outbox":        {runOutbox, "show your messages to other servers: queued, delivered or failed"},
	"privacy":       {runPrivacy, "show or change who may write to you (blocked senders, strangers)"},
	"unpin":         {runUnpin, "forget the identity the server pinned for a person on another server (admin)"},
	"safety-number": {runSafetyNumber, "print the safety number to compare with a peer"},
	"trust":         {runTrust, "accept a peer's new keys once the safety numbers match"},
	"version":       {runVersion, "print the version"},
	"backup":        {runBackup, "back a part of a KezChat up to an S3-compatible object store"},
	"restore":       {runRestore, "restore a part of a KezChat from a backup, unless its data exists"},
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	limitMemoryToContainer(os.ReadFile)
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
		fmt.Fprintf(stderr, "kezchat: unknown command %q\n\n", args[0])
		usage(stderr)
		return 2
	}
	if err := sub.run(ctx, args[1:], stdout, stderr); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		fmt.Fprintf(stderr, "kezchat %s: %v\n", args[0], err)
		return 1
	}
	return 0
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "kezchat: self-hosted, end-to-end-encrypted chat\n\nUsage: kezchat <command> [flags]\n\nCommands:")
	names := make([]string, 0, len(commands))
	for n := range commands {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(w, "  %-13s %s\n", n, commands[n].summary)
	}
	fmt.Fprintln(w, "\nRun 'kezchat <command> --help' for a command's flags.")
}

func runVersion(_ context.Context, _ []string, stdout, _ io.Writer) error {
	fmt.Fprintf(stdout, "kezchat %s (commit %s, built %s)\n", version, commit, date)
	return nil
}
