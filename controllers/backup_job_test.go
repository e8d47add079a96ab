package controllers

import (
	"slices"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	k8slabels "k8s.io/apimachinery/pkg/labels"
	"k8s.io/utils/ptr"

	chatv1 "kez.lat/chat/api/v1alpha1"
	"kez.lat/chat/server/backup"
)

// withBackup gives a KezChat an object store at https://s3.example.org.
func withBackup(kc *chatv1.KezChat) {
	kc.Spec.Backup = &chatv1.BackupSpec{ObjectStore: chatv1.ObjectStoreSpec{
		Endpoint: "https://s3.example.org", Bucket: "kez-backups", Path: "team/chat",
		CredentialsSecret: chatv1.SecretReference{Name: "s3-creds"},
	}}
}

func jetstream(kc *chatv1.KezChat) { kc.Spec.Server.Store = chatv1.StoreJetStream }

func newBackup(id string) *chatv1.KezChatBackup {
	return &chatv1.KezChatBackup{
		ObjectMeta: metav1.ObjectMeta{Name: "chat-nightly", Namespace: "team"},
		Spec:       chatv1.KezChatBackupSpec{KezChat: chatv1.KezChatReference{Name: "chat"}},
		Status:     chatv1.KezChatBackupStatus{BackupID: id},
	}
}

func TestBackupArgsFollowTheContract(t *testing.T) {
	tests := []struct {
		name string
		spec []func(*chatv1.KezChat)
		part chatv1.BackupPart
		want []string
	}{
		{"sqlite server part reads the server's database", []func(*chatv1.KezChat){withBackup}, chatv1.BackupPartServer, []string{
			"backup", "--part=server", "--id=ID", "--s3-endpoint=https://s3.example.org", "--s3-bucket=kez-backups",
			"--s3-prefix=team/chat", "--db=/var/lib/kez-chat/kez-chat.db", "--result-file=/dev/termination-log",
		}},
		{"jetstream server part reads NATS as the chat server", []func(*chatv1.KezChat){withBackup, jetstream}, chatv1.BackupPartServer, []string{
			"backup", "--part=server", "--id=ID", "--s3-endpoint=https://s3.example.org", "--s3-bucket=kez-backups",
			"--s3-prefix=team/chat", "--store=jetstream", "--nats-url=nats://chat-nats:4222", "--nats-user=kezchat",
			"--nats-password-file=/etc/kez-chat/nats/password", "--result-file=/dev/termination-log",
		}},
		{"sig-server part reads the key log", []func(*chatv1.KezChat){withBackup, jetstream}, chatv1.BackupPartSigServer, []string{
			"backup", "--part=sigserver", "--id=ID", "--s3-endpoint=https://s3.example.org", "--s3-bucket=kez-backups",
			"--s3-prefix=team/chat", "--db=/var/lib/kez-sig/kez-sig.db", "--result-file=/dev/termination-log",
		}},
		{"every object store and retention setting", []func(*chatv1.KezChat){withBackup, func(kc *chatv1.KezChat) {
			s := kc.Spec.Backup
			s.ObjectStore.Endpoint, s.ObjectStore.Path, s.ObjectStore.Region = "http://minio.backup:9000/", "", "eu-west-3"
			s.ObjectStore.InsecureHTTP = true
			s.ObjectStore.CASecret = &chatv1.SecretKeyReference{Name: "s3-ca", Key: "bundle.pem"}
			s.Retention = chatv1.BackupRetention{KeepCount: ptr.To[int32](7), MaxAge: &metav1.Duration{Duration: 720 * time.Hour}}
		}}, chatv1.BackupPartServer, []string{
			"backup", "--part=server", "--id=ID", "--s3-endpoint=http://minio.backup:9000", "--s3-bucket=kez-backups",
			"--s3-region=eu-west-3", "--s3-ca-file=/etc/kez-chat/s3-ca/ca.crt", "--s3-insecure-http",
			"--db=/var/lib/kez-chat/kez-chat.db", "--keep-count=7", "--keep-age=720h0m0s", "--result-file=/dev/termination-log",
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := backupArgs(newKezChat(tt.spec...), "ID", tt.part)
			if !slices.Equal(got, tt.want) {
				t.Errorf("args\n got %q\nwant %q", got, tt.want)
			}
		})
	}
}

func volumeNamed(vols []corev1.Volume, name string) *corev1.Volume {
	for i := range vols {
		if vols[i].Name == name {
			return &vols[i]
		}
	}
	return nil
}

func TestBackupJobRunsBesideThePartsVolumeLockedDown(t *testing.T) {
	tests := []struct {
		name      string
		spec      []func(*chatv1.KezChat)
		part      chatv1.BackupPart
		claim     string // "" for none
		affinity  string // component it must run beside; "" for none
		natsCreds bool
	}{
		{"sqlite server part mounts the server's volume beside the server", []func(*chatv1.KezChat){withBackup}, chatv1.BackupPartServer, "chat-server-data", componentServer, false},
		{"jetstream server part mounts no volume and runs anywhere", []func(*chatv1.KezChat){withBackup, jetstream}, chatv1.BackupPartServer, "", "", true},
		{"sig-server part mounts the sig-server's volume beside it", []func(*chatv1.KezChat){withBackup}, chatv1.BackupPartSigServer, "chat-sig-server-data", componentSigServer, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			kc := newKezChat(tt.spec...)
			job := backupJob(kc, newBackup("20261202T030000Z-abcd1234"), tt.part, "registry.example/kezchat:v1", Inputs{})
			pod := job.Spec.Template.Spec
			c := pod.Containers[0]

			if job.Name != "chat-nightly-"+string(tt.part) || job.Namespace != "team" {
				t.Errorf("Job %s/%s", job.Namespace, job.Name)
			}
			if c.Image != "registry.example/kezchat:v1" || c.Args[0] != "backup" || !slices.Contains(c.Args, "--id=20261202T030000Z-abcd1234") {
				t.Errorf("container image %s args %q", c.Image, c.Args)
			}
			if pod.RestartPolicy != corev1.RestartPolicyNever || ptr.Deref(pod.AutomountServiceAccountToken, true) ||
				!ptr.Deref(pod.SecurityContext.RunAsNonRoot, false) || !ptr.Deref(c.SecurityContext.ReadOnlyRootFilesystem, false) ||
				ptr.Deref(c.SecurityContext.AllowPrivilegeEscalation, true) {
				t.Errorf("not locked down: pod %+v container %+v", pod.SecurityContext, c.SecurityContext)
			}
			if c.TerminationMessagePath != "/dev/termination-log" || c.TerminationMessagePolicy != corev1.TerminationMessageFallbackToLogsOnError {
				t.Errorf("termination message %s %s", c.TerminationMessagePath, c.TerminationMessagePolicy)
			}
			if ptr.Deref(job.Spec.BackoffLimit, 100) > 2 || ptr.Deref(job.Spec.ActiveDeadlineSeconds, 0) == 0 ||
				ptr.Deref(job.Spec.TTLSecondsAfterFinished, 0) == 0 {
				t.Errorf("unbounded Job: backoff %v deadline %v ttl %v", job.Spec.BackoffLimit, job.Spec.ActiveDeadlineSeconds, job.Spec.TTLSecondsAfterFinished)
			}
			// Credentials only from the Secret, never in the arguments.
			env := map[string]*corev1.EnvVarSource{}
			for _, e := range c.Env {
				if e.Value != "" {
					t.Errorf("env %s has a literal value", e.Name)
				}
				env[e.Name] = e.ValueFrom
			}
			for _, key := range []string{"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} {
				if env[key] == nil || env[key].SecretKeyRef.Name != "s3-creds" || env[key].SecretKeyRef.Key != key || ptr.Deref(env[key].SecretKeyRef.Optional, true) {
					t.Errorf("%s from %+v", key, env[key])
				}
			}
			if tok := env["AWS_SESSION_TOKEN"]; tok == nil || !ptr.Deref(tok.SecretKeyRef.Optional, false) {
				t.Errorf("AWS_SESSION_TOKEN must be optional: %+v", tok)
			}

			data := volumeNamed(pod.Volumes, "data")
			switch {
			case tt.claim == "" && data != nil:
				t.Errorf("mounts a volume: %+v", data)
			case tt.claim != "" && (data == nil || data.PersistentVolumeClaim == nil || data.PersistentVolumeClaim.ClaimName != tt.claim):
				t.Errorf("data volume %+v, want claim %s", data, tt.claim)
			}
			switch {
			case tt.affinity == "" && pod.Affinity != nil:
				t.Errorf("affinity %+v", pod.Affinity)
			case tt.affinity != "":
				terms := pod.Affinity.PodAffinity.RequiredDuringSchedulingIgnoredDuringExecution
				if len(terms) != 1 || terms[0].TopologyKey != corev1.LabelHostname ||
					!k8slabels.Equals(terms[0].LabelSelector.MatchLabels, selectorLabels(kc, tt.affinity)) {
					t.Errorf("pod affinity %+v, want beside %s on its node", terms, tt.affinity)
				}
			}
			if got := volumeNamed(pod.Volumes, "nats-auth") != nil; got != tt.natsCreds {
				t.Errorf("NATS credentials mounted: %v, want %v", got, tt.natsCreds)
			}
			// No Service of the instance selects a backup pod.
			for _, comp := range []string{componentServer, componentSigServer, componentNATS} {
				if k8slabels.SelectorFromSet(selectorLabels(kc, comp)).Matches(k8slabels.Set(job.Spec.Template.Labels)) {
					t.Errorf("backup pods carry %s's selector labels: %v", comp, job.Spec.Template.Labels)
				}
			}
		})
	}
}

func TestBackupJobTrustsTheNamedCA(t *testing.T) {
	kc := newKezChat(withBackup, func(kc *chatv1.KezChat) {
		kc.Spec.Backup.ObjectStore.CASecret = &chatv1.SecretKeyReference{Name: "s3-ca"}
	})
	pod := backupJob(kc, newBackup("ID"), chatv1.BackupPartServer, "img", Inputs{}).Spec.Template.Spec
	ca := volumeNamed(pod.Volumes, "s3-ca")
	if ca == nil || ca.Secret.SecretName != "s3-ca" || ca.Secret.Items[0].Key != "ca.crt" || ca.Secret.Items[0].Path != "ca.crt" {
		t.Fatalf("CA volume %+v", ca)
	}
	if !slices.ContainsFunc(pod.Containers[0].VolumeMounts, func(m corev1.VolumeMount) bool {
		return m.Name == "s3-ca" && m.MountPath == "/etc/kez-chat/s3-ca" && m.ReadOnly
	}) {
		t.Errorf("CA not mounted read-only at /etc/kez-chat/s3-ca: %+v", pod.Containers[0].VolumeMounts)
	}
}

func TestBackupJobNamesFitInALabel(t *testing.T) {
	long := strings.Repeat("a", 60)
	tests := []struct {
		backup string
		part   chatv1.BackupPart
		want   string
	}{
		{"chat-nightly", chatv1.BackupPartServer, "chat-nightly-server"},
		{"chat-nightly", chatv1.BackupPartSigServer, "chat-nightly-sigserver"},
		{long, chatv1.BackupPartServer, long[:47] + "-" + digest([]byte(long))[:8] + "-server"},
	}
	for _, tt := range tests {
		got := backupJobName(tt.backup, tt.part)
		if got != tt.want || len(got) > 63 {
			t.Errorf("backupJobName(%s, %s) = %s (%d), want %s", tt.backup, tt.part, got, len(got), tt.want)
		}
	}
	if backupJobName(long+"x", chatv1.BackupPartServer) == backupJobName(long+"y", chatv1.BackupPartServer) {
		t.Error("two long backup names share a Job name")
	}
}

func TestBackupIDSortsByTimeAndIsUnique(t *testing.T) {
	at := time.Date(2026, 12, 2, 3, 4, 5, 0, time.FixedZone("CET", 3600))
	if got := newBackupID(at, "0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0"); got != "20261202T020405Z-0b1c2d3e" {
		t.Errorf("id %s", got)
	}
	if got := backupDestination(&chatv1.ObjectStoreSpec{Bucket: "b", Path: "p/q"}, "ID"); got != "s3://b/p/q/ID/" {
		t.Errorf("destination %s", got)
	}
	if got := backupDestination(&chatv1.ObjectStoreSpec{Bucket: "b"}, "ID"); got != "s3://b/ID/" {
		t.Errorf("destination %s", got)
	}
}

func TestBackupResultIsReadFromTheTerminationMessage(t *testing.T) {
	tests := []struct {
		name    string
		msg     string
		want    backupResult
		wantErr string
	}{
		{"success line", `{"id":"X","part":"server","bytes":12345,"objects":2,"startedAt":"2026-12-02T03:00:00Z","completedAt":"2026-12-02T03:00:09Z","version":"v1.2.3","deleted":["old"]}`,
			backupResult{Result: backup.Result{ID: "X", Part: "server", Bytes: 12345, Objects: 2, StartedAt: time.Date(2026, 12, 2, 3, 0, 0, 0, time.UTC),
				CompletedAt: time.Date(2026, 12, 2, 3, 0, 9, 0, time.UTC), Version: "v1.2.3", Deleted: []string{"old"}}}, ""},
		{"failure line", `{"error":"uploading manifest.json: 403 AccessDenied"}`, backupResult{Error: "uploading manifest.json: 403 AccessDenied"}, ""},
		{"the result after log lines (FallbackToLogsOnError)", "{\"level\":\"INFO\",\"msg\":\"uploading\"}\n{\"error\":\"disk full\"}\n", backupResult{Error: "disk full"}, ""},
		{"only a log", "panic: runtime error\ngoroutine 1 [running]:", backupResult{}, "its last output: goroutine 1 [running]:"},
		{"nothing", "", backupResult{}, "left no result"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseBackupResult(tt.msg)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got.ID != tt.want.ID || got.Part != tt.want.Part || got.Bytes != tt.want.Bytes || got.Objects != tt.want.Objects ||
				!got.StartedAt.Equal(tt.want.StartedAt) || !got.CompletedAt.Equal(tt.want.CompletedAt) || got.Version != tt.want.Version ||
				!slices.Equal(got.Deleted, tt.want.Deleted) || got.Error != tt.want.Error {
				t.Errorf("got %+v\nwant %+v", got, tt.want)
			}
		})
	}
}

// finishedJob is a Job with the condition typ True.
func finishedJob(typ batchv1.JobConditionType, reason string) *batchv1.Job {
	return &batchv1.Job{Status: batchv1.JobStatus{Conditions: []batchv1.JobCondition{
		{Type: typ, Status: corev1.ConditionTrue, Reason: reason},
	}}}
}

func podWithMessage(phase corev1.PodPhase, created time.Time, msg string) corev1.Pod {
	return corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{CreationTimestamp: metav1.NewTime(created)},
		Status: corev1.PodStatus{Phase: phase, ContainerStatuses: []corev1.ContainerStatus{{
			Name: "backup", State: corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{Message: msg}},
		}}},
	}
}

func TestPartStatusComesFromTheJobAndItsPods(t *testing.T) {
	t0 := time.Date(2026, 12, 2, 3, 0, 0, 0, time.UTC)
	ok := `{"id":"ID","part":"server","bytes":100,"objects":2,"completedAt":"2026-12-02T03:00:09Z","version":"v1"}`
	tests := []struct {
		name    string
		job     *batchv1.Job
		pods    []corev1.Pod
		phase   chatv1.BackupPhase
		bytes   int64
		message string
	}{
		{"no Job yet", nil, nil, chatv1.BackupPending, 0, ""},
		{"Job at work", &batchv1.Job{}, nil, chatv1.BackupRunning, 0, ""},
		{"completed with a result", finishedJob(batchv1.JobComplete, ""), []corev1.Pod{podWithMessage(corev1.PodSucceeded, t0, ok)}, chatv1.BackupCompleted, 100, ""},
		{"completed after a failed try", finishedJob(batchv1.JobComplete, ""), []corev1.Pod{
			podWithMessage(corev1.PodFailed, t0, `{"error":"timeout"}`), podWithMessage(corev1.PodSucceeded, t0.Add(time.Minute), ok),
		}, chatv1.BackupCompleted, 100, ""},
		{"completed without a result", finishedJob(batchv1.JobComplete, ""), nil, chatv1.BackupFailed, 0, "no pod of it reports a result"},
		{"completed with another backup's result", finishedJob(batchv1.JobComplete, ""), []corev1.Pod{
			podWithMessage(corev1.PodSucceeded, t0, `{"id":"OTHER","part":"server","bytes":1}`),
		}, chatv1.BackupFailed, 0, "reports backup OTHER"},
		{"failed with the container's reason", finishedJob(batchv1.JobFailed, "BackoffLimitExceeded"), []corev1.Pod{
			podWithMessage(corev1.PodFailed, t0, `{"error":"old"}`), podWithMessage(corev1.PodFailed, t0.Add(time.Minute), `{"error":"403 AccessDenied"}`),
		}, chatv1.BackupFailed, 0, "403 AccessDenied"},
		{"failed by deadline with no pod left", finishedJob(batchv1.JobFailed, "DeadlineExceeded"), nil, chatv1.BackupFailed, 0, "DeadlineExceeded"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st := partStatus(chatv1.BackupPartServer, "job", "ID", tt.job, tt.pods)
			if st.Phase != tt.phase || st.Bytes != tt.bytes || !strings.Contains(st.Message, tt.message) {
				t.Errorf("got %s %d %q, want %s %d %q", st.Phase, st.Bytes, st.Message, tt.phase, tt.bytes, tt.message)
			}
		})
	}
}

func TestBackupPhaseSummarizesItsParts(t *testing.T) {
	at := func(m int) *metav1.Time { return &metav1.Time{Time: time.Date(2026, 12, 2, 3, m, 0, 0, time.UTC)} }
	done := func(part chatv1.BackupPart, bytes int64, m int) chatv1.BackupPartStatus {
		return chatv1.BackupPartStatus{Part: part, Phase: chatv1.BackupCompleted, Bytes: bytes, CompletedAt: at(m)}
	}
	tests := []struct {
		name      string
		parts     []chatv1.BackupPartStatus
		phase     chatv1.BackupPhase
		bytes     int64
		completed *metav1.Time
	}{
		{"every part completed", []chatv1.BackupPartStatus{done("server", 100, 2), done("sigserver", 10, 5)}, chatv1.BackupCompleted, 110, at(5)},
		{"one still running", []chatv1.BackupPartStatus{done("server", 100, 2), {Part: "sigserver", Phase: chatv1.BackupRunning}}, chatv1.BackupRunning, 100, nil},
		{"one failed while another runs", []chatv1.BackupPartStatus{{Part: "server", Phase: chatv1.BackupFailed, Message: "x"}, {Part: "sigserver", Phase: chatv1.BackupRunning}}, chatv1.BackupFailed, 0, nil},
		{"no parts", nil, chatv1.BackupRunning, 0, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			phase, bytes, completed, _ := summarize(tt.parts)
			if phase != tt.phase || bytes != tt.bytes || (completed == nil) != (tt.completed == nil) || (completed != nil && !completed.Equal(tt.completed)) {
				t.Errorf("got %s %d %v, want %s %d %v", phase, bytes, completed, tt.phase, tt.bytes, tt.completed)
			}
		})
	}
}

func TestScheduleTimesGiveTheDueRunAndTheNext(t *testing.T) {
	day := func(d, h, m int) time.Time { return time.Date(2026, 12, d, h, m, 0, 0, time.UTC) }
	tests := []struct {
		name      string
		schedule  string
		last, now time.Time
		due, next time.Time
	}{
		{"nothing due yet", "0 3 * * *", day(1, 12, 0), day(2, 2, 59), time.Time{}, day(2, 3, 0)},
		{"due at 03:00", "0 3 * * *", day(1, 12, 0), day(2, 3, 0), day(2, 3, 0), day(3, 3, 0)},
		{"missed runs: only the latest", "0 3 * * *", day(1, 12, 0), day(5, 8, 0), day(5, 3, 0), day(6, 3, 0)},
		{"already taken this run", "0 3 * * *", day(2, 3, 0), day(2, 9, 0), time.Time{}, day(3, 3, 0)},
		{"hourly descriptor", "@hourly", day(2, 3, 0), day(2, 4, 30), day(2, 4, 0), day(2, 5, 0)},
		{"every 6h", "@every 6h", day(2, 0, 0), day(2, 6, 1), day(2, 6, 0), day(2, 12, 0)},
		{"every second, a day behind", "@every 1s", day(1, 0, 0), day(2, 0, 0), day(2, 0, 0), day(2, 0, 0).Add(time.Second)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := parseSchedule(tt.schedule)
			if err != nil {
				t.Fatal(err)
			}
			due, next := scheduleTimes(s, tt.last, tt.now)
			if !due.Equal(tt.due) || !next.Equal(tt.next) {
				t.Errorf("due %v next %v, want %v %v", due, next, tt.due, tt.next)
			}
		})
	}
	if _, err := parseSchedule("61 * * * *"); err == nil || !strings.Contains(err.Error(), "spec.backup.schedule") {
		t.Errorf("minute 61 parsed: %v", err)
	}
}

// initContainerOf is the Deployment's init container of that name.
func initContainerOf(d *appsv1.Deployment, name string) *corev1.Container {
	for i, c := range d.Spec.Template.Spec.InitContainers {
		if c.Name == name {
			return &d.Spec.Template.Spec.InitContainers[i]
		}
	}
	return nil
}

func TestRecoveryRestoresEachPartBeforeItStarts(t *testing.T) {
	recovery := func(kc *chatv1.KezChat) {
		kc.Spec.Bootstrap = &chatv1.BootstrapSpec{Recovery: chatv1.RecoverySpec{BackupID: "20261202T030000Z-abcd1234",
			ObjectStore: chatv1.ObjectStoreSpec{Endpoint: "https://s3.example.org", Bucket: "old", Path: "team",
				CredentialsSecret: chatv1.SecretReference{Name: "old-creds"}, CASecret: &chatv1.SecretKeyReference{Name: "old-ca"}}}}
	}
	store := []string{"--id=20261202T030000Z-abcd1234", "--s3-endpoint=https://s3.example.org", "--s3-bucket=old", "--s3-prefix=team", "--s3-ca-file=/etc/kez-chat/s3-ca/ca.crt"}
	tests := []struct {
		name   string
		spec   []func(*chatv1.KezChat)
		deploy func(*chatv1.KezChat, Inputs) *appsv1.Deployment
		args   []string
		mount  string
	}{
		{"sqlite server", []func(*chatv1.KezChat){recovery}, serverDeployment,
			append(append([]string{"restore", "--part=server"}, store...), "--db=/var/lib/kez-chat/kez-chat.db"), "data"},
		{"jetstream server", []func(*chatv1.KezChat){recovery, jetstream}, serverDeployment,
			append(append([]string{"restore", "--part=server"}, store...), "--store=jetstream", "--nats-url=nats://chat-nats:4222",
				"--nats-user=kezchat", "--nats-password-file=/etc/kez-chat/nats/password"), "nats-auth"},
		{"sig-server", []func(*chatv1.KezChat){recovery}, sigServerDeployment,
			append(append([]string{"restore", "--part=sigserver"}, store...), "--db=/var/lib/kez-sig/kez-sig.db"), "data"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := tt.deploy(newKezChat(tt.spec...), testInputs)
			c := initContainerOf(d, "restore")
			if c == nil {
				t.Fatalf("no restore init container: %+v", d.Spec.Template.Spec.InitContainers)
			}
			if !slices.Equal(c.Args, tt.args) || c.Image != d.Spec.Template.Spec.Containers[0].Image {
				t.Errorf("image %s args\n got %q\nwant %q", c.Image, c.Args, tt.args)
			}
			// Every volume it mounts is the pod's.
			for _, m := range c.VolumeMounts {
				if volumeNamed(d.Spec.Template.Spec.Volumes, m.Name) == nil {
					t.Errorf("mounts %s, which the pod lacks", m.Name)
				}
			}
			if !slices.ContainsFunc(c.VolumeMounts, func(m corev1.VolumeMount) bool { return m.Name == tt.mount }) {
				t.Errorf("does not mount %s: %+v", tt.mount, c.VolumeMounts)
			}
			if !ptr.Deref(c.SecurityContext.ReadOnlyRootFilesystem, false) {
				t.Error("restore container's root file system is writable")
			}
			for _, e := range c.Env {
				if e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil && e.ValueFrom.SecretKeyRef.Name != "old-creds" {
					t.Errorf("env %s from %s, want the recovery's Secret", e.Name, e.ValueFrom.SecretKeyRef.Name)
				}
			}
		})
	}
	for _, deploy := range []func(*chatv1.KezChat, Inputs) *appsv1.Deployment{serverDeployment, sigServerDeployment} {
		if d := deploy(newKezChat(), testInputs); len(d.Spec.Template.Spec.InitContainers) > 0 {
			t.Errorf("%s has init containers without recovery", d.Name)
		}
	}
}

func TestDeletionPolicyDecidesTheNATSVolumes(t *testing.T) {
	for policy, want := range map[chatv1.DeletionPolicy]appsv1.PersistentVolumeClaimRetentionPolicyType{
		"":                    appsv1.RetainPersistentVolumeClaimRetentionPolicyType,
		chatv1.DeletionRetain: appsv1.RetainPersistentVolumeClaimRetentionPolicyType,
		chatv1.DeletionDelete: appsv1.DeletePersistentVolumeClaimRetentionPolicyType,
	} {
		sts := natsStatefulSet(newKezChat(func(kc *chatv1.KezChat) { kc.Spec.DeletionPolicy = policy }), testInputs)
		if got := sts.Spec.PersistentVolumeClaimRetentionPolicy.WhenDeleted; got != want {
			t.Errorf("deletionPolicy %q: NATS volumes whenDeleted %s, want %s", policy, got, want)
		}
	}
}
