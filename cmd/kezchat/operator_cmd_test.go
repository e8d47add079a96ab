package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/controller-runtime/pkg/client"

	chatv1 "kez.lat/chat/api/v1alpha1"
	"kez.lat/chat/controllers/testenv"
	"kez.lat/chat/server/testutil"
)

func TestOperatorCommandReconcilesAgainstARealAPIServer(t *testing.T) {
	env, cfg, err := testenv.Start()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { env.Stop() })
	path := filepath.Join(t.TempDir(), "kubeconfig")
	if err := testenv.WriteKubeconfig(env, "operator-test", path); err != nil {
		t.Fatal(err)
	}
	t.Setenv("KUBECONFIG", path)

	scheme := runtime.NewScheme()
	clientgoscheme.AddToScheme(scheme)
	chatv1.AddToScheme(scheme)
	k8s, err := client.New(cfg, client.Options{Scheme: scheme})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	for _, ns := range []string{"watched", "ignored"} {
		if err := k8s.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}); err != nil {
			t.Fatal(err)
		}
	}

	metrics, probes := testutil.FreeAddr(t), testutil.FreeAddr(t)
	var logs bytes.Buffer
	done := make(chan int, 1)
	go func() {
		done <- run(ctx, []string{"operator", "--metrics-bind", metrics, "--health-probe-bind", probes,
			"--image", "registry.example/kezchat:v9", "--watch-namespaces", "watched", "--log-format", "text"}, io.Discard, &logs)
	}()

	testutil.WaitFor(t, 30*time.Second, "the operator is ready", func() error {
		resp, err := http.Get("http://" + probes + "/readyz")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("readyz %d", resp.StatusCode)
		}
		return nil
	})
	for _, ns := range []string{"watched", "ignored"} {
		kc := &chatv1.KezChat{ObjectMeta: metav1.ObjectMeta{Name: "chat", Namespace: ns}, Spec: chatv1.KezChatSpec{Domain: "chat.example.org"}}
		if err := k8s.Create(ctx, kc); err != nil {
			t.Fatal(err)
		}
	}
	testutil.WaitFor(t, 30*time.Second, "the server Deployment in the watched namespace", func() error {
		var d appsv1.Deployment
		if err := k8s.Get(ctx, client.ObjectKey{Namespace: "watched", Name: "chat-server"}, &d); err != nil {
			return err
		}
		if img := d.Spec.Template.Spec.Containers[0].Image; img != "registry.example/kezchat:v9" {
			return fmt.Errorf("image %s, want the --image default", img)
		}
		return nil
	})
	resp, err := http.Get("http://" + metrics + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(body), `controller_runtime_reconcile_total{controller="kezchat"`) {
		t.Errorf("metrics lack the reconcile counter:\n%.500s", body)
	}
	var d appsv1.Deployment
	if err := k8s.Get(ctx, client.ObjectKey{Namespace: "ignored", Name: "chat-server"}, &d); err == nil {
		t.Error("a KezChat outside --watch-namespaces was reconciled")
	}

	cancel()
	select {
	case code := <-done:
		if code != 0 {
			t.Errorf("operator exited %d after its context ended; logs:\n%s", code, logs.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatal("operator did not stop")
	}
}

func TestOperatorRefusesBadUpgradePacing(t *testing.T) {
	for _, tt := range []struct{ args, want string }{
		{"--max-concurrent-upgrades=-1", "--max-concurrent-upgrades must be 0 or more"},
		{"--upgrade-timeout=0s", "--upgrade-timeout must be positive"},
		{"--upgrade-timeout=soon", "invalid value"},
	} {
		t.Run(tt.args, func(t *testing.T) {
			var stderr bytes.Buffer
			// The settings are checked before the cluster is looked for.
			t.Setenv("KUBECONFIG", filepath.Join(t.TempDir(), "none"))
			if code := run(context.Background(), []string{"operator", tt.args}, io.Discard, &stderr); code == 0 || !strings.Contains(stderr.String(), tt.want) {
				t.Fatalf("exit %d, stderr %q: want an error with %q", code, stderr.String(), tt.want)
			}
		})
	}
}
