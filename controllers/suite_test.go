package controllers

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-logr/logr"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"
	"sigs.k8s.io/controller-runtime/pkg/recorder"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	chatv1 "kez.lat/chat/api/v1alpha1"
	"kez.lat/chat/controllers/testenv"
	"kez.lat/chat/server/testutil"
)

// The tests against a real API server share one kube-apiserver and etcd,
// started by TestMain; each test works in a namespace of its own, with a
// manager of its own that watches only that namespace.
var (
	testConfig *rest.Config
	testScheme = runtime.NewScheme()
	k8s        client.Client // uncached, straight to the API server
)

func TestMain(m *testing.M) {
	os.Exit(runWithAPIServer(m))
}

func runWithAPIServer(m *testing.M) int {
	// The operator's logs are not the tests' output.
	ctrl.SetLogger(logr.Discard())
	if err := clientgoscheme.AddToScheme(testScheme); err != nil {
		panic(err)
	}
	if err := chatv1.AddToScheme(testScheme); err != nil {
		panic(err)
	}
	if err := gatewayv1.Install(testScheme); err != nil {
		panic(err)
	}
	// With the Gateway API's CRDs, as a cluster that serves HTTPRoutes
	// (gateway_envtest_test.go starts one without them).
	gatewayAPI, err := testenv.GatewayAPI()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	env, cfg, err := testenv.Start(gatewayAPI)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	testConfig = cfg
	defer env.Stop()
	k8s, err = client.New(testConfig, client.Options{Scheme: testScheme})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return m.Run()
}

// testNamespace makes a namespace for t, removed when t ends (envtest runs
// no namespace controller, so its objects stay in etcd until then).
func testNamespace(t testing.TB) string {
	t.Helper()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: "kc-"}}
	if err := k8s.Create(context.Background(), ns); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { k8s.Delete(context.Background(), ns) })
	return ns.Name
}

// runningManager is an operator manager started by a test.
type runningManager struct {
	reconciler *KezChatReconciler
	stop       func()
	requests   *requestLog
	events     *countingRecorder
}

// countingRecorder counts the events the reconcilers emit. The recorder
// sends them (and updates a repeated event's series) later, on a goroutine
// of its own, so the requests it sends do not say when an event was made.
type countingRecorder struct {
	recorder.EventRecorder
	n atomic.Int64
}

func (c *countingRecorder) Eventf(regarding, related runtime.Object, eventtype, reason, action, note string, args ...any) {
	c.n.Add(1)
	c.EventRecorder.Eventf(regarding, related, eventtype, reason, action, note, args...)
}

func (c *countingRecorder) AnnotatedEventf(regarding, related runtime.Object, annotations map[string]string, eventtype, reason, action, note string, args ...any) {
	c.n.Add(1)
	c.EventRecorder.AnnotatedEventf(regarding, related, annotations, eventtype, reason, action, note, args...)
}

// requestLog records the requests a manager sends to the API server.
type requestLog struct {
	mu   sync.Mutex
	sent []string
}

func (l *requestLog) wrap(next http.RoundTripper) http.RoundTripper {
	return roundTripperFunc(func(req *http.Request) (*http.Response, error) {
		l.mu.Lock()
		l.sent = append(l.sent, req.Method+" "+req.URL.RequestURI())
		l.mu.Unlock()
		return next.RoundTrip(req)
	})
}

// mark is where the requests sent from now on start, for since.
func (l *requestLog) mark() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.sent)
}

// since is the requests sent after mark, but for watches, which informers
// open again from time to time whatever the reconciler does.
func (l *requestLog) since(mark int) []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []string
	for _, r := range l.sent[mark:] {
		if !strings.Contains(r, "watch=true") {
			out = append(out, r)
		}
	}
	return out
}

type roundTripperFunc func(*http.Request) (*http.Response, error)

func (f roundTripperFunc) RoundTrip(req *http.Request) (*http.Response, error) { return f(req) }

// startManager runs the operator, as `kezchat operator` does, watching
// namespace only, with its settings changed by configure. It stops when t
// ends, or earlier by stop.
func startManager(t testing.TB, namespace string, configure ...func(*KezChatReconciler)) *runningManager {
	t.Helper()
	return startManagerOn(t, testConfig, namespace, configure...)
}

// startManagerOn is startManager on the control plane of config.
func startManagerOn(t testing.TB, config *rest.Config, namespace string, configure ...func(*KezChatReconciler)) *runningManager {
	t.Helper()
	// Every request the manager sends is logged, for the tests that count
	// them.
	requests := &requestLog{}
	cfg := rest.CopyConfig(config)
	cfg.Wrap(requests.wrap)
	mgr, err := ctrl.NewManager(cfg, ctrl.Options{
		Scheme:                 testScheme,
		Cache:                  CacheOptions([]string{namespace}),
		NewCache:               NewCache,
		Metrics:                metricsserver.Options{BindAddress: "0"},
		HealthProbeBindAddress: "0",
	})
	if err != nil {
		t.Fatal(err)
	}
	events := &countingRecorder{EventRecorder: mgr.GetEventRecorder("kez-chat-operator")}
	r := &KezChatReconciler{
		Client:       mgr.GetClient(),
		APIReader:    mgr.GetAPIReader(),
		Scheme:       testScheme,
		Recorder:     events,
		DefaultImage: "registry.example/kezchat:test",
		Namespaces:   []string{namespace},
	}
	r.PreUpgrade = &PreUpgradeBackup{Client: r.Client, APIReader: r.APIReader, Scheme: r.Scheme}
	for _, c := range configure {
		c(r)
	}
	// Each test runs a manager of its own, so the controller's name repeats.
	if err := r.SetupWithManager(mgr, controller.Options{SkipNameValidation: ptr.To(true), MaxConcurrentReconciles: 4}); err != nil {
		t.Fatal(err)
	}
	backups := &KezChatBackupReconciler{
		Client:       mgr.GetClient(),
		APIReader:    mgr.GetAPIReader(),
		Scheme:       testScheme,
		Recorder:     events,
		DefaultImage: r.DefaultImage,
	}
	if err := backups.SetupWithManager(mgr, controller.Options{SkipNameValidation: ptr.To(true)}); err != nil {
		t.Fatal(err)
	}
	schedule := &BackupScheduleReconciler{
		Client:   mgr.GetClient(),
		Scheme:   testScheme,
		Recorder: events,
	}
	if err := schedule.SetupWithManager(mgr, controller.Options{SkipNameValidation: ptr.To(true)}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- mgr.Start(ctx) }()
	syncCtx, syncCancel := context.WithTimeout(ctx, 30*time.Second)
	defer syncCancel()
	if !mgr.GetCache().WaitForCacheSync(syncCtx) {
		cancel()
		t.Fatal("manager cache did not sync")
	}
	var stopped bool
	stop := func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		if err := <-done; err != nil {
			t.Errorf("manager: %v", err)
		}
	}
	t.Cleanup(stop)
	return &runningManager{reconciler: r, stop: stop, requests: requests, events: events}
}

// reconcileNow runs one reconcile of kc by hand, as a watch event would.
// The manager may be reconciling kc at the same time; the one that loses
// the race to write its status gets a conflict, and tries again, as the
// manager's queue would.
func (m *runningManager) reconcileNow(t *testing.T, kc *chatv1.KezChat) {
	t.Helper()
	for range 10 {
		_, err := m.reconciler.Reconcile(context.Background(), ctrl.Request{NamespacedName: client.ObjectKeyFromObject(kc)})
		if err == nil {
			return
		}
		if !apierrors.IsConflict(err) {
			t.Fatalf("reconcile: %v", err)
		}
	}
	t.Fatal("reconcile: conflicts kept coming")
}

// eventually waits for cond; see testutil.WaitFor.
var eventually = testutil.WaitFor

// waitTimeout bounds a wait for the operator to get somewhere. Quiet, it
// gets there in a second or two; a cold CI run, compiling every package
// with -race beside the tests on two cores, slowed one past 20 s.
const waitTimeout = time.Minute

// childLists are empty lists of every kind of child a KezChat has.
func childLists() []client.ObjectList {
	return []client.ObjectList{
		&appsv1.DeploymentList{}, &appsv1.StatefulSetList{}, &corev1.ServiceList{}, &corev1.ConfigMapList{},
		&corev1.SecretList{}, &corev1.PersistentVolumeClaimList{}, &corev1.ServiceAccountList{},
		&networkingv1.IngressList{}, &networkingv1.NetworkPolicyList{}, &policyv1.PodDisruptionBudgetList{},
		&gatewayv1.HTTPRouteList{},
	}
}
