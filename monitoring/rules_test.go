package monitoring

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"sigs.k8s.io/yaml"
)

// promtool is the promtool hack/tools/install-k8s-tools.sh builds from
// hack/tools/prometheus (at once when it is built already), or
// $KEZ_PROMTOOL.
var promtool = sync.OnceValues(func() (string, error) {
	if p := os.Getenv("KEZ_PROMTOOL"); p != "" {
		return p, nil
	}
	cmd := exec.Command("bash", "../hack/tools/install-k8s-tools.sh", "promtool")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("hack/tools/install-k8s-tools.sh promtool: %w\n%s", err, stderr.String())
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	return filepath.Join(lines[len(lines)-1], "promtool"), nil
})

func runPromtool(t *testing.T, args ...string) {
	t.Helper()
	bin, err := promtool()
	if err != nil {
		t.Fatalf("building promtool: %v", err)
	}
	out, err := exec.Command(bin, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// TestRulesAreValid: promtool's checks of the rule file (syntax, PromQL,
// templates) pass.
func TestRulesAreValid(t *testing.T) {
	runPromtool(t, "check", "rules", "rules.yaml")
}

// TestRulesPassTheirUnitTests runs tests/*.yaml: each alert fires on the
// series that should fire it, with its labels and annotations, and not
// on those that should not.
func TestRulesPassTheirUnitTests(t *testing.T) {
	files, err := filepath.Glob("tests/*.yaml")
	if err != nil || len(files) == 0 {
		t.Fatalf("no tests/*.yaml: %v", err)
	}
	runPromtool(t, append([]string{"test", "rules"}, files...)...)
}

type ruleFile struct {
	Groups []struct {
		Rules []struct {
			Alert string `json:"alert"`
		} `json:"rules"`
	} `json:"groups"`
}

type ruleTestFile struct {
	RuleFiles []string `json:"rule_files"`
	Tests     []struct {
		AlertRuleTest []struct {
			Alertname string           `json:"alertname"`
			ExpAlerts []map[string]any `json:"exp_alerts"`
		} `json:"alert_rule_test"`
	} `json:"tests"`
}

// TestEveryAlertIsTestedFiringAndSilent: each alert of rules.yaml has a
// test case where it fires and one where it must not, so that a rule
// that always or never fires cannot pass.
func TestEveryAlertIsTestedFiringAndSilent(t *testing.T) {
	var rules ruleFile
	if err := yaml.Unmarshal(Rules, &rules); err != nil {
		t.Fatal(err)
	}
	var alerts []string
	for _, g := range rules.Groups {
		for _, r := range g.Rules {
			if r.Alert != "" {
				alerts = append(alerts, r.Alert)
			}
		}
	}
	if len(alerts) == 0 {
		t.Fatal("rules.yaml has no alerts")
	}
	fires, silent := map[string]bool{}, map[string]bool{}
	files, _ := filepath.Glob("tests/*.yaml")
	for _, f := range files {
		raw, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		var tf ruleTestFile
		if err := yaml.Unmarshal(raw, &tf); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		if !slices.Equal(tf.RuleFiles, []string{"../rules.yaml"}) {
			t.Errorf("%s tests %v, not ../rules.yaml", f, tf.RuleFiles)
		}
		for _, tc := range tf.Tests {
			for _, a := range tc.AlertRuleTest {
				if len(a.ExpAlerts) > 0 {
					fires[a.Alertname] = true
				} else {
					silent[a.Alertname] = true
				}
			}
		}
	}
	for _, a := range alerts {
		if !fires[a] {
			t.Errorf("no test expects %s to fire", a)
		}
		if !silent[a] {
			t.Errorf("no test expects %s to stay silent", a)
		}
	}
}
