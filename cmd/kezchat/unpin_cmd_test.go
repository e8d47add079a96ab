package main

import (
	"bytes"
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"kez.lat/chat/server"
	"kez.lat/chat/server/jsstore"
	"kez.lat/chat/server/natsbus"
	"kez.lat/chat/server/sqlite"
	"kez.lat/chat/server/testutil"
)

func TestUnpinForgetsAPinnedIdentityOnEitherStore(t *testing.T) {
	ctx := context.Background()
	pin := &server.RemotePin{Address: "bob@two.example", PrimaryID: "old", Alg: "ed25519", Key: []byte("k")}
	next := &server.RemotePin{Address: "bob@two.example", PrimaryID: "new", Alg: "ed25519", Key: []byte("k2")}
	for _, tt := range []struct {
		name string
		open func(t *testing.T) (server.FederationStore, []string)
	}{
		{"sqlite", func(t *testing.T) (server.FederationStore, []string) {
			path := filepath.Join(t.TempDir(), "kez-chat.db")
			db, err := sqlite.Open(ctx, path, nil)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { db.Close() })
			return db, []string{"--db", path}
		}},
		{"jetstream", func(t *testing.T) (server.FederationStore, []string) {
			n := testutil.StartNATS(t, testutil.NATSOptions{})
			s, err := jsstore.Open(ctx, jsstore.Config{NATS: natsbus.Config{URL: n.URL, ReconnectWait: 20 * time.Millisecond}}, testutil.Logger(t))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { s.Close() })
			return s, []string{"--store", "jetstream", "--nats-url", n.URL}
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			// The server keeps running on the store while the command
			// runs beside it.
			store, flags := tt.open(t)
			if _, err := store.PinRemote(ctx, pin); err != nil {
				t.Fatal(err)
			}
			unpin := func(addr string) (int, string) {
				// NATS callbacks may still log after run returns.
				var stdout bytes.Buffer
				stderr := &testutil.LockedBuffer{}
				code := run(ctx, append(append([]string{"unpin"}, flags...), addr), &stdout, stderr)
				return code, stdout.String() + stderr.String()
			}
			if code, out := unpin("bob@two.example"); code != 0 || !strings.Contains(out, "unpinned bob@two.example") {
				t.Fatalf("unpin: exit %d: %s", code, out)
			}
			if got, err := store.PinRemote(ctx, next); err != nil || got.PrimaryID != "new" {
				t.Fatalf("the pin after unpin = %+v %v, want the next identity", got, err)
			}
			if tt.name == "sqlite" {
				var stdout bytes.Buffer
				stderr := &testutil.LockedBuffer{}
				missing := filepath.Join(t.TempDir(), "none.db")
				if code := run(ctx, []string{"unpin", "--db", missing, "bob@two.example"}, &stdout, stderr); code == 0 || !strings.Contains(stderr.String(), "database is not there") {
					t.Errorf("unpin with a --db that is not there: exit %d: %s", code, stderr.String())
				}
			}
			for addr, want := range map[string]string{
				"carol@two.example": "pinned no identity for carol@two.example",
				"bob":               "not an address on another server",
				"bob@not a domain":  "not an address on another server",
			} {
				if code, out := unpin(addr); code == 0 || !strings.Contains(out, want) {
					t.Errorf("unpin %q: exit %d: %s; want a failure saying %q", addr, code, out, want)
				}
			}
		})
	}
}
