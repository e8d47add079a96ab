// Command dashboard-shot renders the Grafana dashboard's panels
// (monitoring/dashboard.json) on real data into a PNG, without Grafana
// (AGPL, not used here): it runs bin/kezchat's chat server (JetStream
// store), sig-server and nats-exporter beside an in-process nats-server
// and a local push service (pushtest) every person subscribes to, a real
// Prometheus (hack/tools/prometheus, `install-k8s-tools.sh
// prometheus`) scraping them with the labels the PodMonitors give, puts a
// chat load on them, queries every panel's expression over the run, and
// draws the results as SVG in an HTML page that Debian's chromium
// screenshots. Not part of CI:
//
//	go run ./hack/dashboard-shot --out docs/monitoring-dashboard.png --duration 5m
package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"html"
	"io"
	"log"
	"math"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"kez.lat/chat/client"
	"kez.lat/chat/monitoring"
	"kez.lat/chat/server"
	"kez.lat/chat/server/natstest"
	"kez.lat/chat/server/push/pushtest"
	"kez.lat/chat/server/signing"
)

// domain is the chat's name, which signed requests carry.
const domain = "chat.example.org"

func main() {
	out := flag.String("out", "docs/monitoring-dashboard.png", "the PNG to write")
	duration := flag.Duration("duration", 5*time.Minute, "how long the load runs")
	kezchat := flag.String("kezchat", "", "the kezchat binary (default: built into a temporary directory)")
	flag.Parse()
	if err := run(*out, *duration, *kezchat); err != nil {
		log.Fatal(err)
	}
}

func freeAddr() string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func toolsDir() (string, error) {
	out, err := exec.Command("bash", "hack/tools/install-k8s-tools.sh", "prometheus").Output()
	if err != nil {
		return "", fmt.Errorf("install-k8s-tools.sh prometheus: %w", err)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	return lines[len(lines)-1], nil
}

func run(out string, duration time.Duration, kezchat string) error {
	dir, err := os.MkdirTemp("", "dashboard-shot-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	if kezchat == "" {
		kezchat = filepath.Join(dir, "kezchat")
		build := exec.Command("go", "build", "-o", kezchat, "./cmd/kezchat")
		build.Stdout, build.Stderr = os.Stderr, os.Stderr
		if err := build.Run(); err != nil {
			return fmt.Errorf("building kezchat: %w", err)
		}
	}
	tools, err := toolsDir()
	if err != nil {
		return err
	}

	nats, err := natstest.Start(natstest.Options{Name: "team-nats-0", Dir: filepath.Join(dir, "nats"), Monitor: true})
	if err != nil {
		return err
	}
	defer nats.Shutdown()

	// Web Push to a local push service (pushtest, which checks VAPID and
	// decrypts): the server's VAPID key is made here so the service knows it.
	const subject = "mailto:admin@example.org"
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return err
	}
	vapidPath := filepath.Join(dir, "vapid.pem")
	if err := os.WriteFile(vapidPath, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		return err
	}
	pushes, err := pushtest.NewServer(subject, &key.PublicKey)
	if err != nil {
		return err
	}
	defer pushes.Close()
	go func() {
		for range pushes.Received() {
		}
	}()

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var procs sync.WaitGroup
	start := func(name string, args ...string) {
		cmd := exec.CommandContext(ctx, args[0], args[1:]...)
		logf, _ := os.Create(filepath.Join(dir, name+".log"))
		cmd.Stdout, cmd.Stderr = logf, logf
		cmd.Cancel = func() error { return cmd.Process.Signal(os.Interrupt) }
		if err := cmd.Start(); err != nil {
			log.Fatalf("starting %s: %v", name, err)
		}
		procs.Go(func() { cmd.Wait(); logf.Close() })
	}
	chatAddr, chatMetrics := freeAddr(), freeAddr()
	sigAddr, sigMetrics := freeAddr(), freeAddr()
	exporter := freeAddr()
	promAddr := freeAddr()
	start("server", kezchat, "server", "--bind", chatAddr, "--metrics-bind", chatMetrics,
		"--store", "jetstream", "--nats-url", nats.URL, "--domain", domain,
		"--register-rate", "0", "--send-rate", "0", "--handle-send-rate", "0",
		"--max-streams-per-address", "0", "--max-connections-per-address", "0", "--max-connections", "400",
		"--vapid-subject", subject, "--vapid-key-path", vapidPath, "--push-allow-endpoint", pushes.Origin())
	start("sig-server", kezchat, "sig-server", "--bind", sigAddr, "--metrics-bind", sigMetrics, "--db", filepath.Join(dir, "sig.db"))
	start("nats-exporter", kezchat, "nats-exporter", "--nats-monitor-url", fmt.Sprintf("http://%s", nats.Server.MonitorAddr()), "--metrics-bind", exporter)

	// The labels a KezChat's PodMonitors give (controllers/monitoring.go)
	// and Prometheus adds (namespace, pod).
	config := fmt.Sprintf(`global:
  scrape_interval: 5s
scrape_configs:
  - job_name: kez-chat
    static_configs:
      - targets: [%q]
        labels: {namespace: team, kezchat: team, component: server, pod: team-server-5d8f7-abcde}
      - targets: [%q]
        labels: {namespace: team, kezchat: team, component: sig-server, pod: team-sig-server-7c9d4-fghij}
      - targets: [%q]
        labels: {namespace: team, kezchat: team, component: nats, pod: team-nats-0}
`, chatMetrics, sigMetrics, exporter)
	if err := os.WriteFile(filepath.Join(dir, "prometheus.yml"), []byte(config), 0o644); err != nil {
		return err
	}
	start("prometheus", filepath.Join(tools, "prometheus"), "--config.file", filepath.Join(dir, "prometheus.yml"),
		"--storage.tsdb.path", filepath.Join(dir, "tsdb"), "--web.listen-address", promAddr, "--log.level", "warn")

	base := "http://" + chatAddr
	if err := waitHTTP(base+"/v1/readyz", 30*time.Second); err != nil {
		return err
	}
	if err := waitHTTP("http://"+promAddr+"/-/ready", 30*time.Second); err != nil {
		return err
	}
	begin := time.Now()
	log.Printf("load for %s", duration)
	if err := load(ctx, base, "http://"+sigAddr, pushes, duration); err != nil {
		return err
	}
	time.Sleep(10 * time.Second) // the last scrapes
	end := time.Now()

	page, err := render("http://"+promAddr, begin, end)
	if err != nil {
		return err
	}
	htmlPath := filepath.Join(dir, "dashboard.html")
	if err := os.WriteFile(htmlPath, page, 0o644); err != nil {
		return err
	}
	abs, _ := filepath.Abs(out)
	shot := exec.Command("chromium", "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
		"--window-size=1600,1080", "--screenshot="+abs, "file://"+htmlPath)
	// chromium complains at length about D-Bus, which a headless
	// screenshot does not need.
	if msg, err := shot.CombinedOutput(); err != nil {
		return fmt.Errorf("chromium: %w\n%s", err, msg)
	}
	log.Printf("wrote %s", out)
	cancel()
	procs.Wait()
	return nil
}

func waitHTTP(u string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		resp, err := http.Get(u)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not ready: %v", u, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// load registers people, keeps most of them streaming, and sends messages
// at a rate that rises and falls over the run, with a few sig-server
// lookups.
func load(ctx context.Context, base, sigBase string, pushes *pushtest.Service, duration time.Duration) error {
	c := client.New(base, nil)
	const people = 60
	ids := make([]*client.Identity, people)
	for i := range ids {
		id, err := client.NewIdentity("ed25519")
		if err != nil {
			return err
		}
		if _, err := c.Register(ctx, id, fmt.Sprintf("user%02d", i)); err != nil {
			return fmt.Errorf("registering: %w", err)
		}
		ids[i] = id
		// Every person's browser subscribes to Web Push; a few push
		// services misbehave: one answers 500 for a while (retried, then
		// failed), one says the subscription is gone (pruned).
		sub := pushes.Subscribe()
		if err := subscribePush(ctx, base, id, sub); err != nil {
			return err
		}
		switch i {
		case 3:
			pushes.SetResponse(sub.Endpoint, http.StatusInternalServerError, 400)
		case 7:
			pushes.SetResponse(sub.Endpoint, http.StatusGone, 1)
		}
	}
	runCtx, stop := context.WithTimeout(ctx, duration)
	defer stop()
	var wg sync.WaitGroup
	// Readers come and go: up to 50 streams open.
	for i := range 50 {
		wg.Go(func() {
			time.Sleep(time.Duration(i) * duration / 120)
			for runCtx.Err() == nil {
				st, err := c.Stream(runCtx, ids[i], 0)
				if err != nil {
					time.Sleep(time.Second)
					continue
				}
				stay := time.After(time.Duration(20+mrand.IntN(60)) * time.Second)
				last := uint64(0)
				done := make(chan struct{})
				go func() {
					defer close(done)
					for {
						e, err := st.Next()
						if err != nil {
							return
						}
						last = e.Seq
					}
				}()
				select {
				case <-stay:
				case <-runCtx.Done():
				}
				st.Close()
				<-done
				if last > 0 {
					c.Ack(context.Background(), ids[i], last)
				}
				time.Sleep(time.Duration(mrand.IntN(5)) * time.Second)
			}
		})
	}
	var sent atomic.Int64
	begin := time.Now()
	for s := range 8 {
		wg.Go(func() {
			for runCtx.Err() == nil {
				// A day's shape in a few minutes: the rate rises and falls.
				phase := float64(time.Since(begin)) / float64(duration)
				rate := 4 + 16*math.Sin(math.Pi*phase) // per sender per second
				time.Sleep(time.Duration(float64(time.Second) / rate))
				from, to := ids[(s*7+mrand.IntN(people))%people], mrand.IntN(people)
				if _, err := c.Send(runCtx, from, fmt.Sprintf("user%02d", to), "hello from the dashboard shot"); err == nil {
					sent.Add(1)
				}
			}
		})
	}
	wg.Go(func() {
		for runCtx.Err() == nil {
			time.Sleep(500 * time.Millisecond)
			if resp, err := http.Get(sigBase + "/v1/keys/" + url.PathEscape("user01@chat.example.org")); err == nil {
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
		}
	})
	wg.Wait()
	log.Printf("sent %d messages", sent.Load())
	return nil
}

// subscribePush registers sub for id's handle, as the web app does: the
// request is signed, and the signature names the endpoint.
func subscribePush(ctx context.Context, base string, id *client.Identity, sub server.PushSubscriptionJSON) error {
	path := "/v1/push/subscribe/" + id.Handle
	auth, err := signing.SignRequest(id.Signer, domain, http.MethodPost, path, time.Now().Unix(), "endpoint="+sub.Endpoint)
	if err != nil {
		return err
	}
	body, _ := json.Marshal(sub)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, base+path, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-KEZ-Auth", auth)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		msg, _ := io.ReadAll(resp.Body)
		return fmt.Errorf("subscribing %s: %s %s", id.Handle, resp.Status, msg)
	}
	return nil
}

type dashboard struct {
	Title  string `json:"title"`
	Panels []struct {
		Title       string                   `json:"title"`
		GridPos     struct{ X, Y, W, H int } `json:"gridPos"`
		FieldConfig struct {
			Defaults struct {
				Unit string   `json:"unit"`
				Min  *float64 `json:"min"`
				Max  *float64 `json:"max"`
			} `json:"defaults"`
		} `json:"fieldConfig"`
		Targets []struct {
			Expr         string `json:"expr"`
			LegendFormat string `json:"legendFormat"`
		} `json:"targets"`
	} `json:"panels"`
}

type series struct {
	name   string
	points [][2]float64 // unix seconds, value
}

// queryRange asks Prometheus for expr over [begin, end].
func queryRange(prom, expr string, begin, end time.Time, legend string) ([]series, error) {
	q := url.Values{"query": {expr}, "start": {strconv.FormatInt(begin.Unix(), 10)},
		"end": {strconv.FormatInt(end.Unix(), 10)}, "step": {"5"}}
	resp, err := http.Get(prom + "/api/v1/query_range?" + q.Encode())
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var body struct {
		Status string `json:"status"`
		Error  string `json:"error"`
		Data   struct {
			Result []struct {
				Metric map[string]string `json:"metric"`
				Values [][2]any          `json:"values"`
			} `json:"result"`
		} `json:"data"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		return nil, err
	}
	if body.Status != "success" {
		return nil, fmt.Errorf("%s: %s", expr, body.Error)
	}
	var out []series
	for _, r := range body.Data.Result {
		name := legend
		for k, v := range r.Metric {
			name = strings.ReplaceAll(name, "{{"+k+"}}", v)
		}
		s := series{name: name}
		for _, v := range r.Values {
			f, err := strconv.ParseFloat(v[1].(string), 64)
			if err != nil || math.IsNaN(f) || math.IsInf(f, 0) {
				continue
			}
			s.points = append(s.points, [2]float64{v[0].(float64), f})
		}
		out = append(out, s)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].name < out[j].name })
	return out, nil
}

var palette = []string{"#73bf69", "#f2cc0c", "#5794f2", "#ff780a", "#f2495c", "#b877d9", "#8ab8ff", "#fade2a"}

func format(v float64, unit string) string {
	switch unit {
	case "percentunit":
		return fmt.Sprintf("%.0f%%", v*100)
	case "s":
		switch {
		case v == 0:
			return "0"
		case v < 1e-3:
			return fmt.Sprintf("%.0f µs", v*1e6)
		case v < 1:
			return fmt.Sprintf("%.1f ms", v*1e3)
		}
		return fmt.Sprintf("%.2f s", v)
	case "ops", "reqps":
		return fmt.Sprintf("%.3g/s", v)
	}
	return fmt.Sprintf("%.4g", v)
}

// render draws every panel of the dashboard, as laid out by its gridPos
// (24 columns), from Prometheus' answers.
func render(prom string, begin, end time.Time) ([]byte, error) {
	var d dashboard
	if err := json.Unmarshal(monitoring.Dashboard, &d); err != nil {
		return nil, err
	}
	vars := strings.NewReplacer("$__rate_interval", "30s", "$namespace", ".+", "$kezchat", ".+")
	const colW, rowH = 1600.0 / 24, 40.0
	var b strings.Builder
	fmt.Fprintf(&b, `<!doctype html><html><head><meta charset="utf-8"><style>
body{margin:0;background:#111217;color:#ccccdc;font:12px Inter,Helvetica,Arial,sans-serif}
.top{height:40px;display:flex;align-items:center;padding:0 16px;font-size:16px;border-bottom:1px solid #2d2f36}
.top span{color:#8e8e9c;font-size:12px;margin-left:16px}
.p{position:absolute;background:#181b1f;border:1px solid #2d2f36;border-radius:3px;box-sizing:border-box}
.p h3{margin:0;padding:6px 8px;font-size:13px;font-weight:500;color:#d8d9da}
.legend{position:absolute;bottom:4px;left:8px;right:8px;font-size:11px;white-space:nowrap;overflow:hidden}
.legend i{display:inline-block;width:12px;height:3px;margin:0 4px 3px 10px}
</style></head><body><div class="top">%s<span>namespace: All · KezChat: All · %s to %s UTC · a real Prometheus scraping kezchat server, sig-server and nats-exporter under load</span></div>`,
		html.EscapeString(d.Title), begin.UTC().Format("15:04:05"), end.UTC().Format("15:04:05"))
	for _, p := range d.Panels {
		x, y := float64(p.GridPos.X)*colW+4, float64(p.GridPos.Y)*rowH/1.25+44
		w, h := float64(p.GridPos.W)*colW-8, float64(p.GridPos.H)*rowH/1.25-8
		var all []series
		var legends []string
		for _, t := range p.Targets {
			ss, err := queryRange(prom, vars.Replace(t.Expr), begin, end, t.LegendFormat)
			if err != nil {
				return nil, err
			}
			all = append(all, ss...)
		}
		unit := p.FieldConfig.Defaults.Unit
		lo, hi := math.Inf(1), math.Inf(-1)
		for _, s := range all {
			for _, pt := range s.points {
				lo, hi = min(lo, pt[1]), max(hi, pt[1])
			}
		}
		if math.IsInf(lo, 0) {
			lo, hi = 0, 1
		}
		lo = min(lo, 0)
		if p.FieldConfig.Defaults.Min != nil {
			lo = *p.FieldConfig.Defaults.Min
		}
		if p.FieldConfig.Defaults.Max != nil {
			hi = max(hi, *p.FieldConfig.Defaults.Max)
		}
		if hi <= lo {
			hi = lo + 1
		}
		hi *= 1.05
		plotX, plotY, plotW, plotH := 60.0, 30.0, w-72, h-70
		fmt.Fprintf(&b, `<div class="p" style="left:%.0fpx;top:%.0fpx;width:%.0fpx;height:%.0fpx"><h3>%s</h3><svg style="position:absolute;left:0;top:0" width="%.0f" height="%.0f">`,
			x, y, w, h, html.EscapeString(p.Title), w, h)
		for i := 0; i <= 4; i++ {
			v := lo + (hi-lo)*float64(i)/4
			gy := plotY + plotH - plotH*float64(i)/4
			fmt.Fprintf(&b, `<line x1="%.0f" x2="%.0f" y1="%.1f" y2="%.1f" stroke="#2d2f36"/><text x="%.0f" y="%.1f" fill="#8e8e9c" font-size="10" text-anchor="end">%s</text>`,
				plotX, plotX+plotW, gy, gy, plotX-4, gy+3, html.EscapeString(format(v, unit)))
		}
		span := float64(end.Unix() - begin.Unix())
		for i := 0; i <= 5; i++ {
			tx := plotX + plotW*float64(i)/5
			tm := begin.Add(time.Duration(span * float64(i) / 5 * float64(time.Second)))
			anchor := "middle"
			if i == 5 {
				anchor = "end"
			}
			fmt.Fprintf(&b, `<text x="%.0f" y="%.0f" fill="#8e8e9c" font-size="10" text-anchor="%s">%s</text>`, tx, plotY+plotH+13, anchor, tm.UTC().Format("15:04:05"))
		}
		for i, s := range all {
			color := palette[i%len(palette)]
			var pts []string
			for _, pt := range s.points {
				px := plotX + plotW*(pt[0]-float64(begin.Unix()))/span
				py := plotY + plotH - plotH*(pt[1]-lo)/(hi-lo)
				pts = append(pts, fmt.Sprintf("%.1f,%.1f", px, py))
			}
			fmt.Fprintf(&b, `<polyline fill="none" stroke="%s" stroke-width="1.5" points="%s"/>`, color, strings.Join(pts, " "))
			legends = append(legends, fmt.Sprintf(`<i style="background:%s"></i>%s`, color, html.EscapeString(s.name)))
		}
		if len(all) == 0 {
			fmt.Fprintf(&b, `<text x="%.0f" y="%.0f" fill="#8e8e9c" text-anchor="middle">No data</text>`, w/2, h/2)
		}
		fmt.Fprintf(&b, `</svg><div class="legend">%s</div></div>`, strings.Join(legends, ""))
	}
	b.WriteString("</body></html>\n")
	if b.Len() == 0 {
		return nil, errors.New("empty page")
	}
	return []byte(b.String()), nil
}
