package hostile_test

import (
	"context"
	"net/http"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"kez.lat/chat/client"
	"kez.lat/chat/server"
	"kez.lat/chat/server/testutil"
)

// readyz is the status of the server's readiness check.
func (tg *target) readyz(t *testing.T) int {
	t.Helper()
	res, err := http.Get(tg.url + "/v1/readyz")
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	return res.StatusCode
}

// fillUntilFull sends 64 KiB messages to victim from fresh identities until
// the server refuses one for want of room, and fails on anything but 201,
// rate limits (waited out) and that refusal.
func fillUntilFull(t *testing.T, tg *target, u *client.User) {
	t.Helper()
	for s := 0; ; s++ {
		if s == 20 {
			t.Fatal("20 identities' messages and the storage never filled")
		}
		id, _ := tg.register(t, "filler"+string(rune('a'+s)))
		for {
			status, code, retry, _ := tg.post(t, id, u)
			switch {
			case status == http.StatusCreated:
				continue
			case code == server.CodeRateLimited:
				waitRetry(retry)
				continue
			case code == server.CodeSenderQuota:
			case status == http.StatusInsufficientStorage && code == server.CodeStorageFull:
				if retry <= 0 {
					t.Fatal("storage_full without a Retry-After")
				}
				return
			default:
				t.Fatalf("%d %s while filling the storage; want 201 until 507 storage_full", status, code)
			}
			break
		}
	}
}

// An attacker fills the database up to its size limit (SQLite's
// max_page_count, what the operator sets below the volume's size): writes
// answer 507 storage_full, never 500; readiness fails while the writer has
// no room, so traffic goes elsewhere; once room returns (the victim reads
// and acknowledges) readiness and writes come back by themselves. Before:
// 500 on every write, and readiness answered 200 (SELECT 1 on a reader).
func TestAFullDatabaseAnswersStorageFullAndRecovers(t *testing.T) {
	tg := start(t, "--max-db-bytes", "4194304")
	victim, u := tg.register(t, "victim")
	fillUntilFull(t, tg, u)
	testutil.Eventually(t, 10*time.Second, "readiness to fail while the database is full", func() bool {
		return tg.readyz(t) == http.StatusInsufficientStorage
	})
	if v := tg.metric(t, "kezchat_store_writable"); v != 0 {
		t.Fatalf("kezchat_store_writable = %v with the database full", v)
	}
	if n := tg.metric(t, "kezchat_store_full_total"); n < 1 {
		t.Fatalf("kezchat_store_full_total = %v after a refused write", n)
	}
	c := tg.client()
	if _, err := c.Ack(context.Background(), victim, ^uint64(0)>>1); err != nil {
		t.Fatalf("acknowledging the inbox with the database full: %v", err)
	}
	testutil.Eventually(t, 10*time.Second, "readiness to come back once room returned", func() bool {
		return tg.readyz(t) == http.StatusOK
	})
	sender, _ := tg.register(t, "after")
	if status, code, _, _ := tg.post(t, sender, u); status != http.StatusCreated {
		t.Fatalf("a message after room returned: %d %s", status, code)
	}
}

// The same with a real full disk: the database on a small tmpfs that a
// ballast file fills. Writes answer 507 storage_full (SQLite's SQLITE_FULL
// from ENOSPC); readiness fails; deleting the ballast, as an admin growing
// the volume would, brings both back without a restart.
func TestAFullDiskAnswersStorageFullAndRecoversWhenSpaceReturns(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("mounting a tmpfs needs root; CI runs as root, and TestAFullDatabaseAnswersStorageFullAndRecovers covers the rest")
	}
	dir := t.TempDir()
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, "size=16m,mode=0700"); err != nil {
		t.Fatalf("mounting a tmpfs: %v", err)
	}
	t.Cleanup(func() { syscall.Unmount(dir, syscall.MNT_DETACH) })
	ballast := filepath.Join(dir, "ballast")
	if err := os.WriteFile(ballast, make([]byte, 10<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	tg := startIn(t, dir)
	_, u := tg.register(t, "victim")
	fillUntilFull(t, tg, u)
	testutil.Eventually(t, 10*time.Second, "readiness to fail while the disk is full", func() bool {
		return tg.readyz(t) == http.StatusInsufficientStorage
	})
	if err := os.Remove(ballast); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 10*time.Second, "readiness to come back once space returned", func() bool {
		return tg.readyz(t) == http.StatusOK
	})
	sender, _ := tg.register(t, "after")
	if status, code, _, _ := tg.post(t, sender, u); status != http.StatusCreated {
		t.Fatalf("a message after space returned: %d %s", status, code)
	}
}
