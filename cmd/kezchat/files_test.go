package main

import (
	"bytes"
	"crypto/rand"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestAFileSentFromATerminalArrivesByteIdentical(t *testing.T) {
	tt := newTerminals(t, "alice", "bob", "carol")
	file := make([]byte, 200<<10)
	_, _ = rand.Read(file)
	path := filepath.Join(tt.dir, "report.pdf")
	if err := os.WriteFile(path, file, 0o600); err != nil {
		t.Fatal(err)
	}
	tt.run("alice", runSend, "--file", path, "bob", "the report")
	tt.run("alice", runSend, "--file", path, "bob") // a file alone, and a name taken
	out := tt.inbox("bob")
	saved := []string{filepath.Join(tt.files("bob"), "report.pdf"), filepath.Join(tt.files("bob"), "report (2).pdf")}
	for _, want := range []string{"alice: the report\n    file report.pdf (204800 bytes, application/pdf) saved to " + saved[0] + "\n",
		"alice:\n    file report.pdf (204800 bytes, application/pdf) saved to " + saved[1] + "\n"} {
		if !strings.Contains(out, want) {
			t.Errorf("bob's inbox lacks %q:\n%s", want, out)
		}
	}
	for _, p := range saved {
		if b, err := os.ReadFile(p); err != nil || !bytes.Equal(b, file) {
			t.Errorf("%s: %d bytes, %v; want the %d sent", p, len(b), err, len(file))
		}
	}

	tt.group("alice", "create", "team", "bob", "carol")
	tt.group("alice", "send", "--file", path, "team", "for all")
	for h, files := range map[string]int{"bob": 3, "carol": 1} {
		out := tt.inbox(h)
		if !strings.Contains(out, "#team alice: for all\n    file report.pdf") {
			t.Errorf("%s's inbox:\n%s", h, out)
		}
		entries, err := os.ReadDir(tt.files(h))
		if err != nil || len(entries) != files {
			t.Fatalf("%s's files: %d, %v; want %d", h, len(entries), err, files)
		}
		for _, e := range entries {
			if b, err := os.ReadFile(filepath.Join(tt.files(h), e.Name())); err != nil || !bytes.Equal(b, file) {
				t.Errorf("%s's copy %s: %d bytes, %v", h, e.Name(), len(b), err)
			}
		}
	}
}
