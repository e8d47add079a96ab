package main

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	chatv1 "kez.lat/chat/api/v1alpha1"
)

func TestHealthNamesTheStateThatMatters(t *testing.T) {
	cases := []struct {
		name                 string
		conds                []metav1.Condition
		ready, word, message string
	}{
		{"never reported", nil, "Unknown", "Pending", "the operator has not reported on it yet"},
		{"ready", []metav1.Condition{
			condition("Ready", "True", "ComponentsReady", "all up"),
		}, "True", "Ready", "all up"},
		{"ready while an upgrade rolls", []metav1.Condition{
			condition("Ready", "True", "ComponentsReady", "all up"),
			condition("Progressing", "True", "Upgrading", "rolling v2"),
		}, "True", "Upgrading", "rolling v2"},
		{"degraded wins over ready", []metav1.Condition{
			condition("Ready", "True", "ComponentsReady", ""),
			condition("Degraded", "True", "StorageFull", "the disk is full"),
		}, "True", "StorageFull", "the disk is full"},
		{"paused wins over degraded", []metav1.Condition{
			condition("Ready", "False", "ComponentsPending", ""),
			condition("Degraded", "True", "UpgradeFailed", ""),
			condition("Paused", "True", "Paused", "annotation set"),
		}, "False", "Paused", "annotation set"},
		{"resumed is not paused", []metav1.Condition{
			condition("Ready", "True", "ComponentsReady", "all up"),
			condition("Paused", "False", "Resumed", ""),
		}, "True", "Ready", "all up"},
		{"rolling out", []metav1.Condition{
			condition("Ready", "False", "ComponentsPending", "server: 0 of 1"),
			condition("Progressing", "True", "RollingOut", "server: 0 of 1 replicas updated"),
		}, "False", "RollingOut", "server: 0 of 1 replicas updated"},
		{"not ready, nothing moving", []metav1.Condition{
			condition("Ready", "False", "VAPIDSecretInvalid", "no private-key.pem"),
		}, "False", "VAPIDSecretInvalid", "no private-key.pem"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			kc := newKezChat("ns", "a")
			kc.Status.Conditions = c.conds
			ready, word, msg := health(kc)
			if ready != c.ready || word != c.word || msg != c.message {
				t.Errorf("health = %q, %q, %q; want %q, %q, %q", ready, word, msg, c.ready, c.word, c.message)
			}
		})
	}
}

func TestSummarizeTakesTheNewestBackupAndOnlyItsOwnVolumes(t *testing.T) {
	now := time.Date(2026, 12, 3, 12, 0, 0, 0, time.UTC)
	kc := newKezChat("ns", "team")
	kc.Spec.Backup = &chatv1.BackupSpec{}
	kc.Status.LastSuccessfulBackup = &chatv1.BackupRecord{Name: "old", BackupID: "old-id", CompletedAt: metav1.NewTime(now.Add(-48 * time.Hour)), Bytes: 1}
	kc.Status.Conditions = []metav1.Condition{condition(chatv1.ConditionLastBackupSucceeded, "False", "BackupFailed", "bucket gone"),
		condition(chatv1.ConditionFederation, "False", "Disabled", "spec.federation.enabled is false")}

	newer := completedBackup("ns", "newer", "team", now.Add(-2*time.Hour), 2048)
	otherChat := completedBackup("ns", "others", "other", now.Add(-time.Minute), 1)
	otherNS := completedBackup("elsewhere", "same-name", "team", now.Add(-time.Minute), 1)
	failed := completedBackup("ns", "failed", "team", now.Add(-time.Minute), 1)
	failed.Status.Phase = chatv1.BackupFailed

	bound := serverPVC("ns", "team", "5Gi")
	bound.Status.Capacity = corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("8Gi")}
	bound.Status.Phase = corev1.ClaimBound
	notOurs := serverPVC("ns", "other", "1Gi")

	st := summarize(kc, []corev1.PersistentVolumeClaim{*bound, *notOurs},
		[]chatv1.KezChatBackup{*newer, *otherChat, *otherNS, *failed},
		map[claimKey]int64{{"ns", "team-server-data"}: 3 << 30})

	if st.LastBackup == nil || st.LastBackup.Name != "newer" || st.LastBackup.Bytes != 2048 {
		t.Errorf("last backup = %+v, want newer", st.LastBackup)
	}
	if st.Federation != "Disabled" {
		t.Errorf("federation = %q, want the condition's reason", st.Federation)
	}
	if st.LastBackupFailed != "bucket gone" {
		t.Errorf("last backup failed = %q", st.LastBackupFailed)
	}
	if len(st.Storage) != 1 {
		t.Fatalf("storage = %+v, want team-server-data alone", st.Storage)
	}
	v := st.Storage[0]
	if v.Claim != "team-server-data" || v.RequestedBytes != 5<<30 || v.CapacityBytes != 8<<30 || v.UsedBytes == nil || *v.UsedBytes != 3<<30 || v.Phase != "Bound" {
		t.Errorf("volume = %+v", v)
	}
}

func TestStatusTable(t *testing.T) {
	now := time.Date(2026, 12, 3, 12, 0, 0, 0, time.UTC)
	ready := instanceStatus{
		Namespace: "chat", Name: "team", Ready: "True", Health: "Ready", URL: "https://chat.example.org",
		Components: []componentHealth{{Name: "server", Replicas: 2, ReadyReplicas: 2, Version: "v1.2.3"},
			{Name: "nats", Replicas: 3, ReadyReplicas: 3, Version: "2.15.2-alpine"}},
		Storage: []volumeUsage{
			{Claim: "a", CapacityBytes: 4 << 30, UsedBytes: ptr.To[int64](1 << 30)},
			{Claim: "b", CapacityBytes: 4 << 30, UsedBytes: ptr.To[int64](1 << 29)},
		},
		Backups:    true,
		LastBackup: &lastBackup{Name: "n", CompletedAt: now.Add(-5 * time.Hour)},
		Created:    now.Add(-72 * time.Hour),
	}
	pending := instanceStatus{
		Namespace: "dev", Name: "try", Ready: "Unknown", Health: "Pending", Message: "the operator has not reported on it yet",
		Storage: []volumeUsage{{Claim: "a", CapacityBytes: 1 << 30}, {Claim: "b", CapacityBytes: 1 << 29, UsedBytes: ptr.To[int64](1)}},
		Created: now.Add(-30 * time.Second),
	}
	failing := ready
	failing.Name, failing.LastBackupFailed, failing.LastBackup = "fail", "bucket gone", nil
	cases := []struct {
		name   string
		st     []instanceStatus
		output string
		all    bool
		want   string
	}{
		{"none", nil, "table", false, "No KezChats found.\n"},
		{"one namespace", []instanceStatus{ready, pending}, "table", false, "" +
			"NAME   READY     HEALTH    VERSION   URL                       STORAGE             LAST BACKUP   AGE\n" +
			"team   True      Ready     v1.2.3    https://chat.example.org  1.5Gi/8Gi (18%)     5h ago        3d\n" +
			"try    Unknown   Pending   -         -                         1.5Gi               -             30s\n"},
		{"all namespaces", []instanceStatus{failing}, "table", true, "" +
			"NAMESPACE   NAME   READY   HEALTH   VERSION   URL                        STORAGE             LAST BACKUP           AGE\n" +
			"chat        fail   True    Ready    v1.2.3    https://chat.example.org   1.5Gi/8Gi (18%)     never (last failed)   3d\n"},
		{"wide", []instanceStatus{pending}, "wide", false, "" +
			"NAME   READY     HEALTH    VERSION   URL   STORAGE   LAST BACKUP   AGE   SERVER   SIG-SERVER   NATS   FEDERATION   UPGRADE   MESSAGE\n" +
			"try    Unknown   Pending   -         -     1.5Gi     -             30s   -        -            -      -            -         the operator has not reported on it yet\n"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var b bytes.Buffer
			if err := printStatus(&b, c.st, c.output, c.all, now); err != nil {
				t.Fatal(err)
			}
			if got := squeeze(b.String()); got != squeeze(c.want) {
				t.Errorf("got:\n%s\nwant:\n%s", b.String(), c.want)
			}
		})
	}
}

// squeeze makes runs of spaces one, so that the tests do not depend on
// tabwriter's padding.
func squeeze(s string) string {
	lines := strings.Split(s, "\n")
	for i, l := range lines {
		lines[i] = strings.Join(strings.Fields(l), " ")
	}
	return strings.Join(lines, "\n")
}

func TestStatusJSONAndYAMLOfNothingIsAnEmptyList(t *testing.T) {
	for _, c := range []struct{ output, want string }{{"json", "[]\n"}, {"yaml", "[]\n"}} {
		var b bytes.Buffer
		if err := printStatus(&b, nil, c.output, false, time.Now()); err != nil {
			t.Fatal(err)
		}
		if b.String() != c.want {
			t.Errorf("-o %s = %q, want %q", c.output, b.String(), c.want)
		}
	}
}

func TestHumanBytes(t *testing.T) {
	for _, c := range []struct {
		n    int64
		want string
	}{{0, "0"}, {1023, "1023"}, {1024, "1Ki"}, {1536, "1.5Ki"}, {5 << 30, "5Gi"}, {1<<40 + 1<<39, "1.5Ti"}} {
		if got := humanBytes(c.n); got != c.want {
			t.Errorf("humanBytes(%d) = %q, want %q", c.n, got, c.want)
		}
	}
}

func TestClaimUseFromKubeletSummary(t *testing.T) {
	body := `{"node":{"nodeName":"n"},"pods":[
	  {"podRef":{"name":"p","namespace":"ns"},"volume":[
	    {"name":"data","usedBytes":1234,"pvcRef":{"name":"team-server-data","namespace":"ns"}},
	    {"name":"tmp","usedBytes":99},
	    {"name":"nodata","pvcRef":{"name":"x","namespace":"ns"}}]}]}`
	got := claimUseFromSummary([]byte(body))
	if len(got) != 1 || got[claimKey{"ns", "team-server-data"}] != 1234 {
		t.Errorf("use = %v", got)
	}
	if claimUseFromSummary([]byte("<html>")) != nil {
		t.Error("a body that is not a summary gave figures")
	}
}

// Against the API server, through the command line as kubectl runs it.
func TestStatusCommandListsKezChatsWithVolumesAndBackups(t *testing.T) {
	ns := testNamespace(t)
	other := testNamespace(t)
	kc := newKezChat(ns, "team")
	mustCreate(t, kc)
	kc.Status = readyStatus(kc)
	setStatus(t, kc)
	mustCreate(t, newKezChat(other, "fresh"), serverPVC(ns, "team", "5Gi"))
	b := completedBackup(ns, "team-1", "team", time.Now().Add(-5*time.Hour), 1<<20)
	st := b.Status
	mustCreate(t, b)
	b.Status = st
	setStatus(t, b)

	code, out, stderr := runPlugin(t, "status", "-n", ns)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	// The AGE column is left out: it depends on the test's speed.
	want := "NAME READY HEALTH VERSION URL STORAGE LAST BACKUP AGE\n" +
		"team True Ready v1.2.3 https://team.example.org 5Gi 5h ago "
	if got := squeeze(out); !strings.HasPrefix(got, want) {
		t.Errorf("status -n %s:\n%s\nwant:\n%s", ns, out, want)
	}

	code, out, stderr = runPlugin(t, "status", "-A", "-o", "json")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	var all []instanceStatus
	if err := json.Unmarshal([]byte(out), &all); err != nil {
		t.Fatalf("%v in %s", err, out)
	}
	found := map[string]instanceStatus{}
	for _, s := range all {
		found[s.Namespace+"/"+s.Name] = s
	}
	if s := found[ns+"/team"]; s.Health != "Ready" || s.LastBackup == nil || s.LastBackup.Name != "team-1" || len(s.Storage) != 1 {
		t.Errorf("team = %+v", s)
	}
	if s, ok := found[other+"/fresh"]; !ok || s.Health != "Pending" {
		t.Errorf("fresh = %+v (found %v)", s, ok)
	}

	code, _, stderr = runPlugin(t, "status", "-n", ns, "nope")
	if code != 1 || !strings.Contains(stderr, `no KezChat "nope" in namespace `+ns) {
		t.Errorf("status nope: exit %d, %q", code, stderr)
	}
	code, _, stderr = runPlugin(t, "status", "-o", "xml")
	if code != 2 || !strings.Contains(stderr, `unknown output "xml"`) {
		t.Errorf("status -o xml: exit %d, %q", code, stderr)
	}
}
