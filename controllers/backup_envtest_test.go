package controllers

import (
	"bytes"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	chatv1 "kez.lat/chat/api/v1alpha1"
)

func TestInvalidBackupSpecsAreRefusedAtAdmission(t *testing.T) {
	ns := testNamespace(t)
	tests := []struct {
		name   string
		mutate func(*chatv1.KezChat)
		want   string
	}{
		{"plain http without insecureHTTP", func(kc *chatv1.KezChat) { kc.Spec.Backup.ObjectStore.Endpoint = "http://minio:9000" }, "set insecureHTTP: true"},
		{"insecureHTTP on https", func(kc *chatv1.KezChat) { kc.Spec.Backup.ObjectStore.InsecureHTTP = true }, "insecureHTTP is only for an http:// endpoint"},
		{"a CA for http", func(kc *chatv1.KezChat) {
			kc.Spec.Backup.ObjectStore.Endpoint, kc.Spec.Backup.ObjectStore.InsecureHTTP = "http://minio:9000", true
			kc.Spec.Backup.ObjectStore.CASecret = &chatv1.SecretKeyReference{Name: "ca"}
		}, "caSecret is only for an https:// endpoint"},
		{"an endpoint with a path", func(kc *chatv1.KezChat) { kc.Spec.Backup.ObjectStore.Endpoint = "https://s3.example.org/bucket" }, "spec.backup.objectStore.endpoint"},
		{"an endpoint not a URL", func(kc *chatv1.KezChat) { kc.Spec.Backup.ObjectStore.Endpoint = "s3.example.org" }, "spec.backup.objectStore.endpoint"},
		{"a bucket not a bucket name", func(kc *chatv1.KezChat) { kc.Spec.Backup.ObjectStore.Bucket = "Kez_Backups" }, "spec.backup.objectStore.bucket"},
		{"a path with a leading /", func(kc *chatv1.KezChat) { kc.Spec.Backup.ObjectStore.Path = "/team" }, "no leading or trailing /"},
		{"a path climbing out", func(kc *chatv1.KezChat) { kc.Spec.Backup.ObjectStore.Path = "team/../other" }, "no leading or trailing /"},
		{"no credentials Secret", func(kc *chatv1.KezChat) { kc.Spec.Backup.ObjectStore.CredentialsSecret.Name = "" }, "spec.backup.objectStore.credentialsSecret.name"},
		{"a schedule of prose", func(kc *chatv1.KezChat) { kc.Spec.Backup.Schedule = "every night" }, "spec.backup.schedule"},
		{"a schedule of six fields", func(kc *chatv1.KezChat) { kc.Spec.Backup.Schedule = "0 0 3 * * *" }, "spec.backup.schedule"},
		{"keepCount zero", func(kc *chatv1.KezChat) { kc.Spec.Backup.Retention.KeepCount = ptr.To[int32](0) }, "spec.backup.retention.keepCount"},
		{"maxAge under an hour", func(kc *chatv1.KezChat) {
			kc.Spec.Backup.Retention.MaxAge = &metav1.Duration{Duration: time.Minute}
		}, "retention.maxAge must be at least 1h"},
		{"an unknown deletion policy", func(kc *chatv1.KezChat) { kc.Spec.DeletionPolicy = "Keep" }, "spec.deletionPolicy"},
		{"recovery without a backup id", func(kc *chatv1.KezChat) {
			kc.Spec.Bootstrap = &chatv1.BootstrapSpec{Recovery: chatv1.RecoverySpec{ObjectStore: kc.Spec.Backup.ObjectStore}}
		}, "spec.bootstrap.recovery.backupID"},
		{"recovery from plain http", func(kc *chatv1.KezChat) {
			store := kc.Spec.Backup.ObjectStore
			store.Endpoint = "http://minio:9000"
			kc.Spec.Bootstrap = &chatv1.BootstrapSpec{Recovery: chatv1.RecoverySpec{ObjectStore: store, BackupID: "x"}}
		}, "set insecureHTTP: true"},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			kc := &chatv1.KezChat{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("bad-%d", i), Namespace: ns},
				Spec: chatv1.KezChatSpec{Domain: "chat.example.org"}}
			withBackup(kc)
			tt.mutate(kc)
			err := k8s.Create(ctx, kc)
			if !apierrors.IsInvalid(err) || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("got %v, want Invalid mentioning %q", err, tt.want)
			}
		})
	}

	// What passes: cron, descriptors, an in-cluster http store.
	for i, schedule := range []string{"0 3 * * *", "*/15 * * * 1-5", "@daily", "@every 6h"} {
		kc := &chatv1.KezChat{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("good-%d", i), Namespace: ns},
			Spec: chatv1.KezChatSpec{Domain: "chat.example.org"}}
		withBackup(kc)
		kc.Spec.Backup.Schedule = schedule
		kc.Spec.Backup.ObjectStore.Endpoint, kc.Spec.Backup.ObjectStore.InsecureHTTP = "http://minio.backup:9000", true
		if err := k8s.Create(ctx, kc); err != nil {
			t.Errorf("schedule %q: %v", schedule, err)
		}
	}

	// Recovery only at creation, and never changed.
	recovery := &chatv1.BootstrapSpec{Recovery: chatv1.RecoverySpec{BackupID: "20261202T030000Z-abcd1234",
		ObjectStore: chatv1.ObjectStoreSpec{Endpoint: "https://s3.example.org", Bucket: "old", CredentialsSecret: chatv1.SecretReference{Name: "c"}}}}
	createKezChat(t, ns)
	kc := getKezChat(t, ns)
	kc.Spec.Bootstrap = recovery
	if err := k8s.Update(ctx, kc); !apierrors.IsInvalid(err) || !strings.Contains(err.Error(), "set only when a KezChat is created") {
		t.Errorf("adding recovery later: %v", err)
	}
	restored := &chatv1.KezChat{ObjectMeta: metav1.ObjectMeta{Name: "restored", Namespace: ns},
		Spec: chatv1.KezChatSpec{Domain: "chat.example.org", Bootstrap: recovery.DeepCopy()}}
	if err := k8s.Create(ctx, restored); err != nil {
		t.Fatal(err)
	}
	restored.Spec.Bootstrap.Recovery.BackupID = "other"
	if err := k8s.Update(ctx, restored); !apierrors.IsInvalid(err) || !strings.Contains(err.Error(), "spec.bootstrap is immutable") {
		t.Errorf("changing recovery: %v", err)
	}
	restored.Spec.Bootstrap = nil
	if err := k8s.Update(ctx, restored); !apierrors.IsInvalid(err) || !strings.Contains(err.Error(), "set only when a KezChat is created") {
		t.Errorf("removing recovery: %v", err)
	}
	if restored.Spec.DeletionPolicyOrDefault() != chatv1.DeletionRetain {
		t.Errorf("deletionPolicy defaults to %q", restored.Spec.DeletionPolicy)
	}
	if got, err := get[chatv1.KezChat](ns, "restored"); err != nil || got.Spec.DeletionPolicy != chatv1.DeletionRetain {
		t.Errorf("stored deletionPolicy %q (%v), want Retain", got.Spec.DeletionPolicy, err)
	}

	// A KezChatBackup names its KezChat once.
	b := &chatv1.KezChatBackup{ObjectMeta: metav1.ObjectMeta{Name: "once", Namespace: ns},
		Spec: chatv1.KezChatBackupSpec{KezChat: chatv1.KezChatReference{Name: "chat"}}}
	if err := k8s.Create(ctx, b); err != nil {
		t.Fatal(err)
	}
	b.Spec.KezChat.Name = "other"
	if err := k8s.Update(ctx, b); !apierrors.IsInvalid(err) || !strings.Contains(err.Error(), "spec is immutable") {
		t.Errorf("changing a KezChatBackup's KezChat: %v", err)
	}
	noName := &chatv1.KezChatBackup{ObjectMeta: metav1.ObjectMeta{Name: "none", Namespace: ns}}
	if err := k8s.Create(ctx, noName); !apierrors.IsInvalid(err) {
		t.Errorf("a KezChatBackup naming no KezChat: %v", err)
	}
}

// createBackup makes a KezChatBackup of the KezChat chat, as
// `kubectl apply` would.
func createBackup(t *testing.T, ns, name string) {
	t.Helper()
	b := &chatv1.KezChatBackup{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec: chatv1.KezChatBackupSpec{KezChat: chatv1.KezChatReference{Name: "chat"}}}
	if err := k8s.Create(ctx, b); err != nil {
		t.Fatalf("creating KezChatBackup: %v", err)
	}
}

func waitForBackupPhase(t *testing.T, ns, name string, phase chatv1.BackupPhase) *chatv1.KezChatBackup {
	t.Helper()
	return waitFor[chatv1.KezChatBackup](t, ns, name, func(b *chatv1.KezChatBackup) error {
		if b.Status.Phase != phase {
			return fmt.Errorf("phase %q (%s), want %s", b.Status.Phase, b.Status.Message, phase)
		}
		return nil
	})
}

// finishBackupJob plays the Job controller and the kubelet, which envtest
// does not run: a pod of the Job ends in phase with the container's
// termination message msg, and the Job finishes accordingly.
func finishBackupJob(t *testing.T, ns, jobName string, phase corev1.PodPhase, msg string) {
	t.Helper()
	job := waitFor[batchv1.Job](t, ns, jobName, nil)
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{GenerateName: jobName + "-", Namespace: ns, Labels: map[string]string{jobNameLabel: jobName},
			// Controlled by its Job, as the Job controller makes them.
			OwnerReferences: []metav1.OwnerReference{*metav1.NewControllerRef(job, batchv1.SchemeGroupVersion.WithKind("Job"))}},
		Spec: *job.Spec.Template.Spec.DeepCopy(),
	}
	if err := k8s.Create(ctx, pod); err != nil {
		t.Fatalf("creating the Job's pod: %v", err)
	}
	exit := int32(0)
	if phase == corev1.PodFailed {
		exit = 1
	}
	pod.Status = corev1.PodStatus{Phase: phase, ContainerStatuses: []corev1.ContainerStatus{{
		Name: "backup", Image: pod.Spec.Containers[0].Image, ImageID: "sha256:0",
		State: corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{ExitCode: exit, Message: msg, Reason: "Completed"}},
	}}}
	if err := k8s.Status().Update(ctx, pod); err != nil {
		t.Fatalf("finishing the Job's pod: %v", err)
	}
	now := metav1.Now()
	eventually(t, waitTimeout, "finishing Job "+jobName, func() error {
		job, err := get[batchv1.Job](ns, jobName)
		if err != nil {
			return err
		}
		job.Status.StartTime = ptr.To(metav1.NewTime(now.Add(-time.Minute)))
		job.Status.Active = 0
		if phase == corev1.PodSucceeded {
			job.Status.Succeeded, job.Status.CompletionTime = 1, &now
			job.Status.Conditions = []batchv1.JobCondition{
				{Type: batchv1.JobSuccessCriteriaMet, Status: corev1.ConditionTrue, LastTransitionTime: now, LastProbeTime: now},
				{Type: batchv1.JobComplete, Status: corev1.ConditionTrue, LastTransitionTime: now, LastProbeTime: now},
			}
		} else {
			job.Status.Failed = 2
			job.Status.Conditions = []batchv1.JobCondition{
				{Type: batchv1.JobFailureTarget, Status: corev1.ConditionTrue, Reason: "BackoffLimitExceeded", LastTransitionTime: now, LastProbeTime: now},
				{Type: batchv1.JobFailed, Status: corev1.ConditionTrue, Reason: "BackoffLimitExceeded", Message: "Job has reached the specified backoff limit", LastTransitionTime: now, LastProbeTime: now},
			}
		}
		return k8s.Status().Update(ctx, job)
	})
}

// eventsWith are the reasons of the events regarding the object named.
func eventReasons(t *testing.T, ns, kind, name string) []string {
	t.Helper()
	var events eventsv1.EventList
	if err := k8s.List(ctx, &events, client.InNamespace(ns)); err != nil {
		t.Fatal(err)
	}
	var reasons []string
	for _, e := range events.Items {
		if e.Regarding.Kind == kind && e.Regarding.Name == name {
			reasons = append(reasons, e.Reason)
		}
	}
	return reasons
}

func waitForEvents(t *testing.T, ns, kind, name string, reasons ...string) {
	t.Helper()
	eventually(t, waitTimeout, fmt.Sprintf("events %v for %s %s", reasons, kind, name), func() error {
		got := eventReasons(t, ns, kind, name)
		for _, r := range reasons {
			if !slices.Contains(got, r) {
				return fmt.Errorf("events %v lack %s", got, r)
			}
		}
		return nil
	})
}

func resultJSON(id, part string, bytes int64) string {
	return fmt.Sprintf(`{"id":%q,"part":%q,"bytes":%d,"objects":2,"startedAt":"2026-12-02T03:00:00Z","completedAt":"2026-12-02T03:00:0%dZ","version":"v1.2.3","deleted":["20261101T030000Z-00000000"]}`,
		id, part, bytes, len(part)%10)
}

func TestKezChatBackupRunsAJobPerPartAndCompletes(t *testing.T) {
	ns := testNamespace(t)
	startManager(t, ns)
	createKezChat(t, ns, withBackup, func(kc *chatv1.KezChat) {
		kc.Spec.Backup.Retention.KeepCount = ptr.To[int32](7)
	})
	waitFor[appsv1.Deployment](t, ns, "chat-server", nil)

	createBackup(t, ns, "nightly")
	b := waitForBackupPhase(t, ns, "nightly", chatv1.BackupRunning)
	id := b.Status.BackupID
	if !strings.HasPrefix(b.Status.Destination, "s3://kez-backups/team/chat/"+id) || b.Status.StartedAt == nil || len(b.Status.Parts) != 2 {
		t.Errorf("running status %+v", b.Status)
	}
	for _, part := range []string{"server", "sigserver"} {
		job := waitFor[batchv1.Job](t, ns, "nightly-"+part, nil)
		if !metav1.IsControlledBy(job, b) {
			t.Errorf("Job %s is not controlled by the KezChatBackup: %+v", job.Name, job.OwnerReferences)
		}
		c := job.Spec.Template.Spec.Containers[0]
		if c.Image != "registry.example/kezchat:test" || !slices.Contains(c.Args, "--part="+part) || !slices.Contains(c.Args, "--id="+id) ||
			!slices.Contains(c.Args, "--keep-count=7") {
			t.Errorf("Job %s runs %s %q", job.Name, c.Image, c.Args)
		}
	}
	waitForEvents(t, ns, "KezChatBackup", "nightly", ReasonBackupStarted)
	waitForEvents(t, ns, "KezChat", "chat", ReasonBackupStarted)

	// One part done: still running, with that part's result.
	finishBackupJob(t, ns, "nightly-server", corev1.PodSucceeded, resultJSON(id, "server", 4096))
	waitFor[chatv1.KezChatBackup](t, ns, "nightly", func(b *chatv1.KezChatBackup) error {
		if b.Status.Phase != chatv1.BackupRunning || b.Status.Parts[0].Phase != chatv1.BackupCompleted || b.Status.Parts[0].Bytes != 4096 {
			return fmt.Errorf("status %+v", b.Status)
		}
		return nil
	})
	finishBackupJob(t, ns, "nightly-sigserver", corev1.PodSucceeded, resultJSON(id, "sigserver", 512))
	b = waitForBackupPhase(t, ns, "nightly", chatv1.BackupCompleted)
	if b.Status.Bytes != 4608 || b.Status.CompletedAt == nil || b.Status.Parts[1].Version != "v1.2.3" ||
		!slices.Equal(b.Status.Parts[1].Deleted, []string{"20261101T030000Z-00000000"}) {
		t.Errorf("completed status %+v", b.Status)
	}

	kc := waitFor[chatv1.KezChat](t, ns, "chat", func(kc *chatv1.KezChat) error {
		if kc.Status.LastSuccessfulBackup == nil {
			return fmt.Errorf("no lastSuccessfulBackup")
		}
		return nil
	})
	if last := kc.Status.LastSuccessfulBackup; last.Name != "nightly" || last.BackupID != id || last.Bytes != 4608 || !last.CompletedAt.Equal(b.Status.CompletedAt) {
		t.Errorf("lastSuccessfulBackup %+v", last)
	}
	if c := meta.FindStatusCondition(kc.Status.Conditions, chatv1.ConditionLastBackupSucceeded); c == nil || c.Status != metav1.ConditionTrue {
		t.Errorf("LastBackupSucceeded %+v", c)
	}
	waitForEvents(t, ns, "KezChatBackup", "nightly", ReasonBackupCompleted)
	waitForEvents(t, ns, "KezChat", "chat", ReasonBackupCompleted)

	// The KezChat's own reconciles keep what the backups wrote.
	updateKezChat(t, ns, func(kc *chatv1.KezChat) { kc.Spec.Server.Retention = &metav1.Duration{Duration: 48 * time.Hour} })
	kc = waitForConditions(t, ns, map[string]metav1.ConditionStatus{chatv1.ConditionLastBackupSucceeded: "True"})
	if kc.Status.LastSuccessfulBackup == nil || kc.Status.LastSuccessfulBackup.Name != "nightly" {
		t.Errorf("a KezChat reconcile lost lastSuccessfulBackup: %+v", kc.Status)
	}
}

func TestFailedBackupPartFailsTheBackupAndSaysWhy(t *testing.T) {
	ns := testNamespace(t)
	startManager(t, ns)
	createKezChat(t, ns, withBackup, jetstream)
	waitFor[appsv1.Deployment](t, ns, "chat-server", nil)

	createBackup(t, ns, "good")
	b := waitForBackupPhase(t, ns, "good", chatv1.BackupRunning)
	finishBackupJob(t, ns, "good-server", corev1.PodSucceeded, resultJSON(b.Status.BackupID, "server", 100))
	finishBackupJob(t, ns, "good-sigserver", corev1.PodSucceeded, resultJSON(b.Status.BackupID, "sigserver", 10))
	waitForBackupPhase(t, ns, "good", chatv1.BackupCompleted)

	// The jetstream part connects to NATS, which admits it.
	job := waitFor[batchv1.Job](t, ns, "good-server", nil)
	if !slices.Contains(job.Spec.Template.Spec.Containers[0].Args, "--store=jetstream") {
		t.Errorf("jetstream backup args %q", job.Spec.Template.Spec.Containers[0].Args)
	}

	createBackup(t, ns, "bad")
	waitForBackupPhase(t, ns, "bad", chatv1.BackupRunning)
	waitFor[batchv1.Job](t, ns, "bad-sigserver", nil)
	finishBackupJob(t, ns, "bad-server", corev1.PodFailed, `{"error":"uploading manifest.json: 403 AccessDenied"}`)
	b = waitForBackupPhase(t, ns, "bad", chatv1.BackupFailed)
	if !strings.Contains(b.Status.Message, "server: uploading manifest.json: 403 AccessDenied") || b.Status.CompletedAt == nil {
		t.Errorf("failed status %+v", b.Status)
	}
	// The part still at work is stopped.
	eventually(t, waitTimeout, "the sig-server part's Job deleted", func() error {
		job, err := get[batchv1.Job](ns, "bad-sigserver")
		if apierrors.IsNotFound(err) || (err == nil && !job.DeletionTimestamp.IsZero()) {
			return nil
		}
		return fmt.Errorf("Job bad-sigserver still there (%v)", err)
	})

	kc := waitForConditions(t, ns, map[string]metav1.ConditionStatus{chatv1.ConditionLastBackupSucceeded: "False"})
	c := meta.FindStatusCondition(kc.Status.Conditions, chatv1.ConditionLastBackupSucceeded)
	if c.Reason != ReasonBackupFailed || !strings.Contains(c.Message, "403 AccessDenied") {
		t.Errorf("LastBackupSucceeded %+v", c)
	}
	if kc.Status.LastSuccessfulBackup == nil || kc.Status.LastSuccessfulBackup.Name != "good" {
		t.Errorf("lastSuccessfulBackup %+v, want the good one still", kc.Status.LastSuccessfulBackup)
	}
	waitForEvents(t, ns, "KezChatBackup", "bad", ReasonBackupFailed)
	waitForEvents(t, ns, "KezChat", "chat", ReasonBackupFailed)

	// A KezChat without spec.backup cannot be backed up.
	updateKezChat(t, ns, func(kc *chatv1.KezChat) { kc.Spec.Backup = nil })
	createBackup(t, ns, "nowhere")
	b = waitForBackupPhase(t, ns, "nowhere", chatv1.BackupFailed)
	if !strings.Contains(b.Status.Message, "has no spec.backup") {
		t.Errorf("message %q", b.Status.Message)
	}
}

func TestBackupsOfOneKezChatRunOneAtATime(t *testing.T) {
	ns := testNamespace(t)
	startManager(t, ns)
	// A backup applied before its KezChat waits for it.
	createBackup(t, ns, "first")
	b := waitForBackupPhase(t, ns, "first", chatv1.BackupPending)
	if !strings.Contains(b.Status.Message, "waiting for KezChat chat, which does not exist") {
		t.Errorf("pending message %q", b.Status.Message)
	}
	createKezChat(t, ns, withBackup)
	first := waitForBackupPhase(t, ns, "first", chatv1.BackupRunning)
	createBackup(t, ns, "second")
	second := waitForBackupPhase(t, ns, "second", chatv1.BackupPending)
	if !strings.Contains(second.Status.Message, "waiting for KezChatBackup first") {
		t.Errorf("pending message %q", second.Status.Message)
	}
	if _, err := get[batchv1.Job](ns, "second-server"); !apierrors.IsNotFound(err) {
		t.Errorf("the second backup has a Job while the first runs: %v", err)
	}
	finishBackupJob(t, ns, "first-server", corev1.PodSucceeded, resultJSON(first.Status.BackupID, "server", 1))
	finishBackupJob(t, ns, "first-sigserver", corev1.PodSucceeded, resultJSON(first.Status.BackupID, "sigserver", 1))
	waitForBackupPhase(t, ns, "first", chatv1.BackupCompleted)
	second = waitForBackupPhase(t, ns, "second", chatv1.BackupRunning)
	if second.Status.BackupID == first.Status.BackupID {
		t.Errorf("both backups are %s", second.Status.BackupID)
	}
}

func TestScheduleCreatesBackupsOwnedByTheKezChat(t *testing.T) {
	ns := testNamespace(t)
	mgr := startManager(t, ns)
	createKezChat(t, ns, withBackup, func(kc *chatv1.KezChat) { kc.Spec.Backup.Schedule = "0 3 * * *" })
	kc := waitFor[chatv1.KezChat](t, ns, "chat", func(kc *chatv1.KezChat) error {
		if kc.Status.NextScheduleTime == nil {
			return fmt.Errorf("no nextScheduleTime")
		}
		return nil
	})
	created := kc.CreationTimestamp.Time.UTC()
	next := time.Date(created.Year(), created.Month(), created.Day(), 3, 0, 0, 0, time.UTC)
	if !next.After(created) {
		next = next.AddDate(0, 0, 1)
	}
	if !kc.Status.NextScheduleTime.Time.Equal(next) {
		t.Errorf("nextScheduleTime %v, want %v", kc.Status.NextScheduleTime, next)
	}

	// The schedule's clock, moved by the test: a day later, then two.
	clock := next.Add(time.Hour)
	sched := &BackupScheduleReconciler{Client: k8s, Scheme: testScheme, Recorder: mgr.reconciler.Recorder,
		Now: func() time.Time { return clock }}
	reconcileSchedule := func() ctrl.Result {
		t.Helper()
		for range 10 {
			res, err := sched.Reconcile(ctx, ctrl.Request{NamespacedName: types.NamespacedName{Namespace: ns, Name: "chat"}})
			if err == nil {
				return res
			}
			if !apierrors.IsConflict(err) {
				t.Fatalf("reconcile: %v", err)
			}
		}
		t.Fatal("reconcile: conflicts kept coming")
		return ctrl.Result{}
	}
	res := reconcileSchedule()
	name := "chat-" + next.Format("20060102150405")
	b, err := get[chatv1.KezChatBackup](ns, name)
	if err != nil {
		t.Fatalf("no scheduled backup %s: %v", name, err)
	}
	kc = getKezChat(t, ns)
	if !metav1.IsControlledBy(b, kc) || b.Labels[scheduledLabel] != "true" || b.Spec.KezChat.Name != "chat" {
		t.Errorf("scheduled backup %+v", b.ObjectMeta)
	}
	if kc.Status.LastScheduleTime == nil || !kc.Status.LastScheduleTime.Time.Equal(next) ||
		!kc.Status.NextScheduleTime.Time.Equal(next.AddDate(0, 0, 1)) || res.RequeueAfter != 23*time.Hour {
		t.Errorf("last %v next %v requeue %v", kc.Status.LastScheduleTime, kc.Status.NextScheduleTime, res.RequeueAfter)
	}
	waitForBackupPhase(t, ns, name, chatv1.BackupRunning) // the manager takes it

	// Two days on, while it still runs: nothing new, a look again soon.
	clock = next.AddDate(0, 0, 2).Add(time.Hour)
	if res := reconcileSchedule(); res.RequeueAfter != retryScheduleBusy {
		t.Errorf("requeue %v while a backup runs", res.RequeueAfter)
	}
	var list chatv1.KezChatBackupList
	if err := k8s.List(ctx, &list, client.InNamespace(ns)); err != nil || len(list.Items) != 1 {
		t.Fatalf("%d backups while one runs (%v)", len(list.Items), err)
	}
	// Once it ends, one backup for the two runs missed.
	b = waitForBackupPhase(t, ns, name, chatv1.BackupRunning)
	finishBackupJob(t, ns, name+"-server", corev1.PodSucceeded, resultJSON(b.Status.BackupID, "server", 1))
	finishBackupJob(t, ns, name+"-sigserver", corev1.PodSucceeded, resultJSON(b.Status.BackupID, "sigserver", 1))
	waitForBackupPhase(t, ns, name, chatv1.BackupCompleted)
	reconcileSchedule()
	if err := k8s.List(ctx, &list, client.InNamespace(ns)); err != nil || len(list.Items) != 2 {
		t.Fatalf("%d backups after the missed runs (%v), want 2", len(list.Items), err)
	}
	if _, err := get[chatv1.KezChatBackup](ns, "chat-"+next.AddDate(0, 0, 2).Format("20060102150405")); err != nil {
		t.Errorf("no backup for the latest missed run: %v", err)
	}
	waitForEvents(t, ns, "KezChat", "chat", ReasonBackupScheduled)
}

func TestScheduleRunsOnTheOperatorsClock(t *testing.T) {
	ns := testNamespace(t)
	startManager(t, ns)
	createKezChat(t, ns, withBackup, func(kc *chatv1.KezChat) { kc.Spec.Backup.Schedule = "@every 1s" })
	eventually(t, waitTimeout, "a scheduled backup", func() error {
		var list chatv1.KezChatBackupList
		if err := k8s.List(ctx, &list, client.InNamespace(ns), client.MatchingLabels{scheduledLabel: "true"}); err != nil {
			return err
		}
		if len(list.Items) == 0 {
			return fmt.Errorf("none yet")
		}
		return nil
	})
}

func TestRecoveryAddsRestoreInitContainers(t *testing.T) {
	ns := testNamespace(t)
	startManager(t, ns)
	createKezChat(t, ns, func(kc *chatv1.KezChat) {
		kc.Spec.Bootstrap = &chatv1.BootstrapSpec{Recovery: chatv1.RecoverySpec{BackupID: "20261202T030000Z-abcd1234",
			ObjectStore: chatv1.ObjectStoreSpec{Endpoint: "https://s3.example.org", Bucket: "kez-backups", Path: "team/chat",
				CredentialsSecret: chatv1.SecretReference{Name: "s3-creds"}}}}
	})
	for name, part := range map[string]string{"chat-server": "server", "chat-sig-server": "sigserver"} {
		d := waitFor[appsv1.Deployment](t, ns, name, nil)
		c := initContainerOf(d, "restore")
		if c == nil || c.Args[0] != "restore" || !slices.Contains(c.Args, "--part="+part) ||
			!slices.Contains(c.Args, "--id=20261202T030000Z-abcd1234") || !slices.Contains(c.Args, "--s3-prefix=team/chat") {
			t.Errorf("%s restore init container %+v", name, c)
		}
	}
}

// collectGarbage plays the garbage collector, which envtest does not run:
// it deletes what the object of uid owns.
func collectGarbage(t *testing.T, ns string, uid types.UID) {
	t.Helper()
	for _, list := range childLists() {
		if err := k8s.List(ctx, list, client.InNamespace(ns)); err != nil {
			t.Fatal(err)
		}
		if err := meta.EachListItem(list, func(o runtime.Object) error {
			obj := o.(client.Object)
			for _, ref := range obj.GetOwnerReferences() {
				if ref.UID == uid {
					return client.IgnoreNotFound(k8s.Delete(ctx, obj))
				}
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}
}

// natsClaim plays the StatefulSet controller: the JetStream volume of the
// NATS pod 0, owned by the StatefulSet.
func natsClaim(t *testing.T, ns string) {
	t.Helper()
	sts := waitFor[appsv1.StatefulSet](t, ns, "chat-nats", nil)
	tpl := sts.Spec.VolumeClaimTemplates[0]
	pvc := &corev1.PersistentVolumeClaim{
		ObjectMeta: metav1.ObjectMeta{Name: "data-chat-nats-0", Namespace: ns, Labels: tpl.Labels,
			OwnerReferences: []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: "StatefulSet", Name: sts.Name, UID: sts.UID}}},
		Spec: tpl.Spec,
	}
	if err := k8s.Create(ctx, pvc); err != nil {
		t.Fatal(err)
	}
}

func deleteKezChat(t *testing.T, ns string) types.UID {
	t.Helper()
	kc := getKezChat(t, ns)
	if err := k8s.Delete(ctx, kc); err != nil {
		t.Fatal(err)
	}
	eventually(t, waitTimeout, "the KezChat gone", func() error {
		if _, err := get[chatv1.KezChat](ns, "chat"); !apierrors.IsNotFound(err) {
			return fmt.Errorf("still there (%v)", err)
		}
		return nil
	})
	return kc.UID
}

var dataNames = []string{"chat-server-data", "chat-sig-server-data", "data-chat-nats-0"}

// unowned fails for an object that has owners.
func unowned(obj client.Object) error {
	if refs := obj.GetOwnerReferences(); len(refs) > 0 {
		return fmt.Errorf("%s is owned: %+v", obj.GetName(), refs)
	}
	return nil
}

func TestRetainKeepsTheDataForAKezChatOfTheSameName(t *testing.T) {
	ns := testNamespace(t)
	startManager(t, ns)
	createKezChat(t, ns)
	natsClaim(t, ns)
	vapid := waitFor[corev1.Secret](t, ns, "chat-vapid", unownedSecret)
	kc := waitFor[chatv1.KezChat](t, ns, "chat", func(kc *chatv1.KezChat) error {
		if !slices.Contains(kc.Finalizers, dataFinalizer) || kc.Status.VAPIDPublicKey == "" {
			return fmt.Errorf("finalizers %v, VAPID key %q", kc.Finalizers, kc.Status.VAPIDPublicKey)
		}
		return nil
	})
	oldKey := kc.Status.VAPIDPublicKey
	sts := waitFor[appsv1.StatefulSet](t, ns, "chat-nats", nil)
	if got := sts.Spec.PersistentVolumeClaimRetentionPolicy.WhenDeleted; got != appsv1.RetainPersistentVolumeClaimRetentionPolicyType {
		t.Errorf("NATS volumes whenDeleted %s", got)
	}

	// The owner references follow the policy, both ways.
	updateKezChat(t, ns, func(kc *chatv1.KezChat) { kc.Spec.DeletionPolicy = chatv1.DeletionDelete })
	for _, name := range dataNames[:2] {
		waitFor[corev1.PersistentVolumeClaim](t, ns, name, func(pvc *corev1.PersistentVolumeClaim) error { return controlledBy(pvc, kc) })
	}
	waitFor[corev1.Secret](t, ns, "chat-vapid", func(s *corev1.Secret) error { return controlledBy(s, kc) })
	updateKezChat(t, ns, func(kc *chatv1.KezChat) { kc.Spec.DeletionPolicy = chatv1.DeletionRetain })
	uids := map[string]types.UID{}
	for _, name := range dataNames[:2] {
		uids[name] = waitFor[corev1.PersistentVolumeClaim](t, ns, name, func(pvc *corev1.PersistentVolumeClaim) error { return unowned(pvc) }).UID
	}
	waitFor[corev1.Secret](t, ns, "chat-vapid", unownedSecret)

	uid := deleteKezChat(t, ns)
	collectGarbage(t, ns, uid)
	for _, name := range dataNames {
		pvc, err := get[corev1.PersistentVolumeClaim](ns, name)
		if err != nil || !pvc.DeletionTimestamp.IsZero() {
			t.Fatalf("volume %s not kept: %v", name, err)
		}
		if err := unowned(pvc); err != nil {
			t.Error(err)
		}
	}
	kept, err := get[corev1.Secret](ns, "chat-vapid")
	if err != nil || unowned(kept) != nil || !bytes.Equal(kept.Data["private-key.pem"], vapid.Data["private-key.pem"]) {
		t.Fatalf("VAPID Secret not kept as it was: %v %+v", err, kept.OwnerReferences)
	}
	if _, err := get[appsv1.Deployment](ns, "chat-server"); !apierrors.IsNotFound(err) {
		t.Fatalf("the rest was not collected: %v", err)
	}
	waitForEvents(t, ns, "KezChat", "chat", ReasonDataRetained)

	// A KezChat of the same name takes them up again: the same volumes,
	// the same VAPID key.
	createKezChat(t, ns)
	kc = waitForConditions(t, ns, map[string]metav1.ConditionStatus{chatv1.ConditionDegraded: "False"})
	if kc.Status.VAPIDPublicKey != oldKey {
		t.Errorf("VAPID key %q, want the retained %q: push subscriptions would break", kc.Status.VAPIDPublicKey, oldKey)
	}
	for _, name := range dataNames[:2] {
		pvc := waitFor[corev1.PersistentVolumeClaim](t, ns, name, func(pvc *corev1.PersistentVolumeClaim) error {
			if !slices.Contains(managers(pvc), FieldOwner) {
				return fmt.Errorf("not applied by the new KezChat yet")
			}
			return unowned(pvc)
		})
		if pvc.UID != uids[name] {
			t.Errorf("volume %s was replaced", name)
		}
	}
	d := waitFor[appsv1.Deployment](t, ns, "chat-server", nil)
	if v := volumeNamed(d.Spec.Template.Spec.Volumes, "data"); v == nil || v.PersistentVolumeClaim.ClaimName != "chat-server-data" {
		t.Errorf("the new chat server mounts %+v", v)
	}
	waitForEvents(t, ns, "KezChat", "chat", ReasonAdopted)
}

func unownedSecret(s *corev1.Secret) error { return unowned(s) }

// managers are the field managers of obj.
func managers(obj client.Object) []string {
	var out []string
	for _, m := range obj.GetManagedFields() {
		out = append(out, m.Manager)
	}
	return out
}

func TestDeleteRemovesTheData(t *testing.T) {
	ns := testNamespace(t)
	startManager(t, ns)
	createKezChat(t, ns, func(kc *chatv1.KezChat) { kc.Spec.DeletionPolicy = chatv1.DeletionDelete })
	for _, name := range dataNames[:2] {
		waitFor[corev1.PersistentVolumeClaim](t, ns, name, nil)
	}
	natsClaim(t, ns)
	kc := waitFor[chatv1.KezChat](t, ns, "chat", func(kc *chatv1.KezChat) error {
		if !slices.Contains(kc.Finalizers, dataFinalizer) {
			return fmt.Errorf("finalizers %v", kc.Finalizers)
		}
		return nil
	})
	// Owned, so that the garbage collector takes them even without the
	// operator.
	for _, name := range dataNames[:2] {
		waitFor[corev1.PersistentVolumeClaim](t, ns, name, func(pvc *corev1.PersistentVolumeClaim) error { return controlledBy(pvc, kc) })
	}
	waitFor[corev1.Secret](t, ns, "chat-vapid", func(s *corev1.Secret) error { return controlledBy(s, kc) })
	sts := waitFor[appsv1.StatefulSet](t, ns, "chat-nats", nil)
	if got := sts.Spec.PersistentVolumeClaimRetentionPolicy.WhenDeleted; got != appsv1.DeletePersistentVolumeClaimRetentionPolicyType {
		t.Errorf("NATS volumes whenDeleted %s", got)
	}

	deleteKezChat(t, ns)
	// Deleted; a volume's protection finalizer may hold it until no pod
	// mounts it (kube-controller-manager, not running here, lifts it).
	for _, name := range dataNames {
		pvc, err := get[corev1.PersistentVolumeClaim](ns, name)
		if err == nil && pvc.DeletionTimestamp.IsZero() {
			t.Errorf("volume %s not deleted", name)
		} else if err != nil && !apierrors.IsNotFound(err) {
			t.Error(err)
		}
	}
	if _, err := get[corev1.Secret](ns, "chat-vapid"); !apierrors.IsNotFound(err) {
		t.Errorf("VAPID Secret not deleted: %v", err)
	}
}

func TestEditsOfTheUnownedDataWakeItsKezChat(t *testing.T) {
	ns := testNamespace(t)
	startManager(t, ns)
	createKezChat(t, ns)
	pvc := waitFor[corev1.PersistentVolumeClaim](t, ns, "chat-server-data", func(pvc *corev1.PersistentVolumeClaim) error { return unowned(pvc) })
	hash := waitFor[appsv1.Deployment](t, ns, "chat-server", nil).Spec.Template.Annotations[configHashAnnotation]
	waitForConditions(t, ns, map[string]metav1.ConditionStatus{chatv1.ConditionDegraded: "False"})

	// A label changed by hand is put back.
	eventually(t, waitTimeout, "relabelling the volume claim", func() error {
		pvc, err := get[corev1.PersistentVolumeClaim](ns, pvc.Name)
		if err != nil {
			return err
		}
		pvc.Labels["app.kubernetes.io/part-of"] = "something-else"
		return k8s.Update(ctx, pvc)
	})
	waitFor[corev1.PersistentVolumeClaim](t, ns, "chat-server-data", func(pvc *corev1.PersistentVolumeClaim) error {
		if got := pvc.Labels["app.kubernetes.io/part-of"]; got != "kez-chat" {
			return fmt.Errorf("part-of %q", got)
		}
		return nil
	})

	// A new key put in the generated VAPID Secret by hand rolls the server.
	fresh, err := newVAPIDSecret(getKezChat(t, ns), "")
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, waitTimeout, "a new key in the VAPID Secret", func() error {
		vapid, err := get[corev1.Secret](ns, "chat-vapid")
		if err != nil {
			return err
		}
		vapid.Data = fresh.Data
		return k8s.Update(ctx, vapid)
	})
	waitFor[appsv1.Deployment](t, ns, "chat-server", func(d *appsv1.Deployment) error {
		if d.Spec.Template.Annotations[configHashAnnotation] == hash {
			return fmt.Errorf("server pods not rolled for the new key")
		}
		return nil
	})
}

func TestABackupMadeAgainUnderAUsedNameWaitsForTheOldJobsInsteadOfTakingTheirResults(t *testing.T) {
	ns := testNamespace(t)
	startManager(t, ns)
	createKezChat(t, ns, withBackup)
	waitFor[appsv1.Deployment](t, ns, "chat-server", nil)

	createBackup(t, ns, "again")
	old := waitForBackupPhase(t, ns, "again", chatv1.BackupRunning)
	oldID := old.Status.BackupID
	finishBackupJob(t, ns, "again-server", corev1.PodSucceeded, resultJSON(oldID, "server", 4096))
	finishBackupJob(t, ns, "again-sigserver", corev1.PodSucceeded, resultJSON(oldID, "sigserver", 512))
	waitForBackupPhase(t, ns, "again", chatv1.BackupCompleted)

	// Deleted, its Jobs left behind (envtest runs no garbage collector: as
	// a collector does for a while, or kubectl delete --cascade=orphan for
	// good), then made again.
	if err := k8s.Delete(ctx, old); err != nil {
		t.Fatal(err)
	}
	eventually(t, waitTimeout, "the first backup gone", func() error {
		if _, err := get[chatv1.KezChatBackup](ns, "again"); !apierrors.IsNotFound(err) {
			return fmt.Errorf("still there: %v", err)
		}
		return nil
	})
	createBackup(t, ns, "again")
	// The old Jobs, finished and successful, are not this backup's: it
	// must not complete on their results.
	b := waitFor[chatv1.KezChatBackup](t, ns, "again", func(b *chatv1.KezChatBackup) error {
		if b.Status.BackupID == "" {
			return fmt.Errorf("no backup id yet: %+v", b.Status)
		}
		return nil
	})
	if b.Status.BackupID == oldID {
		t.Fatalf("the new backup took the old one's id %s", oldID)
	}
	// Once the old Jobs are gone it runs its own, and ends on their
	// results.
	for _, part := range []string{"server", "sigserver"} {
		job, err := get[batchv1.Job](ns, "again-"+part)
		if err != nil {
			t.Fatal(err)
		}
		if metav1.IsControlledBy(job, b) {
			t.Fatalf("Job %s belongs to the new backup before the old one was deleted", job.Name)
		}
		if err := k8s.Delete(ctx, job, client.PropagationPolicy(metav1.DeletePropagationBackground)); err != nil {
			t.Fatal(err)
		}
	}
	for _, part := range []string{"server", "sigserver"} {
		waitFor[batchv1.Job](t, ns, "again-"+part, func(job *batchv1.Job) error {
			if !metav1.IsControlledBy(job, b) {
				return fmt.Errorf("still the old Job")
			}
			return nil
		})
	}
	finishBackupJob(t, ns, "again-server", corev1.PodSucceeded, resultJSON(b.Status.BackupID, "server", 100))
	finishBackupJob(t, ns, "again-sigserver", corev1.PodSucceeded, resultJSON(b.Status.BackupID, "sigserver", 10))
	b = waitForBackupPhase(t, ns, "again", chatv1.BackupCompleted)
	if b.Status.Bytes != 110 {
		t.Errorf("the new backup's bytes %d, want its own Jobs' 110 (the old ones said 4608)", b.Status.Bytes)
	}
}
