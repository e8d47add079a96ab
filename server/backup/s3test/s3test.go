// Package s3test runs a real S3 server for tests: versitygw with its POSIX
// backend, on a loopback port, storing under a temporary directory. The
// binary is built from hack/tools/versitygw by hack/tools/install-k8s-tools.sh
// (make versitygw); set KEZ_VERSITYGW to use another build. It is never
// linked into kezchat (cmd/kezchat's tests check).
package s3test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"

	"kez.lat/chat/server/testutil"
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
	// CAFile is the PEM of the CA that signed the server's certificate,
	// with Options.TLS.
	CAFile string
}

// ObjectPath is the file that holds key's data, for tests that damage it.
func (s *Server) ObjectPath(key string) string {
	return filepath.Join(s.Dir, s.Bucket, filepath.FromSlash(key))
}

// Env is the environment `kezchat backup` reads the credentials from.
func (s *Server) Env() []string {
	return []string{"AWS_ACCESS_KEY_ID=" + s.AccessKeyID, "AWS_SECRET_ACCESS_KEY=" + s.SecretAccessKey}
}

// Options change the server Start runs.
type Options struct {
	// TLS serves https with a certificate for 127.0.0.1 from a CA of the
	// test's own, whose PEM file is Server.CAFile.
	TLS bool
}

// Start starts versitygw and stops it when the test ends.
func Start(t testing.TB) *Server { return StartWith(t, Options{}) }

// StartWith starts versitygw as o says and stops it when the test ends.
func StartWith(t testing.TB, o Options) *Server {
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
	args := []string{"--port", addr, "--quiet"}
	var transport http.RoundTripper
	if o.TLS {
		certs := t.TempDir()
		pool := writeCerts(t, certs)
		s.CAFile = filepath.Join(certs, "ca.pem")
		s.Endpoint = "https://" + addr
		args = append(args, "--cert", filepath.Join(certs, "server.pem"), "--key", filepath.Join(certs, "server-key.pem"))
		transport = &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}
	}
	cmd := exec.Command(bin, append(args, "posix", s.Dir)...)
	// The root credentials go through the environment, not the command line
	// that ps shows.
	cmd.Env = append(os.Environ(), "ROOT_ACCESS_KEY_ID="+s.AccessKeyID, "ROOT_SECRET_ACCESS_KEY="+s.SecretAccessKey)
	var out testutil.LockedBuffer
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

	client, err := minio.New(addr, &minio.Options{Creds: credentials.NewStaticV4(s.AccessKeyID, s.SecretAccessKey, ""),
		BucketLookup: minio.BucketLookupPath, Secure: o.TLS, Transport: transport})
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

// writeCerts writes a CA (ca.pem) and a certificate it signed for
// 127.0.0.1 (server.pem, server-key.pem) to dir, and returns a pool of the CA.
func writeCerts(t testing.TB, dir string) *x509.CertPool {
	t.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	ca := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "kez-chat s3test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, ca, ca, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, _ := x509.ParseCertificate(caDER)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	leaf := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "127.0.0.1"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	leafDER, err := x509.CreateCertificate(rand.Reader, leaf, caCert, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	for name, block := range map[string]*pem.Block{
		"ca.pem":         {Type: "CERTIFICATE", Bytes: caDER},
		"server.pem":     {Type: "CERTIFICATE", Bytes: leafDER},
		"server-key.pem": {Type: "PRIVATE KEY", Bytes: keyDER},
	} {
		if err := os.WriteFile(filepath.Join(dir, name), pem.EncodeToMemory(block), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	pool := x509.NewCertPool()
	pool.AddCert(caCert)
	return pool
}

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
