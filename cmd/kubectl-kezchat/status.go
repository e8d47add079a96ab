package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/duration"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	chatv1 "kez.lat/chat/api/v1alpha1"
)

// instanceStatus is what `status` says of one KezChat; -o json and -o
// yaml print it as it is.
type instanceStatus struct {
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	Domain    string `json:"domain"`
	// Ready is the Ready condition's status: True, False or Unknown.
	Ready string `json:"ready"`
	// Health is one word for the state: Ready, Paused, a Degraded or
	// Progressing reason, or Pending before the operator has reported.
	Health     string            `json:"health"`
	Message    string            `json:"message,omitempty"`
	URL        string            `json:"url,omitempty"`
	Components []componentHealth `json:"components"`
	Upgrade    string            `json:"upgrade,omitempty"`
	Storage    []volumeUsage     `json:"storage,omitempty"`
	// Backups says whether spec.backup is set.
	Backups          bool        `json:"backups"`
	LastBackup       *lastBackup `json:"lastBackup,omitempty"`
	LastBackupFailed string      `json:"lastBackupFailed,omitempty"`
	// Federation is the Federation condition's reason (Enabled or
	// Disabled), empty before the operator reported it.
	Federation string    `json:"federation,omitempty"`
	Created    time.Time `json:"created"`
}

type componentHealth struct {
	Name          string `json:"name"`
	Replicas      int32  `json:"replicas"`
	ReadyReplicas int32  `json:"readyReplicas"`
	Image         string `json:"image,omitempty"`
	Version       string `json:"version,omitempty"`
}

type volumeUsage struct {
	Claim     string `json:"claim"`
	Component string `json:"component,omitempty"`
	Phase     string `json:"phase,omitempty"`
	// RequestedBytes is what the claim asks for; CapacityBytes what the
	// bound volume has (the request until it is bound).
	RequestedBytes int64 `json:"requestedBytes"`
	CapacityBytes  int64 `json:"capacityBytes"`
	// UsedBytes is the kubelet's figure, when it could be read.
	UsedBytes *int64 `json:"usedBytes,omitempty"`
}

type lastBackup struct {
	Name        string    `json:"name"`
	BackupID    string    `json:"backupID,omitempty"`
	CompletedAt time.Time `json:"completedAt"`
	Bytes       int64     `json:"bytes,omitempty"`
}

// claimKey names a PVC across namespaces.
type claimKey struct{ namespace, name string }

func runStatus(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs, conn := newFlagSet("status", "[NAME...] [-A] [-o table|wide|json|yaml]", stderr)
	all := fs.BoolP("all-namespaces", "A", false, "KezChats of every namespace")
	output := fs.StringP("output", "o", "table", "table, wide, json or yaml")
	usage := fs.Bool("usage", true, "read volume use from the kubelets (nodes/proxy); skipped where forbidden")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	switch *output {
	case "table", "wide", "json", "yaml":
	default:
		return usagef("unknown output %q: table, wide, json or yaml", *output)
	}
	k, err := conn.connect()
	if err != nil {
		return err
	}
	ns := k.namespace
	if *all {
		ns = ""
	}
	st, err := collectStatus(ctx, k, ns, fs.Args(), *usage)
	if err != nil {
		return err
	}
	return printStatus(stdout, st, *output, *all, time.Now())
}

// collectStatus lists the KezChats of ns ("" for all) named in names (all
// when empty) with their volumes and backups.
func collectStatus(ctx context.Context, k *kube, ns string, names []string, readUsage bool) ([]instanceStatus, error) {
	var kcs chatv1.KezChatList
	if err := k.client.List(ctx, &kcs, client.InNamespace(ns)); err != nil {
		if meta.IsNoMatchError(err) {
			return nil, fmt.Errorf("this cluster has no KezChat resource: install the kez-chat operator first (%w)", err)
		}
		return nil, fmt.Errorf("listing KezChats: %w", err)
	}
	items := kcs.Items
	if len(names) > 0 {
		items = nil
		for _, n := range names {
			found := false
			for _, kc := range kcs.Items {
				if kc.Name == n {
					items, found = append(items, kc), true
				}
			}
			if !found {
				return nil, fmt.Errorf("no KezChat %q in %s", n, namespaceLabel(ns))
			}
		}
	}
	if len(items) == 0 {
		return nil, nil
	}
	// One list of each kind for every KezChat asked about.
	byLabel := client.MatchingLabels{labelName: nameValue, labelManagedBy: managedByValue}
	var pvcs corev1.PersistentVolumeClaimList
	if err := k.client.List(ctx, &pvcs, client.InNamespace(ns), byLabel); err != nil {
		return nil, fmt.Errorf("listing volume claims: %w", err)
	}
	var backups chatv1.KezChatBackupList
	if err := k.client.List(ctx, &backups, client.InNamespace(ns)); err != nil {
		return nil, fmt.Errorf("listing KezChatBackups: %w", err)
	}
	var used map[claimKey]int64
	if readUsage {
		used = volumeUse(ctx, k, ns)
	}
	out := make([]instanceStatus, 0, len(items))
	for i := range items {
		out = append(out, summarize(&items[i], pvcs.Items, backups.Items, used))
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Namespace != out[j].Namespace {
			return out[i].Namespace < out[j].Namespace
		}
		return out[i].Name < out[j].Name
	})
	return out, nil
}

func namespaceLabel(ns string) string {
	if ns == "" {
		return "any namespace"
	}
	return "namespace " + ns
}

// summarize is what status says of kc, given the claims and backups of its
// namespace (others' are passed over) and the kubelets' figures of use.
func summarize(kc *chatv1.KezChat, pvcs []corev1.PersistentVolumeClaim, backups []chatv1.KezChatBackup, used map[claimKey]int64) instanceStatus {
	st := instanceStatus{
		Namespace: kc.Namespace,
		Name:      kc.Name,
		Domain:    kc.Spec.Domain,
		URL:       kc.Status.URL,
		Backups:   kc.Spec.Backup != nil,
		Created:   kc.CreationTimestamp.Time,
	}
	st.Ready, st.Health, st.Message = health(kc)
	for _, c := range []struct {
		name string
		s    *chatv1.ComponentStatus
	}{{componentServer, kc.Status.Server}, {componentSigServer, kc.Status.SigServer}, {componentNATS, kc.Status.NATS}} {
		if c.s == nil {
			continue
		}
		st.Components = append(st.Components, componentHealth{
			Name: c.name, Replicas: c.s.Replicas, ReadyReplicas: c.s.ReadyReplicas, Image: c.s.Image, Version: c.s.Version,
		})
	}
	if u := kc.Status.Upgrade; u != nil {
		st.Upgrade = string(u.Phase)
	}

	for _, p := range pvcs {
		if p.Namespace != kc.Namespace || p.Labels[labelInstance] != kc.Name {
			continue
		}
		v := volumeUsage{Claim: p.Name, Component: p.Labels[labelComponent], Phase: string(p.Status.Phase)}
		if q, ok := p.Spec.Resources.Requests[corev1.ResourceStorage]; ok {
			v.RequestedBytes = q.Value()
		}
		v.CapacityBytes = v.RequestedBytes
		if q, ok := p.Status.Capacity[corev1.ResourceStorage]; ok {
			v.CapacityBytes = q.Value()
		}
		if n, ok := used[claimKey{p.Namespace, p.Name}]; ok {
			v.UsedBytes = &n
		}
		st.Storage = append(st.Storage, v)
	}
	sort.Slice(st.Storage, func(i, j int) bool { return st.Storage[i].Claim < st.Storage[j].Claim })

	if r := kc.Status.LastSuccessfulBackup; r != nil {
		st.LastBackup = &lastBackup{Name: r.Name, BackupID: r.BackupID, CompletedAt: r.CompletedAt.Time, Bytes: r.Bytes}
	}
	// The KezChatBackups themselves, for an operator that has not yet
	// recorded the newest (or a status written before the field was).
	for _, b := range backups {
		if b.Namespace != kc.Namespace || b.Spec.KezChat.Name != kc.Name || b.Status.Phase != chatv1.BackupCompleted || b.Status.CompletedAt == nil {
			continue
		}
		if st.LastBackup == nil || b.Status.CompletedAt.After(st.LastBackup.CompletedAt) {
			st.LastBackup = &lastBackup{Name: b.Name, BackupID: b.Status.BackupID, CompletedAt: b.Status.CompletedAt.Time, Bytes: b.Status.Bytes}
		}
	}
	if c := meta.FindStatusCondition(kc.Status.Conditions, chatv1.ConditionFederation); c != nil {
		st.Federation = c.Reason
	}
	if c := meta.FindStatusCondition(kc.Status.Conditions, chatv1.ConditionLastBackupSucceeded); c != nil && c.Status == metav1.ConditionFalse {
		st.LastBackupFailed = c.Message
		if st.LastBackupFailed == "" {
			st.LastBackupFailed = c.Reason
		}
	}
	return st
}

// health is the Ready condition's status, one word for the state, and
// the message that explains it.
func health(kc *chatv1.KezChat) (ready, word, message string) {
	conds := kc.Status.Conditions
	readyCond := meta.FindStatusCondition(conds, chatv1.ConditionReady)
	if readyCond == nil {
		return string(metav1.ConditionUnknown), "Pending", "the operator has not reported on it yet"
	}
	ready = string(readyCond.Status)
	if c := meta.FindStatusCondition(conds, chatv1.ConditionPaused); c != nil && c.Status == metav1.ConditionTrue {
		return ready, "Paused", c.Message
	}
	if c := meta.FindStatusCondition(conds, chatv1.ConditionDegraded); c != nil && c.Status == metav1.ConditionTrue {
		return ready, c.Reason, c.Message
	}
	if readyCond.Status == metav1.ConditionTrue {
		if c := meta.FindStatusCondition(conds, chatv1.ConditionProgressing); c != nil && c.Status == metav1.ConditionTrue {
			// Ready, and rolling a change (an upgrade) at the same time.
			return ready, c.Reason, c.Message
		}
		return ready, "Ready", readyCond.Message
	}
	if c := meta.FindStatusCondition(conds, chatv1.ConditionProgressing); c != nil && c.Status == metav1.ConditionTrue {
		return ready, c.Reason, c.Message
	}
	return ready, readyCond.Reason, readyCond.Message
}

func printStatus(w io.Writer, st []instanceStatus, output string, allNamespaces bool, now time.Time) error {
	switch output {
	case "json":
		if st == nil {
			st = []instanceStatus{}
		}
		b, err := json.MarshalIndent(st, "", "  ")
		if err != nil {
			return err
		}
		_, err = fmt.Fprintf(w, "%s\n", b)
		return err
	case "yaml":
		if st == nil {
			st = []instanceStatus{}
		}
		b, err := yaml.Marshal(st)
		if err != nil {
			return err
		}
		_, err = w.Write(b)
		return err
	}
	if len(st) == 0 {
		_, err := fmt.Fprintln(w, "No KezChats found.")
		return err
	}
	wide := output == "wide"
	tw := tabwriter.NewWriter(w, 0, 8, 3, ' ', 0)
	var head []string
	if allNamespaces {
		head = append(head, "NAMESPACE")
	}
	head = append(head, "NAME", "READY", "HEALTH", "VERSION", "URL", "STORAGE", "LAST BACKUP", "AGE")
	if wide {
		head = append(head, "SERVER", "SIG-SERVER", "NATS", "FEDERATION", "UPGRADE", "MESSAGE")
	}
	fmt.Fprintln(tw, strings.Join(head, "\t"))
	for _, s := range st {
		var row []string
		if allNamespaces {
			row = append(row, s.Namespace)
		}
		row = append(row, s.Name, s.Ready, s.Health, orDash(s.component(componentServer).Version), orDash(s.URL),
			storageCell(s.Storage), backupCell(s, now), age(s.Created, now))
		if wide {
			row = append(row, replicasCell(s, componentServer), replicasCell(s, componentSigServer), replicasCell(s, componentNATS),
				orDash(s.Federation), orDash(s.Upgrade), orDash(s.Message))
		}
		fmt.Fprintln(tw, strings.Join(row, "\t"))
	}
	return tw.Flush()
}

func (s instanceStatus) component(name string) componentHealth {
	for _, c := range s.Components {
		if c.Name == name {
			return c
		}
	}
	return componentHealth{}
}

// replicasCell is a component's ready and wanted replicas and its
// version, "-" when it is off.
func replicasCell(s instanceStatus, name string) string {
	for _, c := range s.Components {
		if c.Name == name {
			return fmt.Sprintf("%d/%d %s", c.ReadyReplicas, c.Replicas, orDash(c.Version))
		}
	}
	return "-"
}

// storageCell adds up an instance's volumes: used/capacity when every
// volume's use is known, else the capacity alone.
func storageCell(vols []volumeUsage) string {
	if len(vols) == 0 {
		return "-"
	}
	var capacity, used int64
	usedKnown := true
	for _, v := range vols {
		capacity += v.CapacityBytes
		if v.UsedBytes == nil {
			usedKnown = false
			continue
		}
		used += *v.UsedBytes
	}
	if !usedKnown {
		return humanBytes(capacity)
	}
	pct := 0
	if capacity > 0 {
		pct = int(used * 100 / capacity)
	}
	return fmt.Sprintf("%s/%s (%d%%)", humanBytes(used), humanBytes(capacity), pct)
}

// backupCell is how long ago the last backup completed: "-" without
// spec.backup and none taken, "never" with it.
func backupCell(s instanceStatus, now time.Time) string {
	cell := "-"
	switch {
	case s.LastBackup != nil:
		cell = age(s.LastBackup.CompletedAt, now) + " ago"
	case s.Backups:
		cell = "never"
	}
	if s.LastBackupFailed != "" {
		cell += " (last failed)"
	}
	return cell
}

func age(t, now time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return duration.HumanDuration(now.Sub(t))
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// humanBytes is n in the binary units volumes are sized in: 512Mi, 1.5Gi.
func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d", n)
	}
	suffixes := []string{"Ki", "Mi", "Gi", "Ti", "Pi", "Ei"}
	v := float64(n) / unit
	i := 0
	for v >= unit && i < len(suffixes)-1 {
		v /= unit
		i++
	}
	s := fmt.Sprintf("%.1f", v)
	s = strings.TrimSuffix(s, ".0")
	return s + suffixes[i]
}
