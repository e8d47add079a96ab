package v1alpha1

import metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

// UpgradePhase is where a KezChat's automatic upgrade stands.
// +kubebuilder:validation:Enum=Queued;Preparing;Rolling;Failed
type UpgradePhase string

const (
	// UpgradeQueued: the operator's images changed, and the KezChat keeps
	// running the ones it runs until one of the operator's
	// --max-concurrent-upgrades slots is free.
	UpgradeQueued UpgradePhase = "Queued"
	// UpgradePreparing: the KezChat holds a slot and the operator does
	// what must happen before new pods start (a backup, when backups are
	// configured); its images have not changed yet.
	UpgradePreparing UpgradePhase = "Preparing"
	// UpgradeRolling: the KezChat holds a slot and its workloads roll to
	// the new images.
	UpgradeRolling UpgradePhase = "Rolling"
	// UpgradeFailed: the new pods did not turn Ready in time. The KezChat
	// keeps its slot, so no other KezChat follows, until its rollout
	// completes after all (the admin fixed what stopped it) or the admin
	// pins spec.image (and spec.nats.image) back to the previous images.
	UpgradeFailed UpgradePhase = "Failed"
)

// HoldsSlot reports whether a KezChat in phase p counts against the
// operator's --max-concurrent-upgrades.
func (p UpgradePhase) HoldsSlot() bool {
	return p == UpgradePreparing || p == UpgradeRolling || p == UpgradeFailed
}

// UpgradeStatus records an automatic upgrade of a KezChat to the images
// its operator brings (after the operator itself was upgraded). Only the
// images the spec leaves to the operator take part: spec.image pins the
// chat server's and sig-server's, spec.nats.image NATS's.
type UpgradeStatus struct {
	// Phase is Queued, Preparing, Rolling or Failed.
	Phase UpgradePhase `json:"phase"`

	// Image is the chat server and sig-server image the upgrade moves to;
	// empty when spec.image pins it.
	// +optional
	Image string `json:"image,omitempty"`
	// FromImage is the one they ran before: pin spec.image to it to roll
	// a failed upgrade back.
	// +optional
	FromImage string `json:"fromImage,omitempty"`

	// NATSImage is the NATS image the upgrade moves to; empty when
	// spec.nats.image pins it or NATS is off.
	// +optional
	NATSImage string `json:"natsImage,omitempty"`
	// FromNATSImage is the one NATS ran before.
	// +optional
	FromNATSImage string `json:"fromNATSImage,omitempty"`

	// StartedAt is when the KezChat took its slot; the rollout counts as
	// failed once it takes longer than the operator's --upgrade-timeout.
	// +optional
	StartedAt *metav1.Time `json:"startedAt,omitempty"`

	// Message says why the upgrade waits or failed.
	// +optional
	Message string `json:"message,omitempty"`
}
