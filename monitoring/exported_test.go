package monitoring

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"fmt"
	"log/slog"
	"net/http"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"kez.lat/chat/controllers"
	"kez.lat/chat/server/app"
	"kez.lat/chat/server/natsmetrics"
	"kez.lat/chat/server/natstest"
	"kez.lat/chat/server/push"
)

// externalMetrics are the series the rules and the dashboard read that
// kez-chat does not export: Prometheus' own up, and the kubelet's volume
// statistics.
var externalMetrics = []string{"up", "kubelet_volume_stats_available_bytes", "kubelet_volume_stats_capacity_bytes"}

// exportedMetrics are the names of every series kez-chat's processes
// export, read from their real registries: a chat server with Web Push and
// a sig-server, each after answering a request; the NATS exporter against
// a real nats-server; the operator's backup metrics. A histogram counts
// with its _bucket, _sum and _count series.
func exportedMetrics(t *testing.T) map[string]bool {
	t.Helper()
	names := map[string]bool{}
	addGathered := func(g prometheus.Gatherer) {
		families, err := g.Gather()
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range families {
			names[f.GetName()] = true
			if f.GetType() == dto.MetricType_HISTOGRAM {
				for _, s := range []string{"_bucket", "_sum", "_count"} {
					names[f.GetName()+s] = true
				}
			}
		}
	}
	quiet := slog.New(slog.DiscardHandler)
	serve := func(run func(context.Context) error, url string) {
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- run(ctx) }()
		res, err := http.Get(url + "/v1/readyz")
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		cancel()
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}

	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	cfg := app.DefaultConfig()
	cfg.Bind, cfg.MetricsBind = "127.0.0.1:0", ""
	cfg.DBPath = filepath.Join(t.TempDir(), "kez-chat.db")
	cfg.Push = &push.Config{Key: key, Subject: "mailto:admin@example.org"}
	cfg.Federation = &app.Federation{}
	chat, err := app.New(t.Context(), cfg, quiet)
	if err != nil {
		t.Fatal(err)
	}
	serve(chat.Run, chat.URL())
	addGathered(chat.Metrics)

	sigCfg := app.DefaultSigConfig()
	sigCfg.Bind, sigCfg.MetricsBind = "127.0.0.1:0", ""
	sigCfg.DBPath = filepath.Join(t.TempDir(), "kez-sig.db")
	sig, err := app.NewSigServer(t.Context(), sigCfg, quiet)
	if err != nil {
		t.Fatal(err)
	}
	serve(sig.Run, sig.URL())
	addGathered(sig.Metrics)

	nats, err := natstest.Start(natstest.Options{Name: "exported", Dir: t.TempDir(), Monitor: true})
	if err != nil {
		t.Fatal(err)
	}
	defer nats.Shutdown()
	reg := prometheus.NewRegistry()
	reg.MustRegister(&natsmetrics.Exporter{URL: fmt.Sprintf("http://%s", nats.Server.MonitorAddr())})
	addGathered(reg)

	// The operator's backup metrics list KezChats at each scrape; their
	// names are in their descriptions.
	descs := make(chan *prometheus.Desc, 16)
	controllers.BackupMetrics{}.Describe(descs)
	close(descs)
	fqName := regexp.MustCompile(`fqName: "([^"]+)"`)
	for d := range descs {
		names[fqName.FindStringSubmatch(d.String())[1]] = true
	}

	for _, n := range externalMetrics {
		names[n] = true
	}
	return names
}

// metricNames are the metric names a PromQL expression selects: the
// identifiers that are neither functions (followed by "("), keywords,
// label names (inside {} or the () after by, without, on, ignoring,
// group_left, group_right), strings nor durations; and the alternatives of
// a {__name__=~"a|b"} matcher.
func metricNames(expr string) []string {
	var names []string
	keywords := map[string]bool{"by": true, "without": true, "on": true, "ignoring": true, "group_left": true,
		"group_right": true, "bool": true, "and": true, "or": true, "unless": true, "offset": true, "inf": true, "nan": true,
		// Aggregations, whose "by (...)" may come before their "(".
		"sum": true, "avg": true, "min": true, "max": true, "count": true, "stddev": true, "stdvar": true, "group": true,
		"topk": true, "bottomk": true, "quantile": true, "count_values": true, "limitk": true, "limit_ratio": true}
	labelList := map[string]bool{"by": true, "without": true, "on": true, "ignoring": true, "group_left": true, "group_right": true}
	isIdent := func(c byte, first bool) bool {
		return c == '_' || c == ':' || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (!first && c >= '0' && c <= '9')
	}
	nameMatcher := regexp.MustCompile(`__name__\s*=~?\s*"([^"]*)"`)
	for i := 0; i < len(expr); {
		c := expr[i]
		switch {
		case c == '"' || c == '\'' || c == '`':
			end := strings.IndexByte(expr[i+1:], c)
			i += end + 2
		case c == '{':
			end := strings.IndexByte(expr[i:], '}')
			for _, m := range nameMatcher.FindAllStringSubmatch(expr[i:i+end], -1) {
				names = append(names, strings.Split(m[1], "|")...)
			}
			i += end + 1
		case c == '[':
			i += strings.IndexByte(expr[i:], ']') + 1
		case c >= '0' && c <= '9':
			for i < len(expr) && (isIdent(expr[i], false) || expr[i] == '.' || expr[i] == 'e') {
				i++
			}
		case isIdent(c, true):
			start := i
			for i < len(expr) && isIdent(expr[i], false) {
				i++
			}
			word := expr[start:i]
			rest := strings.TrimLeft(expr[i:], " \t\n")
			switch {
			case labelList[word]:
				if strings.HasPrefix(rest, "(") {
					i = len(expr) - len(rest) + strings.IndexByte(rest, ')') + 1
				}
			case keywords[strings.ToLower(word)]:
			case strings.HasPrefix(rest, "("):
				// a function
			default:
				names = append(names, word)
			}
		default:
			i++
		}
	}
	return names
}

func TestMetricNamesFindsSelectorsOnly(t *testing.T) {
	for expr, want := range map[string][]string{
		`sum by (namespace, kezchat) (rate(a_total{x=~"b|c", y="d"}[5m])) / on (pod) group_left (e) f > 0.5 and g offset 1h`: {"a_total", "f", "g"},
		`{__name__=~"a_total|b_total", code=~"5.."}`:                               {"a_total", "b_total"},
		`predict_linear(v{pvc=~".+-data"}[6h], 4 * 3600) < 1e9`:                    {"v"},
		`histogram_quantile(0.99, sum by (le) (rate(h_bucket[$__rate_interval])))`: {"h_bucket"},
	} {
		if got := metricNames(expr); !slices.Equal(got, want) {
			t.Errorf("metricNames(%s) = %v, want %v", expr, got, want)
		}
	}
}

// checkNames fails t for each name exprs select that nothing exports.
func checkNames(t *testing.T, where string, exprs []string, exported map[string]bool) {
	t.Helper()
	for _, e := range exprs {
		names := metricNames(e)
		if len(names) == 0 {
			t.Errorf("%s: %q selects no metric", where, e)
		}
		for _, n := range names {
			if !exported[n] {
				known := make([]string, 0, len(exported))
				for k := range exported {
					known = append(known, k)
				}
				sort.Strings(known)
				t.Errorf("%s: %q reads %s, which nothing exports (exported: %s)", where, e, n, strings.Join(known, " "))
			}
		}
	}
}
