package controllers

import (
	"context"
	"errors"
	"fmt"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/util/retry"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
	"sigs.k8s.io/controller-runtime/pkg/recorder"

	chatv1 "kez.lat/chat/api/v1alpha1"
)

// How soon a backup that waits is looked at again: for its KezChat to be
// created, or for another backup of it to finish.
const (
	retryMissingKezChat = 30 * time.Second
	retryBusyKezChat    = 10 * time.Second
)

// KezChatBackupReconciler takes the backup each KezChatBackup asks for:
// one Job per part, followed to the end, their results in its status, in
// events, and in its KezChat's status.
type KezChatBackupReconciler struct {
	// Client reads from the manager's cache and writes to the API server.
	Client client.Client
	// APIReader reads the backup Jobs' pods, which are not cached (a
	// cluster's pods are many).
	APIReader client.Reader
	Scheme    *runtime.Scheme
	Recorder  recorder.EventRecorder
	// DefaultImage takes the backup when the chat server's Deployment
	// does not exist to say which image runs: the operator's own.
	DefaultImage string
	// PlatformAssignsUID leaves the backup pods' uid, gid and fsGroup to
	// the platform, as the KezChat's own pods.
	PlatformAssignsUID bool
	// Now is the clock (time.Now when nil).
	Now func() time.Time
}

// +kubebuilder:rbac:groups=chat.kez.lat,resources=kezchatbackups,verbs=get;list;watch;create
// +kubebuilder:rbac:groups=chat.kez.lat,resources=kezchatbackups/status,verbs=get;patch
// +kubebuilder:rbac:groups=chat.kez.lat,resources=kezchatbackups/finalizers,verbs=update
// +kubebuilder:rbac:groups=batch,resources=jobs,verbs=get;list;watch;create;delete
// +kubebuilder:rbac:groups="",resources=pods,verbs=list

func (r *KezChatBackupReconciler) now() time.Time {
	if r.Now != nil {
		return r.Now()
	}
	return time.Now()
}

// Reconcile moves one KezChatBackup along: Pending until its KezChat
// exists and no other backup of it runs, Running while its Jobs work,
// then Completed or Failed, for good.
func (r *KezChatBackupReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	var b chatv1.KezChatBackup
	if err := r.Client.Get(ctx, req.NamespacedName, &b); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	if b.IsFinished() {
		return ctrl.Result{}, nil
	}
	// A backup starts from its KezChat as it is now, not as the cache last
	// saw it (a spec.backup just removed or changed).
	reader := client.Reader(r.Client)
	if b.Status.Phase != chatv1.BackupRunning {
		reader = r.APIReader
	}
	var kc chatv1.KezChat
	switch err := reader.Get(ctx, types.NamespacedName{Namespace: b.Namespace, Name: b.Spec.KezChat.Name}, &kc); {
	case apierrors.IsNotFound(err):
		if b.Status.Phase == chatv1.BackupRunning {
			return ctrl.Result{}, r.finish(ctx, &b, nil, chatv1.BackupFailed, "KezChat "+b.Spec.KezChat.Name+" was deleted during the backup")
		}
		return ctrl.Result{RequeueAfter: retryMissingKezChat},
			r.setPending(ctx, &b, fmt.Sprintf("waiting for KezChat %s, which does not exist", b.Spec.KezChat.Name))
	case err != nil:
		return ctrl.Result{}, fmt.Errorf("reading KezChat %s: %w", b.Spec.KezChat.Name, err)
	}
	if kc.Spec.Backup == nil && b.Status.Phase != chatv1.BackupRunning {
		return ctrl.Result{}, r.finish(ctx, &b, &kc, chatv1.BackupFailed,
			fmt.Sprintf("KezChat %s has no spec.backup: name the object store to back up to there", kc.Name))
	}

	if b.Status.Phase != chatv1.BackupRunning {
		if !kc.DeletionTimestamp.IsZero() {
			return ctrl.Result{}, r.finish(ctx, &b, &kc, chatv1.BackupFailed, "KezChat "+kc.Name+" is being deleted")
		}
		busy, err := r.runningBackupOf(ctx, &b)
		if err != nil {
			return ctrl.Result{}, err
		}
		if busy != "" {
			return ctrl.Result{RequeueAfter: retryBusyKezChat},
				r.setPending(ctx, &b, fmt.Sprintf("waiting for KezChatBackup %s of the same KezChat to finish", busy))
		}
		if err := r.start(ctx, &b, &kc); err != nil {
			return ctrl.Result{}, err
		}
	}
	return ctrl.Result{}, r.follow(ctx, &b, &kc)
}

// runningBackupOf names another backup of b's KezChat that is running, if
// any: one at a time, so that two never read the same volume at once nor
// prune each other's folders.
func (r *KezChatBackupReconciler) runningBackupOf(ctx context.Context, b *chatv1.KezChatBackup) (string, error) {
	// From the API server: the cache may not have seen a backup started
	// a moment ago.
	var list chatv1.KezChatBackupList
	if err := r.APIReader.List(ctx, &list, client.InNamespace(b.Namespace)); err != nil {
		return "", fmt.Errorf("listing KezChatBackups: %w", err)
	}
	for _, o := range list.Items {
		if o.Name != b.Name && o.Spec.KezChat.Name == b.Spec.KezChat.Name && o.Status.Phase == chatv1.BackupRunning {
			return o.Name, nil
		}
	}
	return "", nil
}

// start gives b its backup id and destination, and records that it runs,
// before any Job exists: the id is then fixed, whatever happens next.
func (r *KezChatBackupReconciler) start(ctx context.Context, b *chatv1.KezChatBackup, kc *chatv1.KezChat) error {
	before := b.DeepCopy()
	now := metav1.NewTime(r.now().Truncate(time.Second))
	store := &kc.Spec.Backup.ObjectStore
	id := newBackupID(now.Time, string(b.UID))
	b.Status = chatv1.KezChatBackupStatus{
		Phase:       chatv1.BackupRunning,
		BackupID:    id,
		Destination: backupDestination(store, id),
		Endpoint:    store.Endpoint,
		StartedAt:   &now,
		Message:     "",
	}
	for _, part := range backupParts(kc) {
		b.Status.Parts = append(b.Status.Parts, chatv1.BackupPartStatus{
			Part: part, Job: backupJobName(b.Name, part), Phase: chatv1.BackupPending,
		})
	}
	if err := r.Client.Status().Patch(ctx, b, client.MergeFromWithOptions(before, client.MergeFromWithOptimisticLock{})); err != nil {
		return fmt.Errorf("recording the start of backup %s: %w", b.Name, err)
	}
	note := fmt.Sprintf("backup %s of KezChat %s to %s started", id, kc.Name, b.Status.Destination)
	r.Recorder.Eventf(b, kc, corev1.EventTypeNormal, ReasonBackupStarted, "Backup", "%s", note)
	r.Recorder.Eventf(kc, b, corev1.EventTypeNormal, ReasonBackupStarted, "Backup", "%s (KezChatBackup %s)", note, b.Name)
	return nil
}

// follow creates each part's Job that does not exist yet, reads how each
// is doing, and records it; once every part has finished, the backup has.
func (r *KezChatBackupReconciler) follow(ctx context.Context, b *chatv1.KezChatBackup, kc *chatv1.KezChat) error {
	var parts []chatv1.BackupPartStatus
	for _, p := range b.Status.Parts {
		var existing batchv1.Job
		var job *batchv1.Job
		switch err := r.Client.Get(ctx, types.NamespacedName{Namespace: b.Namespace, Name: p.Job}, &existing); {
		case err == nil:
			job = &existing
		case !apierrors.IsNotFound(err):
			return fmt.Errorf("reading Job %s: %w", p.Job, err)
		case p.Phase == chatv1.BackupPending && kc.Spec.Backup != nil:
			created, err := r.createJob(ctx, b, kc, p.Part)
			if err != nil {
				return err
			}
			job = created
		case p.Phase == chatv1.BackupCompleted || p.Phase == chatv1.BackupFailed:
			parts = append(parts, p) // its Job is gone; its result is kept
			continue
		default:
			// The cache may not have seen the Job made by the last
			// reconcile yet: ask the API server before calling it gone.
			switch err := r.APIReader.Get(ctx, types.NamespacedName{Namespace: b.Namespace, Name: p.Job}, &existing); {
			case err == nil:
				job = &existing
			case apierrors.IsNotFound(err):
				p.Phase, p.Message = chatv1.BackupFailed, "Job "+p.Job+" disappeared before it finished"
				parts = append(parts, p)
				continue
			default:
				return fmt.Errorf("reading Job %s: %w", p.Job, err)
			}
		}
		if !metav1.IsControlledBy(job, b) {
			// A Job of an earlier KezChatBackup of this name, not yet
			// collected: its result is not this backup's.
			return fmt.Errorf("Job %s belongs to an earlier backup named %s; waiting for it to be deleted", job.Name, b.Name)
		}
		var pods []corev1.Pod
		if done, _, _ := jobFinished(job); done {
			var list corev1.PodList
			if err := r.APIReader.List(ctx, &list, client.InNamespace(b.Namespace), client.MatchingLabels{jobNameLabel: job.Name}); err != nil {
				return fmt.Errorf("reading the pods of Job %s: %w", job.Name, err)
			}
			// Pods of an earlier Job of this name, not yet collected,
			// carry its name too: only this Job's speak for it.
			for _, pod := range list.Items {
				if metav1.IsControlledBy(&pod, job) {
					pods = append(pods, pod)
				}
			}
		}
		parts = append(parts, partStatus(p.Part, p.Job, b.Status.BackupID, job, pods))
	}

	phase, bytes, completed, message := summarize(parts)
	if phase == chatv1.BackupRunning {
		if equality.Semantic.DeepEqual(parts, b.Status.Parts) {
			return nil
		}
		before := b.DeepCopy()
		b.Status.Parts = parts
		b.Status.Bytes = bytes
		if err := r.Client.Status().Patch(ctx, b, client.MergeFromWithOptions(before, client.MergeFromWithOptimisticLock{})); err != nil {
			return fmt.Errorf("recording the progress of backup %s: %w", b.Name, err)
		}
		return nil
	}
	if phase == chatv1.BackupFailed {
		// A part still at work is stopped: the backup has failed anyway.
		for _, p := range parts {
			if p.Phase == chatv1.BackupRunning {
				job := &batchv1.Job{ObjectMeta: metav1.ObjectMeta{Namespace: b.Namespace, Name: p.Job}}
				if err := r.Client.Delete(ctx, job, client.PropagationPolicy(metav1.DeletePropagationBackground)); client.IgnoreNotFound(err) != nil {
					return fmt.Errorf("stopping Job %s: %w", p.Job, err)
				}
			}
		}
	}
	b.Status.Parts = parts
	b.Status.Bytes = bytes
	if completed != nil {
		b.Status.CompletedAt = completed
	}
	return r.finish(ctx, b, kc, phase, message)
}

// createJob creates the Job of one part of b, owned by b.
func (r *KezChatBackupReconciler) createJob(ctx context.Context, b *chatv1.KezChatBackup, kc *chatv1.KezChat, part chatv1.BackupPart) (*batchv1.Job, error) {
	image, err := r.serverImage(ctx, kc)
	if err != nil {
		return nil, err
	}
	job := backupJob(kc, b, part, image, Inputs{PlatformAssignsUID: r.PlatformAssignsUID})
	if err := controllerutil.SetControllerReference(b, job, r.Scheme); err != nil {
		return nil, err
	}
	if err := r.Client.Create(ctx, job); err != nil {
		if !apierrors.IsAlreadyExists(err) {
			return nil, fmt.Errorf("creating Job %s: %w", job.Name, err)
		}
		// Made by an earlier reconcile the cache has not seen yet.
		if err := r.APIReader.Get(ctx, client.ObjectKeyFromObject(job), job); err != nil {
			return nil, fmt.Errorf("reading Job %s: %w", job.Name, err)
		}
		if !metav1.IsControlledBy(job, b) {
			return nil, fmt.Errorf("Job %s exists and is not this backup's", job.Name)
		}
	}
	return job, nil
}

// serverImage is the image the chat server runs, which takes its backups:
// the version that wrote the data. Before the Deployment exists, the one
// it will run.
func (r *KezChatBackupReconciler) serverImage(ctx context.Context, kc *chatv1.KezChat) (string, error) {
	var d appsv1.Deployment
	switch err := r.Client.Get(ctx, types.NamespacedName{Namespace: kc.Namespace, Name: namesOf(kc).server()}, &d); {
	case err == nil:
		for _, c := range d.Spec.Template.Spec.Containers {
			if c.Name == "server" {
				return c.Image, nil
			}
		}
	case !apierrors.IsNotFound(err):
		return "", fmt.Errorf("reading the chat server's Deployment: %w", err)
	}
	return Inputs{DefaultImage: r.DefaultImage}.image(kc), nil
}

// setPending records why b waits, when that is news.
func (r *KezChatBackupReconciler) setPending(ctx context.Context, b *chatv1.KezChatBackup, message string) error {
	if b.Status.Phase == chatv1.BackupPending && b.Status.Message == message {
		return nil
	}
	before := b.DeepCopy()
	b.Status.Phase, b.Status.Message = chatv1.BackupPending, message
	if err := r.Client.Status().Patch(ctx, b, client.MergeFromWithOptions(before, client.MergeFromWithOptimisticLock{})); err != nil {
		return fmt.Errorf("recording that backup %s waits: %w", b.Name, err)
	}
	return nil
}

// finish records b's end, with its events, and, when its KezChat still
// exists, the KezChat's last backup and LastBackupSucceeded.
func (r *KezChatBackupReconciler) finish(ctx context.Context, b *chatv1.KezChatBackup, kc *chatv1.KezChat, phase chatv1.BackupPhase, message string) error {
	latest := &chatv1.KezChatBackup{}
	if err := r.Client.Get(ctx, client.ObjectKeyFromObject(b), latest); err != nil {
		return fmt.Errorf("reading backup %s: %w", b.Name, err)
	}
	before := latest.DeepCopy()
	status := b.Status.DeepCopy()
	status.Phase, status.Message = phase, message
	if phase == chatv1.BackupFailed || status.CompletedAt == nil {
		now := metav1.NewTime(r.now().Truncate(time.Second))
		status.CompletedAt = &now
	}
	latest.Status = *status
	// The resourceVersion of the backup read here: a concurrent finish
	// conflicts rather than write twice.
	if err := r.Client.Status().Patch(ctx, latest, client.MergeFromWithOptions(before, client.MergeFromWithOptimisticLock{})); err != nil {
		return fmt.Errorf("recording the end of backup %s: %w", b.Name, err)
	}
	*b = *latest

	eventType, reason := corev1.EventTypeNormal, ReasonBackupCompleted
	note := fmt.Sprintf("backup %s completed: %d bytes in %s", b.Status.BackupID, b.Status.Bytes, b.Status.Destination)
	if phase == chatv1.BackupFailed {
		eventType, reason = corev1.EventTypeWarning, ReasonBackupFailed
		note = fmt.Sprintf("backup %s failed: %s", b.Status.BackupID, message)
		if b.Status.BackupID == "" {
			note = "backup failed: " + message
		}
	}
	if kc != nil {
		r.Recorder.Eventf(b, kc, eventType, reason, "Backup", "%s", note)
		r.Recorder.Eventf(kc, b, eventType, reason, "Backup", "%s (KezChatBackup %s)", note, b.Name)
	} else {
		r.Recorder.Eventf(b, nil, eventType, reason, "Backup", "%s", note)
	}
	if kc == nil {
		return nil
	}
	return r.recordOnKezChat(ctx, kc, b)
}

// recordOnKezChat writes b's outcome into its KezChat's status: the last
// successful backup, and LastBackupSucceeded.
func (r *KezChatBackupReconciler) recordOnKezChat(ctx context.Context, kc *chatv1.KezChat, b *chatv1.KezChatBackup) error {
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		var latest chatv1.KezChat
		if err := r.Client.Get(ctx, client.ObjectKeyFromObject(kc), &latest); err != nil {
			return err
		}
		before := latest.DeepCopy()
		cond := metav1.Condition{
			Type: chatv1.ConditionLastBackupSucceeded, Status: metav1.ConditionTrue, Reason: ReasonBackupCompleted,
			Message:            fmt.Sprintf("KezChatBackup %s (%s) completed", b.Name, b.Status.BackupID),
			ObservedGeneration: latest.Generation,
		}
		if b.Status.Phase == chatv1.BackupFailed {
			cond.Status, cond.Reason = metav1.ConditionFalse, ReasonBackupFailed
			cond.Message = fmt.Sprintf("KezChatBackup %s failed: %s", b.Name, b.Status.Message)
		} else if last := latest.Status.LastSuccessfulBackup; last == nil || !b.Status.CompletedAt.Time.Before(last.CompletedAt.Time) {
			latest.Status.LastSuccessfulBackup = &chatv1.BackupRecord{
				Name: b.Name, BackupID: b.Status.BackupID, CompletedAt: *b.Status.CompletedAt, Bytes: b.Status.Bytes,
			}
		}
		meta.SetStatusCondition(&latest.Status.Conditions, cond)
		if equality.Semantic.DeepEqual(before.Status, latest.Status) {
			return nil
		}
		return r.Client.Status().Patch(ctx, &latest, client.MergeFromWithOptions(before, client.MergeFromWithOptimisticLock{}))
	})
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("recording backup %s in KezChat %s: %w", b.Name, kc.Name, err)
	}
	return nil
}

// waitingFor lists the unfinished backups of the KezChat obj is, or names.
func (r *KezChatBackupReconciler) waitingFor(ctx context.Context, obj client.Object) []reconcile.Request {
	name := obj.GetName()
	if b, ok := obj.(*chatv1.KezChatBackup); ok {
		name = b.Spec.KezChat.Name
	}
	var list chatv1.KezChatBackupList
	if err := r.Client.List(ctx, &list, client.InNamespace(obj.GetNamespace())); err != nil {
		return nil
	}
	var reqs []reconcile.Request
	for _, b := range list.Items {
		if b.Spec.KezChat.Name == name && !b.IsFinished() && b.Name != obj.GetName() {
			reqs = append(reqs, reconcile.Request{NamespacedName: client.ObjectKeyFromObject(&b)})
		}
	}
	return reqs
}

// SetupWithManager registers the reconciler with mgr, watching
// KezChatBackups and their Jobs, and KezChats being created.
func (r *KezChatBackupReconciler) SetupWithManager(mgr ctrl.Manager, opts controller.Options) error {
	if r.Recorder == nil {
		return errors.New("KezChatBackupReconciler needs a Recorder")
	}
	return ctrl.NewControllerManagedBy(mgr).
		For(&chatv1.KezChatBackup{}).
		Owns(&batchv1.Job{}).
		// A backup waiting for its KezChat starts when it is created, and
		// one waiting for another backup when that one ends.
		Watches(&chatv1.KezChat{}, handler.EnqueueRequestsFromMapFunc(r.waitingFor),
			builder.WithPredicates(predicate.Funcs{
				UpdateFunc:  func(event.UpdateEvent) bool { return false },
				DeleteFunc:  func(event.DeleteEvent) bool { return false },
				GenericFunc: func(event.GenericEvent) bool { return false },
			})).
		Watches(&chatv1.KezChatBackup{}, handler.EnqueueRequestsFromMapFunc(r.waitingFor),
			builder.WithPredicates(predicate.Funcs{
				UpdateFunc: func(e event.UpdateEvent) bool {
					b, ok := e.ObjectNew.(*chatv1.KezChatBackup)
					return ok && b.IsFinished()
				},
				CreateFunc:  func(event.CreateEvent) bool { return false },
				GenericFunc: func(event.GenericEvent) bool { return false },
			})).
		WithOptions(opts).
		Named("kezchatbackup").
		Complete(r)
}
