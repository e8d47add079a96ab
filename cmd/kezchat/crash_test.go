package main

import (
	"context"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"kez.lat/chat/client"
	"kez.lat/chat/server/testutil"
)

// serverProcess is a kezchat server running as its own process.
type serverProcess struct {
	cmd *exec.Cmd
	url string
}

func startServerProcess(t *testing.T, db, bind string) *serverProcess {
	t.Helper()
	cmd := exec.Command(testutil.KezchatBinary(t), "server", "--bind", bind, "--db", db, "--domain", "crash.test",
		"--metrics-bind", "", "--register-rate", "0", "--send-rate", "0", "--handle-send-rate", "0", "--failed-auth-rate", "0")
	cmd.Stderr = os.Stderr
	if !testing.Verbose() {
		cmd.Stderr = nil
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &serverProcess{cmd: cmd, url: "http://" + bind}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	testutil.Eventually(t, 20*time.Second, "the server to be ready", func() bool {
		res, err := http.Get(p.url + "/v1/readyz")
		if err != nil {
			return false
		}
		res.Body.Close()
		return res.StatusCode == http.StatusOK
	})
	return p
}

func TestEveryAcknowledgedMessageSurvivesAKilledServer(t *testing.T) {
	db := filepath.Join(t.TempDir(), "kez-chat.db")
	bind := testutil.FreeAddr(t)
	first := startServerProcess(t, db, bind)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c := client.New(first.url, nil)
	alice, _ := client.NewIdentity("ed25519")
	bob, _ := client.NewIdentity("bip340")
	for id, h := range map[*client.Identity]string{alice: "alice", bob: "bob"} {
		if _, err := c.Register(ctx, id, h); err != nil {
			t.Fatal(err)
		}
	}

	// Senders keep sending; the server is killed while messages are in
	// flight, right after the 300th 201.
	type receipt struct {
		seq uint64
		id  string
	}
	var (
		mu       sync.Mutex
		acked    []receipt
		count    atomic.Int64
		killOnce sync.Once
		wg       sync.WaitGroup
	)
	bobUser, err := c.Lookup(ctx, "bob")
	if err != nil {
		t.Fatal(err)
	}
	for range 8 {
		wg.Go(func() {
			for ctx.Err() == nil {
				msgID := client.NewMessageID()
				doc, err := client.NewMessage(alice, bobUser, msgID, "survive")
				if err != nil {
					t.Error(err)
					return
				}
				r, _, err := c.Post(ctx, doc)
				if err != nil {
					return // the server is gone
				}
				mu.Lock()
				acked = append(acked, receipt{r.Seq, msgID})
				mu.Unlock()
				if count.Add(1) >= 300 {
					killOnce.Do(func() { first.cmd.Process.Signal(syscall.SIGKILL) })
				}
			}
		})
	}
	wg.Wait()
	first.cmd.Wait()

	second := startServerProcess(t, db, bind)
	c2 := client.New(second.url, nil)
	stored := map[uint64]string{}
	for since := uint64(0); ; {
		page, err := c2.Poll(ctx, bob, since, 1000)
		if err != nil {
			t.Fatal(err)
		}
		if len(page.Messages) == 0 {
			break
		}
		for _, env := range page.Messages {
			p, err := env.Payload()
			if err != nil {
				t.Fatal(err)
			}
			stored[env.Seq] = p.ID
		}
		since = page.Next
	}
	if len(acked) < 300 {
		t.Fatalf("only %d messages acknowledged before the kill", len(acked))
	}
	for _, r := range acked {
		if stored[r.seq] != r.id {
			t.Fatalf("acknowledged message %s (seq %d) lost after the kill: stored %q", r.id, r.seq, stored[r.seq])
		}
	}
	t.Logf("%d acknowledged, %d stored after restart", len(acked), len(stored))
}

func TestSIGTERMEndsStreamsAndExitsCleanly(t *testing.T) {
	db := filepath.Join(t.TempDir(), "kez-chat.db")
	p := startServerProcess(t, db, testutil.FreeAddr(t))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c := client.New(p.url, nil)
	bob, _ := client.NewIdentity("ed25519")
	if _, err := c.Register(ctx, bob, "bob"); err != nil {
		t.Fatal(err)
	}
	st, err := c.Stream(ctx, bob, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	ended := make(chan error, 1)
	go func() { _, err := st.Next(); ended <- err }()

	start := time.Now()
	p.cmd.Process.Signal(syscall.SIGTERM)
	if err := p.cmd.Wait(); err != nil {
		t.Fatalf("server exited with %v after SIGTERM", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("shutdown took %v with a stream open", d)
	}
	select {
	case err := <-ended:
		if err == nil {
			t.Fatal("stream yielded an envelope instead of ending")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("stream still open after the server exited")
	}
	// The database was closed cleanly: no WAL is left behind.
	if _, err := os.Stat(db + "-wal"); !os.IsNotExist(err) {
		t.Fatalf("WAL file left after a clean shutdown: %v", err)
	}
}
