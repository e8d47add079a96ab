package v1alpha1

import (
	"time"

	"k8s.io/apimachinery/pkg/api/resource"
)

// The accessors below give a field's value with the default the CRD's
// OpenAPI schema states, so the operator behaves the same for an object the
// API server has not defaulted (one built in a unit test, or stored under
// an older CRD).

// DefaultStorageSize is the size of every volume not given one.
var DefaultStorageSize = resource.MustParse("1Gi")

// DefaultAttachmentSize is the largest attachment when not given.
var DefaultAttachmentSize = resource.MustParse("25Mi")

// MaxSizeOrDefault is the largest attachment (default 25Mi).
func (a *AttachmentsSpec) MaxSizeOrDefault() resource.Quantity {
	if a.MaxSize == nil || a.MaxSize.IsZero() {
		return DefaultAttachmentSize.DeepCopy()
	}
	return a.MaxSize.DeepCopy()
}

// DefaultRetention is how long an unacknowledged message is kept.
const DefaultRetention = 30 * 24 * time.Hour

// ReplicaCount is the chat server's replicas (default 1).
func (s *ServerSpec) ReplicaCount() int32 { return int32OrDefault(s.Replicas, 1) }

// StoreKind is the chat server's store: the one set, or sqlite for one
// replica and jetstream for more.
func (s *ServerSpec) StoreKind() Store {
	switch {
	case s.Store != "":
		return s.Store
	case s.ReplicaCount() > 1:
		return StoreJetStream
	}
	return StoreSQLite
}

// RetentionPeriod is how long unacknowledged messages are kept.
func (s *ServerSpec) RetentionPeriod() time.Duration {
	if s.Retention == nil || s.Retention.Duration <= 0 {
		return DefaultRetention
	}
	return s.Retention.Duration
}

// SizeOrDefault is the volume's size (default 1Gi).
func (s *StorageSpec) SizeOrDefault() resource.Quantity {
	if s.Size == nil || s.Size.IsZero() {
		return DefaultStorageSize.DeepCopy()
	}
	return s.Size.DeepCopy()
}

// IsEnabled reports whether NATS is deployed (default true).
func (s *NATSSpec) IsEnabled() bool { return boolOrDefault(s.Enabled, true) }

// ReplicaCount is NATS's replicas (default 1).
func (s *NATSSpec) ReplicaCount() int32 { return int32OrDefault(s.Replicas, 1) }

// IsEnabled reports whether the sig-server is deployed (default true).
func (s *SigServerSpec) IsEnabled() bool { return boolOrDefault(s.Enabled, true) }

// ReplicaCount is the sig-server's replicas (default 1).
func (s *SigServerSpec) ReplicaCount() int32 { return int32OrDefault(s.Replicas, 1) }

// IsEnabled reports whether Web Push is on (default true).
func (s *PushSpec) IsEnabled() bool { return boolOrDefault(s.Enabled, true) }

// IsEnabled reports whether the Ingress is created (default true).
func (s *IngressSpec) IsEnabled() bool { return boolOrDefault(s.Enabled, true) }

// ControllerNamespaceOrDefault is the ingress controller's namespace
// (default ingress-nginx; "*" for every namespace).
func (s *IngressSpec) ControllerNamespaceOrDefault() string {
	if s.ControllerNamespace == "" {
		return "ingress-nginx"
	}
	return s.ControllerNamespace
}

// HostOr is the Ingress host, or domain when none is set.
func (s *IngressSpec) HostOr(domain string) string {
	if s.Host == "" {
		return domain
	}
	return s.Host
}

func int32OrDefault(p *int32, def int32) int32 {
	if p == nil {
		return def
	}
	return *p
}

func boolOrDefault(p *bool, def bool) bool {
	if p == nil {
		return def
	}
	return *p
}

// DeletionPolicyOrDefault is what deleting the KezChat does to its data
// (default Retain).
func (s *KezChatSpec) DeletionPolicyOrDefault() DeletionPolicy {
	if s.DeletionPolicy == "" {
		return DeletionRetain
	}
	return s.DeletionPolicy
}

// CAKeyOrDefault is the CA bundle's key in its Secret (default ca.crt).
func (r *SecretKeyReference) CAKeyOrDefault() string {
	if r.Key == "" {
		return DefaultCAKey
	}
	return r.Key
}
