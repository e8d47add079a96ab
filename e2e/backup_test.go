package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	chatv1 "kez.lat/chat/api/v1alpha1"
	kez "kez.lat/chat/client"
	"kez.lat/chat/server/backup/s3test"
	"kez.lat/chat/server/testutil"
)

const backupNS = "chat-backup"

// TestBackupDeleteAndRestoreIntoANewKezChat follows a chat through the
// operator's backup and restore: people chat on the instance a KezChat
// made, a KezChatBackup writes it to a real S3 server (versitygw), the
// KezChat is deleted, and a new KezChat restores from the backup: the
// identities, the undelivered messages (which still decrypt), the key
// documents (whose chain still verifies) and the VAPID key are all there.
// kwok runs no containers, so the containers the operator's pods and Jobs
// would run are run here from their pod specs (localPods).
func TestBackupDeleteAndRestoreIntoANewKezChat(t *testing.T) {
	c := startCluster(t)
	t.Setenv("KUBECONFIG", c.kubeconfig)
	ctx := context.Background()
	bin := kezchatBinary(t)
	c.run(t, "kubectl", "apply", "--server-side", "-f", "../config/crd/bases")
	c.waitEstablished(t, "kezchats.chat.kez.lat", "kezchatbackups.chat.kez.lat")
	c.runOperator(t, bin)

	s3 := s3test.Start(t)
	c.run(t, "kubectl", "create", "namespace", backupNS)
	c.run(t, "kubectl", "create", "secret", "generic", "s3", "--namespace", backupNS,
		"--from-literal=AWS_ACCESS_KEY_ID="+s3.AccessKeyID, "--from-literal=AWS_SECRET_ACCESS_KEY="+s3.SecretAccessKey)
	objectStore := fmt.Sprintf(`
    objectStore:
      endpoint: %s
      insecureHTTP: true
      bucket: %s
      path: chats/alpha
      credentialsSecret:
        name: s3`, s3.Endpoint, s3.Bucket)
	c.apply(t, backupNS, fmt.Sprintf(`apiVersion: chat.kez.lat/v1alpha1
kind: KezChat
metadata:
  name: alpha
spec:
  domain: chat.example.org
  nats:
    enabled: false
  backup:%s
`, objectStore))
	c.waitReady(t, backupNS, "alpha")

	// The chat, on this machine, as the pods' containers.
	pods := newLocalPods(t, c, bin)
	alpha := startInstance(t, ctx, c, pods, "alpha")
	api := kez.New(alpha["server"], &http.Client{Timeout: 10 * time.Second})
	alice := registerOn(t, api, "alice")
	bob := registerOn(t, api, "bob")
	keys := kez.New(alpha["sig-server"], &http.Client{Timeout: 10 * time.Second})
	// bob's key documents: version 1, then a second that follows it.
	var prev *kez.KeyDocument
	for v := 1; v <= 2; v++ {
		doc, err := kez.NewKeyDocument(bob.Signer, prev, []kez.SigningKey{{Alg: bob.Signer.Alg(), Key: bob.Signer.PublicKey(), Label: "primary"}}, bob.EncPublicKey(), time.Now())
		if err != nil {
			t.Fatal(err)
		}
		if _, _, err := keys.PublishKeys(ctx, doc); err != nil {
			t.Fatalf("publishing bob's key document %d: %v", v, err)
		}
		if prev, err = keys.LatestKeys(ctx, bob.PrimaryID()); err != nil {
			t.Fatal(err)
		}
	}
	sent := []string{"before the backup 1", "before the backup 2", "before the backup 3"}
	for _, body := range sent {
		if _, err := api.Send(ctx, alice, "bob", body); err != nil {
			t.Fatalf("alice to bob: %v", err)
		}
	}
	vapid := c.kezChat(t, backupNS, "alpha").Status.VAPIDPublicKey

	// An on-demand backup, as a cluster admin asks for one.
	c.apply(t, backupNS, `apiVersion: chat.kez.lat/v1alpha1
kind: KezChatBackup
metadata:
  name: alpha-first
spec:
  kezChat:
    name: alpha
`)
	runBackupJobs(t, ctx, c, pods, "alpha-first")
	var backup chatv1.KezChatBackup
	eventually(t, stepTimeout, "the backup Completed", func() error {
		if err := c.client.Get(ctx, client.ObjectKey{Namespace: backupNS, Name: "alpha-first"}, &backup); err != nil {
			return err
		}
		if backup.Status.Phase != chatv1.BackupCompleted {
			return fmt.Errorf("phase %q: %s", backup.Status.Phase, backup.Status.Message)
		}
		return nil
	})
	if backup.Status.Bytes <= 0 || backup.Status.BackupID == "" {
		t.Errorf("completed backup status %+v", backup.Status)
	}
	eventually(t, stepTimeout, "the KezChat's last backup", func() error {
		last := c.kezChat(t, backupNS, "alpha").Status.LastSuccessfulBackup
		if last == nil || last.BackupID != backup.Status.BackupID {
			return fmt.Errorf("lastSuccessfulBackup %+v", last)
		}
		return nil
	})
	if out := c.run(t, "kubectl", "get", "kezchatbackups", "--namespace", backupNS); !strings.Contains(out, "Completed") {
		t.Errorf("kubectl get kezchatbackups:\n%s", out)
	}
	// The manifest is in the bucket, under the KezChat's path.
	for _, part := range []string{"server", "sigserver"} {
		if _, err := os.Stat(s3.ObjectPath("chats/alpha/" + backup.Status.BackupID + "/" + part + "/manifest.json")); err != nil {
			t.Errorf("no %s manifest in the bucket: %v", part, err)
		}
	}

	// The KezChat goes (its volumes and VAPID Secret stay, by default,
	// but the new one starts from the backup alone: fresh volumes).
	c.run(t, "kubectl", "delete", "--namespace", backupNS, "kezchat/alpha", "--wait=true", kubectlLimit)

	c.apply(t, backupNS, fmt.Sprintf(`apiVersion: chat.kez.lat/v1alpha1
kind: KezChat
metadata:
  name: beta
spec:
  domain: chat.example.org
  nats:
    enabled: false
  push:
    secretName: alpha-vapid
  bootstrap:
    recovery:
      backupID: %s%s
`, backup.Status.BackupID, strings.ReplaceAll(objectStore, "\n    ", "\n      ")))
	c.waitReady(t, backupNS, "beta")
	if got := c.kezChat(t, backupNS, "beta").Status.VAPIDPublicKey; got != vapid || got == "" {
		t.Errorf("the restored KezChat's VAPID key %q, the old one's %q", got, vapid)
	}
	beta := startInstance(t, ctx, c, pods, "beta")
	api = kez.New(beta["server"], &http.Client{Timeout: 10 * time.Second})
	for _, who := range []*kez.Identity{alice, bob} {
		u, err := api.Lookup(ctx, who.Handle)
		if err != nil || u.PrimaryID != who.PrimaryID() {
			t.Errorf("%s after the restore: %+v, %v", who.Handle, u, err)
		}
	}
	page, err := api.Poll(ctx, bob, 0, 100)
	if err != nil {
		t.Fatalf("bob's inbox after the restore: %v", err)
	}
	var got []string
	for _, env := range page.Messages {
		p, err := api.Decrypt(ctx, bob, env)
		if err != nil {
			t.Fatalf("decrypting seq %d after the restore: %v", env.Seq, err)
		}
		got = append(got, p.Body)
	}
	if strings.Join(got, "|") != strings.Join(sent, "|") {
		t.Errorf("bob's undelivered messages after the restore %q, want %q", got, sent)
	}
	keys = kez.New(beta["sig-server"], &http.Client{Timeout: 10 * time.Second})
	log, err := keys.KeyLog(ctx, bob.PrimaryID())
	if err != nil || len(log) != 2 || log[1].Version != 2 {
		t.Fatalf("bob's key log after the restore: %d documents, %v", len(log), err)
	}
	// And the restored chat goes on.
	if _, err := api.Send(ctx, alice, "bob", "after the restore"); err != nil {
		t.Errorf("sending after the restore: %v", err)
	}
}

// apply writes manifest to a file and applies it in ns with kubectl, as a
// user would.
func (c *cluster) apply(t *testing.T, ns, manifest string) {
	t.Helper()
	f := filepath.Join(t.TempDir(), "manifest.yaml")
	if err := os.WriteFile(f, []byte(manifest), 0o600); err != nil {
		t.Fatal(err)
	}
	c.run(t, "kubectl", "apply", "--namespace", ns, "-f", f)
}

// startInstance runs the sig-server and the chat server of KezChat name
// from their Deployments' pod templates, restore init containers first,
// and returns their URLs by component.
func startInstance(t *testing.T, ctx context.Context, c *cluster, pods *localPods, name string) map[string]string {
	t.Helper()
	urls := map[string]string{}
	for _, component := range []string{"sig-server", "server"} {
		deployment := name + "-" + component
		var spec corev1.PodSpec
		eventually(t, stepTimeout, "Deployment "+deployment, func() error {
			var d appsv1.Deployment
			if err := c.client.Get(ctx, client.ObjectKey{Namespace: backupNS, Name: deployment}, &d); err != nil {
				return err
			}
			spec = d.Spec.Template.Spec
			return nil
		})
		for i := range spec.InitContainers {
			pods.run(t, ctx, backupNS, &spec, &spec.InitContainers[i])
		}
		bind, metrics := testutil.FreeAddr(t), testutil.FreeAddr(t)
		ctr := &spec.Containers[0]
		pods.start(t, ctx, backupNS, &spec, ctr, "--bind="+bind, "--metrics-bind="+metrics, "--log-format=text")
		url := "http://" + bind
		waitReadyz(t, time.Minute, deployment+" ready", url+"/v1/readyz")
		pods.serve(deployment, servicePort(t, ctx, c, backupNS, deployment), bind)
		urls[component] = url
	}
	return urls
}

// servicePort is the port the Service name of ns answers on.
func servicePort(t *testing.T, ctx context.Context, c *cluster, ns, name string) int32 {
	t.Helper()
	var svc corev1.Service
	if err := c.client.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, &svc); err != nil {
		t.Fatalf("Service %s: %v", name, err)
	}
	for _, p := range svc.Spec.Ports {
		if p.Name == "http" {
			return p.Port
		}
	}
	t.Fatalf("Service %s has no http port", name)
	return 0
}

func registerOn(t *testing.T, api *kez.Client, handle string) *kez.Identity {
	t.Helper()
	id, err := kez.NewIdentity("ed25519")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := api.Register(context.Background(), id, handle); err != nil {
		t.Fatalf("registering %s: %v", handle, err)
	}
	return id
}

// runBackupJobs plays the kubelet for the backup's Jobs: each Job's pod,
// once the scheduler placed it, runs here, and its result becomes the
// container's termination message and the pod's phase, as a kubelet
// reports them.
func runBackupJobs(t *testing.T, ctx context.Context, c *cluster, pods *localPods, backup string) {
	t.Helper()
	done := map[string]bool{}
	eventually(t, stepTimeout, "both backup Jobs ran", func() error {
		var list corev1.PodList
		if err := c.client.List(ctx, &list, client.InNamespace(backupNS), client.MatchingLabels{"chat.kez.lat/backup": backup}); err != nil {
			return err
		}
		for i := range list.Items {
			pod := &list.Items[i]
			part := pod.Labels["chat.kez.lat/backup-part"]
			if done[part] || pod.Spec.NodeName == "" || pod.Status.Phase != corev1.PodRunning {
				continue
			}
			// The termination message file, as the kubelet mounts it.
			terminationLog := filepath.Join(t.TempDir(), "termination-log")
			pods.run(t, ctx, backupNS, &pod.Spec, &pod.Spec.Containers[0], "--result-file="+terminationLog)
			raw, err := os.ReadFile(terminationLog)
			if err != nil {
				t.Fatalf("the %s part wrote no termination message: %v", part, err)
			}
			result := strings.TrimSpace(string(raw))
			var parsed struct{ ID string }
			if err := json.Unmarshal([]byte(result), &parsed); err != nil || parsed.ID == "" {
				t.Fatalf("the %s part's result line %q: %v", part, result, err)
			}
			now := metav1.Now()
			pod.Status.Phase = corev1.PodSucceeded
			pod.Status.ContainerStatuses = []corev1.ContainerStatus{{
				Name: pod.Spec.Containers[0].Name, Image: pod.Spec.Containers[0].Image,
				State: corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{
					ExitCode: 0, Reason: "Completed", Message: result, StartedAt: now, FinishedAt: now,
				}},
			}}
			for j := range pod.Status.Conditions {
				if pod.Status.Conditions[j].Type == corev1.PodReady || pod.Status.Conditions[j].Type == corev1.ContainersReady {
					pod.Status.Conditions[j].Status = corev1.ConditionFalse
				}
			}
			if err := c.client.Status().Update(ctx, pod); err != nil {
				return fmt.Errorf("reporting the %s part's pod: %w", part, err)
			}
			done[part] = true
		}
		if !done["server"] || !done["sigserver"] {
			return fmt.Errorf("parts run: %v", done)
		}
		return nil
	})
	eventually(t, stepTimeout, "both backup Jobs complete", func() error {
		var jobs batchv1.JobList
		if err := c.client.List(ctx, &jobs, client.InNamespace(backupNS), client.MatchingLabels{"chat.kez.lat/backup": backup}); err != nil {
			return err
		}
		complete := 0
		for _, j := range jobs.Items {
			if j.Status.Succeeded > 0 {
				complete++
			}
		}
		if complete != 2 {
			return fmt.Errorf("%d of %d Jobs complete", complete, len(jobs.Items))
		}
		return nil
	})
}
