package e2e

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	"kez.lat/chat/server/testutil"
)

// startRegistry runs the CNCF Distribution registry (built by
// install-k8s-tools.sh) on loopback, storing on disk, until t ends, and
// returns its host:port.
func startRegistry(t *testing.T, c *cluster) string {
	t.Helper()
	addr := testutil.FreeAddr(t)
	dir := t.TempDir()
	config := filepath.Join(dir, "config.yml")
	if err := os.WriteFile(config, []byte(fmt.Sprintf(`version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: %s
http:
  addr: %s
`, filepath.Join(dir, "storage"), addr)), 0o600); err != nil {
		t.Fatal(err)
	}
	// No tracing: the registry would post spans to localhost:4318.
	c.startEnv(t, "registry", []string{"OTEL_TRACES_EXPORTER=none"}, filepath.Join(c.bin, "registry"), "serve", config)
	eventually(t, time.Minute, "the registry answers /v2/", func() error {
		res, err := http.Get("http://" + addr + "/v2/")
		if err != nil {
			return err
		}
		res.Body.Close()
		if res.StatusCode != http.StatusOK {
			return fmt.Errorf("GET /v2/: %d", res.StatusCode)
		}
		return nil
	})
	return addr
}

// The image and the chart, published to an OCI registry as a release
// publishes them, install from it with `helm install oci://`.
func TestTheChartAndImageInstallFromAnOCIRegistry(t *testing.T) {
	c := startCluster(t)
	t.Setenv("KUBECONFIG", c.kubeconfig)
	ctx := context.Background()
	reg := startRegistry(t, c)
	image := kezchatImage(t, kezchatBinary(t))

	// The image's index, every platform of it, pushed by tag.
	const tag = "v0.0.0-e2e"
	ref := pushImage(t, ctx, reg, image, tag)
	lp, err := layout.FromPath(image)
	if err != nil {
		t.Fatal(err)
	}
	index, err := lp.ImageIndex()
	if err != nil {
		t.Fatal(err)
	}
	digest, err := index.Digest()
	if err != nil {
		t.Fatal(err)
	}
	pulled, err := remote.Index(ref, remote.WithContext(ctx))
	if err != nil {
		t.Fatalf("pulling the image index back: %v", err)
	}
	if d, _ := pulled.Digest(); d != digest {
		t.Errorf("the registry serves index %s, pushed %s", d, digest)
	}
	manifest, err := pulled.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	var platforms []string
	for _, m := range manifest.Manifests {
		if m.Platform != nil {
			platforms = append(platforms, m.Platform.OS+"/"+m.Platform.Architecture)
		}
		// Every platform's image is whole in the registry, layers too.
		img, err := pulled.Image(m.Digest)
		if err != nil {
			t.Fatal(err)
		}
		if err := validateLayers(img); err != nil {
			t.Errorf("platform %v: %v", m.Platform, err)
		}
	}
	t.Logf("pushed %s (%s): %v", ref, digest, platforms)

	// The chart, packaged and pushed as `helm push` publishes it.
	packaged := t.TempDir()
	out := c.run(t, "helm", "package", chart, "--destination", packaged)
	tgz := strings.TrimSpace(out[strings.LastIndex(out, ": ")+2:])
	c.run(t, "helm", "push", tgz, "oci://"+reg+"/charts", "--plain-http")
	chartRef := "oci://" + reg + "/charts/kez-chat-operator"
	var md struct {
		Name, Version, AppVersion, Home string
		Annotations                     map[string]string
	}
	if err := yaml.Unmarshal([]byte(c.run(t, "helm", "show", "chart", chartRef, "--plain-http")), &md); err != nil {
		t.Fatal(err)
	}
	if md.Name != "kez-chat-operator" || md.Home == "" || md.Annotations["artifacthub.io/crds"] == "" {
		t.Errorf("helm show chart from the registry: %+v", md)
	}

	// Installed from the registry, with the image from the registry.
	c.run(t, "helm", "install", release, chartRef, "--version", md.Version, "--plain-http",
		"--namespace", releaseNS, "--create-namespace",
		"--set", "image.repository="+reg+"/kez-lat/kezchat", "--set", "image.tag="+tag,
		"--wait", "--timeout=2m")
	var operator appsv1.Deployment
	if err := c.client.Get(ctx, client.ObjectKey{Namespace: releaseNS, Name: release}, &operator); err != nil {
		t.Fatalf("the operator Deployment installed from the registry: %v", err)
	}
	ctr := operator.Spec.Template.Spec.Containers[0]
	if ctr.Image != ref.String() {
		t.Errorf("the operator runs image %s, want %s", ctr.Image, ref)
	}
	// The image KezChats get by default is the same one.
	if v, ok := containerEnv(ctr, "KEZ_IMAGE"); !ok || v != ref.String() {
		t.Errorf("the operator hands KezChats image %q, want %s", v, ref)
	}
	if out := c.run(t, "helm", "list", "--namespace", releaseNS); !strings.Contains(out, "deployed") {
		t.Errorf("helm list:\n%s", out)
	}
	// What a kubelet pulls for this pod is there, for this machine.
	if _, err := remote.Image(ref, remote.WithContext(ctx)); err != nil {
		t.Errorf("pulling %s as a node would: %v", ref, err)
	}
}

func containerEnv(ctr corev1.Container, name string) (string, bool) {
	for _, e := range ctr.Env {
		if e.Name == name {
			return e.Value, true
		}
	}
	return "", false
}

// validateLayers reads every layer of img from the registry and checks
// it against its digest.
func validateLayers(img v1.Image) error {
	layers, err := img.Layers()
	if err != nil {
		return err
	}
	for _, l := range layers {
		rc, err := l.Compressed()
		if err != nil {
			return err
		}
		// Reading to the end makes go-containerregistry verify the digest.
		_, err = io.Copy(io.Discard, rc)
		rc.Close()
		if err != nil {
			return err
		}
	}
	return nil
}
