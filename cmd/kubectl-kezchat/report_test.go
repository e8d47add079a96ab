package main

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"

	chatv1 "kez.lat/chat/api/v1alpha1"
)

// sentinel is a credential the report must never hold, put wherever a
// careless collector would pick it up.
const sentinel = "Sentinel7f3c9a1eDoNotLeak"

func untar(t *testing.T, r io.Reader) map[string]string {
	t.Helper()
	gz, err := gzip.NewReader(r)
	if err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(gz)
	files := map[string]string{}
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			return files
		}
		if err != nil {
			t.Fatal(err)
		}
		data, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		_, name, _ := strings.Cut(hdr.Name, "/") // under the report's folder
		files[name] = string(data)
	}
}

// pathLog records the paths of the requests a client sends.
type pathLog struct {
	mu    sync.Mutex
	paths []string
}

func (l *pathLog) wrap(next http.RoundTripper) http.RoundTripper {
	return roundTripperFunc(func(req *http.Request) (*http.Response, error) {
		l.mu.Lock()
		l.paths = append(l.paths, req.Method+" "+req.URL.Path)
		l.mu.Unlock()
		return next.RoundTrip(req)
	})
}

type roundTripperFunc func(*http.Request) (*http.Response, error)

func (f roundTripperFunc) RoundTrip(req *http.Request) (*http.Response, error) { return f(req) }

func TestReportHoldsNoSecretValueAndNeverReadsSecrets(t *testing.T) {
	ctx := context.Background()
	ns := testNamespace(t)
	const name = "team"

	kc := newKezChat(ns, name)
	kc.Annotations = map[string]string{
		lastApplied: `{"spec":{"server":{"env":[{"name":"KEZ_SMTP_PASSWORD","value":"` + sentinel + `"}]}}}`,
	}
	kc.Spec.Server.Env = []corev1.EnvVar{
		{Name: "KEZ_SMTP_PASSWORD", Value: sentinel},
		{Name: "KEZ_MAX_PENDING", Value: "5000"},
	}
	kc.Spec.Ingress.Annotations = map[string]string{
		"example.com/api-token":          sentinel,
		"cert-manager.io/cluster-issuer": "letsencrypt",
	}
	kc.Spec.Backup = &chatv1.BackupSpec{ObjectStore: chatv1.ObjectStoreSpec{
		Endpoint: "https://s3.example.org", Bucket: "backups", CredentialsSecret: chatv1.SecretReference{Name: "team-backup-s3"},
	}}
	mustCreate(t, kc)
	st := readyStatus(kc)
	kc.Status = st
	setStatus(t, kc)

	// The Secrets: one the KezChat names, one the operator made, both
	// labeled as the operator labels its children.
	mustCreate(t,
		&corev1.Secret{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "team-backup-s3", Labels: operatorLabels(name, componentServer),
				Annotations: map[string]string{"note": sentinel}},
			StringData: map[string]string{chatv1.ObjectStoreAccessKeyIDKey: "AKIA", chatv1.ObjectStoreSecretAccessKeyKey: sentinel},
		},
		&corev1.Secret{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "team-vapid", Labels: operatorLabels(name, componentServer)},
			StringData: map[string]string{"private-key.pem": "-----BEGIN PRIVATE KEY-----\n" + sentinel + "\n-----END PRIVATE KEY-----\n"},
		},
	)
	mustCreate(t,
		serverDeployment(ns, name, []corev1.EnvVar{
			{Name: "KEZ_DOMAIN", Value: "team.example.org"},
			{Name: "KEZ_SMTP_PASSWORD", Value: sentinel},
			{Name: "KEZ_NATS_PASSWORD", ValueFrom: &corev1.EnvVarSource{SecretKeyRef: &corev1.SecretKeySelector{
				LocalObjectReference: corev1.LocalObjectReference{Name: "team-nats-auth"}, Key: "password",
			}}},
		}, []string{"server", "--bind=:6969", "--nats-password=" + sentinel}),
		serverService(ns, name),
		serverPVC(ns, name, "5Gi"),
		&corev1.ConfigMap{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "team-nats-config", Labels: operatorLabels(name, componentNATS)},
			Data:       map[string]string{"nats.conf": "authorization {\n  users: [ { user: kez, password: $NATS_PASSWORD } ]\n  token: " + sentinel + "\n}\n"},
			BinaryData: map[string][]byte{"blob": []byte(sentinel)},
		},
		// A ConfigMap of the user's, not the operator's: not in the report.
		&corev1.ConfigMap{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "users-own", Labels: map[string]string{labelInstance: name}},
			Data:       map[string]string{"x": "y"},
		},
	)
	pod := serverPod(ns, name, "team-server-abc", "node-a")
	mustCreate(t, pod)
	setRunning(t, pod, true)
	mustCreate(t, &corev1.Event{
		ObjectMeta:     metav1.ObjectMeta{Namespace: ns, Name: "team.1"},
		InvolvedObject: corev1.ObjectReference{Kind: "KezChat", APIVersion: chatv1.GroupVersion.String(), Namespace: ns, Name: name, UID: kc.UID},
		Reason:         "LoginFailed", Message: "login failed: token=" + sentinel, Type: corev1.EventTypeWarning,
		FirstTimestamp: metav1.Now(), LastTimestamp: metav1.Now(),
	})
	nightly := completedBackup(ns, "team-nightly", name, time.Now().Add(-5*time.Hour), 4096)
	backupStatus := nightly.Status
	mustCreate(t, nightly)
	nightly.Status = backupStatus
	setStatus(t, nightly)

	var log pathLog
	cfg := rest.CopyConfig(testConfig)
	cfg.WrapTransport = log.wrap
	k, err := newKube(cfg, ns)
	if err != nil {
		t.Fatal(err)
	}
	b, err := collectReport(ctx, k, name, reportOptions{logLines: 100}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	var archive bytes.Buffer
	if err := b.writeTarGz(&archive, "kezchat-report", time.Now()); err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(archive.Bytes(), []byte(sentinel)) {
		t.Error("the compressed bundle holds the sentinel")
	}
	files := untar(t, &archive)

	for name, data := range files {
		if strings.Contains(data, sentinel) {
			t.Errorf("%s holds the sentinel:\n%s", name, data)
		}
	}
	for _, p := range log.paths {
		if strings.Contains(p, "/secrets") {
			t.Errorf("the report read Secrets: %s", p)
		}
	}
	for _, want := range []string{
		"README.txt", "kezchat.yaml", "kezchatbackups.yaml", "status.txt", "events.yaml", "secrets.txt",
		"deployments.yaml", "statefulsets.yaml", "services.yaml", "configmaps.yaml", "persistentvolumeclaims.yaml",
		"networkpolicies.yaml", "ingresses.yaml", "pods.yaml", "jobs.yaml", "errors.txt",
	} {
		if _, ok := files[want]; !ok {
			t.Errorf("the bundle has no %s; it has %v", want, keys(files))
		}
	}
	contains := []struct{ file, want string }{
		{"kezchat.yaml", "KEZ_MAX_PENDING"}, // an innocent env value stays
		{"kezchat.yaml", "value: \"5000\""}, // ...with its value
		{"kezchat.yaml", "cert-manager.io/cluster-issuer: letsencrypt"},
		{"kezchat.yaml", "example.com/api-token: REDACTED"},
		{"deployments.yaml", "--nats-password=REDACTED"},
		{"deployments.yaml", "name: team-nats-auth"}, // a reference stays
		{"configmaps.yaml", "$NATS_PASSWORD"},        // so does a $reference
		{"configmaps.yaml", "blob: REDACTED (binary)"},
		{"kezchatbackups.yaml", "team-nightly"},
		{"pods.yaml", "team-server-abc"},
		{"events.yaml", "login failed: token=REDACTED"},
		{"secrets.txt", "team-backup-s3\tKezChat spec.backup.objectStore.credentialsSecret"},
		{"secrets.txt", "team-vapid\tDeployment team-server volume vapid"},
		{"secrets.txt", "team-nats-auth\tDeployment team-server container server env KEZ_NATS_PASSWORD"},
		{"status.txt", "Ready"},
		{"status.txt", "5h ago"},                                       // the KezChatBackup's completion
		{"errors.txt", "logs of pod team-server-abc container server"}, // no kubelet serves them
	}
	for _, c := range contains {
		if !strings.Contains(files[c.file], c.want) {
			t.Errorf("%s does not hold %q:\n%s", c.file, c.want, files[c.file])
		}
	}
	if strings.Contains(files["configmaps.yaml"], "users-own") {
		t.Error("the report took a ConfigMap the operator did not make")
	}
	if strings.Contains(files["kezchat.yaml"], "managedFields") {
		t.Error("managedFields were kept")
	}
}

func keys(m map[string]string) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	return out
}

func TestReportCommandWritesTheBundleFile(t *testing.T) {
	ns := testNamespace(t)
	mustCreate(t, newKezChat(ns, "solo"))
	path := filepath.Join(t.TempDir(), "r.tar.gz")
	code, _, stderr := runPlugin(t, "report", "solo", "-n", ns, "-f", path)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	info, _ := f.Stat()
	if info.Mode().Perm() != 0o600 {
		t.Errorf("the bundle's mode is %v, want 0600", info.Mode().Perm())
	}
	files := untar(t, f)
	if !strings.Contains(files["README.txt"], "KezChat "+ns+"/solo") {
		t.Errorf("README.txt:\n%s", files["README.txt"])
	}
	if !strings.Contains(files["kezchat.yaml"], "domain: solo.example.org") {
		t.Errorf("kezchat.yaml:\n%s", files["kezchat.yaml"])
	}
}

func TestReportOfAMissingKezChatFails(t *testing.T) {
	ns := testNamespace(t)
	code, _, stderr := runPlugin(t, "report", "nope", "-n", ns, "-f", filepath.Join(t.TempDir(), "r.tar.gz"))
	if code != 1 || !strings.Contains(stderr, `no such KezChat "nope" in namespace `+ns) {
		t.Fatalf("exit %d, stderr %q", code, stderr)
	}
}
