package controllers

import (
	"fmt"
	"net/url"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"

	chatv1 "kez.lat/chat/api/v1alpha1"
)

// Paths inside the chat server container.
const (
	serverDataDir   = "/var/lib/kez-chat"
	vapidDir        = "/etc/kez-chat/vapid"
	vapidPrivateKey = "private-key.pem" // key in the VAPID Secret
	vapidPublicKey  = "public-key"      // key in the VAPID Secret
)

// trustedProxiesEnv is what the chat server and the sig-server believe
// X-Forwarded-For from: only the networks the admin named as the ingress
// controller's. None by default: a forged header from any other peer (a
// pod of another tenant) then changes nothing.
func trustedProxiesEnv(kc *chatv1.KezChat) []corev1.EnvVar {
	if len(kc.Spec.Ingress.TrustedProxies) == 0 {
		return nil
	}
	return []corev1.EnvVar{{Name: "KEZ_TRUSTED_PROXIES", Value: strings.Join(kc.Spec.Ingress.TrustedProxies, ",")}}
}

// storageLimits are the server's byte limits for kc's store: the SQLite
// database stops at 90% of its volume (the rest keeps the WAL and a
// checkpoint possible), and one client address may store a day what fills
// 70% of the store over the retention, one sending handle half that, so
// neither can fill the volume before its messages expire. Attachments
// count against the same quotas (their files share the SQLite volume; on
// JetStream their object store shares max_file_store), and one may be as
// large as spec.attachments.maxSize but never more than a handle's day's
// quota, or it could never be sent.
func storageLimits(kc *chatv1.KezChat, in Inputs) []string {
	s := &kc.Spec.Server
	size := serverStoreSize(kc, in)
	var args []string
	if s.StoreKind() == chatv1.StoreSQLite {
		args = append(args, fmt.Sprintf("--max-db-bytes=%d", size.Value()/10*9))
	} else {
		size = natsStoreSize(kc, in) // max_file_store is 90% of it
	}
	capacity := size.Value() / 10 * 9
	days := max(int64(s.RetentionPeriod()/(24*time.Hour)), 1)
	address := capacity / 10 * 7 / days
	sender := address / 2
	maxBlob := kc.Spec.Attachments.MaxSizeOrDefault()
	return append(args, fmt.Sprintf("--address-quota-bytes=%d", address), fmt.Sprintf("--sender-quota-bytes=%d", sender),
		fmt.Sprintf("--max-blob-bytes=%d", max(min(maxBlob.Value(), sender), 1)))
}

// serverStoreSize is the SQLite volume's size the limits follow: what its
// claim asks for, never more than the spec's (a claim whose expansion was
// refused keeps its old size); the spec's before the claim exists.
func serverStoreSize(kc *chatv1.KezChat, in Inputs) resource.Quantity {
	size := kc.Spec.Server.Storage.SizeOrDefault()
	if in.ServerStoreSize != nil && in.ServerStoreSize.Cmp(size) < 0 {
		return in.ServerStoreSize.DeepCopy()
	}
	return size
}

// PublicURL is where people reach kc: its ingress host, over https unless
// the Ingress is made without TLS.
func PublicURL(kc *chatv1.KezChat) string {
	scheme := "https"
	if kc.Spec.Ingress.IsEnabled() && kc.Spec.Ingress.TLSSecretName == "" {
		scheme = "http"
	}
	return (&url.URL{Scheme: scheme, Host: kc.Spec.Ingress.HostOr(kc.Spec.Domain)}).String()
}

// pushSubject is the VAPID contact: the spec's, or the domain's admin.
func pushSubject(kc *chatv1.KezChat) string {
	if kc.Spec.Push.Subject != "" {
		return kc.Spec.Push.Subject
	}
	return "mailto:admin@" + kc.Spec.Domain
}

// serverPVC holds the SQLite store. The operator manages it itself, not
// through a StatefulSet's volumeClaimTemplates, which can never change: so
// it can grow, and outlives pod restarts, spec changes and upgrades.
func serverPVC(kc *chatv1.KezChat) *corev1.PersistentVolumeClaim {
	return dataPVC(kc, namesOf(kc).serverData(), componentServer, &kc.Spec.Server.Storage)
}

func dataPVC(kc *chatv1.KezChat, name, component string, s *chatv1.StorageSpec) *corev1.PersistentVolumeClaim {
	return &corev1.PersistentVolumeClaim{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: kc.Namespace, Labels: labels(kc, component)},
		Spec: corev1.PersistentVolumeClaimSpec{
			AccessModes:      []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
			StorageClassName: s.StorageClassName,
			Resources: corev1.VolumeResourceRequirements{
				Requests: corev1.ResourceList{corev1.ResourceStorage: s.SizeOrDefault()},
			},
		},
	}
}

// serverDeployment runs the chat server. On SQLite it is one pod, replaced
// by Recreate, since a second would wait on the first's volume; on
// JetStream the replicas are stateless and roll one at a time.
func serverDeployment(kc *chatv1.KezChat, in Inputs) *appsv1.Deployment {
	n := namesOf(kc)
	s := &kc.Spec.Server
	sqlite := s.StoreKind() == chatv1.StoreSQLite

	args := []string{
		"server",
		fmt.Sprintf("--bind=:%d", serverPort),
		fmt.Sprintf("--metrics-bind=:%d", serverMetricsPort),
		"--domain=" + kc.Spec.Domain,
		"--public-url=" + PublicURL(kc),
		"--retention=" + s.RetentionPeriod().String(),
		"--log-format=json",
	}
	args = append(args, storageLimits(kc, in)...)
	var volumes []corev1.Volume
	var mounts []corev1.VolumeMount
	if sqlite {
		args = append(args, "--db="+serverDBFile)
		volumes = append(volumes, corev1.Volume{Name: "data", VolumeSource: corev1.VolumeSource{
			PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: n.serverData()},
		}})
		mounts = append(mounts, corev1.VolumeMount{Name: "data", MountPath: serverDataDir})
	}
	if in.VAPIDSecret != "" {
		args = append(args, "--vapid-subject="+pushSubject(kc), "--vapid-key-path="+vapidDir+"/"+vapidPrivateKey)
		volumes = append(volumes, corev1.Volume{Name: "vapid", VolumeSource: corev1.VolumeSource{
			Secret: &corev1.SecretVolumeSource{
				SecretName:  in.VAPIDSecret,
				Items:       []corev1.KeyToPath{{Key: vapidPrivateKey, Path: vapidPrivateKey}},
				DefaultMode: ptr.To[int32](0o440),
			},
		}})
		mounts = append(mounts, corev1.VolumeMount{Name: "vapid", MountPath: vapidDir, ReadOnly: true})
	}

	// The wiring to NATS and the sig-server goes by environment, the
	// server's KEZ_ variables, so it stays in place whatever flags a given
	// server version knows.
	env := append([]corev1.EnvVar{{Name: "KEZ_STORE", Value: string(s.StoreKind())}}, trustedProxiesEnv(kc)...)
	if kc.Spec.NATS.IsEnabled() {
		env = append(env, corev1.EnvVar{Name: "KEZ_NATS_URL", Value: fmt.Sprintf("nats://%s:%d", n.nats(), natsClientPort)})
		if s.StoreKind() == chatv1.StoreJetStream {
			env = append(env, corev1.EnvVar{Name: "KEZ_JETSTREAM_REPLICAS", Value: fmt.Sprint(kc.Spec.NATS.ReplicaCount())})
		}
	}
	if in.NATSAuth.secretName != "" {
		env = append(env,
			corev1.EnvVar{Name: "KEZ_NATS_USER", Value: natsUser},
			corev1.EnvVar{Name: "KEZ_NATS_PASSWORD_FILE", Value: natsAuthDir + "/" + natsPasswordKey},
			corev1.EnvVar{Name: "KEZ_NATS_CALLOUT_ISSUER_SEED_FILE", Value: natsAuthDir + "/" + natsCalloutSeedKey},
		)
		volumes = append(volumes, corev1.Volume{Name: "nats-auth", VolumeSource: corev1.VolumeSource{
			Secret: &corev1.SecretVolumeSource{
				SecretName: in.NATSAuth.secretName,
				Items: []corev1.KeyToPath{
					{Key: natsPasswordKey, Path: natsPasswordKey},
					{Key: natsCalloutSeedKey, Path: natsCalloutSeedKey},
				},
				DefaultMode: ptr.To[int32](0o440),
			},
		}})
		mounts = append(mounts, corev1.VolumeMount{Name: "nats-auth", MountPath: natsAuthDir, ReadOnly: true})
	}
	if kc.Spec.SigServer.IsEnabled() {
		env = append(env, corev1.EnvVar{Name: "KEZ_SIG_SERVER_URL", Value: fmt.Sprintf("http://%s:%d", n.sigServer(), sigServerPort)})
	}
	env = append(env, federationEnv(kc)...)
	// No GOMEMLIMIT: the server reads its container's memory limit from
	// its cgroup and keeps the Go runtime to 90% of it, leaving room for
	// what SQLite allocates outside Go's heap, and paces its collector by
	// that limit (a GOMEMLIMIT of the whole limit would override both).
	env = mergeEnv(env, s.Env)

	strategy := appsv1.DeploymentStrategy{Type: appsv1.RecreateDeploymentStrategyType}
	if !sqlite {
		strategy = appsv1.DeploymentStrategy{Type: appsv1.RollingUpdateDeploymentStrategyType,
			RollingUpdate: &appsv1.RollingUpdateDeployment{
				MaxUnavailable: ptr.To(intstr.FromInt32(0)),
				MaxSurge:       ptr.To(intstr.FromInt32(1)),
			}}
	}
	resources := resourcesOr(s.Resources, "50m", "64Mi")
	var initContainers []corev1.Container
	if kc.Spec.Bootstrap != nil {
		restore, restoreVolumes := restoreInitContainer(kc, chatv1.BackupPartServer, in.image(kc), resources)
		initContainers = append(initContainers, restore)
		volumes = append(volumes, restoreVolumes...)
	}
	return componentDeployment(kc, in, componentSpec{
		name:        n.server(),
		component:   componentServer,
		replicas:    s.ReplicaCount(),
		strategy:    strategy,
		annotations: podAnnotations(s.PodAnnotations, digest([]byte(in.VAPIDDigest), []byte(in.NATSAuth.digest))),
		scheduling:  s.Scheduling,
		// The server drains streams and requests in flight on SIGTERM
		// within its --shutdown-timeout (10s).
		terminationGracePeriod: ptr.To[int64](30),
		container:              "server",
		args:                   args,
		env:                    env,
		httpPort:               serverPort,
		metricsPort:            serverMetricsPort,
		resources:              resources,
		volumes:                volumes,
		mounts:                 mounts,
		initContainers:         initContainers,
	})
}

// serverService is the chat server's in-cluster address, which the
// Ingress routes to.
func serverService(kc *chatv1.KezChat) *corev1.Service {
	return apiService(kc, namesOf(kc).server(), componentServer, serverPort, serverMetricsPort)
}

// apiService is the Service of a kez-chat component with an HTTP API and
// a metrics port, each on the container port of that name.
func apiService(kc *chatv1.KezChat, name, component string, httpPort, metricsPort int32) *corev1.Service {
	return &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: kc.Namespace, Labels: labels(kc, component)},
		Spec: corev1.ServiceSpec{
			Type:     corev1.ServiceTypeClusterIP,
			Selector: selectorLabels(kc, component),
			Ports: []corev1.ServicePort{
				{Name: "http", Port: httpPort, TargetPort: intstr.FromString("http"), Protocol: corev1.ProtocolTCP},
				{Name: "metrics", Port: metricsPort, TargetPort: intstr.FromString("metrics"), Protocol: corev1.ProtocolTCP},
			},
		},
	}
}
