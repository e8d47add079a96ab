package controllers

import (
	"fmt"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	chatv1 "kez.lat/chat/api/v1alpha1"
)

// Condition reasons.
const (
	ReasonAvailable         = "Available"
	ReasonRollingOut        = "RollingOut"
	ReasonNotCreated        = "NotCreated"
	ReasonRolloutFailed     = "RolloutFailed"
	ReasonScaledToZero      = "ScaledToZero"
	ReasonComponentsReady   = "ComponentsReady"
	ReasonComponentsPending = "ComponentsPending"
	ReasonReconcileFailed   = "ReconcileFailed"
	ReasonVAPIDSecret       = "VAPIDSecretInvalid"
	ReasonNATSAuthSecret    = "NATSAuthSecretInvalid"
	ReasonAsExpected        = "AsExpected"
	ReasonStorageFull       = "StorageFull"
	ReasonVolumeExpansion   = "VolumeExpansionRefused"
)

// componentState is what the reconcile saw of one component's workload.
type componentState struct {
	ready    bool
	failed   bool
	reason   string
	message  string
	replicas chatv1.ComponentStatus
	// image is what the pods run once rolled out; "" while rolling.
	image string
	// hasPods says the workload's controller reports pods: only then can
	// their probes have failed.
	hasPods bool
}

// deploymentState judges a Deployment the way `kubectl rollout status`
// does: ready when the controller has seen the latest spec and every
// replica is updated and available, with no old ones left.
func deploymentState(d *appsv1.Deployment, desired int32) componentState {
	s := componentState{replicas: chatv1.ComponentStatus{Replicas: desired}}
	if d == nil {
		s.reason, s.message = ReasonNotCreated, "the Deployment does not exist yet"
		return s
	}
	st := d.Status
	s.hasPods = st.Replicas > 0
	s.replicas.ReadyReplicas = min(st.ReadyReplicas, st.UpdatedReplicas)
	for _, c := range st.Conditions {
		if c.Type == appsv1.DeploymentProgressing && c.Status == corev1.ConditionFalse && c.Reason == "ProgressDeadlineExceeded" {
			s.failed, s.reason, s.message = true, ReasonRolloutFailed, fmt.Sprintf("Deployment %s: %s", d.Name, c.Message)
			return s
		}
	}
	switch {
	case st.ObservedGeneration < d.Generation:
		s.reason, s.message = ReasonRollingOut, "waiting for the Deployment controller to see the new spec"
	case st.UpdatedReplicas < desired:
		s.reason, s.message = ReasonRollingOut, fmt.Sprintf("%d of %d replicas updated", st.UpdatedReplicas, desired)
	case st.Replicas > st.UpdatedReplicas:
		s.reason, s.message = ReasonRollingOut, fmt.Sprintf("%d old replicas pending termination", st.Replicas-st.UpdatedReplicas)
	case st.AvailableReplicas < desired:
		s.reason, s.message = ReasonRollingOut, fmt.Sprintf("%d of %d updated replicas available", st.AvailableReplicas, desired)
	case desired == 0:
		s.ready, s.reason, s.message = true, ReasonScaledToZero, "scaled to zero replicas"
	default:
		s.ready, s.reason, s.message = true, ReasonAvailable, fmt.Sprintf("%d of %d replicas available", st.AvailableReplicas, desired)
		s.image = firstImage(&d.Spec.Template.Spec)
	}
	return s
}

// firstImage is the image of a pod template's first container, the
// component's own.
func firstImage(spec *corev1.PodSpec) string {
	if len(spec.Containers) == 0 {
		return ""
	}
	return spec.Containers[0].Image
}

// statefulSetState judges a StatefulSet like `kubectl rollout status`.
func statefulSetState(sts *appsv1.StatefulSet, desired int32) componentState {
	s := componentState{replicas: chatv1.ComponentStatus{Replicas: desired}}
	if sts == nil {
		s.reason, s.message = ReasonNotCreated, "the StatefulSet does not exist yet"
		return s
	}
	st := sts.Status
	s.replicas.ReadyReplicas = min(st.ReadyReplicas, st.UpdatedReplicas)
	switch {
	case st.ObservedGeneration < sts.Generation:
		s.reason, s.message = ReasonRollingOut, "waiting for the StatefulSet controller to see the new spec"
	case st.UpdatedReplicas < desired || (st.UpdateRevision != "" && st.CurrentRevision != st.UpdateRevision):
		s.reason, s.message = ReasonRollingOut, fmt.Sprintf("%d of %d replicas updated", st.UpdatedReplicas, desired)
	case st.ReadyReplicas < desired:
		s.reason, s.message = ReasonRollingOut, fmt.Sprintf("%d of %d replicas ready", st.ReadyReplicas, desired)
	default:
		s.ready, s.reason, s.message = true, ReasonAvailable, fmt.Sprintf("%d of %d replicas ready", st.ReadyReplicas, desired)
		if desired > 0 {
			s.image = firstImage(&sts.Spec.Template.Spec)
		}
	}
	return s
}

// observed is what one reconcile saw and did.
type observed struct {
	server, nats, sigServer *componentState // nil: component disabled
	// vapidPublicKey is the Web Push key in use; empty when push is off.
	vapidPublicKey string
	// failure is why the reconcile could not finish, if it could not.
	failure       error
	failureReason string
	// storageFull says why the chat server has no room to write; empty
	// when it has.
	storageFull string
	// upgrade is the paced-upgrade decision; nil when the reconcile
	// stopped before making one (the recorded one then stands).
	upgrade *upgradeOutcome
	// route is the HTTPRoute's state; nil when kc asks for none.
	route *routeState
	// podMonitors is what became of spec.monitoring.podMonitor
	// (monitoring.go).
	podMonitors podMonitorOutcome
	// federation is the Federation condition of the spec the chat server
	// was applied with (federation.go); nil when the reconcile stopped
	// before.
	federation *federationState
}

// computeStatus is the status kc should have after a reconcile that saw
// obs. It starts from kc's current status so that conditions keep their
// transition times while their status holds.
func computeStatus(kc *chatv1.KezChat, obs observed) chatv1.KezChatStatus {
	st := *kc.Status.DeepCopy()
	gen := kc.Generation
	st.ObservedGeneration = gen
	st.URL = PublicURL(kc)
	st.VAPIDPublicKey = obs.vapidPublicKey

	set := func(typ string, ok bool, reason, msg string) {
		status := metav1.ConditionFalse
		if ok {
			status = metav1.ConditionTrue
		}
		meta.SetStatusCondition(&st.Conditions, metav1.Condition{
			Type: typ, Status: status, Reason: reason, Message: msg, ObservedGeneration: gen,
		})
	}

	setMonitoringCondition(&st, gen, obs.podMonitors)
	setFederationCondition(&st, gen, obs.federation)

	components := []struct {
		condition string
		name      string
		state     *componentState
		counts    **chatv1.ComponentStatus
	}{
		{chatv1.ConditionServerReady, "server", obs.server, &st.Server},
		{chatv1.ConditionNATSReady, "nats", obs.nats, &st.NATS},
		{chatv1.ConditionSigServerReady, "sig-server", obs.sigServer, &st.SigServer},
	}
	var pending, failed []string
	for _, c := range components {
		if c.state == nil {
			meta.RemoveStatusCondition(&st.Conditions, c.condition)
			*c.counts = nil
			continue
		}
		set(c.condition, c.state.ready, c.state.reason, c.state.message)
		counts := c.state.replicas
		// The image is recorded once rolled out, and kept while a new
		// one rolls.
		counts.Image = c.state.image
		if counts.Image == "" && *c.counts != nil {
			counts.Image = (*c.counts).Image
		}
		counts.Version = imageVersion(counts.Image)
		*c.counts = &counts
		switch {
		case c.state.failed:
			failed = append(failed, c.name+": "+c.state.message)
		case !c.state.ready:
			pending = append(pending, c.name+": "+c.state.message)
		}
	}

	if obs.server != nil {
		if obs.storageFull != "" {
			set(chatv1.ConditionStorageFull, true, ReasonStorageFull, obs.storageFull)
		} else {
			set(chatv1.ConditionStorageFull, false, ReasonAsExpected, "the chat server has room to write")
		}
	}
	// The paced upgrade (upgrade.go): queued or under way is Progressing,
	// failed is Degraded.
	var upgrade *chatv1.UpgradeStatus
	if obs.upgrade != nil {
		upgrade = obs.upgrade.decision.status.DeepCopy()
		st.Upgrade = upgrade
	} else {
		upgrade = st.Upgrade
	}
	upgradeFailed := upgrade != nil && upgrade.Phase == chatv1.UpgradeFailed
	// An upgrade stopped before its images changed (a failed pre-upgrade
	// backup) is Degraded too, though what runs is as ready as before.
	var upgradeStalled string
	if obs.upgrade != nil && upgrade != nil {
		upgradeStalled = obs.upgrade.decision.stalledReason
	}

	switch {
	case obs.failure != nil:
		set(chatv1.ConditionDegraded, true, obs.failureReason, obs.failure.Error())
	case upgradeFailed:
		set(chatv1.ConditionDegraded, true, ReasonUpgradeFailed, upgrade.Message)
	case upgradeStalled != "":
		set(chatv1.ConditionDegraded, true, upgradeStalled, upgrade.Message)
	case obs.storageFull != "":
		set(chatv1.ConditionDegraded, true, ReasonStorageFull, obs.storageFull)
	case len(failed) > 0:
		set(chatv1.ConditionDegraded, true, ReasonRolloutFailed, strings.Join(failed, "; "))
	default:
		set(chatv1.ConditionDegraded, false, ReasonAsExpected, "no failures")
	}
	progressing := obs.failure == nil && len(failed) == 0 && len(pending) > 0
	switch {
	case obs.failure != nil || upgradeFailed || upgradeStalled != "" || len(failed) > 0:
		set(chatv1.ConditionProgressing, false, ReasonAsExpected, "nothing in progress")
	case upgrade != nil && upgrade.Phase == chatv1.UpgradeQueued:
		set(chatv1.ConditionProgressing, true, ReasonUpgradeQueued, upgrade.Message)
	case upgrade != nil && upgrade.Phase == chatv1.UpgradePreparing:
		set(chatv1.ConditionProgressing, true, ReasonUpgradePreparing, upgrade.Message)
	case upgrade != nil && upgrade.Phase == chatv1.UpgradeRolling:
		msg := upgrade.Message
		if len(pending) > 0 {
			msg += ": " + strings.Join(pending, "; ")
		}
		set(chatv1.ConditionProgressing, true, ReasonUpgrading, msg)
	case progressing:
		set(chatv1.ConditionProgressing, true, ReasonComponentsPending, strings.Join(pending, "; "))
	default:
		set(chatv1.ConditionProgressing, false, ReasonAsExpected, "nothing in progress")
	}
	ready := obs.failure == nil && !upgradeFailed && len(failed) == 0 && len(pending) == 0
	switch {
	case ready:
		set(chatv1.ConditionReady, true, ReasonComponentsReady, "every component is ready")
	case obs.failure != nil:
		set(chatv1.ConditionReady, false, obs.failureReason, obs.failure.Error())
	case upgradeFailed:
		set(chatv1.ConditionReady, false, ReasonUpgradeFailed, upgrade.Message)
	case len(failed) > 0:
		set(chatv1.ConditionReady, false, ReasonRolloutFailed, strings.Join(failed, "; "))
	default:
		set(chatv1.ConditionReady, false, ReasonComponentsPending, strings.Join(pending, "; "))
	}
	// The route is the Gateway's to accept: it tells, but holds back
	// neither Ready nor the rest of the KezChat.
	setRouteCondition(&st, obs.route, gen)
	resumedCondition(&st, gen)
	kstatusConditions(&st, gen)
	return st
}
