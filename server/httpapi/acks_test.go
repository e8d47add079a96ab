package httpapi_test

import (
	"encoding/json"
	"net/http"
	"strconv"
	"testing"
)

// ackAs acknowledges id's inbox up to upto, signed by id's key, each time
// with a ts of its own (the same key may acknowledge the same upto again).
func ackAs(t *testing.T, url string, id *identity, upto uint64) int {
	t.Helper()
	path := "/v1/inbox/" + id.handle
	u := strconv.FormatUint(upto, 10)
	r := do(t, http.MethodDelete, url+path+"?upto="+u, nil, map[string]string{
		"X-KEZ-Auth": id.auth(t, http.MethodDelete, path, streamTS(), "upto="+u),
	})
	if r.status != http.StatusOK {
		t.Fatalf("acknowledging %s up to %d: %d %s", id.handle, upto, r.status, r.code)
	}
	var body struct{ Deleted int }
	if err := json.Unmarshal(r.body, &body); err != nil {
		t.Fatal(err)
	}
	return body.Deleted
}

func TestEveryDeviceHoldsTheInboxFromItsFirstAcknowledgementUntilItsKeyIsRevoked(t *testing.T) {
	sig, srv, chain, bob := chatWithSigServer(t, nil)
	laptop := chain.primary // the registered key
	phone := asDevice(laptop, newSigner(t, "ed25519"))
	chain.mustPublish(t, sig.URL, phone.signer)
	var seqs []uint64
	for range 3 {
		r := sendAs(t, srv, bob, laptop.handle)
		if r.status != http.StatusCreated {
			t.Fatalf("bob's message: %d %s", r.status, r.code)
		}
		var rec struct{ Seq uint64 }
		json.Unmarshal(r.body, &rec)
		seqs = append(seqs, rec.Seq)
	}
	if n := ackAs(t, srv.URL, phone, 0); n != 0 {
		t.Fatalf("the phone's upto=0 deleted %d", n)
	}
	if n := ackAs(t, srv.URL, laptop, seqs[2]); n != 0 {
		t.Fatalf("the laptop's ack deleted %d while the phone has acknowledged nothing", n)
	}
	if n := ackAs(t, srv.URL, phone, seqs[0]); n != 1 {
		t.Fatalf("the phone's ack of the first deleted %d, want 1", n)
	}
	if n := len(poll(t, srv, laptop, 0).Messages); n != 2 {
		t.Fatalf("the inbox holds %d messages, want 2", n)
	}
	chain.mustPublish(t, sig.URL) // version 2 drops the phone
	if n := ackAs(t, srv.URL, laptop, seqs[2]); n != 2 {
		t.Fatalf("the laptop's ack after the phone's revocation deleted %d, want 2", n)
	}
	if n := len(poll(t, srv, laptop, 0).Messages); n != 0 {
		t.Fatalf("the inbox holds %d messages after every device acknowledged", n)
	}
}

func TestAcknowledgementsByOneDeviceDeleteAsBefore(t *testing.T) {
	_, srv, chain, bob := chatWithSigServer(t, nil)
	for range 2 {
		if r := sendAs(t, srv, bob, chain.primary.handle); r.status != http.StatusCreated {
			t.Fatalf("bob's message: %d %s", r.status, r.code)
		}
	}
	page := poll(t, srv, chain.primary, 0)
	if n := ackAs(t, srv.URL, chain.primary, page.Next); n != 2 {
		t.Fatalf("the only device's ack deleted %d, want 2", n)
	}
}
