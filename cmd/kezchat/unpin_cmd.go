package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"kez.lat/chat/server"
	"kez.lat/chat/server/app"
	"kez.lat/chat/server/jsstore"
	"kez.lat/chat/server/sqlite"
)

// unpinFlags say where the chat server keeps its state, as its own flags
// (and, in its pod, its environment) do.
type unpinFlags struct {
	db, store string
	nats      natsFlags
	log       logFlags
}

// runUnpin forgets the identity the server pinned for a person on another
// server, beside the running server: the person's new identity is pinned
// when its domain next names it.
func runUnpin(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var f unpinFlags
	fs := newFlagSet("unpin", "unpin [flags] ADDRESS\n\n"+
		"Forgets the identity (primary key) this chat server pinned for a person on another server, whose\n"+
		"messages it then refuses with sender_key_changed when their domain names a new one. Do it only once\n"+
		"you have checked the new identity with the person, out of band: the next record the domain serves is\n"+
		"pinned in its place, within 5 minutes (the server's cache). Run it where the server runs, with its\n"+
		"store's settings: in a KezChat's server pod, kubectl exec ... -- kezchat unpin --db /var/lib/kez-chat/kez-chat.db\n"+
		"ADDRESS on sqlite; on jetstream the pod's environment has them.", stderr)
	def := app.DefaultConfig()
	fs.StringVar(&f.db, "db", def.DBPath, "with --store sqlite: the chat server's SQLite database file")
	fs.StringVar(&f.store, "store", "sqlite", "the chat server's --store: sqlite (--db) or jetstream (--nats-url)")
	f.nats.registerBeside(fs)
	f.log.register(fs, "text")
	if err := parseWithEnv(fs, args); err != nil {
		return err
	}
	log, err := newLogger(stderr, f.log.format, f.log.level)
	if err != nil {
		return err
	}
	if fs.NArg() != 1 {
		fs.Usage()
		return errors.New("unpin takes one address, handle@domain")
	}
	addr, err := server.ParseAddress(strings.TrimSpace(fs.Arg(0)), true)
	if err != nil || addr.Domain == "" {
		return fmt.Errorf("%q is not an address on another server (handle@domain)", fs.Arg(0))
	}
	var was bool
	switch f.store {
	case "sqlite":
		// Opening makes a database where there is none: a wrong --db
		// would answer "nothing pinned" from an empty one.
		if _, err := os.Stat(f.db); err != nil {
			return fmt.Errorf("--db %s: the chat server's database is not there: %w", f.db, err)
		}
		db, err := sqlite.Open(ctx, f.db, log)
		if err != nil {
			return err
		}
		was, err = db.Unpin(ctx, addr.String())
		if cerr := db.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return err
		}
	case "jetstream":
		nc, err := f.nats.connectOnce(log, "kezchat unpin")
		if err != nil {
			return err
		}
		defer nc.Close()
		if was, err = jsstore.UnpinRemote(ctx, nc, addr.String()); err != nil {
			return err
		}
	default:
		return fmt.Errorf("--store %q: sqlite or jetstream", f.store)
	}
	if !was {
		return fmt.Errorf("this server has pinned no identity for %s", addr)
	}
	fmt.Fprintf(stdout, "unpinned %s: the identity its domain names next is pinned in its place\n", addr)
	return nil
}
