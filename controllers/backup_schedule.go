package controllers

import (
	"context"
	"fmt"
	"time"

	"github.com/robfig/cron/v3"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/recorder"

	chatv1 "kez.lat/chat/api/v1alpha1"
)

// scheduledLabel marks the KezChatBackups a schedule made.
const scheduledLabel = "chat.kez.lat/scheduled"

// retryScheduleBusy is how soon a due scheduled backup is looked at again
// while another backup of its KezChat is unfinished.
const retryScheduleBusy = 15 * time.Second

// BackupScheduleReconciler takes each KezChat's scheduled backups: at each
// time of spec.backup.schedule it creates a KezChatBackup owned by the
// KezChat, one at a time, and wakes again at the next.
type BackupScheduleReconciler struct {
	Client   client.Client
	Scheme   *runtime.Scheme
	Recorder recorder.EventRecorder
	// Now is the clock (time.Now when nil).
	Now func() time.Time
}

func (r *BackupScheduleReconciler) now() time.Time {
	if r.Now != nil {
		return r.Now()
	}
	return time.Now()
}

// parseSchedule reads spec.backup.schedule: five cron fields, or a
// descriptor (@daily, @every 6h), in UTC.
func parseSchedule(spec string) (cron.Schedule, error) {
	s, err := cron.ParseStandard(spec)
	if err != nil {
		return nil, fmt.Errorf("spec.backup.schedule %q: %w", spec, err)
	}
	return s, nil
}

// maxMissedRuns bounds the walk over runs missed while the operator was
// away (an @every 1s schedule after a day down): only the latest counts.
const maxMissedRuns = 100000

// scheduleTimes is, for a schedule last run at last (or created then), the
// latest run due by now (zero when none is) and the next after now. Runs
// missed in between are not made up: one backup covers them all.
func scheduleTimes(s cron.Schedule, last, now time.Time) (due, next time.Time) {
	t := s.Next(last.UTC())
	for i := 0; !t.IsZero() && !t.After(now) && i < maxMissedRuns; i++ {
		due, t = t, s.Next(t)
	}
	if !t.IsZero() && !t.After(now) {
		// Too many missed runs to walk: the latest due is close to now.
		due, t = now, s.Next(now)
	}
	return due, t
}

// scheduledBackupName is the KezChatBackup a schedule makes for its run at
// t: the same for the same run, so a retried reconcile never makes two.
func scheduledBackupName(kc *chatv1.KezChat, t time.Time) string {
	return kc.Name + "-" + t.UTC().Format("20060102150405")
}

// scheduledBackup is the KezChatBackup for kc's run at t.
func scheduledBackup(kc *chatv1.KezChat, t time.Time) *chatv1.KezChatBackup {
	l := instanceLabels(kc)
	l[scheduledLabel] = "true"
	return &chatv1.KezChatBackup{
		ObjectMeta: metav1.ObjectMeta{Name: scheduledBackupName(kc, t), Namespace: kc.Namespace, Labels: l},
		Spec:       chatv1.KezChatBackupSpec{KezChat: chatv1.KezChatReference{Name: kc.Name}},
	}
}

// Reconcile starts kc's scheduled backup when one is due, and asks to be
// woken at the next.
func (r *BackupScheduleReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	var kc chatv1.KezChat
	if err := r.Client.Get(ctx, req.NamespacedName, &kc); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	if !kc.DeletionTimestamp.IsZero() || kc.Annotations[chatv1.ReconcileAnnotation] == chatv1.ReconcilePaused {
		return ctrl.Result{}, nil
	}
	if kc.Spec.Backup == nil || kc.Spec.Backup.Schedule == "" {
		return ctrl.Result{}, r.writeSchedule(ctx, &kc, kc.Status.LastScheduleTime, nil)
	}
	sched, err := parseSchedule(kc.Spec.Backup.Schedule)
	if err != nil {
		// The CRD's pattern admits what looks like cron; the parser is
		// stricter. Nothing to retry until the spec changes.
		r.Recorder.Eventf(&kc, nil, corev1.EventTypeWarning, ReasonInvalidSchedule, "Schedule", "%v", err)
		return ctrl.Result{}, nil
	}
	now := r.now()
	last := kc.CreationTimestamp.Time
	if kc.Status.LastScheduleTime != nil {
		last = kc.Status.LastScheduleTime.Time
	}
	due, next := scheduleTimes(sched, last, now)
	if due.IsZero() {
		if err := r.writeSchedule(ctx, &kc, kc.Status.LastScheduleTime, &next); err != nil {
			return ctrl.Result{}, err
		}
		return ctrl.Result{RequeueAfter: next.Sub(now)}, nil
	}

	var list chatv1.KezChatBackupList
	if err := r.Client.List(ctx, &list, client.InNamespace(kc.Namespace)); err != nil {
		return ctrl.Result{}, fmt.Errorf("listing KezChatBackups: %w", err)
	}
	for _, b := range list.Items {
		// The due run's own backup, made by a reconcile that failed to
		// record it, is not another.
		if b.Spec.KezChat.Name == kc.Name && !b.IsFinished() && b.Name != scheduledBackupName(&kc, due) {
			// One at a time: the due run starts once this one ends.
			return ctrl.Result{RequeueAfter: retryScheduleBusy}, nil
		}
	}
	b := scheduledBackup(&kc, due)
	if err := controllerutil.SetControllerReference(&kc, b, r.Scheme); err != nil {
		return ctrl.Result{}, err
	}
	switch err := r.Client.Create(ctx, b); {
	case err == nil:
		r.Recorder.Eventf(&kc, b, corev1.EventTypeNormal, ReasonBackupScheduled, "Schedule",
			"created KezChatBackup %s for the scheduled run at %s", b.Name, due.UTC().Format(time.RFC3339))
	case !apierrors.IsAlreadyExists(err):
		return ctrl.Result{}, fmt.Errorf("creating scheduled KezChatBackup %s: %w", b.Name, err)
	}
	if err := r.writeSchedule(ctx, &kc, &metav1.Time{Time: due}, &next); err != nil {
		return ctrl.Result{}, err
	}
	return ctrl.Result{RequeueAfter: next.Sub(now)}, nil
}

// writeSchedule records the last and next scheduled runs in kc's status,
// when they changed.
func (r *BackupScheduleReconciler) writeSchedule(ctx context.Context, kc *chatv1.KezChat, last *metav1.Time, next *time.Time) error {
	var nextTime *metav1.Time
	if next != nil {
		nextTime = &metav1.Time{Time: next.UTC().Truncate(time.Second)}
	}
	if last != nil {
		last = &metav1.Time{Time: last.UTC().Truncate(time.Second)}
	}
	same := func(a, b *metav1.Time) bool {
		return (a == nil) == (b == nil) && (a == nil || a.Equal(b))
	}
	if same(kc.Status.LastScheduleTime, last) && same(kc.Status.NextScheduleTime, nextTime) {
		return nil
	}
	before := kc.DeepCopy()
	kc.Status.LastScheduleTime, kc.Status.NextScheduleTime = last, nextTime
	if err := r.Client.Status().Patch(ctx, kc, client.MergeFromWithOptions(before, client.MergeFromWithOptimisticLock{})); err != nil {
		return fmt.Errorf("recording the backup schedule: %w", err)
	}
	return nil
}

// SetupWithManager registers the reconciler with mgr. It wakes on spec
// changes of a KezChat and on changes of the backups it owns (a running
// one ending lets the next due one start), and otherwise at the times it
// asked for.
func (r *BackupScheduleReconciler) SetupWithManager(mgr ctrl.Manager, opts controller.Options) error {
	return ctrl.NewControllerManagedBy(mgr).
		For(&chatv1.KezChat{}, builder.WithPredicates(predicate.Or(
			predicate.GenerationChangedPredicate{}, predicate.AnnotationChangedPredicate{}))).
		Owns(&chatv1.KezChatBackup{}).
		WithOptions(opts).
		Named("kezchat-backup-schedule").
		Complete(r)
}
