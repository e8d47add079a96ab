package main

import (
	"context"
	"fmt"
	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	"io"
	"net/http"
	"os"
	"runtime/debug"
	"strings"
	"time"

	"github.com/go-logr/logr"
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	ctrlmetrics "sigs.k8s.io/controller-runtime/pkg/metrics"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	chatv1 "kez.lat/chat/api/v1alpha1"
	"kez.lat/chat/controllers"
)

// imageRepository is where release images of kezchat are published; the
// operator's default for KezChats is this repository at its own version
// unless --image (set by the deployment manifests) says otherwise.
const imageRepository = "ghcr.io/kez-lat/kezchat"

// operatorGCPercent is the operator's garbage collection target, unless
// GOGC sets one.
const operatorGCPercent = 50

// operatorFlags are the operator's settings; each also comes from its
// KEZ_ environment variable.
type operatorFlags struct {
	metricsBind, probeBind string
	leaderElect            bool
	leaderElectionNS       string
	namespaces             string
	image                  string
	maxConcurrent          int
	// Paced upgrades of the KezChats that run the operator's images.
	maxUpgrades        int
	upgradeTimeout     time.Duration
	platformAssignsUID bool
	log                logFlags
}

func runOperator(ctx context.Context, args []string, _, stderr io.Writer) error {
	var f operatorFlags
	fs := newFlagSet("operator", "operator [flags]\n\n"+
		"Runs the KezChat operator: it turns each KezChat resource into a running\n"+
		"chat instance and keeps it so. It finds the cluster as kubectl does\n"+
		"(in-cluster, or $KUBECONFIG, or ~/.kube/config).", stderr)
	fs.StringVar(&f.metricsBind, "metrics-bind", ":8080", "address to serve Prometheus /metrics on; 0 disables")
	fs.StringVar(&f.probeBind, "health-probe-bind", ":8081", "address to serve /healthz and /readyz on")
	fs.BoolVar(&f.leaderElect, "leader-elect", false, "elect a leader, so that only one of several replicas reconciles")
	fs.StringVar(&f.leaderElectionNS, "leader-election-namespace", "", "namespace of the leader-election Lease (default: the pod's own)")
	fs.StringVar(&f.namespaces, "watch-namespaces", "", "comma-separated namespaces to manage KezChats in; empty means all")
	fs.StringVar(&f.image, "image", imageRepository+":"+version, "image for KezChats that name none: the operator's own, so versions match")
	fs.IntVar(&f.maxConcurrent, "max-concurrent-reconciles", 16, "KezChats reconciled at once")
	fs.IntVar(&f.maxUpgrades, "max-concurrent-upgrades", controllers.DefaultMaxConcurrentUpgrades,
		"KezChats that roll to new --image at once, cluster-wide, after the operator is upgraded; the others keep their images until a slot frees (0: none rolls)")
	fs.DurationVar(&f.upgradeTimeout, "upgrade-timeout", controllers.DefaultUpgradeTimeout,
		"how long an upgraded KezChat's new pods may take to turn Ready before the upgrade counts as failed and stops the line")
	fs.BoolVar(&f.platformAssignsUID, "platform-assigns-uid", false,
		"name no runAsUser, runAsGroup or fsGroup in KezChat pods (still runAsNonRoot): the platform assigns them, as OpenShift's restricted SCC does")
	f.log.register(fs, "json")
	log, err := parseDaemonFlags(fs, args, &f.log, stderr)
	if err != nil {
		return err
	}
	ctrl.SetLogger(logr.FromSlogHandler(log.Handler()))
	if f.maxUpgrades < 0 {
		return fmt.Errorf("--max-concurrent-upgrades must be 0 or more, not %d", f.maxUpgrades)
	}
	if f.upgradeTimeout <= 0 {
		return fmt.Errorf("--upgrade-timeout must be positive, not %s", f.upgradeTimeout)
	}

	// The operator's heap is mostly its cache, which lives as long as the
	// process: with Go's default GOGC=100 the heap grows to twice that
	// before a collection, and the operator's RSS with it. Half as much
	// headroom cut its peak RSS at 1,000 KezChats by about a quarter for
	// a few percent more of its (small) CPU (docs/benchmarks.md).
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(operatorGCPercent)
	}

	cfg, err := ctrl.GetConfig()
	if err != nil {
		return fmt.Errorf("finding the cluster: %w", err)
	}
	return runManager(ctx, cfg, f)
}

// runManager runs the operator's controller manager against cfg until ctx
// ends.
func runManager(ctx context.Context, cfg *rest.Config, f operatorFlags) error {
	scheme := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(scheme); err != nil {
		return err
	}
	if err := chatv1.AddToScheme(scheme); err != nil {
		return err
	}
	// HTTPRoutes, made where the cluster serves them (spec.gateway).
	if err := gatewayv1.Install(scheme); err != nil {
		return err
	}
	if err := monitoringv1.AddToScheme(scheme); err != nil {
		return err
	}
	var namespaces []string
	for _, ns := range strings.Split(f.namespaces, ",") {
		if ns = strings.TrimSpace(ns); ns != "" {
			namespaces = append(namespaces, ns)
		}
	}
	mgr, err := ctrl.NewManager(cfg, ctrl.Options{
		Scheme:                        scheme,
		Cache:                         controllers.CacheOptions(namespaces),
		NewCache:                      controllers.NewCache,
		Metrics:                       metricsserver.Options{BindAddress: f.metricsBind},
		HealthProbeBindAddress:        f.probeBind,
		LeaderElection:                f.leaderElect,
		LeaderElectionID:              "kez-chat-operator.chat.kez.lat",
		LeaderElectionNamespace:       f.leaderElectionNS,
		LeaderElectionReleaseOnCancel: true,
	})
	if err != nil {
		return fmt.Errorf("creating the controller manager: %w", err)
	}
	// PodMonitors only where the Prometheus Operator's CRDs are: asked once.
	promOperator, err := controllers.HasPodMonitorCRD(mgr.GetRESTMapper())
	if err != nil {
		return fmt.Errorf("looking for the PodMonitor CRD: %w", err)
	}
	r := &controllers.KezChatReconciler{
		Client:             mgr.GetClient(),
		APIReader:          mgr.GetAPIReader(),
		Scheme:             scheme,
		Recorder:           mgr.GetEventRecorder("kez-chat-operator"),
		DefaultImage:       f.image,
		Namespaces:         namespaces,
		PlatformAssignsUID: f.platformAssignsUID,
		PrometheusOperator: promOperator,

		MaxConcurrentUpgrades: &f.maxUpgrades,
		UpgradeTimeout:        f.upgradeTimeout,
		// A KezChat with spec.backup is backed up before it upgrades.
		PreUpgrade: &controllers.PreUpgradeBackup{
			Client: mgr.GetClient(), APIReader: mgr.GetAPIReader(), Scheme: scheme,
		},
	}
	if err := r.SetupWithManager(mgr, controller.Options{MaxConcurrentReconciles: f.maxConcurrent}); err != nil {
		return fmt.Errorf("setting up the KezChat controller: %w", err)
	}
	// The age of each KezChat's last backup, for the backup alert.
	if err := ctrlmetrics.Registry.Register(controllers.BackupMetrics{Reader: mgr.GetClient()}); err != nil {
		return fmt.Errorf("registering backup metrics: %w", err)
	}
	backups := &controllers.KezChatBackupReconciler{
		Client:             mgr.GetClient(),
		APIReader:          mgr.GetAPIReader(),
		Scheme:             scheme,
		Recorder:           mgr.GetEventRecorder("kez-chat-operator"),
		DefaultImage:       f.image,
		PlatformAssignsUID: f.platformAssignsUID,
	}
	// One backup reconcile at a time: it keeps a KezChat's backups one
	// at a time by what it reads of the others before starting one.
	if err := backups.SetupWithManager(mgr, controller.Options{MaxConcurrentReconciles: 1}); err != nil {
		return fmt.Errorf("setting up the KezChatBackup controller: %w", err)
	}
	schedule := &controllers.BackupScheduleReconciler{
		Client:   mgr.GetClient(),
		Scheme:   scheme,
		Recorder: mgr.GetEventRecorder("kez-chat-operator"),
	}
	if err := schedule.SetupWithManager(mgr, controller.Options{}); err != nil {
		return fmt.Errorf("setting up the backup schedule controller: %w", err)
	}
	if err := mgr.AddHealthzCheck("ping", healthz.Ping); err != nil {
		return err
	}
	if err := mgr.AddReadyzCheck("informers", func(req *http.Request) error {
		if !mgr.GetCache().WaitForCacheSync(req.Context()) {
			return fmt.Errorf("caches not synced")
		}
		return nil
	}); err != nil {
		return err
	}
	return mgr.Start(ctx)
}
