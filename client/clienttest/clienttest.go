// Package clienttest holds fixtures for tests that chat through the Go
// client: a client of a test server, a registered identity, and what a
// stream must deliver.
package clienttest

import (
	"context"
	"net/http"
	"testing"
	"time"

	"kez.lat/chat/client"
)

// New is a client of the server at url on an HTTP transport of its own,
// whose idle connections close when the test ends.
func New(t testing.TB, url string, timeout time.Duration) *client.Client {
	tr := &http.Transport{}
	t.Cleanup(tr.CloseIdleConnections)
	return client.New(url, &http.Client{Transport: tr, Timeout: timeout})
}

// Register registers a new ed25519 identity for handle through c.
func Register(t testing.TB, c *client.Client, handle string) *client.Identity {
	t.Helper()
	id, err := client.NewIdentity("ed25519")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Register(context.Background(), id, handle); err != nil {
		t.Fatalf("registering %s: %v", handle, err)
	}
	return id
}

// ExpectStreamed reads the next len(seqs) events of st, id's stream on c,
// and fails unless event i has seqs[i] and decrypts to bodies[i].
func ExpectStreamed(t testing.TB, c *client.Client, id *client.Identity, st *client.Stream, seqs []uint64, bodies []string) {
	t.Helper()
	for i, seq := range seqs {
		env, err := st.Next()
		if err != nil {
			t.Fatal(err)
		}
		if env.Seq != seq {
			t.Fatalf("event %d has seq %d, want %d", i, env.Seq, seq)
		}
		pt, err := c.Decrypt(context.Background(), id, env)
		if err != nil || pt.Body != bodies[i] {
			t.Fatalf("event %d: %+v %v; want %q", i, pt, err, bodies[i])
		}
	}
}
