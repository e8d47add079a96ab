package hostile_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"testing"
	"time"

	"kez.lat/chat/client"
	"kez.lat/chat/server"
	"kez.lat/chat/server/signing"
)

// do sends a request with headers and returns the status and error code.
func (tg *target) do(t *testing.T, method, path string, body []byte, headers map[string]string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(method, tg.url+path, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range headers {
		req.Header.Set(k, v)
	}
	status, code, _ := answer(t, req)
	return status, code
}

// A stranger who can forge X-Forwarded-For (it reaches the server through
// a trusted proxy, or is one: any pod when the operator trusted every
// private range) sends bad signatures for a victim's handle from the
// victim's address. The victim's correctly signed poll still passes: the
// signature is checked before any failure count (before: 429 after 32
// forged failures).
func TestForgedFailuresDoNotLockOutAVictim(t *testing.T) {
	tg := start(t, "--trusted-proxies", "127.0.0.0/8")
	victim, _ := tg.register(t, "victim")
	victimAddr := map[string]string{"X-Forwarded-For": "198.51.100.7"}
	bad := map[string]string{"X-Forwarded-For": "198.51.100.7",
		"X-KEZ-Auth": strconv.FormatInt(time.Now().Unix(), 10) + ":" + signing.EncodeB64(make([]byte, 64))}
	limited := 0
	for range 40 {
		if _, code := tg.do(t, "GET", "/v1/inbox/victim", nil, bad); code == server.CodeRateLimited {
			limited++
		}
	}
	if limited == 0 {
		t.Fatal("40 bad signatures from one address were never limited")
	}
	victimAddr["X-KEZ-Auth"] = auth(t, victim, "GET", "/v1/inbox/victim", "since=0")
	if status, code := tg.do(t, "GET", "/v1/inbox/victim", nil, victimAddr); status != http.StatusOK {
		t.Fatalf("the victim's correctly signed poll after forged failures: %d %s", status, code)
	}
}

// A client that is not a trusted proxy sends a different X-Forwarded-For
// with every registration: the server keys its limits on the peer's
// address, so the registration limit (burst 20) holds (before, behind the
// operator's every-private-range trust, 40 of 40 passed).
func TestForgedForwardedForFromAnUntrustedPeerChangesNothing(t *testing.T) {
	tg := start(t)
	accepted := 0
	for i := range 40 {
		id, err := client.NewIdentity("ed25519")
		if err != nil {
			t.Fatal(err)
		}
		doc, err := client.NewRegistration(id, domain, fmt.Sprintf("user%d", i), time.Now())
		if err != nil {
			t.Fatal(err)
		}
		body, _ := json.Marshal(doc)
		status, _ := tg.do(t, "POST", "/v1/register", body, map[string]string{
			"Content-Type": "application/json", "X-Forwarded-For": fmt.Sprintf("203.0.113.%d", i)})
		if status == http.StatusCreated {
			accepted++
		}
	}
	if accepted > 20 {
		t.Fatalf("%d of 40 registrations with forged addresses accepted, want at most the burst of 20", accepted)
	}
}
