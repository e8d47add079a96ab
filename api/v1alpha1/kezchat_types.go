package v1alpha1

import (
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Annotations a user sets on a KezChat.
const (
	// ReconcileAnnotation set to "paused" stops the operator from changing
	// anything for this KezChat until it is removed.
	ReconcileAnnotation = "chat.kez.lat/reconcile"
	ReconcilePaused     = "paused"

	// RotateVAPIDAnnotation asks for a new VAPID key in the Secret the
	// operator generated. Each new value rotates once: every existing push
	// subscription stops working, so rotation is never automatic.
	RotateVAPIDAnnotation = "chat.kez.lat/rotate-vapid-key"
)

// Store is where the chat server keeps messages and users.
// +kubebuilder:validation:Enum=sqlite;jetstream
type Store string

const (
	// StoreSQLite keeps everything in one SQLite file on a volume: one
	// replica.
	StoreSQLite Store = "sqlite"
	// StoreJetStream keeps everything in NATS JetStream, so any number of
	// stateless replicas share one state.
	StoreJetStream Store = "jetstream"
)

// KezChatSpec is the chat instance a user asks for.
//
// The store in effect is server.store, or when that is unset, sqlite for
// one replica and jetstream for more (see ServerSpec.StoreKind).
//
// +kubebuilder:validation:XValidation:rule="!has(self.server) || !has(self.server.replicas) || self.server.replicas <= 1 || !has(self.server.store) || self.server.store == 'jetstream'",message="server.replicas > 1 needs the jetstream store; one SQLite file serves one replica"
// +kubebuilder:validation:XValidation:rule="(has(self.server) && has(self.server.store) ? self.server.store : (has(self.server) && has(self.server.replicas) && self.server.replicas > 1 ? 'jetstream' : 'sqlite')) != 'jetstream' || !has(self.nats) || !has(self.nats.enabled) || self.nats.enabled",message="the jetstream store (server.store: jetstream, or more than one replica) needs nats.enabled"
// +kubebuilder:validation:XValidation:rule="has(self.bootstrap) == has(oldSelf.bootstrap)",message="spec.bootstrap is set only when a KezChat is created, and stays: a running KezChat is never restored over"
// +kubebuilder:validation:XValidation:rule="(has(self.server) && has(self.server.store) ? self.server.store : (has(self.server) && has(self.server.replicas) && self.server.replicas > 1 ? 'jetstream' : 'sqlite')) == (has(oldSelf.server) && has(oldSelf.server.store) ? oldSelf.server.store : (has(oldSelf.server) && has(oldSelf.server.replicas) && oldSelf.server.replicas > 1 ? 'jetstream' : 'sqlite'))",message="the store cannot change once created: it holds the users and messages (create the KezChat with server.store: jetstream to scale it later)"
// +kubebuilder:validation:XValidation:rule="!has(self.federation) || ((!has(self.federation.allowDomains) || !(self.domain in self.federation.allowDomains)) && (!has(self.federation.blockDomains) || !(self.domain in self.federation.blockDomains)))",message="spec.domain is this server's own: it cannot be in federation.allowDomains or federation.blockDomains, which name other servers"
// +kubebuilder:validation:XValidation:rule="(has(self.server) && has(self.server.store) ? self.server.store : (has(self.server) && has(self.server.replicas) && self.server.replicas > 1 ? 'jetstream' : 'sqlite')) != 'jetstream' || (has(self.nats) && has(self.nats.replicas) ? self.nats.replicas : 1) == (has(oldSelf.nats) && has(oldSelf.nats.replicas) ? oldSelf.nats.replicas : 1)",message="nats.replicas cannot change on the jetstream store: 3 to 1 would remove two JetStream peers at once while every stream keeps three replicas, and 1 to 3 would leave every stream on one. To change it, back up this KezChat and restore the backup into a new KezChat with the replicas you want (README: Changing nats.replicas)"
type KezChatSpec struct {
	// Domain is the chat server's name: handles are handle@domain and every
	// signed request names it, so it cannot change.
	//
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:Pattern=`^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`
	// +kubebuilder:validation:XValidation:rule="self == oldSelf",message="domain is immutable: every handle and signature names it"
	Domain string `json:"domain"`

	// Image runs the chat server and the sig-server. Empty means the
	// operator's own image, which bundles both, so versions always match.
	// +optional
	Image string `json:"image,omitempty"`

	// ImagePullPolicy of the kez-chat containers (chat server and
	// sig-server); NATS's is nats.imagePullPolicy.
	// +optional
	// +kubebuilder:validation:Enum=Always;IfNotPresent;Never
	ImagePullPolicy corev1.PullPolicy `json:"imagePullPolicy,omitempty"`

	// ImagePullSecrets for every pod of this instance.
	// +optional
	// +listType=atomic
	ImagePullSecrets []corev1.LocalObjectReference `json:"imagePullSecrets,omitempty"`

	// Server is the chat server.
	// +optional
	// +kubebuilder:default={}
	Server ServerSpec `json:"server,omitempty"`

	// NATS is the message bus the chat server scales out on.
	// +optional
	// +kubebuilder:default={}
	NATS NATSSpec `json:"nats,omitempty"`

	// SigServer is the signed key directory beside the chat server.
	// +optional
	// +kubebuilder:default={}
	SigServer SigServerSpec `json:"sigServer,omitempty"`

	// Push is Web Push to offline recipients.
	// +optional
	// +kubebuilder:default={}
	Push PushSpec `json:"push,omitempty"`

	// Ingress exposes the chat server at its domain.
	// +optional
	// +kubebuilder:default={}
	Ingress IngressSpec `json:"ingress,omitempty"`

	// Gateway exposes the chat server through a Gateway API HTTPRoute,
	// beside or instead of the Ingress.
	// +optional
	Gateway *GatewaySpec `json:"gateway,omitempty"`

	// Federation is whether, and with which other servers, people here
	// exchange messages with people on other KezChat servers
	// (kezchat_federation_types.go). On by default.
	// +optional
	// +kubebuilder:default={}
	Federation FederationSpec `json:"federation,omitempty"`

	// Attachments are the encrypted files people send: the server keeps
	// each one while a message names it, at most the retention.
	// +optional
	// +kubebuilder:default={}
	Attachments AttachmentsSpec `json:"attachments,omitempty"`

	// Backup is the object store backups go to, and their schedule and
	// retention. Unset: no backups.
	// +optional
	Backup *BackupSpec `json:"backup,omitempty"`

	// Monitoring is how Prometheus scrapes the instance (monitoring_types.go).
	// Unset: no NATS exporter, no PodMonitors, metrics ports open to the
	// "monitoring" namespace only.
	// +optional
	Monitoring *MonitoringSpec `json:"monitoring,omitempty"`

	// Bootstrap restores a new KezChat from a backup. It is set only when
	// the KezChat is created, and never changes.
	// +optional
	// +kubebuilder:validation:XValidation:rule="self == oldSelf",message="spec.bootstrap is immutable"
	Bootstrap *BootstrapSpec `json:"bootstrap,omitempty"`

	// DeletionPolicy is what deleting the KezChat does to its data:
	// Retain (the default) keeps the volumes and the generated VAPID
	// Secret for a KezChat of the same name to adopt; Delete deletes them.
	// +optional
	// +kubebuilder:default=Retain
	DeletionPolicy DeletionPolicy `json:"deletionPolicy,omitempty"`
}

// ServerSpec is the chat server's workload.
type ServerSpec struct {
	// Replicas of the chat server. More than one needs store jetstream.
	// +optional
	// +kubebuilder:default=1
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=20
	Replicas *int32 `json:"replicas,omitempty"`

	// Store keeps messages and users: sqlite (one replica, on a volume) or
	// jetstream (NATS; any number of replicas). Unset means sqlite for one
	// replica and jetstream for more. It cannot change after creation.
	// +optional
	Store Store `json:"store,omitempty"`

	// Resources of the chat server container.
	// +optional
	Resources corev1.ResourceRequirements `json:"resources,omitempty"`

	// Storage is the volume for the SQLite store.
	// +optional
	// +kubebuilder:default={}
	Storage StorageSpec `json:"storage,omitempty"`

	// Retention is how long an unacknowledged message is kept.
	// +optional
	// +kubebuilder:default="720h"
	// +kubebuilder:validation:XValidation:rule="duration(self) >= duration('1m')",message="retention must be at least 1m"
	Retention *metav1.Duration `json:"retention,omitempty"`

	// Env is added to the chat server container's environment; KEZ_ names
	// set the server's flags (KEZ_MAX_PENDING is --max-pending).
	// +optional
	// +listType=map
	// +listMapKey=name
	Env []corev1.EnvVar `json:"env,omitempty"`

	// Scheduling of the chat server pods.
	Scheduling `json:",inline"`

	// PodAnnotations are added to the chat server pods.
	// +optional
	PodAnnotations map[string]string `json:"podAnnotations,omitempty"`
}

// Scheduling is where a component's pods may run.
type Scheduling struct {
	// NodeSelector of the pods.
	// +optional
	NodeSelector map[string]string `json:"nodeSelector,omitempty"`

	// Tolerations of the pods.
	// +optional
	// +listType=atomic
	Tolerations []corev1.Toleration `json:"tolerations,omitempty"`

	// Affinity of the pods.
	// +optional
	Affinity *corev1.Affinity `json:"affinity,omitempty"`

	// TopologySpreadConstraints of the pods. For NATS with three
	// replicas, empty means one replica per node where there are nodes
	// enough, and across zones where they can be.
	// +optional
	// +listType=atomic
	TopologySpreadConstraints []corev1.TopologySpreadConstraint `json:"topologySpreadConstraints,omitempty"`

	// PriorityClassName of the pods.
	// +optional
	// +kubebuilder:validation:MaxLength=253
	PriorityClassName string `json:"priorityClassName,omitempty"`
}

// StorageSpec is a persistent volume.
//
// +kubebuilder:validation:XValidation:rule="has(self.storageClassName) == has(oldSelf.storageClassName) && (!has(self.storageClassName) || self.storageClassName == oldSelf.storageClassName)",message="storageClassName is immutable"
// +kubebuilder:validation:XValidation:rule="!has(oldSelf.size) || (has(self.size) && quantity(string(self.size)).compareTo(quantity(string(oldSelf.size))) >= 0)",messageExpression="'storage.size cannot shrink below ' + string(oldSelf.size) + ': a volume only grows'",reason=FieldValueForbidden
type StorageSpec struct {
	// Size of the volume. It may grow where the storage class allows
	// expansion; a volume never shrinks.
	// +optional
	// +kubebuilder:default="1Gi"
	Size *resource.Quantity `json:"size,omitempty"`

	// StorageClassName of the volume; empty means the cluster's default.
	// +optional
	StorageClassName *string `json:"storageClassName,omitempty"`
}

// AttachmentsSpec bounds attachment blobs.
// +kubebuilder:validation:XValidation:rule="!has(self.maxSize) || quantity(string(self.maxSize)).compareTo(quantity('1Ki')) >= 0",message="attachments.maxSize must be at least 1Ki"
type AttachmentsSpec struct {
	// MaxSize of one attachment (the server's --max-blob-bytes). The
	// server takes the smaller of it and the daily quota of one sending
	// handle, which the operator sizes from the store's volume, so one
	// attachment always fits a day's quota.
	// +optional
	// +kubebuilder:default="25Mi"
	MaxSize *resource.Quantity `json:"maxSize,omitempty"`
}

// NATSSpec is the NATS server deployed beside the chat server.
type NATSSpec struct {
	// Enabled deploys NATS.
	// +optional
	// +kubebuilder:default=true
	Enabled *bool `json:"enabled,omitempty"`

	// Image of the NATS server; empty means the version this operator was
	// tested with.
	// +optional
	Image string `json:"image,omitempty"`

	// ImagePullPolicy of the NATS container; empty means Kubernetes's
	// default for its image. spec.imagePullPolicy does not apply to it.
	// +optional
	// +kubebuilder:validation:Enum=Always;IfNotPresent;Never
	ImagePullPolicy corev1.PullPolicy `json:"imagePullPolicy,omitempty"`

	// Replicas of NATS: 1, or 3 for a JetStream cluster that survives the
	// loss of one. On the jetstream store it cannot change after creation.
	// +optional
	// +kubebuilder:default=1
	// +kubebuilder:validation:Enum=1;3
	Replicas *int32 `json:"replicas,omitempty"`

	// Storage is each NATS replica's JetStream volume. Its size may grow
	// where the storage class allows expansion: the operator expands each
	// replica's claim itself (a StatefulSet's claim templates cannot
	// change) and JetStream's max_file_store follows. The class cannot
	// change.
	// +optional
	// +kubebuilder:default={}
	Storage StorageSpec `json:"storage,omitempty"`

	// WebSocket opens NATS's WebSocket listener, for browsers that follow
	// their inbox over NATS.
	// +optional
	WebSocket bool `json:"websocket,omitempty"`

	// Resources of the NATS container.
	// +optional
	Resources corev1.ResourceRequirements `json:"resources,omitempty"`

	// Scheduling of the NATS pods.
	Scheduling `json:",inline"`
}

// SigServerSpec is the signed key directory.
type SigServerSpec struct {
	// Enabled deploys the sig-server.
	// +optional
	// +kubebuilder:default=true
	Enabled *bool `json:"enabled,omitempty"`

	// Replicas of the sig-server: it keeps its log in one SQLite file, so
	// 0 or 1.
	// +optional
	// +kubebuilder:default=1
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=1
	Replicas *int32 `json:"replicas,omitempty"`

	// Storage is the volume for the sig-server's log.
	// +optional
	// +kubebuilder:default={}
	Storage StorageSpec `json:"storage,omitempty"`

	// Resources of the sig-server container.
	// +optional
	Resources corev1.ResourceRequirements `json:"resources,omitempty"`

	// Scheduling of the sig-server pods.
	Scheduling `json:",inline"`
}

// PushSpec is Web Push.
type PushSpec struct {
	// Enabled turns Web Push on.
	// +optional
	// +kubebuilder:default=true
	Enabled *bool `json:"enabled,omitempty"`

	// Subject is the contact push services see, a mailto: or https: URL;
	// empty means mailto:admin@<domain>.
	// +optional
	// +kubebuilder:validation:MaxLength=256
	// +kubebuilder:validation:Pattern=`^(mailto:[^@\s]+@[^@\s]+|https://\S+)$`
	Subject string `json:"subject,omitempty"`

	// SecretName names an existing Secret holding the VAPID key as
	// private-key.pem (PEM PKCS#8 P-256). The operator reads it and never
	// changes it. Empty means the operator generates one, once.
	// +optional
	// +kubebuilder:validation:MaxLength=253
	SecretName string `json:"secretName,omitempty"`
}

// IngressSpec is the Ingress for the chat host.
type IngressSpec struct {
	// Enabled creates the Ingress.
	// +optional
	// +kubebuilder:default=true
	Enabled *bool `json:"enabled,omitempty"`

	// ClassName is the IngressClass; empty means the cluster's default.
	// +optional
	ClassName *string `json:"className,omitempty"`

	// Host the Ingress answers for; empty means the domain.
	// +optional
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:Pattern=`^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`
	Host string `json:"host,omitempty"`

	// TLSSecretName is the Secret with the host's certificate; set, the
	// Ingress terminates TLS with it.
	// +optional
	TLSSecretName string `json:"tlsSecretName,omitempty"`

	// Annotations of the Ingress (cert-manager, controller settings).
	// +optional
	Annotations map[string]string `json:"annotations,omitempty"`

	// ControllerNamespace is where the ingress controller's pods run: with
	// the Ingress on, the chat server's and the sig-server's HTTP ports
	// admit connections from that namespace only (and the sig-server's
	// from the chat server), so no other tenant of the cluster reaches
	// them, and none can forge X-Forwarded-For. "*" admits every
	// namespace.
	// +optional
	// +kubebuilder:default=ingress-nginx
	// +kubebuilder:validation:MaxLength=63
	// +kubebuilder:validation:Pattern=`^(\*|[a-z0-9]([-a-z0-9]*[a-z0-9])?)$`
	ControllerNamespace string `json:"controllerNamespace,omitempty"`

	// ControllerPodLabels, when set, narrows the admitted pods of that
	// namespace to the controller's own.
	// +optional
	ControllerPodLabels map[string]string `json:"controllerPodLabels,omitempty"`

	// TrustedProxies are the networks (CIDRs) of the ingress controller's
	// pods, whose X-Forwarded-For the chat server and the sig-server
	// believe, so that each client's own address gets its rate limits and
	// quotas. Empty, no header is believed and every client shares the
	// controller's address. Name only the controller's pod network: any
	// peer in these ranges may say who it speaks for.
	// +optional
	// +kubebuilder:validation:MaxItems=16
	// +kubebuilder:validation:items:MaxLength=43
	// +kubebuilder:validation:XValidation:rule="self.all(c, isCIDR(c))",message="trustedProxies must be CIDRs, e.g. 10.244.0.0/16"
	TrustedProxies []string `json:"trustedProxies,omitempty"`
}

// Condition types of a KezChat.
const (
	ConditionReady          = "Ready"
	ConditionProgressing    = "Progressing"
	ConditionDegraded       = "Degraded"
	ConditionServerReady    = "ServerReady"
	ConditionNATSReady      = "NATSReady"
	ConditionSigServerReady = "SigServerReady"
	// ConditionStorageFull is True while the chat server refuses writes
	// for want of room (its readiness answers 507 storage_full): grow
	// spec.server.storage.size, or spec.nats.storage.size on JetStream.
	ConditionStorageFull = "StorageFull"
	// ConditionPaused is True while the chat.kez.lat/reconcile: paused
	// annotation stops the operator, and False (reason Resumed) once it
	// is removed; absent on a KezChat never paused.
	ConditionPaused = "Paused"
	// ConditionReconciling and ConditionStalled are kstatus's
	// abnormal-true conditions (sigs.k8s.io/cli-utils/pkg/kstatus), which
	// Flux, kubectl and kstatus-based tools read: Reconciling mirrors
	// Progressing, Stalled mirrors Degraded.
	ConditionReconciling = "Reconciling"
	ConditionStalled     = "Stalled"
)

// ComponentStatus counts one component's replicas.
type ComponentStatus struct {
	// Replicas is how many the spec asks for.
	Replicas int32 `json:"replicas"`
	// ReadyReplicas is how many of the current version are ready.
	ReadyReplicas int32 `json:"readyReplicas"`
	// Image is what the component's pods run, as observed: the image of
	// the workload's pod template once its pods have rolled out to it. It
	// keeps the previous value while a rollout is under way.
	// +optional
	Image string `json:"image,omitempty"`
	// Version is Image's tag (or digest, for an image pinned by digest).
	// +optional
	Version string `json:"version,omitempty"`
}

// KezChatStatus is what the operator observes.
type KezChatStatus struct {
	// ObservedGeneration is the spec generation this status describes.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`

	// Conditions: Ready, Progressing, Degraded, and one per component.
	// +optional
	// +listType=map
	// +listMapKey=type
	Conditions []metav1.Condition `json:"conditions,omitempty"`

	// URL is where people reach the chat.
	// +optional
	URL string `json:"url,omitempty"`

	// VAPIDPublicKey is the Web Push application server key (base64url).
	// +optional
	VAPIDPublicKey string `json:"vapidPublicKey,omitempty"`

	// Server counts the chat server's replicas.
	// +optional
	Server *ComponentStatus `json:"server,omitempty"`
	// NATS counts NATS's replicas, when enabled.
	// +optional
	NATS *ComponentStatus `json:"nats,omitempty"`
	// SigServer counts the sig-server's replicas, when enabled.
	// +optional
	SigServer *ComponentStatus `json:"sigServer,omitempty"`

	// Upgrade is the automatic upgrade of the images this KezChat takes
	// from the operator (see UpgradeStatus); absent when none is waiting
	// or under way.
	// +optional
	Upgrade *UpgradeStatus `json:"upgrade,omitempty"`
	// LastSuccessfulBackup is the latest backup that completed.
	// +optional
	LastSuccessfulBackup *BackupRecord `json:"lastSuccessfulBackup,omitempty"`
	// LastScheduleTime is when spec.backup.schedule last started a backup.
	// +optional
	LastScheduleTime *metav1.Time `json:"lastScheduleTime,omitempty"`
	// NextScheduleTime is when it starts the next.
	// +optional
	NextScheduleTime *metav1.Time `json:"nextScheduleTime,omitempty"`
}

// MaxNameLength is the longest KezChat name whose children's names and
// labels are all valid: the NATS StatefulSet <name>-nats labels its pods
// controller-revision-hash=<name>-nats-<hash of up to 10>, at most 63
// characters. The CEL rule on KezChat states it as a literal; a test in
// controllers derives it from the child names.
const MaxNameLength = 47

// KezChat is one self-hosted, end-to-end-encrypted chat instance.
//
// +kubebuilder:validation:XValidation:rule="self.metadata.name.size() <= 47 && self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')",message="metadata.name must be at most 47 characters of lowercase letters, digits and '-', start with a letter, end with a letter or digit, and hold no dot: the Services, StatefulSet and labels of the KezChat's parts are named after it"
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:shortName=kc,categories=kez
// +kubebuilder:printcolumn:name="Domain",type=string,JSONPath=`.spec.domain`
// +kubebuilder:printcolumn:name="Ready",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].status`
// +kubebuilder:printcolumn:name="URL",type=string,JSONPath=`.status.url`
// +kubebuilder:printcolumn:name="Version",type=string,JSONPath=`.status.server.version`
// +kubebuilder:printcolumn:name="Upgrade",type=string,JSONPath=`.status.upgrade.phase`
// +kubebuilder:printcolumn:name="Last Backup",type=date,JSONPath=`.status.lastSuccessfulBackup.completedAt`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type KezChat struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec   KezChatSpec   `json:"spec"`
	Status KezChatStatus `json:"status,omitempty"`
}

// KezChatList is a list of KezChats.
//
// +kubebuilder:object:root=true
type KezChatList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []KezChat `json:"items"`
}

func init() {
	SchemeBuilder.Register(&KezChat{}, &KezChatList{})
}
