package e2e

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	chatv1 "kez.lat/chat/api/v1alpha1"
	"kez.lat/chat/server/testutil"
)

// runOperatorAsDeployed runs `kezchat operator` with the settings the
// chart's operator Deployment gives it (its KEZ_ environment: the image,
// the upgrade pacing), as that pod would run if kwok ran containers. It
// returns a stop function for an upgrade to replace it.
func (c *cluster) runOperatorAsDeployed(t *testing.T, bin, name string) (stop func()) {
	t.Helper()
	var d appsv1.Deployment
	if err := c.client.Get(context.Background(), client.ObjectKey{Namespace: releaseNS, Name: release}, &d); err != nil {
		t.Fatalf("the chart's operator Deployment: %v", err)
	}
	var env []string
	for _, e := range d.Spec.Template.Spec.Containers[0].Env {
		if strings.HasPrefix(e.Name, "KEZ_") && e.ValueFrom == nil {
			env = append(env, e.Name+"="+e.Value)
		}
	}
	probes := testutil.FreeAddr(t)
	// The flags below win over the environment: one process, off the
	// cluster's network.
	stop = c.startEnv(t, name, env, bin, "operator", "--leader-elect=false",
		"--metrics-bind=0", "--health-probe-bind="+probes, "--log-format=text")
	waitReadyz(t, time.Minute, name+" ready", "http://"+probes+"/readyz")
	return stop
}

// upgradeWatch follows, by watching, the KezChats of a namespace and
// their server and sig-server Deployments during an operator upgrade.
type upgradeWatch struct {
	mu sync.Mutex
	// mostHolding is the most KezChats seen holding an upgrade slot at
	// once; queued, those ever seen Queued.
	mostHolding int
	holding     map[string]bool
	queued      map[string]bool
	// mostRolling is the most KezChats seen at once with a Deployment on
	// the new image that has not rolled out.
	mostRolling int
	unfinished  map[string]map[string]bool // KezChat -> Deployments rolling to newImage
	newImage    string
	stop        func()
}

func (c *cluster) watchUpgrade(t *testing.T, ns, newImage string) *upgradeWatch {
	t.Helper()
	cfg, err := clientcmd.BuildConfigFromFlags("", c.kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	wc, err := client.NewWithWatch(cfg, client.Options{Scheme: c.client.Scheme()})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	kezChats, err := wc.Watch(ctx, &chatv1.KezChatList{}, client.InNamespace(ns))
	if err != nil {
		t.Fatal(err)
	}
	deployments, err := wc.Watch(ctx, &appsv1.DeploymentList{}, client.InNamespace(ns),
		client.MatchingLabels{"app.kubernetes.io/managed-by": "kez-chat-operator"})
	if err != nil {
		t.Fatal(err)
	}
	w := &upgradeWatch{holding: map[string]bool{}, queued: map[string]bool{}, unfinished: map[string]map[string]bool{}, newImage: newImage}
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		for ev := range kezChats.ResultChan() {
			if kc, ok := ev.Object.(*chatv1.KezChat); ok {
				w.sawKezChat(ev.Type, kc)
			}
		}
	}()
	go func() {
		defer wg.Done()
		for ev := range deployments.ResultChan() {
			if d, ok := ev.Object.(*appsv1.Deployment); ok {
				w.sawDeployment(ev.Type, d)
			}
		}
	}()
	var once sync.Once
	w.stop = func() {
		once.Do(func() {
			kezChats.Stop()
			deployments.Stop()
			cancel()
			wg.Wait()
		})
	}
	t.Cleanup(w.stop)
	return w
}

func (w *upgradeWatch) sawKezChat(typ watch.EventType, kc *chatv1.KezChat) {
	w.mu.Lock()
	defer w.mu.Unlock()
	phase := chatv1.UpgradePhase("")
	if kc.Status.Upgrade != nil {
		phase = kc.Status.Upgrade.Phase
	}
	w.holding[kc.Name] = typ != watch.Deleted && phase.HoldsSlot()
	if phase == chatv1.UpgradeQueued {
		w.queued[kc.Name] = true
	}
	n := 0
	for _, h := range w.holding {
		if h {
			n++
		}
	}
	w.mostHolding = max(w.mostHolding, n)
}

func (w *upgradeWatch) sawDeployment(typ watch.EventType, d *appsv1.Deployment) {
	w.mu.Lock()
	defer w.mu.Unlock()
	instance := d.Labels["app.kubernetes.io/instance"]
	if w.unfinished[instance] == nil {
		w.unfinished[instance] = map[string]bool{}
	}
	st := d.Status
	want := ptr.Deref(d.Spec.Replicas, 1)
	rolledOut := st.ObservedGeneration >= d.Generation && st.UpdatedReplicas == want && st.Replicas == want && st.AvailableReplicas == want
	w.unfinished[instance][d.Name] = typ != watch.Deleted && d.Spec.Template.Spec.Containers[0].Image == w.newImage && !rolledOut
	n := 0
	for _, ds := range w.unfinished {
		if slices.Contains(mapValues(ds), true) {
			n++
		}
	}
	w.mostRolling = max(w.mostRolling, n)
}

func mapValues(m map[string]bool) []bool {
	var out []bool
	for _, v := range m {
		out = append(out, v)
	}
	return out
}

// TestOperatorUpgradeRollsKezChatsAFewAtATime: helm upgrade of the
// operator to a new image tag rolls the KezChats that name no image at
// most operator.maxConcurrentUpgrades at a time, leaves a pinned one
// alone, records the new version in status and the VERSION column, and
// keeps every volume.
func TestOperatorUpgradeRollsKezChatsAFewAtATime(t *testing.T) {
	c := startCluster(t)
	t.Setenv("KUBECONFIG", c.kubeconfig)
	ctx := context.Background()
	bin := kezchatBinary(t)
	const ns, maxUpgrades = "chats", 2
	const pinnedImage = "registry.example/kezchat:pinned"
	names := []string{"alpha", "bravo", "charlie", "delta"}

	c.run(t, "helm", "install", release, chart, "--namespace", releaseNS, "--create-namespace",
		"--set", "image.tag=e2e-1", "--wait", "--timeout=2m")
	stopOperator := c.runOperatorAsDeployed(t, bin, "operator-e2e-1")

	c.run(t, "kubectl", "create", "namespace", ns)
	for _, n := range append(slices.Clone(names), "pinned") {
		kc := &chatv1.KezChat{
			ObjectMeta: metav1.ObjectMeta{Name: n, Namespace: ns},
			// No NATS: two volumes each, for the cluster's sixteen.
			Spec: chatv1.KezChatSpec{Domain: n + ".example.org", NATS: chatv1.NATSSpec{Enabled: ptr.To(false)}},
		}
		if n == "pinned" {
			kc.Spec.Image = pinnedImage
		}
		if err := c.client.Create(ctx, kc); err != nil {
			t.Fatal(err)
		}
	}
	for _, n := range names {
		if kc := c.waitReady(t, ns, n); kc.Status.Server == nil || kc.Status.Server.Version != "e2e-1" {
			t.Fatalf("%s runs %+v, want version e2e-1", n, kc.Status.Server)
		}
	}
	c.waitReady(t, ns, "pinned")
	volumes := c.boundVolumes(t, ns)
	if len(volumes) != 2*(len(names)+1) {
		t.Fatalf("volumes %v, want two per KezChat", volumes)
	}

	// helm upgrade to the next tag, with two upgrades at a time; the
	// operator pod is replaced (here: the process, with its new settings).
	c.run(t, "helm", "upgrade", release, chart, "--namespace", releaseNS, "--reuse-values",
		"--set", "image.tag=e2e-2", "--set", fmt.Sprintf("operator.maxConcurrentUpgrades=%d", maxUpgrades), "--wait", "--timeout=2m")
	var operator appsv1.Deployment
	if err := c.client.Get(ctx, client.ObjectKey{Namespace: releaseNS, Name: release}, &operator); err != nil {
		t.Fatal(err)
	}
	newImage := operator.Spec.Template.Spec.Containers[0].Image
	if !strings.HasSuffix(newImage, ":e2e-2") {
		t.Fatalf("operator image after the upgrade %s", newImage)
	}
	w := c.watchUpgrade(t, ns, newImage)
	stopOperator()
	c.runOperatorAsDeployed(t, bin, "operator-e2e-2")

	for _, n := range names {
		eventually(t, stepTimeout, n+" upgraded", func() error {
			kc := c.kezChat(t, ns, n)
			ready := meta.FindStatusCondition(kc.Status.Conditions, chatv1.ConditionReady)
			if kc.Status.Upgrade != nil || kc.Status.Server == nil || kc.Status.Server.Image != newImage ||
				kc.Status.SigServer == nil || kc.Status.SigServer.Version != "e2e-2" || ready == nil || ready.Status != metav1.ConditionTrue {
				return fmt.Errorf("server %+v, sig-server %+v, upgrade %+v, Ready %+v", kc.Status.Server, kc.Status.SigServer, kc.Status.Upgrade, ready)
			}
			return nil
		})
	}
	w.stop()
	w.mu.Lock()
	mostHolding, mostRolling, queued := w.mostHolding, w.mostRolling, len(w.queued)
	w.mu.Unlock()
	t.Logf("watched: at most %d KezChats holding an upgrade slot, %d rolling at once; %d queued", mostHolding, mostRolling, queued)
	if mostHolding > maxUpgrades || mostRolling > maxUpgrades {
		t.Errorf("%d KezChats held upgrade slots and %d rolled at once; at most %d may", mostHolding, mostRolling, maxUpgrades)
	}
	if mostRolling == 0 || queued < len(names)-maxUpgrades {
		t.Errorf("watched %d rolling at once and %d queued: the upgrade was not seen", mostRolling, queued)
	}

	// The printer column shows the version.
	out := c.run(t, "kubectl", "get", "kezchats", "--namespace", ns)
	for _, line := range strings.Split(strings.TrimSpace(out), "\n")[1:] {
		want := "e2e-2"
		if strings.HasPrefix(line, "pinned ") {
			want = "pinned"
		}
		if !slices.Contains(strings.Fields(line), want) {
			t.Errorf("kubectl get kezchats: %q lacks VERSION %s\n%s", line, want, out)
		}
	}
	if !strings.Contains(strings.SplitN(out, "\n", 2)[0], "VERSION") {
		t.Errorf("no VERSION column:\n%s", out)
	}

	// The pinned KezChat never moved.
	var d appsv1.Deployment
	if err := c.client.Get(ctx, client.ObjectKey{Namespace: ns, Name: "pinned-server"}, &d); err != nil {
		t.Fatal(err)
	}
	if img := d.Spec.Template.Spec.Containers[0].Image; img != pinnedImage || w.queued["pinned"] {
		t.Errorf("pinned KezChat: image %s, queued %v", img, w.queued["pinned"])
	}

	// Every volume is the one from before, still bound to its volume.
	if after := c.boundVolumes(t, ns); !maps.Equal(after, volumes) {
		t.Errorf("volumes before %v, after %v", volumes, after)
	}
}

// boundVolumes maps each volume claim of ns, by name, to its UID and the
// volume bound to it, failing t if one is not bound.
func (c *cluster) boundVolumes(t *testing.T, ns string) map[string]string {
	t.Helper()
	var pvcs corev1.PersistentVolumeClaimList
	if err := c.client.List(context.Background(), &pvcs, client.InNamespace(ns)); err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, p := range pvcs.Items {
		if p.Status.Phase != corev1.ClaimBound {
			t.Errorf("volume claim %s is %s", p.Name, p.Status.Phase)
		}
		out[p.Name] = string(p.UID) + "@" + p.Spec.VolumeName
	}
	return out
}
