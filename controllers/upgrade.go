package controllers

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/util/workqueue"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	chatv1 "kez.lat/chat/api/v1alpha1"
)

// Paced operand upgrades.
//
// A KezChat that names no image runs the operator's (DefaultImage, and
// DefaultNATSImage for NATS). When the operator is upgraded those change,
// and every such KezChat would roll at once, the SQLite ones by Recreate:
// every chat down together. Instead, at most MaxConcurrentUpgrades
// KezChats take the new images at a time; the others keep the images they
// run (status.upgrade.phase Queued) until a slot frees. One whose new
// pods do not turn Ready (Failed) keeps its slot, so the line stops there
// until the admin fixes or rolls it back.
//
// The record of who holds a slot is each KezChat's status.upgrade, so a
// restarted operator finds it as it was. decideUpgrade is the whole
// policy, a pure function of what the reconcile observed.

// Default pacing settings, also the operator's flag defaults.
const (
	DefaultMaxConcurrentUpgrades = 1
	DefaultUpgradeTimeout        = 15 * time.Minute
	// queuedRecheck is how often a queued KezChat looks for a free slot on
	// its own, besides being woken when a holder lets go of one.
	queuedRecheck = time.Minute
	// preparingRecheck is how often a Preparing KezChat asks its
	// PreUpgradeHook again, besides the watches that wake it.
	preparingRecheck = 10 * time.Second
)

// Upgrade event reasons; the condition reasons while one is under way.
const (
	ReasonUpgradeQueued    = "UpgradeQueued"
	ReasonUpgradePreparing = "UpgradePreparing"
	ReasonUpgrading        = "Upgrading"
	ReasonUpgradeStarted   = "UpgradeStarted"
	ReasonUpgradeSucceeded = "UpgradeSucceeded"
	ReasonUpgradeFailed    = "UpgradeFailed"
	ReasonUpgradeCancelled = "UpgradeCancelled"
)

// PreUpgradeHook runs once a KezChat holds an upgrade slot and before its
// workloads take the new images: where a backup is taken first, when the
// KezChat configures backups (PreUpgradeBackup).
type PreUpgradeHook interface {
	// Needed reports, from kc alone, whether it has anything to prepare.
	// When not, a KezChat that takes a slot rolls at once, without a
	// Preparing round trip.
	Needed(kc *chatv1.KezChat) bool
	// Prepare is called at each reconcile of a Preparing KezChat until it
	// reports done (message says what it waits for), so it must be
	// idempotent (create the backup once, then watch it). A
	// *PreUpgradeStopped error keeps the KezChat Preparing, holding its
	// slot and its images, Degraded until the admin acts; any other error
	// does the same for one reconcile, and is retried.
	Prepare(ctx context.Context, kc *chatv1.KezChat) (done bool, message string, err error)
}

// PreUpgradeFunc is a PreUpgradeHook that every KezChat needs.
type PreUpgradeFunc func(ctx context.Context, kc *chatv1.KezChat) (done bool, message string, err error)

func (PreUpgradeFunc) Needed(*chatv1.KezChat) bool { return true }

func (f PreUpgradeFunc) Prepare(ctx context.Context, kc *chatv1.KezChat) (bool, string, error) {
	return f(ctx, kc)
}

// PreUpgradeStopped is what a PreUpgradeHook returns when what it waited
// for failed, and only the admin can let the upgrade go on.
type PreUpgradeStopped struct {
	// Reason is the Degraded condition's and the event's reason.
	Reason string
	// Message says what failed and how to go on.
	Message string
}

func (e *PreUpgradeStopped) Error() string { return e.Message }

// upgradeFacts is what decideUpgrade decides from.
type upgradeFacts struct {
	// targetImage and targetNATSImage are the operator's images for the
	// components the spec leaves to it; empty for a pinned (spec.image,
	// spec.nats.image) or disabled component.
	targetImage, targetNATSImage string
	// runningImage and runningNATSImage are the images those components
	// run now (see runningImages); empty when they have no workload yet,
	// which then starts at the target.
	runningImage, runningNATSImage string
	// recorded is status.upgrade as last written.
	recorded *chatv1.UpgradeStatus
	// rolledOut: every participating component's workload runs its pod
	// template's image, all replicas ready. rolloutFailed: one reports
	// its progress deadline exceeded, why in rolloutMessage.
	rolledOut, rolloutFailed bool
	rolloutMessage           string
	// atTarget: the participating workloads' pod templates carry the
	// target images (so rolledOut is about the new version).
	atTarget bool
	// slotFree: fewer than the maximum KezChats hold a slot.
	slotFree bool
	maxSlots int
	// preparing: a PreUpgradeHook is set, so a slot is taken Preparing.
	// prepared: the hook reported done (only asked while Preparing).
	preparing, prepared bool
	prepareMessage      string
	// prepareStopped: the hook reported that the upgrade cannot go on
	// (a *PreUpgradeStopped), its reason; prepareMessage says why.
	prepareStopped string
	now            time.Time
	timeout        time.Duration
}

// needsUpgrade reports whether a component the operator images runs
// something other than the operator's image.
func (f upgradeFacts) needsUpgrade() bool {
	return (f.targetImage != "" && f.runningImage != "" && f.runningImage != f.targetImage) ||
		(f.targetNATSImage != "" && f.runningNATSImage != "" && f.runningNATSImage != f.targetNATSImage)
}

// upgradeDecision is what to do.
type upgradeDecision struct {
	// hold: build the operator-imaged components with their running
	// images, not the targets.
	hold bool
	// status is the new status.upgrade; nil when there is no upgrade.
	status *chatv1.UpgradeStatus
	// event, if any, is the transition to announce: its reason and note.
	eventReason, eventNote string
	eventWarning           bool
	// stalledReason, when set, is why the upgrade stopped before the
	// images changed, for the Degraded condition (status.Message says
	// more); the KezChat keeps its slot and its images meanwhile.
	stalledReason string
	// requeueAfter: look again then even if nothing changes (a queued
	// KezChat's recheck, a rolling one's timeout).
	requeueAfter time.Duration
}

// wantsSlot reports whether decideUpgrade would take a slot if one were
// free: the caller then decides under its slot lock.
func wantsSlot(f upgradeFacts) bool {
	return !(f.recorded != nil && f.recorded.Phase.HoldsSlot()) && f.needsUpgrade()
}

// decideUpgrade is the pacing policy: from the facts, the images to build
// with and the upgrade's new status.
func decideUpgrade(f upgradeFacts) upgradeDecision {
	rec := f.recorded
	if rec == nil || !rec.Phase.HoldsSlot() {
		if !f.needsUpgrade() {
			return upgradeDecision{}
		}
		st := &chatv1.UpgradeStatus{}
		if f.targetImage != "" && f.runningImage != f.targetImage {
			st.Image, st.FromImage = f.targetImage, f.runningImage
		}
		if f.targetNATSImage != "" && f.runningNATSImage != f.targetNATSImage {
			st.NATSImage, st.FromNATSImage = f.targetNATSImage, f.runningNATSImage
		}
		if !f.slotFree {
			st.Phase = chatv1.UpgradeQueued
			st.Message = fmt.Sprintf("waiting for one of the operator's %d upgrade slots (--max-concurrent-upgrades); running %s meanwhile",
				f.maxSlots, describeImages(st.FromImage, st.FromNATSImage))
			d := upgradeDecision{hold: true, status: st, requeueAfter: queuedRecheck}
			if rec == nil || rec.Phase != chatv1.UpgradeQueued || rec.Image != st.Image || rec.NATSImage != st.NATSImage {
				d.eventReason, d.eventNote = ReasonUpgradeQueued, "queued for "+describeImages(st.Image, st.NATSImage)
			}
			return d
		}
		started := metav1.NewTime(f.now)
		st.StartedAt = &started
		d := upgradeDecision{status: st, eventReason: ReasonUpgradeStarted,
			eventNote: fmt.Sprintf("upgrading from %s to %s", describeImages(st.FromImage, st.FromNATSImage), describeImages(st.Image, st.NATSImage))}
		if f.preparing {
			st.Phase, st.Message, d.hold = chatv1.UpgradePreparing, "preparing the upgrade", true
			d.requeueAfter = time.Second // to run the hook
			return d
		}
		st.Phase, st.Message = chatv1.UpgradeRolling, "rolling to "+describeImages(st.Image, st.NATSImage)
		d.requeueAfter = f.timeout
		return d
	}

	// rec holds a slot.
	st := rec.DeepCopy()
	// A later operator upgrade while this one holds its slot moves it on
	// to the newest images: it has its slot already.
	if f.targetImage != "" && (st.Image != "" || f.runningImage != f.targetImage) {
		st.Image = f.targetImage
	}
	if f.targetNATSImage != "" && (st.NATSImage != "" || f.runningNATSImage != f.targetNATSImage) {
		st.NATSImage = f.targetNATSImage
	}
	if f.targetImage == "" {
		st.Image, st.FromImage = "", ""
	}
	if f.targetNATSImage == "" {
		st.NATSImage, st.FromNATSImage = "", ""
	}
	if st.Image == "" && st.NATSImage == "" {
		// Every image the upgrade changed is pinned now (or its
		// component off): the admin took it over, or rolled it back.
		return upgradeDecision{eventReason: ReasonUpgradeCancelled,
			eventNote: "upgrade cancelled: the spec now pins the images it was changing"}
	}
	switch rec.Phase {
	case chatv1.UpgradePreparing:
		if f.prepareStopped != "" {
			st.Message = fmt.Sprintf("upgrade to %s stopped before it started: %s",
				describeImages(st.Image, st.NATSImage), f.prepareMessage)
			// Nothing to look at again: what the admin does (delete the
			// failed backup, change the spec) wakes the KezChat.
			d := upgradeDecision{hold: true, status: st, stalledReason: f.prepareStopped}
			if rec.Message != st.Message {
				d.eventReason, d.eventNote, d.eventWarning = f.prepareStopped, st.Message, true
			}
			return d
		}
		if !f.prepared {
			st.Message = "preparing the upgrade: " + f.prepareMessage
			return upgradeDecision{hold: true, status: st, requeueAfter: preparingRecheck}
		}
		// The timeout counts from when the new pods are asked for.
		started := metav1.NewTime(f.now)
		st.Phase, st.StartedAt = chatv1.UpgradeRolling, &started
		st.Message = "rolling to " + describeImages(st.Image, st.NATSImage)
		return upgradeDecision{status: st, requeueAfter: f.timeout}
	}
	if f.atTarget && f.rolledOut {
		return upgradeDecision{eventReason: ReasonUpgradeSucceeded, eventNote: "upgraded to " + describeImages(st.Image, st.NATSImage)}
	}
	var elapsed time.Duration
	if st.StartedAt != nil {
		elapsed = f.now.Sub(st.StartedAt.Time)
	}
	var why string
	switch {
	case f.atTarget && f.rolloutFailed:
		why = f.rolloutMessage
	case elapsed > f.timeout:
		why = fmt.Sprintf("the new pods are not all Ready after %s (--upgrade-timeout)", f.timeout)
		if f.rolloutMessage != "" {
			why += ": " + f.rolloutMessage
		}
	}
	if why != "" {
		d := upgradeDecision{status: st}
		msg := fmt.Sprintf("upgrade to %s failed: %s; holding the upgrade slot until this KezChat's rollout completes or spec.image pins the previous image (%s)",
			describeImages(st.Image, st.NATSImage), why, describeImages(st.FromImage, st.FromNATSImage))
		if rec.Phase != chatv1.UpgradeFailed {
			d.eventReason, d.eventNote, d.eventWarning = ReasonUpgradeFailed, msg, true
		}
		st.Phase, st.Message = chatv1.UpgradeFailed, msg
		return d
	}
	if rec.Phase == chatv1.UpgradeFailed {
		// Stays failed until the rollout completes.
		return upgradeDecision{status: st}
	}
	st.Message = "rolling to " + describeImages(st.Image, st.NATSImage)
	return upgradeDecision{status: st, requeueAfter: max(f.timeout-elapsed, time.Second)}
}

// describeImages names the images of an upgrade for messages.
func describeImages(image, natsImage string) string {
	switch {
	case image != "" && natsImage != "":
		return image + " (NATS " + natsImage + ")"
	case natsImage != "":
		return "NATS " + natsImage
	}
	return image
}

// imageVersion is the version an image reference names: its tag, or its
// digest when pinned by one without a tag; "" when it names neither.
func imageVersion(image string) string {
	if i := strings.LastIndex(image, "@"); i >= 0 {
		if v := imageVersion(image[:i]); v != "" {
			return v
		}
		return image[i+1:]
	}
	slash := strings.LastIndex(image, "/")
	if i := strings.LastIndex(image, ":"); i > slash {
		return image[i+1:]
	}
	return ""
}

// operandImages are the images a KezChat's workloads carry.
type operandImages struct{ kez, nats string }

// containerImage is the image of the container named name in a pod
// template; "" if there is none.
func containerImage(spec *corev1.PodSpec, name string) string {
	for _, c := range spec.Containers {
		if c.Name == name {
			return c.Image
		}
	}
	return ""
}

// workloads are a KezChat's workloads as the cache has them; nil where
// absent.
type workloads struct {
	server, sigServer *appsv1.Deployment
	nats              *appsv1.StatefulSet
}

func (r *KezChatReconciler) readWorkloads(ctx context.Context, kc *chatv1.KezChat) (workloads, error) {
	n := namesOf(kc)
	var w workloads
	var server, sigServer appsv1.Deployment
	var nats appsv1.StatefulSet
	for _, x := range []struct {
		name  string
		obj   client.Object
		found func()
	}{
		{n.server(), &server, func() { w.server = &server }},
		{n.sigServer(), &sigServer, func() { w.sigServer = &sigServer }},
		{n.nats(), &nats, func() { w.nats = &nats }},
	} {
		switch err := r.Client.Get(ctx, types.NamespacedName{Namespace: kc.Namespace, Name: x.name}, x.obj); {
		case err == nil:
			x.found()
		case !apierrors.IsNotFound(err):
			return w, fmt.Errorf("reading %s: %w", x.name, err)
		}
	}
	return w, nil
}

// templateImages are the images of the workloads' pod templates.
func (w workloads) templateImages() operandImages {
	var im operandImages
	if w.server != nil {
		im.kez = containerImage(&w.server.Spec.Template.Spec, "server")
	}
	if im.kez == "" && w.sigServer != nil {
		im.kez = containerImage(&w.sigServer.Spec.Template.Spec, "sig-server")
	}
	if w.nats != nil {
		im.nats = containerImage(&w.nats.Spec.Template.Spec, "nats")
	}
	return im
}

// runningImages are the images kc runs now, which a queued KezChat keeps:
// those its status recorded as rolled out, or where it has no record yet
// (a KezChat from before the record existed, or never rolled out), its
// workloads' pod templates. The record comes first so that a workload
// edited by hand is put back, not held.
func runningImages(kc *chatv1.KezChat, w workloads) operandImages {
	im := w.templateImages()
	switch {
	case kc.Status.Server != nil && kc.Status.Server.Image != "":
		im.kez = kc.Status.Server.Image
	case kc.Status.SigServer != nil && kc.Status.SigServer.Image != "":
		im.kez = kc.Status.SigServer.Image
	}
	if kc.Status.NATS != nil && kc.Status.NATS.Image != "" && im.nats != "" {
		im.nats = kc.Status.NATS.Image
	}
	return im
}

// targetImages are the operator's images for the components kc leaves to
// it: empty where the spec pins one or the component is off.
func (in Inputs) targetImages(kc *chatv1.KezChat) operandImages {
	var im operandImages
	if kc.Spec.Image == "" {
		im.kez = in.DefaultImage
	}
	if kc.Spec.NATS.IsEnabled() && kc.Spec.NATS.Image == "" {
		im.nats = in.defaultNATSImage()
	}
	return im
}

// rolloutOf judges the workloads of the components taking part in an
// upgrade to target.
func rolloutOf(kc *chatv1.KezChat, w workloads, target operandImages) (atTarget, rolledOut, failed bool, message string) {
	atTarget, rolledOut = true, true
	var msgs []string
	check := func(name string, s componentState, image, want string) {
		if image != want {
			atTarget = false
		}
		if !s.ready {
			rolledOut = false
			msgs = append(msgs, name+": "+s.message)
		}
		failed = failed || s.failed
	}
	if target.kez != "" {
		check("server", deploymentState(w.server, kc.Spec.Server.ReplicaCount()), imageOfDeployment(w.server, "server"), target.kez)
		if kc.Spec.SigServer.IsEnabled() {
			check("sig-server", deploymentState(w.sigServer, kc.Spec.SigServer.ReplicaCount()), imageOfDeployment(w.sigServer, "sig-server"), target.kez)
		}
	}
	if target.nats != "" {
		var image string
		if w.nats != nil {
			image = containerImage(&w.nats.Spec.Template.Spec, "nats")
		}
		check("nats", statefulSetState(w.nats, kc.Spec.NATS.ReplicaCount()), image, target.nats)
	}
	return atTarget, rolledOut, failed, strings.Join(msgs, "; ")
}

func imageOfDeployment(d *appsv1.Deployment, container string) string {
	if d == nil {
		return ""
	}
	return containerImage(&d.Spec.Template.Spec, container)
}

// upgradeOutcome is what planUpgrade decided, for the status and events.
type upgradeOutcome struct {
	decision upgradeDecision
}

// planUpgrade decides kc's upgrade and sets in's held images accordingly.
// When kc takes a slot, the claim is written to its status before any
// workload changes, so that a restarted operator still counts it.
func (r *KezChatReconciler) planUpgrade(ctx context.Context, kc *chatv1.KezChat, in *Inputs) (*upgradeOutcome, error) {
	w, err := r.readWorkloads(ctx, kc)
	if err != nil {
		return nil, err
	}
	target := in.targetImages(kc)
	running := runningImages(kc, w)
	atTarget, rolledOut, failed, msg := rolloutOf(kc, w, target)
	f := upgradeFacts{
		targetImage: target.kez, targetNATSImage: target.nats,
		runningImage: running.kez, runningNATSImage: running.nats,
		recorded:  kc.Status.Upgrade,
		rolledOut: rolledOut, rolloutFailed: failed, rolloutMessage: msg, atTarget: atTarget,
		maxSlots:  r.maxUpgrades(),
		preparing: r.PreUpgrade != nil && r.PreUpgrade.Needed(kc),
		now:       time.Now(),
		timeout:   r.upgradeTimeout(),
	}
	if kc.Status.Upgrade != nil && kc.Status.Upgrade.Phase == chatv1.UpgradePreparing {
		// Without a hook (an operator restarted without one) there is
		// nothing left to prepare.
		f.prepared = true
		if r.PreUpgrade != nil {
			done, message, err := r.PreUpgrade.Prepare(ctx, kc)
			var stopped *PreUpgradeStopped
			switch {
			case errors.As(err, &stopped):
				f.prepared, f.prepareStopped, f.prepareMessage = false, stopped.Reason, stopped.Message
			case err != nil:
				return nil, fmt.Errorf("preparing the upgrade: %w", err)
			default:
				f.prepared, f.prepareMessage = done, message
			}
		}
	}
	var d upgradeDecision
	if wantsSlot(f) {
		if d, err = r.claimSlot(ctx, kc, f); err != nil {
			return nil, err
		}
	} else {
		d = decideUpgrade(f)
	}
	if d.hold {
		in.HeldImage, in.HeldNATSImage = running.kez, running.nats
	}
	return &upgradeOutcome{decision: d}, nil
}

// claimSlot decides for a KezChat that would take a slot, and writes the
// claim to its status if it takes one.
//
// Why a lock and the cache, not a record of its own: every claim is in a
// KezChat's status, which the manager's cache holds, so counting the
// holders is a list from memory, and a restarted operator finds them all
// once its cache syncs. Two reconciles could both count a free slot
// before either's claim reaches the cache; so claims go one at a time
// under upgradeSlots, and each waits, still holding the lock, until the
// cache shows its own claim before the next counts. Only one operator
// process reconciles at a time (leader election), so this one lock is
// the only writer of claims. A shared record with optimistic concurrency
// (a ConfigMap of holders, written with its resourceVersion) would work
// across processes too, but needs a namespace of the operator's own and
// its own clean-up of holders deleted meanwhile, where status dies with
// its KezChat.
func (r *KezChatReconciler) claimSlot(ctx context.Context, kc *chatv1.KezChat, f upgradeFacts) (upgradeDecision, error) {
	r.upgradeSlots.Lock()
	defer r.upgradeSlots.Unlock()
	holders, err := r.slotHolders(ctx, kc)
	if err != nil {
		return upgradeDecision{}, err
	}
	f.slotFree = len(holders) < f.maxSlots
	d := decideUpgrade(f)
	if d.status == nil || !d.status.Phase.HoldsSlot() {
		return d, nil
	}
	before := kc.DeepCopy()
	kc.Status.Upgrade = d.status
	if err := r.Client.Status().Patch(ctx, kc, client.MergeFromWithOptions(before, client.MergeFromWithOptimisticLock{})); err != nil {
		return upgradeDecision{}, fmt.Errorf("recording the upgrade slot: %w", err)
	}
	claimed := kc.ResourceVersion
	err = wait.PollUntilContextTimeout(ctx, 10*time.Millisecond, 10*time.Second, true, func(ctx context.Context) (bool, error) {
		var cached chatv1.KezChat
		if err := r.Client.Get(ctx, client.ObjectKeyFromObject(kc), &cached); err != nil {
			return false, client.IgnoreNotFound(err)
		}
		return cached.ResourceVersion == claimed || (cached.Status.Upgrade != nil && cached.Status.Upgrade.Phase.HoldsSlot()), nil
	})
	if err != nil {
		return upgradeDecision{}, fmt.Errorf("waiting for the cache to show the upgrade slot taken: %w", err)
	}
	return d, nil
}

// slotHolders names the KezChats other than kc that hold an upgrade slot.
func (r *KezChatReconciler) slotHolders(ctx context.Context, kc *chatv1.KezChat) ([]string, error) {
	var list chatv1.KezChatList
	if err := r.Client.List(ctx, &list); err != nil {
		return nil, fmt.Errorf("listing KezChats to count upgrade slots: %w", err)
	}
	var holders []string
	for i := range list.Items {
		o := &list.Items[i]
		if o.UID == kc.UID {
			continue
		}
		if o.Status.Upgrade != nil && o.Status.Upgrade.Phase.HoldsSlot() {
			holders = append(holders, o.Namespace+"/"+o.Name)
		}
	}
	return holders, nil
}

func (r *KezChatReconciler) maxUpgrades() int {
	if r.MaxConcurrentUpgrades == nil {
		return DefaultMaxConcurrentUpgrades
	}
	return *r.MaxConcurrentUpgrades
}

func (r *KezChatReconciler) upgradeTimeout() time.Duration {
	if r.UpgradeTimeout <= 0 {
		return DefaultUpgradeTimeout
	}
	return r.UpgradeTimeout
}

// announceUpgrade records the decision's event, if any.
func (r *KezChatReconciler) announceUpgrade(kc *chatv1.KezChat, o *upgradeOutcome) {
	if o == nil || o.decision.eventReason == "" {
		return
	}
	typ := corev1.EventTypeNormal
	if o.decision.eventWarning {
		typ = corev1.EventTypeWarning
	}
	r.Recorder.Eventf(kc, nil, typ, o.decision.eventReason, "Upgrade", "%s", o.decision.eventNote)
}

// wakeQueued is the event handler that, when a KezChat lets go of an
// upgrade slot (its upgrade ends, or it is deleted), enqueues every
// queued KezChat, so the next takes the slot at once.
func (r *KezChatReconciler) wakeQueued() handler.EventHandler {
	holds := func(o client.Object) bool {
		kc, ok := o.(*chatv1.KezChat)
		return ok && kc.Status.Upgrade != nil && kc.Status.Upgrade.Phase.HoldsSlot()
	}
	wake := func(ctx context.Context, q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
		var list chatv1.KezChatList
		if err := r.Client.List(ctx, &list); err != nil {
			return // each queued KezChat rechecks on its own anyway
		}
		for _, kc := range list.Items {
			if kc.Status.Upgrade != nil && kc.Status.Upgrade.Phase == chatv1.UpgradeQueued {
				q.Add(reconcile.Request{NamespacedName: types.NamespacedName{Namespace: kc.Namespace, Name: kc.Name}})
			}
		}
	}
	return handler.Funcs{
		UpdateFunc: func(ctx context.Context, e event.UpdateEvent, q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
			if holds(e.ObjectOld) && !holds(e.ObjectNew) {
				wake(ctx, q)
			}
		},
		DeleteFunc: func(ctx context.Context, e event.DeleteEvent, q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
			if holds(e.Object) {
				wake(ctx, q)
			}
		},
	}
}
