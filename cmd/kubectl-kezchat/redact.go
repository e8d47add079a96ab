package main

import (
	"regexp"
	"strings"
)

// What `report` writes is meant to be posted in a public bug report, and
// it never reads a Secret; what it does read may still carry credentials
// that users put in plain fields (an env value, a flag, an annotation,
// a log line). These rules replace such values with redacted.
const redacted = "REDACTED"

// sensitiveName matches the names of env vars, flags, annotations and
// keys whose values are credentials.
var sensitiveName = regexp.MustCompile(`(?i)(pass(word|wd|phrase)?|secret|token|credential|api[-_]?key|private[-_]?key|access[-_]?key|(^|[-_./])key($|[-_./])|auth|session|cookie|bearer|signature|seed|nkey|dsn)`)

// credentialValue matches values that are credentials whatever their
// name: a PEM block, a JWT, a bearer token, a URL with a password.
var credentialValue = regexp.MustCompile(`-----BEGIN|eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}|(?i:bearer\s+\S)|[a-zA-Z][a-zA-Z0-9+.-]*://[^/\s:@]+:[^/\s@]+@`)

// opaqueToken is a long run of base64 or hex characters: what an API
// token looks like.
var opaqueToken = regexp.MustCompile(`^[A-Za-z0-9+/=_-]{32,}$`)

// Annotations whose keys start with these are Kubernetes' or the
// operator's own bookkeeping (digests, revisions, UIDs), never a secret;
// their values look like tokens but are kept for the report's reader.
var bookkeepingAnnotations = []string{
	"chat.kez.lat/", "deployment.kubernetes.io/", "kubectl.kubernetes.io/restartedAt",
	"pv.kubernetes.io/", "volume.kubernetes.io/", "volume.beta.kubernetes.io/",
}

// lastApplied holds a copy of every field kubectl applied, values and
// all, so it is dropped whole.
const lastApplied = "kubectl.kubernetes.io/last-applied-configuration"

// looksLikeToken: long, opaque, letters and digits mixed.
func looksLikeToken(v string) bool {
	return opaqueToken.MatchString(v) && strings.ContainsAny(v, "0123456789") &&
		strings.ContainsAny(strings.ToLower(v), "abcdefghijklmnopqrstuvwxyz")
}

// redactObject redacts an object as unstructured content, in place: its
// managedFields go (they repeat the fields' owners, not their values,
// but are noise), and every annotations map, env list and args or
// command list anywhere in it is redacted.
func redactObject(obj map[string]any) {
	if md, ok := obj["metadata"].(map[string]any); ok {
		delete(md, "managedFields")
	}
	redactNode(obj)
}

func redactNode(node any) {
	switch n := node.(type) {
	case map[string]any:
		for k, v := range n {
			switch k {
			case "annotations", "podAnnotations":
				if m, ok := v.(map[string]any); ok {
					redactAnnotations(m)
					continue
				}
			case "env":
				if l, ok := v.([]any); ok {
					redactEnv(l)
					continue
				}
			case "args", "command":
				if l, ok := v.([]any); ok {
					redactArgs(l)
					continue
				}
			}
			redactNode(v)
		}
	case []any:
		for _, v := range n {
			redactNode(v)
		}
	}
}

func redactAnnotations(m map[string]any) {
	for k, v := range m {
		s, _ := v.(string)
		if k == lastApplied {
			m[k] = redacted + " (holds every applied field's value)"
			continue
		}
		if hasAnyPrefix(k, bookkeepingAnnotations) {
			continue
		}
		if sensitiveName.MatchString(k) || credentialValue.MatchString(s) || looksLikeToken(s) {
			m[k] = redacted
		}
	}
}

func hasAnyPrefix(s string, prefixes []string) bool {
	for _, p := range prefixes {
		if strings.HasPrefix(s, p) {
			return true
		}
	}
	return false
}

// redactEnv redacts literal values of env vars (name, value); a
// valueFrom is a reference, and stays.
func redactEnv(env []any) {
	for _, e := range env {
		m, ok := e.(map[string]any)
		if !ok {
			continue
		}
		name, _ := m["name"].(string)
		value, ok := m["value"].(string)
		if !ok || value == "" || isReference(value) {
			continue
		}
		if sensitiveName.MatchString(name) || credentialValue.MatchString(value) || looksLikeToken(value) {
			m["value"] = redacted
		}
	}
}

// isReference says a value names another ($(VAR), $VAR) rather than
// holding one.
func isReference(v string) bool { return strings.HasPrefix(v, "$") }

// redactArgs redacts --flag=value arguments whose flag is sensitive, and
// any argument that is a credential.
func redactArgs(args []any) {
	for i, a := range args {
		s, ok := a.(string)
		if !ok {
			continue
		}
		if flag, _, found := strings.Cut(s, "="); found && strings.HasPrefix(flag, "-") && sensitiveName.MatchString(flag) {
			args[i] = flag + "=" + redacted
			continue
		}
		if credentialValue.MatchString(s) || looksLikeToken(s) {
			args[i] = redacted
		}
	}
}

// Rules for free text: log lines, event messages, config files.
var (
	// key=value, key: value and "key":"value" where key is sensitive; a
	// value that is a $reference stays.
	sensitivePair = regexp.MustCompile(`(?i)("?[\w.-]*(?:password|passwd|passphrase|secret|token|credential|api[-_]?key|private[-_]?key|access[-_]?key|authorization|cookie)[\w.-]*"?\s*[:=]\s*)("[^"$][^"]*"|(?:(?:bearer|basic)\s+)?[^\s"$,;}][^\s,;}]*)`)
	bearerToken   = regexp.MustCompile(`(?i)(bearer\s+)[A-Za-z0-9._~+/=-]+`)
	jwt           = regexp.MustCompile(`eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}(\.[A-Za-z0-9_-]*)?`)
	pemBlock      = regexp.MustCompile(`(?s)-----BEGIN [A-Z ]+-----.*?(-----END [A-Z ]+-----|$)`)
	urlPassword   = regexp.MustCompile(`([a-zA-Z][a-zA-Z0-9+.-]*://)[^/\s:@]+:[^/\s@]+@`)
)

// redactText redacts credentials in free text.
func redactText(s string) string {
	s = pemBlock.ReplaceAllString(s, redacted)
	s = jwt.ReplaceAllString(s, redacted)
	s = urlPassword.ReplaceAllString(s, "${1}"+redacted+"@")
	// A pair first, so that "Authorization: Bearer x" loses the scheme
	// with the token; then bearer tokens outside pairs.
	s = sensitivePair.ReplaceAllStringFunc(s, func(m string) string {
		sub := sensitivePair.FindStringSubmatch(m)
		if strings.HasPrefix(sub[2], `"`) {
			return sub[1] + `"` + redacted + `"`
		}
		return sub[1] + redacted
	})
	return bearerToken.ReplaceAllString(s, "${1}"+redacted)
}
