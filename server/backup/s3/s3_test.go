package s3_test

import (
	"context"
	"errors"
	"io"
	"slices"
	"strings"
	"testing"

	"kez.lat/chat/server/backup"
	"kez.lat/chat/server/backup/s3"
	"kez.lat/chat/server/backup/s3test"
)

func config(srv *s3test.Server) s3.Config {
	return s3.Config{Endpoint: srv.Endpoint, Bucket: srv.Bucket, InsecureHTTP: true, CAFile: srv.CAFile,
		AccessKeyID: srv.AccessKeyID, SecretAccessKey: srv.SecretAccessKey}
}

func TestStoreKeepsListsAndDeletesObjects(t *testing.T) {
	ctx := context.Background()
	srv := s3test.Start(t)
	store, err := s3.New(config(srv))
	if err != nil {
		t.Fatal(err)
	}
	for _, key := range []string{"p/a/server/x", "p/a/server/manifest.json", "p/b/sigserver/y", "q/z"} {
		if err := store.Put(ctx, key, strings.NewReader("data of "+key), -1); err != nil {
			t.Fatal(err)
		}
	}
	keys, err := store.List(ctx, "p/")
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"p/a/server/manifest.json", "p/a/server/x", "p/b/sigserver/y"}; !slices.Equal(keys, want) {
		t.Errorf("List(p/) = %q, want %q", keys, want)
	}
	rc, err := store.Get(ctx, "p/a/server/x")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(rc)
	rc.Close()
	if string(b) != "data of p/a/server/x" {
		t.Errorf("Get = %q", b)
	}
	if _, err := store.Get(ctx, "p/missing"); !errors.Is(err, backup.ErrNotFound) {
		t.Errorf("Get of a missing key: %v, want ErrNotFound", err)
	}
	if err := store.Delete(ctx, "p/a/server/x"); err != nil {
		t.Fatal(err)
	}
	if err := store.Delete(ctx, "p/a/server/x"); err != nil {
		t.Errorf("deleting a missing key: %v", err)
	}
	if _, err := store.Get(ctx, "p/a/server/x"); !errors.Is(err, backup.ErrNotFound) {
		t.Errorf("Get after Delete: %v", err)
	}
}

func TestAnHTTPSEndpointIsTrustedThroughTheCAFile(t *testing.T) {
	ctx := context.Background()
	srv := s3test.StartWith(t, s3test.Options{TLS: true})
	store, err := s3.New(config(srv))
	if err != nil {
		t.Fatal(err)
	}
	if err := store.Put(ctx, "k", strings.NewReader("v"), 1); err != nil {
		t.Fatalf("with --s3-ca-file: %v", err)
	}
	// Without it the system's CAs do not know the server's.
	cfg := config(srv)
	cfg.CAFile = ""
	untrusted, err := s3.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := untrusted.List(ctx, ""); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Errorf("without the CA file: %v, want a certificate error", err)
	}
}

func TestWrongCredentialsAreRefused(t *testing.T) {
	srv := s3test.Start(t)
	cfg := config(srv)
	cfg.SecretAccessKey = "not-the-secret"
	store, err := s3.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	_, err = store.List(context.Background(), "")
	if err == nil || strings.Contains(err.Error(), "not-the-secret") {
		t.Errorf("List with a wrong secret: %v", err)
	}
}

func TestConfigRefusesWhatWouldNotWork(t *testing.T) {
	tests := []struct {
		name string
		cfg  s3.Config
		want string
	}{
		{"no bucket", s3.Config{Endpoint: "https://s3.example.net"}, "--s3-bucket is required"},
		{"no endpoint", s3.Config{Bucket: "b"}, "--s3-endpoint is required"},
		{"plain http", s3.Config{Endpoint: "http://s3.example.net", Bucket: "b"}, "--s3-insecure-http"},
		{"another scheme", s3.Config{Endpoint: "ftp://s3.example.net", Bucket: "b"}, "want https://host[:port]"},
		{"a path", s3.Config{Endpoint: "https://s3.example.net/bucket", Bucket: "b"}, "want only scheme, host and port"},
		{"credentials in the URL", s3.Config{Endpoint: "https://id:secret@s3.example.net", Bucket: "b"}, "want only scheme, host and port"},
		{"a CA file for http", s3.Config{Endpoint: "http://s3.example.net", Bucket: "b", InsecureHTTP: true, CAFile: "/ca.pem"}, "--s3-ca-file is for an https endpoint"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.cfg.Validate()
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Validate: %v, want %q", err, tt.want)
			}
			if err != nil && strings.Contains(err.Error(), "secret") {
				t.Errorf("the error shows the URL's password: %v", err)
			}
		})
	}
	if _, err := s3.New(s3.Config{Endpoint: "https://s3.example.net", Bucket: "b", CAFile: "/nonexistent/ca.pem"}); err == nil || !strings.Contains(err.Error(), "--s3-ca-file") {
		t.Errorf("a missing CA file: %v", err)
	}
}
