package controllers

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	chatv1 "kez.lat/chat/api/v1alpha1"
)

// The operator's image before and after an upgrade of the operator.
const (
	imageV1 = "registry.example/kezchat:v1"
	imageV2 = "registry.example/kezchat:v2"
)

// operatorAt configures a test manager as an operator of image, rolling
// at most maxUpgrades KezChats at once.
func operatorAt(image string, maxUpgrades int) func(*KezChatReconciler) {
	return func(r *KezChatReconciler) {
		r.DefaultImage = image
		r.MaxConcurrentUpgrades = ptr.To(maxUpgrades)
	}
}

// createChat makes a KezChat named name in ns without NATS (so two
// Deployments: server and sig-server).
func createChat(t *testing.T, ns, name string, mutate ...func(*chatv1.KezChat)) {
	t.Helper()
	kc := &chatv1.KezChat{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec:       chatv1.KezChatSpec{Domain: name + ".example.org", NATS: chatv1.NATSSpec{Enabled: ptr.To(false)}},
	}
	for _, m := range mutate {
		m(kc)
	}
	if err := k8s.Create(ctx, kc); err != nil {
		t.Fatalf("creating KezChat %s: %v", name, err)
	}
}

func getChat(ns, name string) (*chatv1.KezChat, error) {
	var kc chatv1.KezChat
	err := k8s.Get(ctx, types.NamespacedName{Namespace: ns, Name: name}, &kc)
	return &kc, err
}

// markChatReady plays the kubelets for a KezChat without NATS.
func markChatReady(t *testing.T, ns, name string) {
	t.Helper()
	markDeploymentReady(t, ns, name+"-server")
	markDeploymentReady(t, ns, name+"-sig-server")
}

// serverImage is the image of the KezChat's server Deployment's pods,
// or "mixed" while its sig-server's differs: the operator applies one
// Deployment after the other.
func serverImage(ns, name string) (string, error) {
	var images []string
	for _, d := range []string{name + "-server", name + "-sig-server"} {
		d, err := get[appsv1.Deployment](ns, d)
		if err != nil {
			return "", err
		}
		images = append(images, d.Spec.Template.Spec.Containers[0].Image)
	}
	if images[0] != images[1] {
		return "mixed", nil
	}
	return images[0], nil
}

func upgradePhase(kc *chatv1.KezChat) chatv1.UpgradePhase {
	if kc.Status.Upgrade == nil {
		return ""
	}
	return kc.Status.Upgrade.Phase
}

// waitChat waits until check accepts the KezChat.
func waitChat(t *testing.T, ns, name string, check func(*chatv1.KezChat) error) *chatv1.KezChat {
	t.Helper()
	var kc *chatv1.KezChat
	eventually(t, waitTimeout, "KezChat "+name, func() error {
		var err error
		if kc, err = getChat(ns, name); err != nil {
			return err
		}
		return check(kc)
	})
	return kc
}

// readyAt accepts a Ready KezChat whose server runs version, with no
// upgrade in its status.
func readyAt(version string) func(*chatv1.KezChat) error {
	return func(kc *chatv1.KezChat) error {
		if !meta.IsStatusConditionTrue(kc.Status.Conditions, chatv1.ConditionReady) || kc.Status.Server == nil ||
			kc.Status.Server.Version != version || kc.Status.Upgrade != nil {
			return fmt.Errorf("server %+v, upgrade %+v, conditions %+v", kc.Status.Server, kc.Status.Upgrade, kc.Status.Conditions)
		}
		if kc.Status.SigServer == nil || kc.Status.SigServer.Version != version {
			return fmt.Errorf("sig-server %+v", kc.Status.SigServer)
		}
		return nil
	}
}

// upgradeState is one look at a set of KezChats during an upgrade.
type upgradeState struct {
	rolling, queued, failed []string
}

// observeUpgrade looks at the KezChats named (but those in done) and
// fails t at once if more than maxUpgrades run the new image unfinished
// or hold a slot. It returns an error while any is in a state between.
func observeUpgrade(t *testing.T, ns string, names []string, done map[string]bool, maxUpgrades int) (upgradeState, error) {
	t.Helper()
	var s upgradeState
	var onNew, holders []string
	var between error
	for _, n := range names {
		if done[n] {
			continue
		}
		kc, err := getChat(ns, n)
		if err != nil {
			return s, err
		}
		img, err := serverImage(ns, n)
		if err != nil {
			return s, err
		}
		if img == imageV2 || img == "mixed" {
			onNew = append(onNew, n)
		}
		phase := upgradePhase(kc)
		if phase.HoldsSlot() {
			holders = append(holders, n)
		}
		progressing := meta.FindStatusCondition(kc.Status.Conditions, chatv1.ConditionProgressing)
		switch {
		case phase == chatv1.UpgradeRolling && img == imageV2:
			s.rolling = append(s.rolling, n)
		case phase == chatv1.UpgradeFailed && img == imageV2:
			s.failed = append(s.failed, n)
		case phase == chatv1.UpgradeQueued && img == imageV1 && progressing != nil &&
			progressing.Status == metav1.ConditionTrue && progressing.Reason == ReasonUpgradeQueued:
			s.queued = append(s.queued, n)
		default:
			between = fmt.Errorf("%s: phase %q, server image %s, Progressing %+v", n, phase, img, progressing)
		}
	}
	if len(onNew) > maxUpgrades || len(holders) > maxUpgrades {
		t.Fatalf("%d KezChats on the new image unfinished (%v), %d holding slots (%v): at most %d may roll at once",
			len(onNew), onNew, len(holders), holders, maxUpgrades)
	}
	return s, between
}

func hasEvent(ns, name, reason, typ string) error {
	var events eventsv1.EventList
	if err := k8s.List(ctx, &events, client.InNamespace(ns)); err != nil {
		return err
	}
	for _, e := range events.Items {
		if e.Regarding.Kind == "KezChat" && e.Regarding.Name == name && e.Reason == reason && e.Type == typ {
			return nil
		}
	}
	return fmt.Errorf("no %s event %s for %s among %d", typ, reason, name, len(events.Items))
}

func TestOperatorUpgradeRollsAtMostNKezChatsAtOnce(t *testing.T) {
	ns := testNamespace(t)
	const maxUpgrades = 2
	names := []string{"a", "b", "c", "d", "e"}
	m := startManager(t, ns, operatorAt(imageV1, maxUpgrades))
	for _, n := range names {
		createChat(t, ns, n)
	}
	createChat(t, ns, "pinned", func(kc *chatv1.KezChat) { kc.Spec.Image = "registry.example/kezchat:pinned" })
	for _, n := range append(slices.Clone(names), "pinned") {
		markChatReady(t, ns, n)
	}
	for _, n := range names {
		waitChat(t, ns, n, readyAt("v1"))
	}
	waitChat(t, ns, "pinned", readyAt("pinned"))
	m.stop()

	// The operator is upgraded.
	m = startManager(t, ns, operatorAt(imageV2, maxUpgrades))
	done := map[string]bool{}
	restarted := false
	for len(done) < len(names) {
		var s upgradeState
		eventually(t, waitTimeout, "the upgrade to settle", func() error {
			var err error
			if s, err = observeUpgrade(t, ns, names, done, maxUpgrades); err != nil {
				return err
			}
			if want := min(maxUpgrades, len(names)-len(done)); len(s.rolling) != want {
				return fmt.Errorf("rolling %v, want %d of them", s.rolling, want)
			}
			return nil
		})
		if len(s.queued)+len(s.rolling) != len(names)-len(done) {
			t.Fatalf("rolling %v, queued %v, done %v", s.rolling, s.queued, done)
		}
		if !restarted {
			// An operator restarted now finds the slots taken as they were.
			restarted = true
			m.stop()
			m = startManager(t, ns, operatorAt(imageV2, maxUpgrades))
			for _, n := range names {
				m.reconcileNow(t, &chatv1.KezChat{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: n}})
			}
			after, err := observeUpgrade(t, ns, names, done, maxUpgrades)
			if err != nil || !slices.Equal(after.rolling, s.rolling) {
				t.Fatalf("after a restart: rolling %v (%v), before %v", after.rolling, err, s.rolling)
			}
		}
		// The first rolling KezChat's new pods turn Ready: it is done,
		// and the next queued one takes its slot.
		first := s.rolling[0]
		markChatReady(t, ns, first)
		waitChat(t, ns, first, readyAt("v2"))
		done[first] = true
		for _, reason := range []string{ReasonUpgradeStarted, ReasonUpgradeSucceeded} {
			eventually(t, waitTimeout, reason+" event", func() error { return hasEvent(ns, first, reason, corev1.EventTypeNormal) })
		}
	}

	// All but the first maxUpgrades waited their turn, and said so.
	var queued []string
	for _, n := range names {
		if hasEvent(ns, n, ReasonUpgradeQueued, corev1.EventTypeNormal) == nil {
			queued = append(queued, n)
		}
	}
	if len(queued) < len(names)-maxUpgrades {
		t.Errorf("UpgradeQueued events for %v only", queued)
	}

	// The pinned KezChat was never touched.
	kc, err := getChat(ns, "pinned")
	if err != nil {
		t.Fatal(err)
	}
	if img, _ := serverImage(ns, "pinned"); img != "registry.example/kezchat:pinned" || kc.Status.Upgrade != nil {
		t.Errorf("pinned KezChat: image %s, upgrade %+v", img, kc.Status.Upgrade)
	}
}

// failRollout plays the Deployment controller giving up on a rollout.
func failRollout(t *testing.T, ns, name string) {
	t.Helper()
	eventually(t, waitTimeout, "failing the rollout of "+name, func() error {
		d, err := get[appsv1.Deployment](ns, name)
		if err != nil {
			return err
		}
		d.Status = appsv1.DeploymentStatus{ObservedGeneration: d.Generation, Replicas: 1, UpdatedReplicas: 1, UnavailableReplicas: 1,
			Conditions: []appsv1.DeploymentCondition{{
				Type: appsv1.DeploymentProgressing, Status: corev1.ConditionFalse, Reason: "ProgressDeadlineExceeded",
				Message: fmt.Sprintf("ReplicaSet %q has timed out progressing.", name), LastUpdateTime: metav1.Now(), LastTransitionTime: metav1.Now(),
			}}}
		return k8s.Status().Update(ctx, d)
	})
}

func TestAFailedUpgradeHoldsTheLineUntilFixedOrRolledBack(t *testing.T) {
	ns := testNamespace(t)
	names := []string{"a", "b", "c"}
	m := startManager(t, ns, operatorAt(imageV1, 1))
	for _, n := range names {
		createChat(t, ns, n)
		markChatReady(t, ns, n)
	}
	for _, n := range names {
		waitChat(t, ns, n, readyAt("v1"))
	}
	m.stop()
	m = startManager(t, ns, operatorAt(imageV2, 1))

	done := map[string]bool{}
	oneRolling := func() string {
		t.Helper()
		var s upgradeState
		eventually(t, waitTimeout, "one KezChat rolling", func() error {
			var err error
			if s, err = observeUpgrade(t, ns, names, done, 1); err != nil {
				return err
			}
			if len(s.rolling) != 1 {
				return fmt.Errorf("rolling %v", s.rolling)
			}
			return nil
		})
		return s.rolling[0]
	}
	failAndHold := func(name string) {
		t.Helper()
		failRollout(t, ns, name+"-server")
		kc := waitChat(t, ns, name, func(kc *chatv1.KezChat) error {
			degraded := meta.FindStatusCondition(kc.Status.Conditions, chatv1.ConditionDegraded)
			if upgradePhase(kc) != chatv1.UpgradeFailed || degraded == nil || degraded.Status != metav1.ConditionTrue || degraded.Reason != ReasonUpgradeFailed {
				return fmt.Errorf("upgrade %+v, Degraded %+v", kc.Status.Upgrade, degraded)
			}
			return nil
		})
		if kc.Status.Upgrade.FromImage != imageV1 || !strings.Contains(kc.Status.Upgrade.Message, "ProgressDeadlineExceeded") &&
			!strings.Contains(kc.Status.Upgrade.Message, "timed out") {
			t.Errorf("failed upgrade %+v", kc.Status.Upgrade)
		}
		eventually(t, waitTimeout, "UpgradeFailed event", func() error { return hasEvent(ns, name, ReasonUpgradeFailed, corev1.EventTypeWarning) })
		// The others stay queued on their images, however often looked at.
		for _, n := range names {
			if n != name && !done[n] {
				m.reconcileNow(t, &chatv1.KezChat{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: n}})
			}
		}
		s, err := observeUpgrade(t, ns, names, done, 1)
		if err != nil || len(s.rolling) != 0 || !slices.Equal(s.failed, []string{name}) || len(s.queued) != len(names)-len(done)-1 {
			t.Fatalf("after %s failed: %+v (%v)", name, s, err)
		}
	}

	// Fixed: whatever stopped the new pods is gone, they turn Ready, and
	// the line moves on.
	first := oneRolling()
	failAndHold(first)
	markChatReady(t, ns, first)
	waitChat(t, ns, first, readyAt("v2"))
	done[first] = true

	// Rolled back: the admin pins the image it ran before; its upgrade is
	// cancelled, and the line moves on.
	second := oneRolling()
	failAndHold(second)
	kc, err := getChat(ns, second)
	if err != nil {
		t.Fatal(err)
	}
	from := kc.Status.Upgrade.FromImage
	kc.Spec.Image = from
	if err := k8s.Update(ctx, kc); err != nil {
		t.Fatal(err)
	}
	waitChat(t, ns, second, func(kc *chatv1.KezChat) error {
		if img, err := serverImage(ns, second); err != nil || img != imageV1 || kc.Status.Upgrade != nil {
			return fmt.Errorf("image %s (%v), upgrade %+v", img, err, kc.Status.Upgrade)
		}
		return nil
	})
	eventually(t, waitTimeout, "UpgradeCancelled event", func() error { return hasEvent(ns, second, ReasonUpgradeCancelled, corev1.EventTypeNormal) })
	done[second] = true
	third := oneRolling()
	markChatReady(t, ns, third)
	waitChat(t, ns, third, readyAt("v2"))
}

func TestANATSUpgradeWhosePodsNeverTurnReadyFailsAfterTheTimeout(t *testing.T) {
	ns := testNamespace(t)
	const nats1, nats2 = "registry.example/nats:1", "registry.example/nats:2"
	m := startManager(t, ns, func(r *KezChatReconciler) { r.DefaultNATSImage = nats1 })
	createKezChat(t, ns)
	markAllReady(t, ns)
	waitChat(t, ns, "chat", func(kc *chatv1.KezChat) error {
		if kc.Status.NATS == nil || kc.Status.NATS.Version != "1" {
			return fmt.Errorf("nats %+v", kc.Status.NATS)
		}
		return nil
	})
	m.stop()

	// The new operator brings a new NATS; the StatefulSet's pods never
	// report Ready, and StatefulSets have no progress deadline.
	startManager(t, ns, func(r *KezChatReconciler) { r.DefaultNATSImage, r.UpgradeTimeout = nats2, 2*time.Second })
	waitFor[appsv1.StatefulSet](t, ns, "chat-nats", func(s *appsv1.StatefulSet) error {
		if img := s.Spec.Template.Spec.Containers[0].Image; img != nats2 {
			return fmt.Errorf("image %s", img)
		}
		return nil
	})
	kc := waitChat(t, ns, "chat", func(kc *chatv1.KezChat) error {
		if upgradePhase(kc) != chatv1.UpgradeFailed || !meta.IsStatusConditionTrue(kc.Status.Conditions, chatv1.ConditionDegraded) {
			return fmt.Errorf("upgrade %+v", kc.Status.Upgrade)
		}
		return nil
	})
	if u := kc.Status.Upgrade; u.NATSImage != nats2 || u.FromNATSImage != nats1 || u.Image != "" || !strings.Contains(u.Message, "--upgrade-timeout") {
		t.Errorf("upgrade %+v", u)
	}
	if kc.Status.NATS.Version != "1" {
		t.Errorf("status says NATS runs %s before its pods rolled out", kc.Status.NATS.Version)
	}

	markStatefulSetReady(t, ns, "chat-nats")
	waitChat(t, ns, "chat", func(kc *chatv1.KezChat) error {
		if kc.Status.Upgrade != nil || kc.Status.NATS.Version != "2" || !meta.IsStatusConditionTrue(kc.Status.Conditions, chatv1.ConditionReady) {
			return fmt.Errorf("upgrade %+v, nats %+v", kc.Status.Upgrade, kc.Status.NATS)
		}
		return nil
	})
}

func TestAPreUpgradeHookRunsWithTheSlotHeldBeforeTheImagesChange(t *testing.T) {
	ns := testNamespace(t)
	m := startManager(t, ns, operatorAt(imageV1, 1))
	for _, n := range []string{"a", "b"} {
		createChat(t, ns, n)
		markChatReady(t, ns, n)
		waitChat(t, ns, n, readyAt("v1"))
	}
	m.stop()

	// A hook that is done once the test says so, as a backup would be.
	var mu sync.Mutex
	finished := map[string]bool{}
	asked := map[string]int{}
	hook := func(_ context.Context, kc *chatv1.KezChat) (bool, string, error) {
		mu.Lock()
		defer mu.Unlock()
		asked[kc.Name]++
		return finished[kc.Name], "backup of " + kc.Name + " running", nil
	}
	m = startManager(t, ns, operatorAt(imageV2, 1), func(r *KezChatReconciler) { r.PreUpgrade = PreUpgradeFunc(hook) })

	var preparing string
	eventually(t, waitTimeout, "one KezChat preparing", func() error {
		var found []string
		for _, n := range []string{"a", "b"} {
			kc, err := getChat(ns, n)
			if err != nil {
				return err
			}
			if upgradePhase(kc) == chatv1.UpgradePreparing && strings.Contains(kc.Status.Upgrade.Message, "backup of "+n) {
				found = append(found, n)
			}
		}
		if len(found) != 1 {
			return fmt.Errorf("preparing: %v", found)
		}
		preparing = found[0]
		return nil
	})
	// While it prepares, it holds the slot and its images.
	if img, err := serverImage(ns, preparing); err != nil || img != imageV1 {
		t.Fatalf("%s runs %s (%v) while preparing", preparing, img, err)
	}
	other := map[string]string{"a": "b", "b": "a"}[preparing]
	if kc, _ := getChat(ns, other); upgradePhase(kc) != chatv1.UpgradeQueued {
		t.Fatalf("%s is %q while %s prepares", other, upgradePhase(kc), preparing)
	}

	mu.Lock()
	finished[preparing] = true
	mu.Unlock()
	// What the hook waits for (a backup) wakes the KezChat when it ends.
	m.reconcileNow(t, &chatv1.KezChat{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: preparing}})
	eventually(t, waitTimeout, preparing+" rolling", func() error {
		kc, err := getChat(ns, preparing)
		if err != nil {
			return err
		}
		if img, err := serverImage(ns, preparing); err != nil || img != imageV2 || upgradePhase(kc) != chatv1.UpgradeRolling {
			return fmt.Errorf("image %s (%v), phase %q", img, err, upgradePhase(kc))
		}
		return nil
	})
	mu.Lock()
	if asked[other] != 0 {
		t.Errorf("the hook ran for the queued %s", other)
	}
	mu.Unlock()
}

func TestDeletingAKezChatThatHoldsASlotLetsTheNextOneGo(t *testing.T) {
	ns := testNamespace(t)
	names := []string{"a", "b"}
	m := startManager(t, ns, operatorAt(imageV1, 1))
	for _, n := range names {
		createChat(t, ns, n)
		markChatReady(t, ns, n)
		waitChat(t, ns, n, readyAt("v1"))
	}
	m.stop()
	startManager(t, ns, operatorAt(imageV2, 1))
	var s upgradeState
	eventually(t, waitTimeout, "one rolling, one queued", func() error {
		var err error
		if s, err = observeUpgrade(t, ns, names, nil, 1); err != nil {
			return err
		}
		if len(s.rolling) != 1 || len(s.queued) != 1 {
			return fmt.Errorf("%+v", s)
		}
		return nil
	})
	if err := k8s.Delete(ctx, &chatv1.KezChat{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: s.rolling[0]}}); err != nil {
		t.Fatal(err)
	}
	next := s.queued[0]
	waitChat(t, ns, next, func(kc *chatv1.KezChat) error {
		if img, err := serverImage(ns, next); err != nil || img != imageV2 || upgradePhase(kc) != chatv1.UpgradeRolling {
			return fmt.Errorf("image %s (%v), phase %q", img, err, upgradePhase(kc))
		}
		return nil
	})
}
