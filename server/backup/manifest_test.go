package backup_test

import (
	"encoding/json"
	"strings"
	"testing"

	"kez.lat/chat/server/backup"
)

func TestParseManifestRefusesWhatItCannotRestoreFrom(t *testing.T) {
	good := func() map[string]any {
		return map[string]any{
			"format": 1, "id": "daily-1", "part": "server", "version": "v1", "store": "sqlite",
			"startedAt": "2026-01-01T03:00:00Z", "completedAt": "2026-01-01T03:00:05Z",
			"objects": []any{map[string]any{"name": "database.sqlite.gz", "size": 10, "sha256": strings.Repeat("ab", 32)}},
		}
	}
	tests := []struct {
		name   string
		change func(m map[string]any)
		want   string
	}{
		{"a newer format", func(m map[string]any) { m["format"] = 2 }, "format 2"},
		{"an unknown field", func(m map[string]any) { m["encryption"] = "aes" }, "unknown field"},
		{"an id with a slash", func(m map[string]any) { m["id"] = "../x" }, "manifest id"},
		{"an unknown part", func(m map[string]any) { m["part"] = "nats" }, "manifest part"},
		{"an unknown store", func(m map[string]any) { m["store"] = "postgres" }, "manifest store"},
		{"completed before it started", func(m map[string]any) { m["completedAt"] = "2026-01-01T02:00:00Z" }, "manifest times"},
		{"no objects", func(m map[string]any) { m["objects"] = []any{} }, "no data objects"},
		{"an object named like a path", func(m map[string]any) {
			m["objects"] = []any{map[string]any{"name": "../db", "size": 1, "sha256": strings.Repeat("ab", 32)}}
		}, "object name"},
		{"an object named manifest.json", func(m map[string]any) {
			m["objects"] = []any{map[string]any{"name": "manifest.json", "size": 1, "sha256": strings.Repeat("ab", 32)}}
		}, "object name"},
		{"an object twice", func(m map[string]any) {
			o := map[string]any{"name": "a", "size": 1, "sha256": strings.Repeat("ab", 32)}
			m["objects"] = []any{o, o}
		}, "twice"},
		{"a short digest", func(m map[string]any) {
			m["objects"] = []any{map[string]any{"name": "a", "size": 1, "sha256": "abcd"}}
		}, "sha256"},
		{"a negative size", func(m map[string]any) {
			m["objects"] = []any{map[string]any{"name": "a", "size": -1, "sha256": strings.Repeat("ab", 32)}}
		}, "size -1"},
	}
	raw, _ := json.Marshal(good())
	if _, err := backup.ParseManifest(raw); err != nil {
		t.Fatalf("the good manifest: %v", err)
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := good()
			tt.change(m)
			raw, _ := json.Marshal(m)
			if _, err := backup.ParseManifest(raw); err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("ParseManifest: %v; want an error saying %q", err, tt.want)
			}
		})
	}
	if _, err := backup.ParseManifest(append(raw, []byte(`{}`)...)); err == nil {
		t.Errorf("a manifest with a second JSON value was accepted")
	}
}
