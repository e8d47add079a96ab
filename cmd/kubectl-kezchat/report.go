package main

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/apiutil"
	"sigs.k8s.io/yaml"

	chatv1 "kez.lat/chat/api/v1alpha1"
)

type reportOptions struct {
	logLines int64
	noLogs   bool
}

func runReport(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs, conn := newFlagSet("report", "NAME [--file FILE]", stderr)
	file := fs.StringP("file", "f", "", "where to write the tar.gz; - for stdout (default kezchat-report-<namespace>-<name>-<time>.tar.gz)")
	var o reportOptions
	fs.Int64Var(&o.logLines, "log-lines", 500, "last lines of each container's log")
	fs.BoolVar(&o.noLogs, "no-logs", false, "leave the pods' logs out")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return usagef("report takes one KezChat name")
	}
	if o.logLines < 1 {
		return usagef("--log-lines must be at least 1")
	}
	k, err := conn.connect()
	if err != nil {
		return err
	}
	now := time.Now().UTC()
	name := fs.Arg(0)
	b, err := collectReport(ctx, k, name, o, now)
	if err != nil {
		return err
	}
	root := fmt.Sprintf("kezchat-report-%s-%s-%s", k.namespace, name, now.Format("20060102T150405Z"))
	if *file == "-" {
		return b.writeTarGz(stdout, root, now)
	}
	path := *file
	if path == "" {
		path = root + ".tar.gz"
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	if err := b.writeTarGz(f, root, now); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	fmt.Fprintf(stderr, "wrote %s (%d files); read it before you share it\n", path, len(b.files))
	return nil
}

// bundle is a report's files, in the order they are written.
type bundle struct {
	files  []bundleFile
	errors []string // what could not be collected, for errors.txt
}

type bundleFile struct {
	name string
	data []byte
}

func (b *bundle) add(name string, data []byte) { b.files = append(b.files, bundleFile{name, data}) }

func (b *bundle) failed(format string, args ...any) {
	b.errors = append(b.errors, fmt.Sprintf(format, args...))
}

// reportKinds are the kinds of object the operator makes for a KezChat,
// each listed by the instance's labels into one file. Secrets are not
// among them, and never are.
func reportKinds() []struct {
	file string
	list client.ObjectList
} {
	return []struct {
		file string
		list client.ObjectList
	}{
		{"deployments.yaml", &appsv1.DeploymentList{}},
		{"statefulsets.yaml", &appsv1.StatefulSetList{}},
		{"services.yaml", &corev1.ServiceList{}},
		{"configmaps.yaml", &corev1.ConfigMapList{}},
		{"persistentvolumeclaims.yaml", &corev1.PersistentVolumeClaimList{}},
		{"serviceaccounts.yaml", &corev1.ServiceAccountList{}},
		{"networkpolicies.yaml", &networkingv1.NetworkPolicyList{}},
		{"ingresses.yaml", &networkingv1.IngressList{}},
		{"poddisruptionbudgets.yaml", &policyv1.PodDisruptionBudgetList{}},
		{"jobs.yaml", &batchv1.JobList{}},
		{"pods.yaml", &corev1.PodList{}},
	}
}

// collectReport gathers what a bug report about the KezChat name needs,
// redacted. Only a missing KezChat fails it: anything else it cannot read
// (forbidden, or logs no kubelet serves) is listed in errors.txt.
func collectReport(ctx context.Context, k *kube, name string, o reportOptions, now time.Time) (*bundle, error) {
	kc, err := getKezChat(ctx, k, name)
	if err != nil {
		return nil, err
	}
	b := &bundle{}
	b.add("kezchat.yaml", objectsYAML(b, kc))
	uids := map[types.UID]bool{kc.UID: true}

	var backups chatv1.KezChatBackupList
	if err := k.client.List(ctx, &backups, client.InNamespace(k.namespace)); err != nil {
		b.failed("listing KezChatBackups: %v", err)
	}
	var mine []client.Object
	for i := range backups.Items {
		if backups.Items[i].Spec.KezChat.Name == name {
			mine = append(mine, &backups.Items[i])
			uids[backups.Items[i].UID] = true
		}
	}
	b.add("kezchatbackups.yaml", objectsYAML(b, mine...))

	var pods []corev1.Pod
	var workloads []client.Object
	var pvcs []corev1.PersistentVolumeClaim
	for _, kind := range reportKinds() {
		if err := k.client.List(ctx, kind.list, client.InNamespace(k.namespace), instanceSelector(name)); err != nil {
			b.failed("listing %s: %v", strings.TrimSuffix(kind.file, ".yaml"), err)
			continue
		}
		items, err := meta.ExtractList(kind.list)
		if err != nil {
			b.failed("reading %s: %v", kind.file, err)
			continue
		}
		objs := make([]client.Object, 0, len(items))
		for _, it := range items {
			obj := it.(client.Object)
			uids[obj.GetUID()] = true
			objs = append(objs, obj)
		}
		sort.Slice(objs, func(i, j int) bool { return objs[i].GetName() < objs[j].GetName() })
		b.add(kind.file, objectsYAML(b, objs...))
		switch l := kind.list.(type) {
		case *corev1.PodList:
			pods = l.Items
		case *corev1.PersistentVolumeClaimList:
			pvcs = l.Items
		case *appsv1.DeploymentList, *appsv1.StatefulSetList, *batchv1.JobList:
			workloads = append(workloads, objs...)
		}
	}
	st := summarize(kc, pvcs, backups.Items, nil)
	var status bytes.Buffer
	if err := printStatus(&status, []instanceStatus{st}, "wide", true, now); err == nil {
		status.WriteString("\n")
		printStatus(&status, []instanceStatus{st}, "yaml", true, now)
	}
	b.add("status.txt", status.Bytes())

	var events corev1.EventList
	if err := k.client.List(ctx, &events, client.InNamespace(k.namespace)); err != nil {
		b.failed("listing events: %v", err)
	}
	var evs []client.Object
	for i := range events.Items {
		e := &events.Items[i]
		if uids[e.InvolvedObject.UID] || (e.InvolvedObject.Kind == "KezChat" && e.InvolvedObject.Name == name) {
			e.Message = redactText(e.Message)
			evs = append(evs, e)
		}
	}
	sort.SliceStable(evs, func(i, j int) bool { return eventTime(evs[i]).Before(eventTime(evs[j])) })
	b.add("events.yaml", objectsYAML(b, evs...))

	b.add("secrets.txt", []byte(secretReferences(kc, workloads, pods)))

	if !o.noLogs {
		collectLogs(ctx, k, b, pods, o.logLines)
	}
	b.files = append([]bundleFile{{"README.txt", []byte(reportReadme(kc, now, b))}}, b.files...)
	if len(b.errors) > 0 {
		b.add("errors.txt", []byte(strings.Join(b.errors, "\n")+"\n"))
	}
	return b, nil
}

func eventTime(o client.Object) time.Time {
	e := o.(*corev1.Event)
	switch {
	case !e.LastTimestamp.IsZero():
		return e.LastTimestamp.Time
	case !e.EventTime.IsZero():
		return e.EventTime.Time
	}
	return e.CreationTimestamp.Time
}

// objectsYAML is objs as YAML documents, each redacted (redactObject).
func objectsYAML(b *bundle, objs ...client.Object) []byte {
	var out bytes.Buffer
	for _, obj := range objs {
		gvk, err := apiutil.GVKForObject(obj, scheme)
		if err != nil {
			b.failed("%s: %v", obj.GetName(), err)
			continue
		}
		u, err := runtime.DefaultUnstructuredConverter.ToUnstructured(obj)
		if err != nil {
			b.failed("%s: %v", obj.GetName(), err)
			continue
		}
		u["apiVersion"], u["kind"] = gvk.GroupVersion().String(), gvk.Kind
		redactObject(u)
		if gvk.Kind == "ConfigMap" {
			redactStrings(u["data"])
			// Binary files cannot be searched for credentials: left out.
			if bd, ok := u["binaryData"].(map[string]any); ok {
				for k := range bd {
					bd[k] = redacted + " (binary)"
				}
			}
		}
		y, err := yaml.Marshal(u)
		if err != nil {
			b.failed("%s: %v", obj.GetName(), err)
			continue
		}
		out.WriteString("---\n")
		out.Write(y)
	}
	return out.Bytes()
}

// redactStrings applies redactText to each string value of a map (a
// ConfigMap's files).
func redactStrings(v any) {
	m, ok := v.(map[string]any)
	if !ok {
		return
	}
	for k, s := range m {
		if str, ok := s.(string); ok {
			m[k] = redactText(str)
		}
	}
}

// secretReferences lists by name, never by content, the Secrets the
// KezChat and its workloads use, and where each is used.
func secretReferences(kc *chatv1.KezChat, workloads []client.Object, pods []corev1.Pod) string {
	uses := map[string][]string{}
	use := func(secret, where string) {
		if secret == "" {
			return
		}
		for _, w := range uses[secret] {
			if w == where {
				return
			}
		}
		uses[secret] = append(uses[secret], where)
	}
	s := &kc.Spec
	use(s.Push.SecretName, "KezChat spec.push.secretName")
	use(s.Ingress.TLSSecretName, "KezChat spec.ingress.tlsSecretName")
	for _, p := range s.ImagePullSecrets {
		use(p.Name, "KezChat spec.imagePullSecrets")
	}
	if s.Backup != nil {
		use(s.Backup.ObjectStore.CredentialsSecret.Name, "KezChat spec.backup.objectStore.credentialsSecret")
		if s.Backup.ObjectStore.CASecret != nil {
			use(s.Backup.ObjectStore.CASecret.Name, "KezChat spec.backup.objectStore.caSecret")
		}
	}
	if s.Bootstrap != nil {
		use(s.Bootstrap.Recovery.ObjectStore.CredentialsSecret.Name, "KezChat spec.bootstrap.recovery.objectStore.credentialsSecret")
		if s.Bootstrap.Recovery.ObjectStore.CASecret != nil {
			use(s.Bootstrap.Recovery.ObjectStore.CASecret.Name, "KezChat spec.bootstrap.recovery.objectStore.caSecret")
		}
	}
	podSpec := func(where string, ps *corev1.PodSpec) {
		for _, v := range ps.Volumes {
			if v.Secret != nil {
				use(v.Secret.SecretName, where+" volume "+v.Name)
			}
			if v.Projected != nil {
				for _, src := range v.Projected.Sources {
					if src.Secret != nil {
						use(src.Secret.Name, where+" volume "+v.Name)
					}
				}
			}
		}
		for _, p := range ps.ImagePullSecrets {
			use(p.Name, where+" imagePullSecrets")
		}
		for _, c := range append(append([]corev1.Container{}, ps.InitContainers...), ps.Containers...) {
			for _, e := range c.Env {
				if e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil {
					use(e.ValueFrom.SecretKeyRef.Name, where+" container "+c.Name+" env "+e.Name)
				}
			}
			for _, e := range c.EnvFrom {
				if e.SecretRef != nil {
					use(e.SecretRef.Name, where+" container "+c.Name+" envFrom")
				}
			}
		}
	}
	for _, w := range workloads {
		switch o := w.(type) {
		case *appsv1.Deployment:
			podSpec("Deployment "+o.Name, &o.Spec.Template.Spec)
		case *appsv1.StatefulSet:
			podSpec("StatefulSet "+o.Name, &o.Spec.Template.Spec)
		case *batchv1.Job:
			podSpec("Job "+o.Name, &o.Spec.Template.Spec)
		}
	}
	for i := range pods {
		podSpec("Pod "+pods[i].Name, &pods[i].Spec)
	}
	var out strings.Builder
	out.WriteString("# Secrets this KezChat uses, by name only: the report never reads a Secret.\n")
	names := make([]string, 0, len(uses))
	for n := range uses {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(&out, "%s\t%s\n", n, strings.Join(uses[n], "; "))
	}
	return out.String()
}

// collectLogs adds the last lines of every container of pods, redacted;
// a log the API server cannot give (no kubelet, forbidden) goes to
// errors.txt.
func collectLogs(ctx context.Context, k *kube, b *bundle, pods []corev1.Pod, lines int64) {
	limit := int64(4 << 20)
	for i := range pods {
		p := &pods[i]
		if p.Spec.NodeName == "" {
			b.failed("logs of pod %s: not scheduled to a node", p.Name)
			continue
		}
		for _, c := range append(append([]corev1.Container{}, p.Spec.InitContainers...), p.Spec.Containers...) {
			lctx, cancel := context.WithTimeout(ctx, 15*time.Second)
			data, err := k.core.CoreV1().Pods(p.Namespace).GetLogs(p.Name, &corev1.PodLogOptions{
				Container: c.Name, TailLines: &lines, LimitBytes: &limit, Timestamps: true,
			}).DoRaw(lctx)
			cancel()
			if err != nil {
				b.failed("logs of pod %s container %s: %v", p.Name, c.Name, err)
				continue
			}
			b.add(fmt.Sprintf("logs/%s/%s.log", p.Name, c.Name), []byte(redactText(string(data))))
		}
	}
}

func reportReadme(kc *chatv1.KezChat, now time.Time, b *bundle) string {
	var s strings.Builder
	fmt.Fprintf(&s, "kez-chat report of KezChat %s/%s, made %s by kubectl-kezchat %s.\n\n", kc.Namespace, kc.Name, now.Format(time.RFC3339), version)
	s.WriteString(`What is here: the KezChat, its KezChatBackups, the objects the operator
made for it (found by its labels), their pods and events, status.txt
(kubectl kezchat status), and the last lines of each container's log.

What is not: Secrets are never read. secrets.txt names the Secrets the
KezChat uses and where, nothing more. Values of env vars, flags and
annotations whose names suggest credentials (password, token, secret,
key, auth, ...), values that look like tokens, PEM blocks, JWTs, bearer
tokens and passwords in URLs are replaced by REDACTED, in the objects, the
events, the ConfigMaps and the logs; kubectl's last-applied-configuration
annotation is dropped whole, and so are managedFields. Read it before you
share it: a credential in a field with an innocent name is not found.

Files:
`)
	for _, f := range b.files {
		fmt.Fprintf(&s, "  %s\n", f.name)
	}
	if len(b.errors) > 0 {
		s.WriteString("  errors.txt (what could not be collected)\n")
	}
	return s.String()
}

// writeTarGz writes the bundle as a gzipped tar under the folder root.
func (b *bundle) writeTarGz(w io.Writer, root string, mtime time.Time) error {
	gz := gzip.NewWriter(w)
	tw := tar.NewWriter(gz)
	for _, f := range b.files {
		hdr := &tar.Header{Name: root + "/" + f.name, Mode: 0o644, Size: int64(len(f.data)), ModTime: mtime, Typeflag: tar.TypeReg}
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		if _, err := tw.Write(f.data); err != nil {
			return err
		}
	}
	if err := tw.Close(); err != nil {
		return err
	}
	return gz.Close()
}
