package v1alpha1

// FederationSpec is whether the chat server exchanges messages with other
// KezChat servers (alice@one.example writing to bob@two.example), and
// with which. Each server relays its own people's messages to the
// recipient's server and verifies what others relay against the keys the
// sender's own domain publishes (docs/protocol.md, "Federation").
//
// +kubebuilder:validation:XValidation:rule="!has(self.allowDomains) || !has(self.blockDomains) || !self.allowDomains.exists(d, d in self.blockDomains)",message="a domain cannot be in both federation.allowDomains and federation.blockDomains"
type FederationSpec struct {
	// Enabled lets the chat server accept messages from and relay
	// messages to other servers. It is on unless set to false: a chat
	// server is a part of the network of KezChat servers, as a mail
	// server is of mail, and this field turns that off. On either
	// store: on jetstream one replica at a time, the holder of the
	// store's writer lease, delivers messages to other servers.
	// +optional
	// +kubebuilder:default=true
	Enabled *bool `json:"enabled,omitempty"`

	// AllowDomains, when set, are the only domains the chat server
	// exchanges messages with (the server's --federation-allow): for a
	// closed group of servers. Empty means every domain not blocked.
	// +optional
	// +listType=set
	// +kubebuilder:validation:MaxItems=1000
	// +kubebuilder:validation:items:MinLength=1
	// +kubebuilder:validation:items:MaxLength=253
	// +kubebuilder:validation:items:Pattern=`^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`
	AllowDomains []string `json:"allowDomains,omitempty"`

	// BlockDomains are domains the chat server never exchanges messages
	// with (the server's --federation-block), whatever AllowDomains says:
	// for a server that sends spam or abuse.
	// +optional
	// +listType=set
	// +kubebuilder:validation:MaxItems=1000
	// +kubebuilder:validation:items:MinLength=1
	// +kubebuilder:validation:items:MaxLength=253
	// +kubebuilder:validation:items:Pattern=`^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`
	BlockDomains []string `json:"blockDomains,omitempty"`
}

// IsEnabled reports whether spec.federation asks for federation (default
// true), on either store.
func (s *FederationSpec) IsEnabled() bool { return boolOrDefault(s.Enabled, true) }

// ConditionFederation is whether the chat server federates: True (reason
// Enabled) when it does; False with reason Disabled when
// spec.federation.enabled is false.
const ConditionFederation = "Federation"
