package controllers

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	chatv1 "kez.lat/chat/api/v1alpha1"
	"kez.lat/chat/server/backup"
)

// The backup of one part of a KezChat runs as a Job of its own (see
// CONTRACT.md: `kezchat backup`), and its restore as an init container of
// that part's pods (`kezchat restore`). The builders here are pure
// functions of the KezChat and the backup.

// componentBackup labels the backup Jobs' pods: a component of its own, so
// that no Service of the instance ever routes to them.
const componentBackup = "backup"

// Labels on each backup Job and its pods.
const (
	backupNameLabel = "chat.kez.lat/backup"
	backupPartLabel = "chat.kez.lat/backup-part"
	// jobNameLabel is set by the Job controller on the Job's pods.
	jobNameLabel = "batch.kubernetes.io/job-name"
)

// Paths inside the backup and restore containers.
const (
	serverDBFile    = serverDataDir + "/kez-chat.db"
	sigServerDBFile = sigServerDataDir + "/kez-sig.db"
	objectStoreCA   = "/etc/kez-chat/s3-ca"
	caFileName      = "ca.crt"
	// terminationLog is where `kezchat backup` writes its result JSON, and
	// the kubelet reads it into the pod's termination message.
	terminationLog = "/dev/termination-log"
)

// Limits of one backup Job: a retry for a passing failure (a node drained
// mid-way), and an hour to finish, after which the part fails rather than
// hold its KezChat's next backups back. Finished Jobs stay a day for their
// logs, then go.
const (
	backupJobBackoffLimit = 1
	backupJobDeadline     = 3600
	backupJobTTL          = 24 * 3600
)

// backupParts are the parts a backup of kc takes: the chat server's store
// always, the sig-server's key log while it runs.
func backupParts(kc *chatv1.KezChat) []chatv1.BackupPart {
	parts := []chatv1.BackupPart{chatv1.BackupPartServer}
	if kc.Spec.SigServer.IsEnabled() {
		parts = append(parts, chatv1.BackupPartSigServer)
	}
	return parts
}

// backupJobName is the Job of one part of a backup: the backup's name and
// the part, shortened with a digest to the 63 characters a Job's name may
// have (it is a label value on its pods).
func backupJobName(backup string, part chatv1.BackupPart) string {
	name := backup + "-" + string(part)
	if len(name) <= 63 {
		return name
	}
	suffix := "-" + digest([]byte(backup))[:8] + "-" + string(part)
	return strings.TrimRight(backup[:63-len(suffix)], "-.") + suffix
}

// newBackupID names a backup's folder in the bucket: when it started, so
// that folders sort by time, and part of the KezChatBackup's UID, so that
// two never share one.
func newBackupID(started time.Time, uid string) string {
	id := started.UTC().Format("20060102T150405Z")
	if uid = strings.ReplaceAll(uid, "-", ""); uid != "" {
		id += "-" + uid[:min(8, len(uid))]
	}
	return id
}

// backupDestination is where a backup's parts go, as s3://bucket/path/id/.
func backupDestination(store *chatv1.ObjectStoreSpec, id string) string {
	p := store.Bucket + "/"
	if store.Path != "" {
		p += store.Path + "/"
	}
	return "s3://" + p + id + "/"
}

// objectStoreArgs are the object store flags `kezchat backup` and
// `kezchat restore` share. The credentials come from the environment
// (objectStoreEnv), never from arguments, which anyone reading the pod
// sees.
func objectStoreArgs(store *chatv1.ObjectStoreSpec) []string {
	args := []string{
		"--s3-endpoint=" + strings.TrimSuffix(store.Endpoint, "/"),
		"--s3-bucket=" + store.Bucket,
	}
	if store.Path != "" {
		args = append(args, "--s3-prefix="+store.Path)
	}
	if store.Region != "" {
		args = append(args, "--s3-region="+store.Region)
	}
	if store.CASecret != nil {
		args = append(args, "--s3-ca-file="+objectStoreCA+"/"+caFileName)
	}
	if store.InsecureHTTP {
		args = append(args, "--s3-insecure-http")
	}
	return args
}

// objectStoreEnv gives the container the bucket's credentials from the
// Secret spec.backup.objectStore.credentialsSecret names.
func objectStoreEnv(store *chatv1.ObjectStoreSpec) []corev1.EnvVar {
	ref := func(key string, optional bool) *corev1.EnvVarSource {
		return &corev1.EnvVarSource{SecretKeyRef: &corev1.SecretKeySelector{
			LocalObjectReference: corev1.LocalObjectReference{Name: store.CredentialsSecret.Name},
			Key:                  key,
			Optional:             ptr.To(optional),
		}}
	}
	return []corev1.EnvVar{
		{Name: chatv1.ObjectStoreAccessKeyIDKey, ValueFrom: ref(chatv1.ObjectStoreAccessKeyIDKey, false)},
		{Name: chatv1.ObjectStoreSecretAccessKeyKey, ValueFrom: ref(chatv1.ObjectStoreSecretAccessKeyKey, false)},
		{Name: chatv1.ObjectStoreSessionTokenKey, ValueFrom: ref(chatv1.ObjectStoreSessionTokenKey, true)},
	}
}

// objectStoreCAVolume mounts the CA bundle the endpoint is trusted with,
// when the spec names one, as volume name.
func objectStoreCAVolume(store *chatv1.ObjectStoreSpec, name string) ([]corev1.Volume, []corev1.VolumeMount) {
	if store.CASecret == nil {
		return nil, nil
	}
	return []corev1.Volume{{Name: name, VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{
			SecretName:  store.CASecret.Name,
			Items:       []corev1.KeyToPath{{Key: store.CASecret.CAKeyOrDefault(), Path: caFileName}},
			DefaultMode: ptr.To[int32](0o444),
		}}}},
		[]corev1.VolumeMount{{Name: name, MountPath: objectStoreCA, ReadOnly: true}}
}

// partSource is where one part's data is, for `kezchat backup` and
// `kezchat restore`: the flags naming it, and the volumes holding it.
type partSource struct {
	args    []string
	volumes []corev1.Volume
	mounts  []corev1.VolumeMount
	// component whose pod mounts the same ReadWriteOnce volume, which a
	// backup Job must run beside; empty when the part has no volume.
	component string
}

// sourceOf is where part's data is in kc: the chat server's SQLite file
// on its volume, or its JetStream streams through NATS with the chat
// server's own credentials; the sig-server's SQLite file on its volume.
func sourceOf(kc *chatv1.KezChat, part chatv1.BackupPart) partSource {
	n := namesOf(kc)
	claim := func(name string) []corev1.Volume {
		return []corev1.Volume{{Name: "data", VolumeSource: corev1.VolumeSource{
			PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: name},
		}}}
	}
	if part == chatv1.BackupPartSigServer {
		return partSource{
			args:      []string{"--db=" + sigServerDBFile},
			volumes:   claim(n.sigServerData()),
			mounts:    []corev1.VolumeMount{{Name: "data", MountPath: sigServerDataDir}},
			component: componentSigServer,
		}
	}
	if kc.Spec.Server.StoreKind() == chatv1.StoreSQLite {
		return partSource{
			args:      []string{"--db=" + serverDBFile},
			volumes:   claim(n.serverData()),
			mounts:    []corev1.VolumeMount{{Name: "data", MountPath: serverDataDir}},
			component: componentServer,
		}
	}
	return partSource{
		args: []string{
			"--store=" + string(chatv1.StoreJetStream),
			fmt.Sprintf("--nats-url=nats://%s:%d", n.nats(), natsClientPort),
			"--nats-user=" + natsUser,
			"--nats-password-file=" + natsAuthDir + "/" + natsPasswordKey,
		},
		volumes: []corev1.Volume{{Name: "nats-auth", VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{
			SecretName:  n.natsAuth(),
			Items:       []corev1.KeyToPath{{Key: natsPasswordKey, Path: natsPasswordKey}},
			DefaultMode: ptr.To[int32](0o440),
		}}}},
		mounts: []corev1.VolumeMount{{Name: "nats-auth", MountPath: natsAuthDir, ReadOnly: true}},
	}
}

// backupArgs are the arguments of `kezchat backup` for one part.
func backupArgs(kc *chatv1.KezChat, id string, part chatv1.BackupPart) []string {
	spec := kc.Spec.Backup
	args := []string{"backup", "--part=" + string(part), "--id=" + id}
	args = append(args, objectStoreArgs(&spec.ObjectStore)...)
	args = append(args, sourceOf(kc, part).args...)
	if n := spec.Retention.KeepCount; n != nil {
		args = append(args, fmt.Sprintf("--keep-count=%d", *n))
	}
	if d := spec.Retention.MaxAge; d != nil {
		args = append(args, "--keep-age="+d.Duration.String())
	}
	return append(args, "--result-file="+terminationLog)
}

// backupJob takes one part of backup (whose status names its id) of kc,
// with image: the chat server's, so the backup is written by the version
// that wrote the data. It runs as the instance's pods do (unprivileged, on
// a read-only root, without API credentials) beside the pod that mounts
// the part's ReadWriteOnce volume, on the same node, so both may mount it.
// Its result is the container's termination message.
func backupJob(kc *chatv1.KezChat, backup *chatv1.KezChatBackup, part chatv1.BackupPart, image string, in Inputs) *batchv1.Job {
	n := namesOf(kc)
	store := &kc.Spec.Backup.ObjectStore
	src := sourceOf(kc, part)
	caVolumes, caMounts := objectStoreCAVolume(store, "s3-ca")

	// The snapshot of a database is staged in /tmp, as big as the
	// database: no size limit but the node's.
	volumes := []corev1.Volume{{Name: "tmp", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}}}
	volumes = append(append(volumes, src.volumes...), caVolumes...)
	mounts := []corev1.VolumeMount{{Name: "tmp", MountPath: "/tmp"}}
	mounts = append(append(mounts, src.mounts...), caMounts...)

	podLabels := labels(kc, componentBackup)
	podLabels[backupNameLabel] = backup.Name
	podLabels[backupPartLabel] = string(part)

	var sched chatv1.Scheduling
	if src.component != "" {
		sched.Affinity = &corev1.Affinity{PodAffinity: &corev1.PodAffinity{
			RequiredDuringSchedulingIgnoredDuringExecution: []corev1.PodAffinityTerm{{
				LabelSelector: &metav1.LabelSelector{MatchLabels: selectorLabels(kc, src.component)},
				TopologyKey:   corev1.LabelHostname,
			}},
		}}
		if src.component == componentServer {
			// Wherever the chat server may run, its backup may too.
			sched.NodeSelector, sched.Tolerations = kc.Spec.Server.NodeSelector, kc.Spec.Server.Tolerations
			sched.PriorityClassName = kc.Spec.Server.PriorityClassName
		}
	}

	return &batchv1.Job{
		ObjectMeta: metav1.ObjectMeta{
			Name: backupJobName(backup.Name, part), Namespace: kc.Namespace, Labels: podLabels,
		},
		Spec: batchv1.JobSpec{
			BackoffLimit:            ptr.To[int32](backupJobBackoffLimit),
			ActiveDeadlineSeconds:   ptr.To[int64](backupJobDeadline),
			TTLSecondsAfterFinished: ptr.To[int32](backupJobTTL),
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: podLabels},
				Spec: corev1.PodSpec{
					RestartPolicy:                corev1.RestartPolicyNever,
					ServiceAccountName:           n.serviceAccount(),
					AutomountServiceAccountToken: ptr.To(false),
					SecurityContext:              podSecurityContext(in),
					ImagePullSecrets:             kc.Spec.ImagePullSecrets,
					NodeSelector:                 sched.NodeSelector,
					Tolerations:                  sched.Tolerations,
					Affinity:                     sched.Affinity,
					PriorityClassName:            sched.PriorityClassName,
					Containers: []corev1.Container{{
						Name:            "backup",
						Image:           image,
						ImagePullPolicy: kc.Spec.ImagePullPolicy,
						Args:            backupArgs(kc, backup.Status.BackupID, part),
						Env:             objectStoreEnv(store),
						Resources: corev1.ResourceRequirements{Requests: corev1.ResourceList{
							corev1.ResourceCPU:    resource.MustParse("50m"),
							corev1.ResourceMemory: resource.MustParse("64Mi"),
						}},
						SecurityContext: containerSecurityContext(),
						VolumeMounts:    mounts,
						// The result JSON, or the last lines of the log if
						// it crashed before writing one.
						TerminationMessagePath:   terminationLog,
						TerminationMessagePolicy: corev1.TerminationMessageFallbackToLogsOnError,
					}},
					Volumes: volumes,
				},
			},
		},
	}
}

// restoreInitContainer restores part from kc's spec.bootstrap.recovery
// before the part's daemon starts: `kezchat restore` does nothing once the
// data exists, so it runs harmlessly on every later start. It mounts the
// volumes of the pod it runs in (data, nats-auth, tmp) by name, plus the
// returned ones.
func restoreInitContainer(kc *chatv1.KezChat, part chatv1.BackupPart, image string, resources corev1.ResourceRequirements) (corev1.Container, []corev1.Volume) {
	rec := &kc.Spec.Bootstrap.Recovery
	src := sourceOf(kc, part)
	caVolumes, caMounts := objectStoreCAVolume(&rec.ObjectStore, "recovery-s3-ca")
	args := []string{"restore", "--part=" + string(part), "--id=" + rec.BackupID}
	args = append(args, objectStoreArgs(&rec.ObjectStore)...)
	args = append(args, src.args...)
	_, tmpMount := tmpVolume()
	return corev1.Container{
		Name:            "restore",
		Image:           image,
		ImagePullPolicy: kc.Spec.ImagePullPolicy,
		Args:            args,
		Env:             objectStoreEnv(&rec.ObjectStore),
		Resources:       resources,
		SecurityContext: containerSecurityContext(),
		VolumeMounts:    append(append([]corev1.VolumeMount{tmpMount}, src.mounts...), caMounts...),
	}, caVolumes
}

// backupResult is what `kezchat backup` reports, as one JSON line: its
// backup.Result, or on failure only the error.
type backupResult struct {
	backup.Result
	Error string `json:"error"`
}

// parseBackupResult reads a backup container's termination message: the
// result JSON, or, when it crashed first, the last lines of its log, of
// which the last JSON object that parses is taken.
func parseBackupResult(msg string) (backupResult, error) {
	lines := strings.Split(strings.TrimSpace(msg), "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		line := strings.TrimSpace(lines[i])
		if !strings.HasPrefix(line, "{") {
			continue
		}
		var r backupResult
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			continue
		}
		if r.Error == "" && r.ID == "" {
			continue // a log line, not a result
		}
		return r, nil
	}
	if msg = strings.TrimSpace(msg); msg == "" {
		return backupResult{}, errors.New("the backup container left no result")
	}
	return backupResult{}, fmt.Errorf("the backup container left no result; its last output: %s", lastLine(msg))
}

// lastLine is the last non-empty line of s, cut to 256 bytes.
func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	l := strings.TrimSpace(lines[len(lines)-1])
	if len(l) > 256 {
		l = l[:256] + "..."
	}
	return l
}
