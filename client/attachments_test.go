package client_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"testing"

	"kez.lat/chat/client"
	"kez.lat/chat/server/testutil"
)

func TestAFileArrivesByteIdenticalAndATamperedOneIsRefused(t *testing.T) {
	ctx := context.Background()
	srv := testutil.StartServer(t, testutil.Options{})
	alice, bob := newPerson(t, srv.URL, "alice"), newPerson(t, srv.URL, "bob")
	file := make([]byte, 300<<10)
	_, _ = rand.Read(file)
	a, err := alice.c.Attach(ctx, alice.id, "noise.bin", "application/octet-stream", file)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := alice.c.SendTo(ctx, alice.id, "bob", client.Plaintext{Body: "see attached", Attachments: []client.Attachment{a}}, []string{a.Blob}); err != nil {
		t.Fatal(err)
	}
	got := bob.receive(t)
	if len(got) != 1 || len(got[0].Attachments) != 1 {
		t.Fatalf("bob read %+v", got)
	}
	in := got[0].Attachments[0]
	data, err := bob.c.FetchAttachment(ctx, in)
	if err != nil || !bytes.Equal(data, file) {
		t.Fatalf("bob's copy: %d bytes, %v; want the %d sent", len(data), err, len(file))
	}

	tampered := in
	tampered.SHA256 = a.Key // 32 bytes of base64url, not the blob's digest
	if _, err := bob.c.FetchAttachment(ctx, tampered); !errors.Is(err, client.ErrAttachmentDigest) {
		t.Errorf("an attachment of another digest: %v, want ErrAttachmentDigest", err)
	}
	short := in
	short.Size = 1000
	if _, err := bob.c.FetchAttachment(ctx, short); err == nil {
		t.Error("an attachment larger than its message says was read")
	}
	huge := in
	huge.Size = client.DefaultMaxBlobBytes
	if _, err := bob.c.FetchAttachment(ctx, huge); err == nil {
		t.Error("an attachment over the client's MaxBlobBytes was fetched")
	}
	if _, err := bob.c.DownloadBlob(ctx, in.Blob, int64(len(file))); err == nil {
		t.Error("a blob over the bound given was read")
	}
}
