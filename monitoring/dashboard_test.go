package monitoring

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"
)

type dashboard struct {
	Panels []struct {
		Title   string `json:"title"`
		Targets []struct {
			Expr string `json:"expr"`
		} `json:"targets"`
	} `json:"panels"`
	Templating struct {
		List []struct {
			Name string `json:"name"`
		} `json:"list"`
	} `json:"templating"`
}

// grafanaVariables are what Grafana puts for the dashboard's variables
// before it sends a query: all namespaces and instances, the rate window.
var grafanaVariables = strings.NewReplacer("$__rate_interval", "5m", "$namespace", ".+", "$kezchat", ".+")

// dashboardExprs is every panel query of dashboard.json, title by title,
// with its variables as Grafana fills them.
func dashboardExprs(t *testing.T) (titles, exprs []string) {
	t.Helper()
	var d dashboard
	if err := json.Unmarshal(Dashboard, &d); err != nil {
		t.Fatal(err)
	}
	if len(d.Panels) == 0 {
		t.Fatal("dashboard.json has no panels")
	}
	for _, p := range d.Panels {
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, tg := range p.Targets {
			titles = append(titles, p.Title)
			exprs = append(exprs, grafanaVariables.Replace(tg.Expr))
		}
	}
	return titles, exprs
}

// TestDashboardQueriesParse: promtool parses every panel's query, given as
// a recording rule.
func TestDashboardQueriesParse(t *testing.T) {
	_, exprs := dashboardExprs(t)
	type rule struct {
		Record string `json:"record"`
		Expr   string `json:"expr"`
	}
	var rules []rule
	for i, e := range exprs {
		rules = append(rules, rule{Record: fmt.Sprintf("dashboard:query_%d", i), Expr: e})
	}
	file, err := yaml.Marshal(map[string]any{"groups": []any{map[string]any{"name": "dashboard", "rules": rules}}})
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "dashboard-rules.yaml")
	if err := os.WriteFile(path, file, 0o644); err != nil {
		t.Fatal(err)
	}
	runPromtool(t, "check", "rules", path)
}

// TestDashboardAndRulesReadOnlyExportedMetrics: every metric the
// dashboard's queries and the alert rules read is one that kez-chat's
// processes export (or the kubelet's and Prometheus' own), so that a
// renamed metric cannot leave a panel or an alert silently empty.
func TestDashboardAndRulesReadOnlyExportedMetrics(t *testing.T) {
	exported := exportedMetrics(t)
	_, exprs := dashboardExprs(t)
	checkNames(t, "dashboard.json", exprs, exported)

	var rules struct {
		Groups []struct {
			Rules []struct {
				Expr string `json:"expr"`
			} `json:"rules"`
		} `json:"groups"`
	}
	if err := yaml.Unmarshal(Rules, &rules); err != nil {
		t.Fatal(err)
	}
	var ruleExprs []string
	for _, g := range rules.Groups {
		for _, r := range g.Rules {
			ruleExprs = append(ruleExprs, r.Expr)
		}
	}
	checkNames(t, "rules.yaml", ruleExprs, exported)
}

// TestDashboardIsTemplatedOnNamespaceAndInstance: the variables every
// query filters by exist.
func TestDashboardIsTemplatedOnNamespaceAndInstance(t *testing.T) {
	var d dashboard
	if err := json.Unmarshal(Dashboard, &d); err != nil {
		t.Fatal(err)
	}
	vars := map[string]bool{}
	for _, v := range d.Templating.List {
		vars[v.Name] = true
	}
	for _, v := range []string{"datasource", "namespace", "kezchat"} {
		if !vars[v] {
			t.Errorf("no variable %s", v)
		}
	}
}
