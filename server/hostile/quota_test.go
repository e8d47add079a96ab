package hostile_test

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"kez.lat/chat/server"
)

// dbBytes is what the server's database files take on disk.
func (tg *target) dbBytes(t *testing.T) int64 {
	t.Helper()
	var n int64
	for _, name := range []string{"kez-chat.db", "kez-chat.db-wal"} {
		if fi, err := os.Stat(filepath.Join(tg.dir, name)); err == nil {
			n += fi.Size()
		}
	}
	return n
}

// The quotas these tests run with: smaller than the defaults (64 and 128
// MiB a day, room for attachments), so that a flood reaches them before
// the victim's inbox is full (64 MiB).
var quotaFlags = []string{"--sender-quota-bytes", fmt.Sprint(12 << 20), "--address-quota-bytes", fmt.Sprint(24 << 20)}

// One registered identity sends 64 KiB messages as fast as the rate limits
// let it: past its daily quota of bytes (12 MiB here) the server
// refuses with sender_quota_exceeded and a Retry-After, so one identity
// cannot fill the disk (before: nothing stopped it short of inbox_full at
// 10,000 messages, 870 MB, in every inbox it could find).
func TestOneIdentityCannotStoreMoreThanItsDailyQuota(t *testing.T) {
	tg := start(t, quotaFlags...)
	id, _ := tg.register(t, "flooder")
	_, victim := tg.register(t, "victim")
	stored, size, code, retry := tg.fill(t, id, victim, 400)
	if code != server.CodeSenderQuota || retry <= 0 {
		t.Fatalf("after %d messages: %q (Retry-After %v), want sender_quota_exceeded with a Retry-After", stored, code, retry)
	}
	checkStored(t, stored, size, 12<<20)
	t.Logf("one identity stored %d messages (%.1f MiB on disk) before sender_quota_exceeded", stored, float64(tg.dbBytes(t))/mib)
}

// One address registers identities and sends from each until the
// address's daily quota (24 MiB here) refuses with
// address_quota_exceeded: fresh identities do not buy more disk.
func TestOneAddressCannotStoreMoreThanItsDailyQuota(t *testing.T) {
	tg := start(t, quotaFlags...)
	_, victim := tg.register(t, "victim")
	stored := 0
	for s := range 10 {
		id, _ := tg.register(t, fmt.Sprintf("flooder%d", s))
		n, size, code, retry := tg.fill(t, id, victim, 400)
		stored += n
		if code == server.CodeSenderQuota {
			continue // the next identity
		}
		if code != server.CodeAddressQuota || retry <= 0 {
			t.Fatalf("after %d messages: %q (Retry-After %v), want address_quota_exceeded with a Retry-After", stored, code, retry)
		}
		checkStored(t, stored, size, 24<<20)
		t.Logf("one address stored %d messages (%.1f MiB on disk) before address_quota_exceeded", stored, float64(tg.dbBytes(t))/mib)
		return
	}
	t.Fatalf("10 identities stored %d messages and the address quota never refused", stored)
}

// checkStored fails unless n messages of size bytes come to quota, give or
// take a message or two (the quota counts what is stored, about the size of
// the bodies).
func checkStored(t *testing.T, n, size, quota int) {
	t.Helper()
	if total := n * size; total > quota+size || total < quota-2*size {
		t.Fatalf("%d messages of %d bytes (%d) stored before the quota of %d refused", n, size, total, quota)
	}
}
