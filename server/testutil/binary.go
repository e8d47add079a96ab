package testutil

import (
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
)

// buildKezchat builds the kezchat binary once per test process.
var buildKezchat = sync.OnceValues(func() (string, error) {
	dir, err := os.MkdirTemp("", "kezchat-test-bin")
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "kezchat")
	if out, err := exec.Command("go", "build", "-o", bin, "kez.lat/chat/cmd/kezchat").CombinedOutput(); err != nil {
		return "", &buildError{out: string(out), err: err}
	}
	return bin, nil
})

type buildError struct {
	out string
	err error
}

func (e *buildError) Error() string { return e.err.Error() + "\n" + e.out }

// KezchatBinary is the path of a kezchat binary built from this tree, for
// tests that run it as its own process; it is built once per test process.
func KezchatBinary(t testing.TB) string {
	t.Helper()
	bin, err := buildKezchat()
	if err != nil {
		t.Fatalf("building kezchat: %v", err)
	}
	return bin
}
