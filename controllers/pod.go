package controllers

import (
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"

	chatv1 "kez.lat/chat/api/v1alpha1"
)

// kezUID is the user the kez-chat image runs as; NATS runs as the same, so
// every volume is writable through fsGroup. Where the platform assigns
// users (Inputs.PlatformAssignsUID), pods name none.
const kezUID = 10001

// Inputs is what the builders need beyond the KezChat: the operator's
// settings and facts the reconcile read from the cluster.
type Inputs struct {
	// DefaultImage runs server and sig-server when the spec names none:
	// the operator's own image.
	DefaultImage string
	// DefaultNATSImage runs NATS when the spec names none; empty means
	// DefaultNATSImage, the constant.
	DefaultNATSImage string
	// HeldImage and HeldNATSImage, when set, replace the defaults: the
	// images a KezChat queued for an upgrade keeps running (upgrade.go).
	HeldImage, HeldNATSImage string
	// VAPIDSecret names the Secret with the VAPID key; empty when push is
	// off.
	VAPIDSecret string
	// VAPIDDigest is a digest of that key, so that a new key rolls the
	// server.
	VAPIDDigest string
	// NATSAuth holds the chat server's NATS credentials and the auth
	// callout's issuer; zero when NATS is off.
	NATSAuth natsAuth
	// NATSClaimTemplateSize is the size in the claim template of NATS's
	// StatefulSet as it exists, which cannot change; nil before it is
	// made, when the spec's size is used.
	NATSClaimTemplateSize *resource.Quantity
	// NATSStoreSize is the least a NATS replica's claim asks for, which
	// max_file_store is sized from; nil before there are claims, when the
	// spec's size is used.
	NATSStoreSize *resource.Quantity
	// ServerStoreSize is what the SQLite volume's claim asks for, which the
	// server's byte limits follow; nil before the claim exists.
	ServerStoreSize *resource.Quantity
	// PlatformAssignsUID leaves the pods' user, group and fsGroup to the
	// platform (OpenShift's restricted SCC assigns them from the
	// namespace's range and refuses pods that name others).
	PlatformAssignsUID bool
	// GatewayAPI says the cluster serves the Gateway API's HTTPRoutes:
	// without them, spec.gateway makes none (gateway.go).
	GatewayAPI bool
}

// image is the kez-chat image of kc's pods.
func (in Inputs) image(kc *chatv1.KezChat) string {
	switch {
	case kc.Spec.Image != "":
		return kc.Spec.Image
	case in.HeldImage != "":
		return in.HeldImage
	}
	return in.DefaultImage
}

// natsImage is the NATS image of kc's pods.
func (in Inputs) natsImage(kc *chatv1.KezChat) string {
	switch {
	case kc.Spec.NATS.Image != "":
		return kc.Spec.NATS.Image
	case in.HeldNATSImage != "":
		return in.HeldNATSImage
	}
	return in.defaultNATSImage()
}

// defaultNATSImage is the operator's NATS image.
func (in Inputs) defaultNATSImage() string {
	if in.DefaultNATSImage != "" {
		return in.DefaultNATSImage
	}
	return DefaultNATSImage
}

// componentSpec is what the Deployment of one kez-chat component (the chat
// server, the sig-server) sets; componentDeployment builds the rest, which
// they share.
type componentSpec struct {
	name, component        string
	replicas               int32
	strategy               appsv1.DeploymentStrategy
	annotations            map[string]string // the pod template's
	scheduling             chatv1.Scheduling
	terminationGracePeriod *int64
	container              string
	args                   []string
	env                    []corev1.EnvVar
	httpPort, metricsPort  int32
	resources              corev1.ResourceRequirements
	// volumes and mounts besides /tmp.
	volumes []corev1.Volume
	mounts  []corev1.VolumeMount
	// initContainers run before it: the restore of a recovered KezChat.
	initContainers []corev1.Container
}

// componentDeployment runs d's one container from the kez-chat image, as
// an unprivileged user on a read-only root with a scratch /tmp, without
// API credentials, serving HTTP and metrics on named ports with the
// health and readiness probes every kez-chat daemon answers.
func componentDeployment(kc *chatv1.KezChat, in Inputs, d componentSpec) *appsv1.Deployment {
	tmp, tmpMount := tmpVolume()
	return &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: d.name, Namespace: kc.Namespace, Labels: labels(kc, d.component)},
		Spec: appsv1.DeploymentSpec{
			Replicas:             ptr.To(d.replicas),
			Selector:             &metav1.LabelSelector{MatchLabels: selectorLabels(kc, d.component)},
			Strategy:             d.strategy,
			RevisionHistoryLimit: ptr.To[int32](5),
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels(kc, d.component), Annotations: d.annotations},
				Spec: corev1.PodSpec{
					ServiceAccountName:            namesOf(kc).serviceAccount(),
					AutomountServiceAccountToken:  ptr.To(false),
					SecurityContext:               podSecurityContext(in),
					ImagePullSecrets:              kc.Spec.ImagePullSecrets,
					NodeSelector:                  d.scheduling.NodeSelector,
					Tolerations:                   d.scheduling.Tolerations,
					Affinity:                      d.scheduling.Affinity,
					TopologySpreadConstraints:     d.scheduling.TopologySpreadConstraints,
					PriorityClassName:             d.scheduling.PriorityClassName,
					TerminationGracePeriodSeconds: d.terminationGracePeriod,
					InitContainers:                d.initContainers,
					Containers: []corev1.Container{{
						Name:            d.container,
						Image:           in.image(kc),
						ImagePullPolicy: kc.Spec.ImagePullPolicy,
						Args:            d.args,
						Env:             d.env,
						Ports: []corev1.ContainerPort{
							{Name: "http", ContainerPort: d.httpPort, Protocol: corev1.ProtocolTCP},
							{Name: "metrics", ContainerPort: d.metricsPort, Protocol: corev1.ProtocolTCP},
						},
						Resources:       d.resources,
						LivenessProbe:   httpProbe("/v1/healthz", "http", 10, 3),
						ReadinessProbe:  httpProbe("/v1/readyz", "http", 5, 2),
						SecurityContext: containerSecurityContext(),
						VolumeMounts:    append([]corev1.VolumeMount{tmpMount}, d.mounts...),
					}},
					Volumes: append([]corev1.Volume{tmp}, d.volumes...),
				},
			},
		},
	}
}

// podSecurityContext makes every pod run as an unprivileged user with the
// runtime's default seccomp profile: uid 10001, or the one the platform
// assigns when in says so (the images write only to their volumes, which
// fsGroup, the platform's then, makes writable).
func podSecurityContext(in Inputs) *corev1.PodSecurityContext {
	sc := &corev1.PodSecurityContext{
		RunAsNonRoot:        ptr.To(true),
		FSGroupChangePolicy: ptr.To(corev1.FSGroupChangeOnRootMismatch),
		SeccompProfile:      &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
	}
	if !in.PlatformAssignsUID {
		sc.RunAsUser = ptr.To[int64](kezUID)
		sc.RunAsGroup = ptr.To[int64](kezUID)
		sc.FSGroup = ptr.To[int64](kezUID)
	}
	return sc
}

// containerSecurityContext drops every capability and keeps the root file
// system read-only: the containers write only to their volumes.
func containerSecurityContext() *corev1.SecurityContext {
	return &corev1.SecurityContext{
		AllowPrivilegeEscalation: ptr.To(false),
		ReadOnlyRootFilesystem:   ptr.To(true),
		RunAsNonRoot:             ptr.To(true),
		Privileged:               ptr.To(false),
		Capabilities:             &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
		SeccompProfile:           &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
	}
}

// httpProbe checks path on the named port.
func httpProbe(path, port string, period, failures int32) *corev1.Probe {
	return &corev1.Probe{
		ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{
			Path: path, Port: intstr.FromString(port), Scheme: corev1.URISchemeHTTP,
		}},
		PeriodSeconds:    period,
		TimeoutSeconds:   2,
		FailureThreshold: failures,
		SuccessThreshold: 1,
	}
}

// tmpVolume is a small scratch directory, since the root file system is
// read-only.
func tmpVolume() (corev1.Volume, corev1.VolumeMount) {
	return corev1.Volume{Name: "tmp", VolumeSource: corev1.VolumeSource{
			EmptyDir: &corev1.EmptyDirVolumeSource{SizeLimit: ptr.To(resource.MustParse("64Mi"))},
		}},
		corev1.VolumeMount{Name: "tmp", MountPath: "/tmp"}
}

// podAnnotations are the user's annotations plus the config hash.
func podAnnotations(user map[string]string, hash string) map[string]string {
	a := make(map[string]string, len(user)+1)
	for k, v := range user {
		a[k] = v
	}
	if hash != "" {
		a[configHashAnnotation] = hash
	}
	return a
}

// mergeEnv is base with each of extra's variables added, or replacing the
// one of the same name: the user's settings win.
func mergeEnv(base, extra []corev1.EnvVar) []corev1.EnvVar {
	out := make([]corev1.EnvVar, 0, len(base)+len(extra))
	index := map[string]int{}
	for _, list := range [][]corev1.EnvVar{base, extra} {
		for _, e := range list {
			if i, ok := index[e.Name]; ok {
				out[i] = e
				continue
			}
			index[e.Name] = len(out)
			out = append(out, e)
		}
	}
	return out
}

// resourcesOr is r, or modest requests when r sets none, so that a pod is
// never scheduled as if it used nothing.
func resourcesOr(r corev1.ResourceRequirements, cpu, memory string) corev1.ResourceRequirements {
	if len(r.Requests) > 0 || len(r.Limits) > 0 {
		return r
	}
	return corev1.ResourceRequirements{Requests: corev1.ResourceList{
		corev1.ResourceCPU:    resource.MustParse(cpu),
		corev1.ResourceMemory: resource.MustParse(memory),
	}}
}
