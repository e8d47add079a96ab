package controllers

import (
	"fmt"
	"sort"
	"strings"

	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	chatv1 "kez.lat/chat/api/v1alpha1"
)

// Reasons of backup events and of the LastBackupSucceeded condition.
const (
	ReasonBackupStarted   = "BackupStarted"
	ReasonBackupCompleted = "BackupCompleted"
	ReasonBackupFailed    = "BackupFailed"
	ReasonBackupScheduled = "BackupScheduled"
	ReasonInvalidSchedule = "InvalidSchedule"
)

// jobFinished says whether job completed or failed, as its conditions say.
func jobFinished(job *batchv1.Job) (done, failed bool, message string) {
	for _, c := range job.Status.Conditions {
		if c.Status != corev1.ConditionTrue {
			continue
		}
		switch c.Type {
		case batchv1.JobComplete:
			return true, false, ""
		case batchv1.JobFailed:
			msg := c.Reason
			if c.Message != "" {
				msg += ": " + c.Message
			}
			return true, true, msg
		}
	}
	return false, false, ""
}

// terminationMessage is the backup container's termination message in
// the newest of pods that ended in phase, if any.
func terminationMessage(pods []corev1.Pod, phase corev1.PodPhase) (string, bool) {
	var found []corev1.Pod
	for _, p := range pods {
		if p.Status.Phase == phase {
			found = append(found, p)
		}
	}
	sort.Slice(found, func(i, j int) bool {
		return found[j].CreationTimestamp.Before(&found[i].CreationTimestamp)
	})
	for _, p := range found {
		for _, cs := range p.Status.ContainerStatuses {
			if cs.Name == "backup" && cs.State.Terminated != nil {
				return cs.State.Terminated.Message, true
			}
		}
	}
	return "", false
}

// partStatus is what part's Job and its pods say of it: Pending before the
// Job exists, Running until it finishes, then Completed with what the
// container reported, or Failed with why. A Job that completed without a
// result for this very backup and part failed: nothing says the data is
// in the bucket.
func partStatus(part chatv1.BackupPart, jobName, backupID string, job *batchv1.Job, pods []corev1.Pod) chatv1.BackupPartStatus {
	st := chatv1.BackupPartStatus{Part: part, Job: jobName, Phase: chatv1.BackupPending}
	if job == nil {
		return st
	}
	done, failed, jobMessage := jobFinished(job)
	switch {
	case !done:
		st.Phase = chatv1.BackupRunning
		return st
	case failed:
		st.Phase = chatv1.BackupFailed
		st.Message = "Job " + jobName + " failed: " + jobMessage
		if msg, ok := terminationMessage(pods, corev1.PodFailed); ok {
			if r, err := parseBackupResult(msg); err == nil && r.Error != "" {
				st.Message = r.Error
			} else if err != nil {
				st.Message += "; " + err.Error()
			}
		}
		return st
	}
	msg, ok := terminationMessage(pods, corev1.PodSucceeded)
	if !ok {
		st.Phase, st.Message = chatv1.BackupFailed, "Job "+jobName+" completed, but no pod of it reports a result"
		return st
	}
	r, err := parseBackupResult(msg)
	switch {
	case err != nil:
		st.Phase, st.Message = chatv1.BackupFailed, err.Error()
		return st
	case r.Error != "":
		st.Phase, st.Message = chatv1.BackupFailed, r.Error
		return st
	case r.ID != backupID || string(r.Part) != string(part):
		st.Phase = chatv1.BackupFailed
		st.Message = fmt.Sprintf("the backup container reports backup %s part %s, not %s part %s", r.ID, r.Part, backupID, part)
		return st
	}
	st.Phase = chatv1.BackupCompleted
	st.Bytes, st.Objects, st.Version, st.Deleted = r.Bytes, int64(r.Objects), r.Version, r.Deleted
	if !r.StartedAt.IsZero() {
		st.StartedAt = &metav1.Time{Time: r.StartedAt}
	}
	if !r.CompletedAt.IsZero() {
		st.CompletedAt = &metav1.Time{Time: r.CompletedAt}
	}
	return st
}

// summarize is a backup's phase from its parts': Failed as soon as one
// failed, Completed when all completed, Running otherwise; with the bytes
// of all, the latest completion, and why it failed.
func summarize(parts []chatv1.BackupPartStatus) (phase chatv1.BackupPhase, bytes int64, completed *metav1.Time, message string) {
	var failures []string
	done := 0
	for _, p := range parts {
		bytes += p.Bytes
		switch p.Phase {
		case chatv1.BackupFailed:
			failures = append(failures, string(p.Part)+": "+p.Message)
		case chatv1.BackupCompleted:
			done++
			if p.CompletedAt != nil && (completed == nil || completed.Before(p.CompletedAt)) {
				completed = p.CompletedAt.DeepCopy()
			}
		}
	}
	switch {
	case len(failures) > 0:
		return chatv1.BackupFailed, bytes, nil, strings.Join(failures, "; ")
	case done == len(parts) && len(parts) > 0:
		return chatv1.BackupCompleted, bytes, completed, ""
	}
	return chatv1.BackupRunning, bytes, nil, ""
}
