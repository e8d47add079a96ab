package main

import (
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"

	"github.com/nats-io/nats.go"

	"kez.lat/chat/server/natsbus"
)

// newFlagSet returns a flag set for a subcommand whose usage names the
// environment variable behind each flag.
func newFlagSet(name, synopsis string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: kezchat %s\n\n", synopsis)
		fs.PrintDefaults()
	}
	return fs
}

// envName is the environment variable that sets a flag: KEZ_ and the flag's
// name in upper case with - as _ (--max-pending is KEZ_MAX_PENDING).
func envName(flagName string) string {
	return "KEZ_" + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

// parseWithEnv parses args; every flag not given on the command line takes
// its environment variable when that is set. Usage text names the variable.
func parseWithEnv(fs *flag.FlagSet, args []string) error {
	fs.VisitAll(func(f *flag.Flag) {
		f.Usage = fmt.Sprintf("%s (env %s)", f.Usage, envName(f.Name))
	})
	if err := fs.Parse(args); err != nil {
		return err
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	var err error
	fs.VisitAll(func(f *flag.Flag) {
		if set[f.Name] || err != nil {
			return
		}
		if v, ok := os.LookupEnv(envName(f.Name)); ok {
			if e := fs.Set(f.Name, v); e != nil {
				err = fmt.Errorf("%s=%q: %w", envName(f.Name), v, e)
			}
		}
	})
	return err
}

// logFlags are the logging settings of every daemon (server, sig-server,
// operator).
type logFlags struct{ format, level string }

func (l *logFlags) register(fs *flag.FlagSet, format string) {
	fs.StringVar(&l.format, "log-format", format, "log format: text or json")
	fs.StringVar(&l.level, "log-level", "info", "log level: debug, info, warn or error")
}

// parseDaemonFlags parses a daemon's flags, which take no arguments, and
// their environment, and returns the logger they describe.
func parseDaemonFlags(fs *flag.FlagSet, args []string, l *logFlags, stderr io.Writer) (*slog.Logger, error) {
	if err := parseWithEnv(fs, args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	return newLogger(stderr, l.format, l.level)
}

func newLogger(w io.Writer, format, level string) (*slog.Logger, error) {
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("log level %q: %w", level, err)
	}
	opts := &slog.HandlerOptions{Level: lvl}
	switch format {
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	default:
		return nil, fmt.Errorf("log format %q: want text or json", format)
	}
}

// natsFlags say how a command reaches the chat server's NATS: the server's
// own --nats-url, --nats-user and --nats-password-file.
type natsFlags struct{ url, user, passwordFile string }

// registerBeside registers the flags for a command that works beside the
// chat server, on its store (backup, restore, unpin).
func (f *natsFlags) registerBeside(fs *flag.FlagSet) {
	fs.StringVar(&f.url, "nats-url", "", "with --store jetstream: the NATS server, e.g. nats://kez-nats:4222")
	fs.StringVar(&f.user, "nats-user", "", "with --store jetstream: user to authenticate to NATS as")
	fs.StringVar(&f.passwordFile, "nats-password-file", "", "with --store jetstream: file holding --nats-user's password")
}

// config is the connection the flags describe, named name.
func (f natsFlags) config(name string) (natsbus.Config, error) {
	cfg := natsbus.Config{URL: f.url, Name: name, User: f.user}
	if f.passwordFile != "" {
		b, err := os.ReadFile(f.passwordFile)
		if err != nil {
			return cfg, fmt.Errorf("--nats-password-file: %w", err)
		}
		cfg.Password = strings.TrimSpace(string(b))
	}
	return cfg, nil
}

// connectOnce connects as the chat server does, but gives up when the
// connection is lost: a command beside the server that loses it fails,
// and is run again whole.
func (f natsFlags) connectOnce(log *slog.Logger, name string) (*nats.Conn, error) {
	cfg, err := f.config(name)
	if err != nil {
		return nil, err
	}
	return natsbus.Connect(cfg, log, nil, nats.MaxReconnects(0))
}
