package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Keys of the object store credentials Secret. They are the AWS SDK's
// environment variable names, which the backup and restore containers
// receive them as.
const (
	ObjectStoreAccessKeyIDKey     = "AWS_ACCESS_KEY_ID"
	ObjectStoreSecretAccessKeyKey = "AWS_SECRET_ACCESS_KEY"
	// ObjectStoreSessionTokenKey is optional.
	ObjectStoreSessionTokenKey = "AWS_SESSION_TOKEN"
	// DefaultCAKey is the key of the CA bundle in spec.backup.objectStore.caSecret.
	DefaultCAKey = "ca.crt"
)

// ObjectStoreSpec is an S3-compatible bucket that backups are written to
// (spec.backup) or restored from (spec.bootstrap.recovery).
//
// +kubebuilder:validation:XValidation:rule="!self.endpoint.startsWith('http://') || (has(self.insecureHTTP) && self.insecureHTTP)",message="a plain http:// endpoint sends the credentials and every backup unencrypted: use https://, or set insecureHTTP: true to allow it"
// +kubebuilder:validation:XValidation:rule="!(has(self.insecureHTTP) && self.insecureHTTP) || self.endpoint.startsWith('http://')",message="insecureHTTP is only for an http:// endpoint"
// +kubebuilder:validation:XValidation:rule="!has(self.caSecret) || self.endpoint.startsWith('https://')",message="caSecret is only for an https:// endpoint"
type ObjectStoreSpec struct {
	// Endpoint is the S3 API's URL: https://host[:port], or http://host[:port]
	// with insecureHTTP.
	// +required
	// +kubebuilder:validation:MaxLength=512
	// +kubebuilder:validation:Pattern=`^https?://[^/\s?#]+/?$`
	Endpoint string `json:"endpoint"`

	// Bucket is the bucket's name; it must exist.
	// +required
	// +kubebuilder:validation:MinLength=3
	// +kubebuilder:validation:MaxLength=63
	// +kubebuilder:validation:Pattern=`^[a-z0-9][a-z0-9.-]*[a-z0-9]$`
	Bucket string `json:"bucket"`

	// Path is the folder inside the bucket that backups go under, as
	// <path>/<backup id>/<part>/. Give each KezChat a path of its own:
	// retention deletes old backups under it.
	// +optional
	// +kubebuilder:validation:MaxLength=512
	// +kubebuilder:validation:Pattern=`^[A-Za-z0-9!_.*'()/-]*$`
	// +kubebuilder:validation:XValidation:rule="!self.startsWith('/') && !self.endsWith('/') && !self.contains('//') && !self.contains('..')",message="path is a folder like kez-chat/team: no leading or trailing /, no // and no .."
	Path string `json:"path,omitempty"`

	// Region of the bucket; empty means us-east-1.
	// +optional
	// +kubebuilder:validation:MaxLength=64
	// +kubebuilder:validation:Pattern=`^[a-z0-9-]*$`
	Region string `json:"region,omitempty"`

	// CredentialsSecret names a Secret in the KezChat's namespace with the
	// keys AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and optionally
	// AWS_SESSION_TOKEN).
	// +required
	CredentialsSecret SecretReference `json:"credentialsSecret"`

	// CASecret names a Secret with the PEM CA bundle to trust for an
	// https endpoint whose certificate no public CA signed.
	// +optional
	CASecret *SecretKeyReference `json:"caSecret,omitempty"`

	// InsecureHTTP allows a plain http:// endpoint, where the credentials
	// and the backups travel unencrypted: for an object store inside the
	// cluster only.
	// +optional
	InsecureHTTP bool `json:"insecureHTTP,omitempty"`
}

// SecretReference names a Secret in the KezChat's namespace.
type SecretReference struct {
	// Name of the Secret.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:Pattern=`^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`
	Name string `json:"name"`
}

// SecretKeyReference names one key of a Secret in the KezChat's namespace.
type SecretKeyReference struct {
	// Name of the Secret.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:Pattern=`^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`
	Name string `json:"name"`

	// Key in the Secret; empty means ca.crt.
	// +optional
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:Pattern=`^[-._a-zA-Z0-9]*$`
	Key string `json:"key,omitempty"`
}

// BackupSpec is where and when a KezChat is backed up.
type BackupSpec struct {
	// ObjectStore is the bucket backups are written to.
	// +required
	ObjectStore ObjectStoreSpec `json:"objectStore"`

	// Schedule is when backups are taken, as a cron expression in UTC
	// ("0 3 * * *": daily at 03:00; five fields: minute hour day-of-month
	// month day-of-week), or a descriptor: @hourly, @daily, @weekly,
	// @monthly, @every 6h. Empty: on-demand backups (KezChatBackup) only.
	// +optional
	// +kubebuilder:validation:MaxLength=128
	// +kubebuilder:validation:Pattern=`^((@(yearly|annually|monthly|weekly|daily|midnight|hourly))|(@every [0-9][0-9.a-z]*)|([0-9A-Za-z*/,?-]+( +[0-9A-Za-z*/,?-]+){4}))?$`
	Schedule string `json:"schedule,omitempty"`

	// Retention is how many backups, and how old, are kept in the bucket.
	// Older ones are deleted after each successful backup; the one just
	// taken never is.
	// +optional
	Retention BackupRetention `json:"retention,omitempty"`

	// BeforeUpgrade takes a backup (a KezChatBackup named
	// <name>-pre-upgrade-<hash of the new images>) before the operator
	// moves this KezChat to new default images, and rolls only once it
	// completed. A failed one stops the upgrade until it is deleted (to
	// retry) or this is set to false (to upgrade without).
	// +optional
	// +kubebuilder:default=true
	BeforeUpgrade *bool `json:"beforeUpgrade,omitempty"`
}

// BacksUpBeforeUpgrade reports whether the operator takes a backup before
// an automatic upgrade: spec.backup is set and beforeUpgrade is not false.
func (b *BackupSpec) BacksUpBeforeUpgrade() bool {
	return b != nil && boolOrDefault(b.BeforeUpgrade, true)
}

// BackupRetention limits the backups kept. Unset limits keep everything.
type BackupRetention struct {
	// KeepCount keeps at most this many complete backups.
	// +optional
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=10000
	KeepCount *int32 `json:"keepCount,omitempty"`

	// MaxAge deletes backups completed longer ago than this (e.g. 720h).
	// +optional
	// +kubebuilder:validation:XValidation:rule="duration(self) >= duration('1h')",message="retention.maxAge must be at least 1h"
	MaxAge *metav1.Duration `json:"maxAge,omitempty"`
}

// BootstrapSpec is how a new KezChat's data starts.
type BootstrapSpec struct {
	// Recovery restores the chat server's and the sig-server's data from
	// a backup before they first start.
	// +required
	Recovery RecoverySpec `json:"recovery"`
}

// RecoverySpec names the backup a new KezChat starts from.
type RecoverySpec struct {
	// ObjectStore is the bucket the backup is in (it may differ from
	// spec.backup's, which new backups go to).
	// +required
	ObjectStore ObjectStoreSpec `json:"objectStore"`

	// BackupID is the backup's id, as a KezChatBackup's status.backupID
	// shows it and as its folder is named in the bucket.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=128
	// +kubebuilder:validation:Pattern=`^[A-Za-z0-9][A-Za-z0-9._-]*$`
	BackupID string `json:"backupID"`
}

// DeletionPolicy is what happens to a KezChat's data when it is deleted.
// +kubebuilder:validation:Enum=Retain;Delete
type DeletionPolicy string

const (
	// DeletionRetain keeps the volumes and the generated VAPID Secret,
	// with no owner, for a KezChat of the same name to adopt.
	DeletionRetain DeletionPolicy = "Retain"
	// DeletionDelete deletes them with the KezChat.
	DeletionDelete DeletionPolicy = "Delete"
)

// BackupRecord is one finished backup, as the KezChat's status names it.
type BackupRecord struct {
	// Name of the KezChatBackup.
	Name string `json:"name"`
	// BackupID is its folder in the bucket, which recovery names.
	BackupID string `json:"backupID"`
	// CompletedAt is when its last part was verified in the bucket.
	CompletedAt metav1.Time `json:"completedAt"`
	// Bytes uploaded, every part together.
	Bytes int64 `json:"bytes"`
}

// Condition types of a KezChat about its backups.
const (
	// ConditionLastBackupSucceeded is True when the latest finished backup
	// succeeded and False, with its reason, when it failed.
	ConditionLastBackupSucceeded = "LastBackupSucceeded"
)

// BackupPart is one part of a backup, taken by a Job of its own: the chat
// server's store, or the sig-server's key log.
// +kubebuilder:validation:Enum=server;sigserver
type BackupPart string

const (
	BackupPartServer    BackupPart = "server"
	BackupPartSigServer BackupPart = "sigserver"
)

// BackupPhase is where a backup is.
// +kubebuilder:validation:Enum=Pending;Running;Completed;Failed
type BackupPhase string

const (
	// BackupPending waits for its KezChat, or for another of its backups
	// to finish.
	BackupPending BackupPhase = "Pending"
	// BackupRunning has Jobs at work.
	BackupRunning BackupPhase = "Running"
	// BackupCompleted is in the bucket, verified.
	BackupCompleted BackupPhase = "Completed"
	// BackupFailed did not complete; Message says why.
	BackupFailed BackupPhase = "Failed"
)

// KezChatBackupSpec names the KezChat to back up.
//
// +kubebuilder:validation:XValidation:rule="self == oldSelf",message="a KezChatBackup's spec is immutable: create another"
type KezChatBackupSpec struct {
	// KezChat names the KezChat, in the same namespace, to back up. It
	// must have spec.backup.
	// +required
	KezChat KezChatReference `json:"kezChat"`
}

// KezChatReference names a KezChat in the same namespace.
type KezChatReference struct {
	// Name of the KezChat.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=63
	Name string `json:"name"`
}

// BackupPartStatus is what one part's Job reported.
type BackupPartStatus struct {
	// Part is server or sigserver.
	Part BackupPart `json:"part"`
	// Job takes this part.
	Job string `json:"job"`
	// Phase of this part.
	Phase BackupPhase `json:"phase"`
	// Bytes uploaded.
	// +optional
	Bytes int64 `json:"bytes,omitempty"`
	// Objects uploaded.
	// +optional
	Objects int64 `json:"objects,omitempty"`
	// Version of kezchat that took it.
	// +optional
	Version string `json:"version,omitempty"`
	// StartedAt and CompletedAt as the Job reported them.
	// +optional
	StartedAt *metav1.Time `json:"startedAt,omitempty"`
	// +optional
	CompletedAt *metav1.Time `json:"completedAt,omitempty"`
	// Deleted are the older backups retention removed after this one.
	// +optional
	// +listType=atomic
	Deleted []string `json:"deleted,omitempty"`
	// Message says why the part failed.
	// +optional
	Message string `json:"message,omitempty"`
}

// KezChatBackupStatus is the backup's progress and result.
type KezChatBackupStatus struct {
	// Phase: Pending, Running, Completed or Failed.
	// +optional
	Phase BackupPhase `json:"phase,omitempty"`
	// BackupID is the backup's folder in the bucket; restore names it.
	// +optional
	BackupID string `json:"backupID,omitempty"`
	// Destination is where it is written: s3://<bucket>/<path>/<backup id>/
	// at Endpoint.
	// +optional
	Destination string `json:"destination,omitempty"`
	// Endpoint of the object store.
	// +optional
	Endpoint string `json:"endpoint,omitempty"`
	// StartedAt is when its Jobs were created.
	// +optional
	StartedAt *metav1.Time `json:"startedAt,omitempty"`
	// CompletedAt is when it finished, complete or failed.
	// +optional
	CompletedAt *metav1.Time `json:"completedAt,omitempty"`
	// Bytes uploaded, every part together.
	// +optional
	Bytes int64 `json:"bytes,omitempty"`
	// Parts reported by each Job.
	// +optional
	// +listType=map
	// +listMapKey=part
	Parts []BackupPartStatus `json:"parts,omitempty"`
	// Message says what the backup waits for, or why it failed.
	// +optional
	Message string `json:"message,omitempty"`
}

// KezChatBackup is one backup of a KezChat to its object store, taken when
// it is created. Scheduled backups are KezChatBackups too, owned by their
// KezChat.
//
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:shortName=kcb,categories=kez
// +kubebuilder:printcolumn:name="KezChat",type=string,JSONPath=`.spec.kezChat.name`
// +kubebuilder:printcolumn:name="Phase",type=string,JSONPath=`.status.phase`
// +kubebuilder:printcolumn:name="Backup ID",type=string,JSONPath=`.status.backupID`
// +kubebuilder:printcolumn:name="Bytes",type=integer,JSONPath=`.status.bytes`
// +kubebuilder:printcolumn:name="Started",type=date,JSONPath=`.status.startedAt`
// +kubebuilder:printcolumn:name="Message",type=string,JSONPath=`.status.message`,priority=1
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type KezChatBackup struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec   KezChatBackupSpec   `json:"spec"`
	Status KezChatBackupStatus `json:"status,omitempty"`
}

// IsFinished reports whether the backup completed or failed.
func (b *KezChatBackup) IsFinished() bool {
	return b.Status.Phase == BackupCompleted || b.Status.Phase == BackupFailed
}

// KezChatBackupList is a list of KezChatBackups.
//
// +kubebuilder:object:root=true
type KezChatBackupList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []KezChatBackup `json:"items"`
}

func init() {
	SchemeBuilder.Register(&KezChatBackup{}, &KezChatBackupList{})
}
