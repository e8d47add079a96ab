package controllers

import (
	"context"
	"fmt"
	"strings"

	batchv1 "k8s.io/api/batch/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/predicate"

	chatv1 "kez.lat/chat/api/v1alpha1"
)

// A backup before each automatic upgrade.
//
// When a KezChat with spec.backup (and beforeUpgrade not false) takes an
// upgrade slot, it is Preparing: PreUpgradeBackup creates one
// KezChatBackup for the upgrade, named after the images it moves to, and
// the KezChat keeps its images until that backup is Completed. The backup
// runs with the image the chat server runs, the one that wrote the data.
// A Failed one stops the upgrade there, slot held, until the admin deletes
// it (another is taken) or sets beforeUpgrade: false.

const (
	// preUpgradeLabel marks the KezChatBackups taken before an upgrade.
	preUpgradeLabel = "chat.kez.lat/pre-upgrade"
	// upgradeTargetAnnotation on such a backup names the images the
	// upgrade moves to.
	upgradeTargetAnnotation = "chat.kez.lat/upgrade-to"
	// ReasonPreUpgradeBackupFailed is the Degraded reason and the event of
	// an upgrade stopped by its failed backup.
	ReasonPreUpgradeBackupFailed = "PreUpgradeBackupFailed"
)

// PreUpgradeBackup is the PreUpgradeHook that backs a KezChat up before
// the operator moves it to new images.
type PreUpgradeBackup struct {
	// Client reads from the manager's cache and writes to the API server.
	Client client.Client
	// APIReader reads a backup the cache has not seen yet.
	APIReader client.Reader
	Scheme    *runtime.Scheme
}

// +kubebuilder:rbac:groups=chat.kez.lat,resources=kezchatbackups,verbs=get;list;watch;create
// +kubebuilder:rbac:groups=batch,resources=jobs,verbs=get;list;watch

// Needed reports whether kc is backed up before an upgrade.
func (h *PreUpgradeBackup) Needed(kc *chatv1.KezChat) bool {
	return kc.Spec.Backup.BacksUpBeforeUpgrade()
}

// Prepare creates kc's backup for the upgrade its status records, once,
// and reports done when it is Completed; a *PreUpgradeStopped when it
// Failed.
func (h *PreUpgradeBackup) Prepare(ctx context.Context, kc *chatv1.KezChat) (bool, string, error) {
	if !h.Needed(kc) || kc.Status.Upgrade == nil {
		// beforeUpgrade turned off (or spec.backup removed) while
		// preparing: the admin skips the backup.
		return true, "", nil
	}
	b, waiting, err := h.ensure(ctx, kc, preUpgradeBackup(kc, kc.Status.Upgrade))
	if err != nil || waiting != "" {
		return false, waiting, err
	}
	done, message, stopped := preUpgradeProgress(b)
	if stopped != nil {
		return false, "", stopped
	}
	return done, message, nil
}

// ensure returns the backup want names, creating it if it does not exist;
// or, while an earlier backup of that name (a failed one the admin
// deleted to retry) still has Jobs, what it waits for: the new backup's
// Jobs have their names.
func (h *PreUpgradeBackup) ensure(ctx context.Context, kc *chatv1.KezChat, want *chatv1.KezChatBackup) (*chatv1.KezChatBackup, string, error) {
	var b chatv1.KezChatBackup
	err := h.Client.Get(ctx, client.ObjectKeyFromObject(want), &b)
	if apierrors.IsNotFound(err) {
		for _, part := range []chatv1.BackupPart{chatv1.BackupPartServer, chatv1.BackupPartSigServer} {
			name := backupJobName(want.Name, part)
			var job batchv1.Job
			switch err := h.Client.Get(ctx, types.NamespacedName{Namespace: want.Namespace, Name: name}, &job); {
			case err == nil:
				return nil, fmt.Sprintf("waiting for Job %s of a deleted KezChatBackup %s to go before taking another", name, want.Name), nil
			case !apierrors.IsNotFound(err):
				return nil, "", fmt.Errorf("reading Job %s: %w", name, err)
			}
		}
		if err := controllerutil.SetControllerReference(kc, want, h.Scheme); err != nil {
			return nil, "", err
		}
		switch err = h.Client.Create(ctx, want); {
		case err == nil:
			return want, "", nil
		case !apierrors.IsAlreadyExists(err):
			return nil, "", fmt.Errorf("creating pre-upgrade KezChatBackup %s: %w", want.Name, err)
		}
		// Made by an earlier reconcile the cache has not seen yet.
		err = h.APIReader.Get(ctx, client.ObjectKeyFromObject(want), &b)
	}
	if err != nil {
		return nil, "", fmt.Errorf("reading pre-upgrade KezChatBackup %s: %w", want.Name, err)
	}
	if !metav1.IsControlledBy(&b, kc) {
		return nil, "", fmt.Errorf("KezChatBackup %s exists and is not this KezChat's pre-upgrade backup: rename or delete it", b.Name)
	}
	return &b, "", nil
}

// preUpgradeBackupName is the backup of kc before its upgrade to the
// images u moves to: the same name for the same upgrade, so a retried
// reconcile never makes two, and a name that fits in a label value (the
// backup Jobs' pods carry it).
func preUpgradeBackupName(kc *chatv1.KezChat, u *chatv1.UpgradeStatus) string {
	suffix := "-pre-upgrade-" + digest([]byte(u.Image), []byte(u.NATSImage))[:10]
	name := kc.Name
	if len(name)+len(suffix) > 63 {
		name = strings.TrimRight(name[:63-len(suffix)], "-.")
	}
	return name + suffix
}

// preUpgradeBackup is the KezChatBackup taken before kc's upgrade u.
func preUpgradeBackup(kc *chatv1.KezChat, u *chatv1.UpgradeStatus) *chatv1.KezChatBackup {
	l := instanceLabels(kc)
	l[preUpgradeLabel] = "true"
	return &chatv1.KezChatBackup{
		ObjectMeta: metav1.ObjectMeta{
			Name: preUpgradeBackupName(kc, u), Namespace: kc.Namespace, Labels: l,
			Annotations: map[string]string{upgradeTargetAnnotation: describeImages(u.Image, u.NATSImage)},
		},
		Spec: chatv1.KezChatBackupSpec{KezChat: chatv1.KezChatReference{Name: kc.Name}},
	}
}

// preUpgradeProgress judges the pre-upgrade backup b: done once
// Completed, stopped once Failed, otherwise what it waits for.
func preUpgradeProgress(b *chatv1.KezChatBackup) (done bool, message string, stopped *PreUpgradeStopped) {
	switch b.Status.Phase {
	case chatv1.BackupCompleted:
		return true, "", nil
	case chatv1.BackupFailed:
		return false, "", &PreUpgradeStopped{
			Reason: ReasonPreUpgradeBackupFailed,
			Message: fmt.Sprintf("pre-upgrade KezChatBackup %s failed: %s; delete it to take another, or set spec.backup.beforeUpgrade: false to upgrade without one",
				b.Name, b.Status.Message),
		}
	}
	phase := b.Status.Phase
	if phase == "" {
		phase = chatv1.BackupPending
	}
	message = fmt.Sprintf("waiting for pre-upgrade KezChatBackup %s (%s)", b.Name, phase)
	if b.Status.Message != "" {
		message += ": " + b.Status.Message
	}
	return false, message, nil
}

// preUpgradeBackupChanges passes the events of pre-upgrade backups that
// matter to their KezChat: a change of phase (it completed or failed), and
// its deletion (the admin asks for another).
var preUpgradeBackupChanges = predicate.Funcs{
	CreateFunc: func(event.CreateEvent) bool { return false },
	UpdateFunc: func(e event.UpdateEvent) bool {
		old, okOld := e.ObjectOld.(*chatv1.KezChatBackup)
		b, ok := e.ObjectNew.(*chatv1.KezChatBackup)
		return ok && okOld && b.Labels[preUpgradeLabel] == "true" && old.Status.Phase != b.Status.Phase
	},
	DeleteFunc: func(e event.DeleteEvent) bool {
		return e.Object.GetLabels()[preUpgradeLabel] == "true"
	},
	GenericFunc: func(event.GenericEvent) bool { return false },
}
