package controllers

import (
	"crypto/sha256"
	"encoding/hex"

	chatv1 "kez.lat/chat/api/v1alpha1"
)

// Components of a chat instance, as app.kubernetes.io/component labels.
const (
	componentServer    = "server"
	componentNATS      = "nats"
	componentSigServer = "sig-server"
)

// Ports the kez-chat and NATS containers listen on.
const (
	serverPort        = 6969
	serverMetricsPort = 9469
	sigServerPort     = 7878
	sigMetricsPort    = 9470
	natsClientPort    = 4222
	natsClusterPort   = 6222
	natsMonitorPort   = 8222
	natsWebSocketPort = 8080
)

const (
	// FieldOwner is the operator's name in managedFields: server-side apply
	// gives it the fields it sets, and leaves everyone else's alone.
	FieldOwner = "kez-chat-operator"

	// managedByLabel marks what the operator made; its cache holds only
	// such objects, so a big cluster's other Secrets cost it nothing.
	managedByLabel = "app.kubernetes.io/managed-by"
	managedByValue = "kez-chat-operator"

	// configHashAnnotation on a pod template carries a digest of what the
	// pods read once at start (a Secret, a config file), so a change rolls
	// them.
	configHashAnnotation = "chat.kez.lat/config-hash"

	// natsWebSocketPath is where the Ingress sends browsers to NATS's
	// WebSocket listener.
	natsWebSocketPath = "/nats"

	// DefaultNATSImage is the NATS server the operator deploys unless told
	// otherwise: the release the project's tests run against.
	DefaultNATSImage = "docker.io/library/nats:2.15.2-alpine"
)

// names are the names of one KezChat's children, all prefixed by its own
// so that several instances share a namespace.
type names struct{ base string }

func namesOf(kc *chatv1.KezChat) names { return names{base: kc.Name} }

func (n names) server() string         { return n.base + "-server" }
func (n names) serverData() string     { return n.base + "-server-data" }
func (n names) nats() string           { return n.base + "-nats" }
func (n names) natsHeadless() string   { return n.base + "-nats-headless" }
func (n names) natsConfig() string     { return n.base + "-nats-config" }
func (n names) natsAuth() string       { return n.base + "-nats-auth" }
func (n names) sigServer() string      { return n.base + "-sig-server" }
func (n names) sigServerData() string  { return n.base + "-sig-server-data" }
func (n names) vapid() string          { return n.base + "-vapid" }
func (n names) serviceAccount() string { return n.base }
func (n names) ingress() string        { return n.base }
func (n names) httpRoute() string      { return n.base }

// nameKind is what the API server requires of a child's name.
type nameKind int

const (
	// subdomainName: a DNS subdomain (RFC 1123) of up to 253 characters,
	// what most kinds need.
	subdomainName nameKind = iota
	// serviceName: a DNS label (RFC 1035) of up to 63 characters that
	// starts with a letter.
	serviceName
	// statefulSetName: a subdomain whose pods carry the label
	// controller-revision-hash=<name>-<hash of up to 10 characters>, a
	// label value of up to 63 characters.
	statefulSetName
)

// childName is one name namesOf gives, with what it must be.
type childName struct {
	method, name string
	kind         nameKind
}

// all is every child name of n, for the test that derives the longest
// KezChat name (chatv1.MaxNameLength) from them; a names method missing
// here fails that test.
func (n names) all() []childName {
	return []childName{
		{"server", n.server(), serviceName},
		{"serverData", n.serverData(), subdomainName},
		{"nats", n.nats(), serviceName},
		{"nats", n.nats(), statefulSetName},
		{"natsHeadless", n.natsHeadless(), serviceName},
		{"natsConfig", n.natsConfig(), subdomainName},
		{"natsAuth", n.natsAuth(), subdomainName},
		{"sigServer", n.sigServer(), serviceName},
		{"sigServerData", n.sigServerData(), subdomainName},
		{"vapid", n.vapid(), subdomainName},
		{"serviceAccount", n.serviceAccount(), subdomainName},
		{"ingress", n.ingress(), subdomainName},
		{"httpRoute", n.httpRoute(), subdomainName},
	}
}

// selectorLabels pick one component's pods; they are part of immutable
// selectors, so they never change.
func selectorLabels(kc *chatv1.KezChat, component string) map[string]string {
	return map[string]string{
		"app.kubernetes.io/name":      "kez-chat",
		"app.kubernetes.io/instance":  kc.Name,
		"app.kubernetes.io/component": component,
	}
}

// labels go on every child: the selector labels plus the operator's mark.
func labels(kc *chatv1.KezChat, component string) map[string]string {
	l := selectorLabels(kc, component)
	l["app.kubernetes.io/part-of"] = "kez-chat"
	l[managedByLabel] = managedByValue
	return l
}

// instanceLabels go on children that belong to no one component.
func instanceLabels(kc *chatv1.KezChat) map[string]string {
	return map[string]string{
		"app.kubernetes.io/name":     "kez-chat",
		"app.kubernetes.io/instance": kc.Name,
		"app.kubernetes.io/part-of":  "kez-chat",
		managedByLabel:               managedByValue,
	}
}

// digest is a short, stable hex digest of parts, for config-hash
// annotations. Each part is length-prefixed so that parts never run into
// each other.
func digest(parts ...[]byte) string {
	h := sha256.New()
	for _, p := range parts {
		var n [8]byte
		for i, l := 0, uint64(len(p)); i < 8; i++ {
			n[i] = byte(l >> (8 * i))
		}
		h.Write(n[:])
		h.Write(p)
	}
	return hex.EncodeToString(h.Sum(nil))[:32]
}
