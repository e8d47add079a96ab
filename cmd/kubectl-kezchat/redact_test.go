package main

import (
	"reflect"
	"testing"
)

func TestRedactText(t *testing.T) {
	cases := []struct{ name, in, want string }{
		{"plain text stays", "listening on :6969", "listening on :6969"},
		{"key=value", "login token=abc123 ok", "login token=REDACTED ok"},
		{"key: value", "password: hunter2", "password: REDACTED"},
		{"a $reference stays", "password: $NATS_PASSWORD", "password: $NATS_PASSWORD"},
		{"json field", `{"level":"info","api_key":"k-123","msg":"hi"}`, `{"level":"info","api_key":"REDACTED","msg":"hi"}`},
		{"json field named secret", `{"client_secret": "xyz"}`, `{"client_secret": "REDACTED"}`},
		{"bearer", "Authorization: Bearer abc.def", "Authorization: REDACTED"},
		{"bearer alone", "sent bearer abc.def-ghi", "sent bearer REDACTED"},
		{"jwt", "got eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJ4In0.c2ln for x", "got REDACTED for x"},
		{"url password", "nats://kez:s3cret@nats:4222", "nats://REDACTED@nats:4222"},
		{"url without password stays", "https://chat.example.org/v1", "https://chat.example.org/v1"},
		{"pem", "key:\n-----BEGIN PRIVATE KEY-----\nMIGH\n-----END PRIVATE KEY-----\nafter", "key:\nREDACTED\nafter"},
		{"cut-off pem", "-----BEGIN PRIVATE KEY-----\nMIGH", "REDACTED"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := redactText(c.in); got != c.want {
				t.Errorf("redactText(%q) = %q, want %q", c.in, got, c.want)
			}
		})
	}
}

func TestRedactObject(t *testing.T) {
	cases := []struct {
		name    string
		in, out map[string]any
	}{
		{"managedFields go",
			map[string]any{"metadata": map[string]any{"name": "a", "managedFields": []any{map[string]any{"manager": "x"}}}},
			map[string]any{"metadata": map[string]any{"name": "a"}}},
		{"annotations: by key, by value, last-applied; bookkeeping stays",
			map[string]any{"metadata": map[string]any{"annotations": map[string]any{
				"example.com/api-token":             "short",
				"example.com/note":                  "aGVsbG8gd29ybGQgdGhpcyBpcyBhIHRva2VuIDEyMw==",
				"cert-manager.io/cluster-issuer":    "letsencrypt",
				"chat.kez.lat/config-hash":          "0123456789abcdef0123456789abcdef",
				"chat.kez.lat/rotate-vapid-key":     "2024-01",
				lastApplied:                         `{"spec":{}}`,
				"deployment.kubernetes.io/revision": "3",
			}}},
			map[string]any{"metadata": map[string]any{"annotations": map[string]any{
				"example.com/api-token":             redacted,
				"example.com/note":                  redacted,
				"cert-manager.io/cluster-issuer":    "letsencrypt",
				"chat.kez.lat/config-hash":          "0123456789abcdef0123456789abcdef",
				"chat.kez.lat/rotate-vapid-key":     "2024-01",
				lastApplied:                         redacted + " (holds every applied field's value)",
				"deployment.kubernetes.io/revision": "3",
			}}}},
		{"env: sensitive names and credential values; references stay",
			map[string]any{"spec": map[string]any{"containers": []any{map[string]any{"env": []any{
				map[string]any{"name": "KEZ_DOMAIN", "value": "chat.example.org"},
				map[string]any{"name": "DB_PASSWORD", "value": "hunter2"},
				map[string]any{"name": "UPSTREAM", "value": "https://u:p@host/"},
				map[string]any{"name": "KEZ_NATS_PASSWORD", "value": "$(NATS_PASSWORD)"},
				map[string]any{"name": "FROM", "valueFrom": map[string]any{"secretKeyRef": map[string]any{"name": "s", "key": "k"}}},
			}}}}},
			map[string]any{"spec": map[string]any{"containers": []any{map[string]any{"env": []any{
				map[string]any{"name": "KEZ_DOMAIN", "value": "chat.example.org"},
				map[string]any{"name": "DB_PASSWORD", "value": redacted},
				map[string]any{"name": "UPSTREAM", "value": redacted},
				map[string]any{"name": "KEZ_NATS_PASSWORD", "value": "$(NATS_PASSWORD)"},
				map[string]any{"name": "FROM", "valueFrom": map[string]any{"secretKeyRef": map[string]any{"name": "s", "key": "k"}}},
			}}}}}},
		{"args: sensitive flags and tokens",
			map[string]any{"args": []any{"server", "--bind=:6969", "--auth-token=abc", "Bearer xyz", "--domain=chat.example.org"}},
			map[string]any{"args": []any{"server", "--bind=:6969", "--auth-token=" + redacted, redacted, "--domain=chat.example.org"}}},
		{"podAnnotations of a KezChat",
			map[string]any{"spec": map[string]any{"server": map[string]any{"podAnnotations": map[string]any{"vault.io/secret": "x", "team": "a"}}}},
			map[string]any{"spec": map[string]any{"server": map[string]any{"podAnnotations": map[string]any{"vault.io/secret": redacted, "team": "a"}}}}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			redactObject(c.in)
			if !reflect.DeepEqual(c.in, c.out) {
				t.Errorf("got  %v\nwant %v", c.in, c.out)
			}
		})
	}
}
