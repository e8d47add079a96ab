// Package s3test runs a real S3 server for tests: versitygw with its POSIX
// backend, on a loopback port, storing under a temporary directory. The
// binary is built from hack/tools/versitygw by hack/tools/install-k8s-tools.sh
// (make versitygw); set KEZ_VERSITYGW to use another build. It is never
// linked into kezchat (cmd/kezchat's tests check).
package s3test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
)

// Server is a running versitygw with one bucket.
type Server struct {
	// Endpoint is http://127.0.0.1:<port>.
	Endpoint string
	// Bucket exists and is empty at start.
	Bucket string
	// AccessKeyID and SecretAccessKey are the root user's.
	AccessKeyID, SecretAccessKey string
	// Dir is the POSIX backend's root: Dir/Bucket/<key> is an object's file.
	Dir string
}

// ObjectPath is the file that holds key's data, for tests that damage it.
func (s *Server) ObjectPath(key string) string {
	return filepath.Join(s.Dir, s.Bucket, filepath.FromSlash(key))
}

// Env is the environment `kezchat backup` reads the credentials from.
func (s *Server) Env() []string {
	return []string{"AWS_ACCESS_KEY_ID=" + s.AccessKeyID, "AWS_SECRET_ACCESS_KEY=" + s.SecretAccessKey}
}

// Start starts versitygw and stops it when the test ends.
func Start(t testing.TB) *Server {
	t.Helper()
	bin, err := binary()
	if err != nil {
		t.Fatalf("versitygw: %v", err)
	}
	s := &Server{Bucket: "kez-backups", AccessKeyID: "kezTestAccess", SecretAccessKey: randomHex(t, 20), Dir: t.TempDir()}
	addr := freeAddr(t)
	s.Endpoint = "http://" + addr
	if err := os.Mkdir(filepath.Join(s.Dir, s.Bucket), 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "--port", addr, "--quiet", "posix", s.Dir)
	// The root credentials go through the environment, not the command line
	// that ps shows.
	cmd.Env = append(os.Environ(), "ROOT_ACCESS_KEY_ID="+s.AccessKeyID, "ROOT_SECRET_ACCESS_KEY="+s.SecretAccessKey)
	var out lockedBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting versitygw: %v", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-exited
	})

	client, err := minio.New(addr, &minio.Options{Creds: credentials.NewStaticV4(s.AccessKeyID, s.SecretAccessKey, ""), BucketLookup: minio.BucketLookupPath})
	if err != nil {
		t.Fatal(err)
	}
	// Ready when it answers an authenticated request that sees the bucket.
	deadline := time.Now().Add(30 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		ok, err := client.BucketExists(ctx, s.Bucket)
		cancel()
		if err == nil && ok {
			return s
		}
		if err == nil {
			err = fmt.Errorf("bucket %s not found", s.Bucket)
		}
		select {
		case werr := <-exited:
			t.Fatalf("versitygw exited: %v\n%s", werr, out.String())
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("versitygw at %s not ready after 30s: %v\n%s", addr, err, out.String())
		}
	}
}

// binary finds versitygw: $KEZ_VERSITYGW, or the one install-k8s-tools.sh
// builds (at once when it is built already).
var binary = sync.OnceValues(func() (string, error) {
	if p := os.Getenv("KEZ_VERSITYGW"); p != "" {
		return p, nil
	}
	gomod, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("finding the module root: %w", err)
	}
	root := filepath.Dir(strings.TrimSpace(string(gomod)))
	cmd := exec.Command("bash", filepath.Join(root, "hack/tools/install-k8s-tools.sh"), "versitygw")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("hack/tools/install-k8s-tools.sh versitygw: %w\n%s", err, stderr.String())
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	return filepath.Join(lines[len(lines)-1], "versitygw"), nil
})

func freeAddr(t testing.TB) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

func randomHex(t testing.TB, n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
