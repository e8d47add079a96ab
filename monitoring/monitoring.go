// Package monitoring holds the alert rules for kez-chat instances
// (rules.yaml, a Prometheus rule file) and their tests (tests/*.yaml, run
// by `promtool test rules` from rules_test.go). hack/chartgen writes the
// rules into the Helm chart's PrometheusRule; this package embeds them so
// that every copy comes from the one file.
package monitoring

import _ "embed"

// Rules is rules.yaml: the groups of a Prometheus rule file, which is also
// the spec of a PrometheusRule.
//
//go:embed rules.yaml
var Rules []byte
