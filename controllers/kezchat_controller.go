// Package controllers holds the KezChat reconciler: it turns each KezChat
// into the workloads of a chat instance and keeps them as the spec says.
//
// Each child's desired state is built by a pure function of the KezChat
// (server.go, nats.go, sigserver.go, access.go, vapid.go); the reconcile
// applies them by server-side apply, deletes what the spec no longer asks
// for, and computes the status from what it observes (status.go).
package controllers

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	k8slabels "k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/managedfields"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/recorder"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	chatv1 "kez.lat/chat/api/v1alpha1"
)

// retryUserError is how soon a KezChat that needs its user's attention (a
// missing VAPID Secret) is looked at again; the watch of users' Secrets
// (usersecrets.go) usually wakes it sooner.
const retryUserError = time.Minute

// KezChatReconciler reconciles KezChat objects.
type KezChatReconciler struct {
	// Client reads from the manager's cache, which holds only KezChats and
	// what the operator made, and writes to the API server.
	Client client.Client
	// APIReader reads from the API server directly: users' Secrets.
	APIReader client.Reader
	Scheme    *runtime.Scheme
	Recorder  recorder.EventRecorder
	// DefaultImage runs a KezChat that names no image: the operator's own.
	DefaultImage string

	// Paced upgrades to new default images (upgrade.go).
	//
	// DefaultNATSImage runs NATS for a KezChat that names none; empty
	// means the DefaultNATSImage constant.
	DefaultNATSImage string
	// MaxConcurrentUpgrades is how many KezChats may roll to new default
	// images at once; nil means DefaultMaxConcurrentUpgrades, 0 none
	// (every upgrade waits).
	MaxConcurrentUpgrades *int
	// UpgradeTimeout is how long an upgrade's new pods may take to turn
	// Ready before it counts as failed; 0 means DefaultUpgradeTimeout.
	UpgradeTimeout time.Duration
	// PreUpgrade, when set, runs before a KezChat that took an upgrade
	// slot changes its images: where a backup is taken first.
	PreUpgrade PreUpgradeHook
	// upgradeSlots serializes the taking of upgrade slots (claimSlot).
	upgradeSlots sync.Mutex
	// Namespaces the operator manages KezChats in (all when empty), for
	// the watch of users' Secrets.
	Namespaces []string
	// PlatformAssignsUID leaves the pods' uid, gid and fsGroup to the
	// platform (OpenShift's restricted SCC).
	PlatformAssignsUID bool
	// PrometheusOperator says the cluster serves PodMonitors
	// (HasPodMonitorCRD), which spec.monitoring.podMonitor makes.
	PrometheusOperator bool

	// converter compares what the cache holds with what apply would send
	// (apply.go).
	converterOnce sync.Once
	converter     managedfields.TypeConverter
	// applied spares comparing a child the cache holds at the version
	// last found as desired (apply.go).
	applied appliedVersions
	// gatewayAPI says the cluster served HTTPRoutes when the operator
	// started, so that it watches and makes them (gateway.go).
	gatewayAPI bool
}

// +kubebuilder:rbac:groups=chat.kez.lat,resources=kezchats,verbs=get;list;watch
// +kubebuilder:rbac:groups=chat.kez.lat,resources=kezchats/status,verbs=get;patch
// +kubebuilder:rbac:groups=chat.kez.lat,resources=kezchats/finalizers,verbs=update
// +kubebuilder:rbac:groups=apps,resources=deployments;statefulsets,verbs=get;list;watch;create;patch;delete
// +kubebuilder:rbac:groups="",resources=services;configmaps,verbs=get;list;watch;create;patch;delete
// +kubebuilder:rbac:groups="",resources=serviceaccounts;persistentvolumeclaims,verbs=get;list;watch;create;patch
// +kubebuilder:rbac:groups="",resources=secrets,verbs=get;list;watch;create;update
// +kubebuilder:rbac:groups=networking.k8s.io,resources=ingresses;networkpolicies,verbs=get;list;watch;create;patch;delete
// +kubebuilder:rbac:groups=policy,resources=poddisruptionbudgets,verbs=get;list;watch;create;patch;delete
// +kubebuilder:rbac:groups=gateway.networking.k8s.io,resources=httproutes,verbs=get;list;watch;create;patch;delete
// +kubebuilder:rbac:groups=events.k8s.io,resources=events,verbs=create;patch
// +kubebuilder:rbac:groups="",resources=events,verbs=list

// Reconcile brings one KezChat's children to what its spec asks for and
// records what it sees in its status.
func (r *KezChatReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	logger := log.FromContext(ctx)
	var kc chatv1.KezChat
	if err := r.Client.Get(ctx, req.NamespacedName, &kc); err != nil {
		if apierrors.IsNotFound(err) {
			r.applied.forget(req.NamespacedName)
		}
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	if !kc.DeletionTimestamp.IsZero() {
		// Even when paused: the data must not go with the KezChat unless
		// its deletion policy says so.
		return r.finalize(ctx, &kc)
	}
	if kc.Annotations[chatv1.ReconcileAnnotation] == chatv1.ReconcilePaused {
		logger.V(1).Info("reconciliation paused by annotation", "annotation", chatv1.ReconcileAnnotation)
		return ctrl.Result{}, r.notePaused(ctx, &kc)
	}
	if err := r.ensureFinalizer(ctx, &kc); err != nil {
		return ctrl.Result{}, err
	}
	r.noteResumed(&kc)

	obs, result, err := r.reconcileChildren(ctx, &kc)
	if apierrors.IsConflict(err) {
		// Someone wrote in between (a stale cache read); no failure, just
		// another look.
		return ctrl.Result{}, err
	}
	if err != nil {
		obs.failure = err
		obs.failureReason = ReasonReconcileFailed
		if errors.Is(err, errVAPIDSecret) || errors.Is(err, errNATSAuthSecret) || errors.Is(err, errVolumeExpansion) {
			obs.failureReason = ReasonVAPIDSecret
			if errors.Is(err, errNATSAuthSecret) {
				obs.failureReason = ReasonNATSAuthSecret
			}
			if errors.Is(err, errVolumeExpansion) {
				obs.failureReason = ReasonVolumeExpansion
			}
			result, err = ctrl.Result{RequeueAfter: retryUserError}, nil
		}
		r.Recorder.Eventf(&kc, nil, corev1.EventTypeWarning, obs.failureReason, "Reconcile", "%v", obs.failure)
	}
	if serr := r.writeStatus(ctx, &kc, obs); serr != nil {
		return ctrl.Result{}, errors.Join(err, serr)
	}
	return result, err
}

// reconcileChildren applies every child kc should have, deletes those it
// should not, and observes its workloads.
func (r *KezChatReconciler) reconcileChildren(ctx context.Context, kc *chatv1.KezChat) (observed, ctrl.Result, error) {
	var obs observed
	var expansionRefused error
	// What the reconcile creates or updates, for one event of each.
	changed, firstChanged := map[applyResult][]string{}, map[applyResult]client.Object{}
	noteChange := func(res applyResult, kind string, obj client.Object) {
		if len(changed[res]) == 0 {
			firstChanged[res] = obj
		}
		changed[res] = append(changed[res], kind+" "+obj.GetName())
	}
	// One event per kind of change, not per child: each event is a
	// request to the API server, and a new KezChat has twenty children.
	// It relates to the first child it names: events of the same reason
	// and related object merge into one series. Recorded however the
	// reconcile ends.
	defer func() {
		if names := changed[created]; len(names) > 0 {
			r.Recorder.Eventf(kc, firstChanged[created], corev1.EventTypeNormal, "Created", "Create", "created %s", listNote(names))
		}
		if names := changed[updated]; len(names) > 0 {
			r.Recorder.Eventf(kc, firstChanged[updated], corev1.EventTypeNormal, "Updated", "Update", "updated %s", listNote(names))
		}
	}()
	in := Inputs{DefaultImage: r.DefaultImage, DefaultNATSImage: r.DefaultNATSImage, PlatformAssignsUID: r.PlatformAssignsUID, GatewayAPI: r.gatewayAPI}
	if kc.Spec.Push.IsEnabled() {
		key, made, rotated, err := r.ensureVAPID(ctx, kc)
		if err != nil {
			return obs, ctrl.Result{}, err
		}
		switch {
		case made:
			noteChange(created, "Secret", &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: kc.Namespace, Name: key.secretName}})
		case rotated:
			r.Recorder.Eventf(kc, nil, corev1.EventTypeNormal, "VAPIDKeyRotated", "Update",
				"rotated the VAPID key in Secret %s: existing push subscriptions stop working", key.secretName)
		}
		in.VAPIDSecret, in.VAPIDDigest = key.secretName, key.digest
		obs.vapidPublicKey = key.publicKey
	}

	if kc.Spec.NATS.IsEnabled() {
		auth, made, err := r.ensureNATSAuth(ctx, kc)
		if err != nil {
			return obs, ctrl.Result{}, err
		}
		if made {
			noteChange(created, "Secret", &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: kc.Namespace, Name: auth.secretName}})
		}
		in.NATSAuth = auth
		vols, err := r.expandNATSVolumes(ctx, kc)
		if err != nil {
			return obs, ctrl.Result{}, err
		}
		in.NATSClaimTemplateSize, in.NATSStoreSize = vols.templateSize, vols.storeSize
		// A refused expansion is the user's to fix; the rest of the spec
		// applies meanwhile, and the status says so at the end.
		expansionRefused = vols.refused
	}

	// Which images: the operator's, or, queued for an upgrade, those
	// running now.
	upgrade, err := r.planUpgrade(ctx, kc, &in)
	if err != nil {
		return obs, ctrl.Result{}, err
	}
	obs.upgrade = upgrade
	r.announceUpgrade(kc, upgrade)

	claims, err := r.claimSizes(ctx, kc)
	if err != nil {
		return obs, ctrl.Result{}, err
	}
	if size, ok := claims[namesOf(kc).serverData()]; ok {
		in.ServerStoreSize = &size
	}
	for _, obj := range desiredObjects(kc, in) {
		if ownedByKezChat(kc, obj) {
			if err := controllerutil.SetControllerReference(kc, obj, r.Scheme); err != nil {
				return obs, ctrl.Result{}, err
			}
		}
		res, err := r.apply(ctx, kc, obj)
		if pvc, ok := obj.(*corev1.PersistentVolumeClaim); ok && err != nil {
			// A bigger claim the API server will not grow is the
			// user's to fix; it blocks nothing else of the spec.
			if had, existed := claims[pvc.Name]; existed {
				if refused := refusedGrowth(pvc, had, err); refused != nil {
					expansionRefused = errors.Join(expansionRefused, refused)
					continue
				}
			}
		}
		if err != nil {
			return obs, ctrl.Result{}, err
		}
		if res != unchanged {
			kind := obj.GetObjectKind().GroupVersionKind().Kind
			if gvk, err := r.Client.GroupVersionKindFor(obj); err == nil {
				kind = gvk.Kind
			}
			noteChange(res, kind, obj)
		}
	}
	// The chat server is applied with the federation its spec asks for
	// (federation.go), and the condition says which.
	fed := federationOf(kc)
	obs.federation = &fed
	for _, obj := range unwantedObjects(kc, in) {
		if err := r.deleteIfOwned(ctx, kc, obj); err != nil {
			return obs, ctrl.Result{}, err
		}
	}
	if obs.podMonitors, err = r.applyPodMonitors(ctx, kc); err != nil {
		return obs, ctrl.Result{}, err
	}

	n := namesOf(kc)
	if obs.server, err = r.observeDeployment(ctx, kc, n.server(), kc.Spec.Server.ReplicaCount()); err != nil {
		return obs, ctrl.Result{}, err
	}
	// The kubelet's probe events are read from the API server, so only
	// while there are pods whose probes fail.
	if !obs.server.ready && obs.server.hasPods {
		if obs.storageFull, err = r.serverStorageFull(ctx, kc, time.Now()); err != nil {
			return obs, ctrl.Result{}, err
		}
		if obs.storageFull != "" && !meta.IsStatusConditionTrue(kc.Status.Conditions, chatv1.ConditionStorageFull) {
			r.Recorder.Eventf(kc, nil, corev1.EventTypeWarning, ReasonStorageFull, "Observe", "%s", obs.storageFull)
		}
	}
	if kc.Spec.NATS.IsEnabled() {
		var sts appsv1.StatefulSet
		var found *appsv1.StatefulSet
		switch err := r.Client.Get(ctx, types.NamespacedName{Namespace: kc.Namespace, Name: n.nats()}, &sts); {
		case err == nil:
			found = &sts
		case !apierrors.IsNotFound(err):
			return obs, ctrl.Result{}, fmt.Errorf("reading StatefulSet %s: %w", n.nats(), err)
		}
		s := statefulSetState(found, kc.Spec.NATS.ReplicaCount())
		obs.nats = &s
	}
	if kc.Spec.SigServer.IsEnabled() {
		if obs.sigServer, err = r.observeDeployment(ctx, kc, n.sigServer(), kc.Spec.SigServer.ReplicaCount()); err != nil {
			return obs, ctrl.Result{}, err
		}
	}
	if obs.route, err = r.observeRoute(ctx, kc); err != nil {
		return obs, ctrl.Result{}, err
	}
	return obs, ctrl.Result{RequeueAfter: upgrade.decision.requeueAfter}, expansionRefused
}

func (r *KezChatReconciler) observeDeployment(ctx context.Context, kc *chatv1.KezChat, name string, desired int32) (*componentState, error) {
	var d appsv1.Deployment
	var found *appsv1.Deployment
	switch err := r.Client.Get(ctx, types.NamespacedName{Namespace: kc.Namespace, Name: name}, &d); {
	case err == nil:
		found = &d
	case !apierrors.IsNotFound(err):
		return nil, fmt.Errorf("reading Deployment %s: %w", name, err)
	}
	s := deploymentState(found, desired)
	return &s, nil
}

// listNote joins names for an event's note, which the API server caps at
// 1 kB: past 900 bytes, the rest is counted, not named.
func listNote(names []string) string {
	const most = 900
	var b strings.Builder
	for i, n := range names {
		if b.Len()+len(n) > most {
			fmt.Fprintf(&b, " and %d more", len(names)-i)
			break
		}
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(n)
	}
	return b.String()
}

// deleteIfOwned deletes obj if it exists and kc controls it; anything else
// of that name is someone else's.
func (r *KezChatReconciler) deleteIfOwned(ctx context.Context, kc *chatv1.KezChat, obj client.Object) error {
	if err := r.Client.Get(ctx, client.ObjectKeyFromObject(obj), obj); err != nil {
		return client.IgnoreNotFound(err)
	}
	if !metav1.IsControlledBy(obj, kc) {
		return nil
	}
	uid := obj.GetUID()
	err := r.Client.Delete(ctx, obj, client.Preconditions{UID: &uid}, client.PropagationPolicy(metav1.DeletePropagationBackground))
	if err = client.IgnoreNotFound(err); err != nil {
		return fmt.Errorf("deleting %T %s: %w", obj, obj.GetName(), err)
	}
	r.Recorder.Eventf(kc, obj, corev1.EventTypeNormal, "Deleted", "Delete", "deleted %s, which the spec no longer asks for", obj.GetName())
	return nil
}

// writeStatus writes the status obs gives kc, if that differs from what
// kc has: a steady KezChat is never written.
func (r *KezChatReconciler) writeStatus(ctx context.Context, kc *chatv1.KezChat, obs observed) error {
	st := computeStatus(kc, obs)
	if equality.Semantic.DeepEqual(st, kc.Status) {
		return nil
	}
	before := kc.DeepCopy()
	kc.Status = st
	// A merge patch with the resourceVersion fails on a concurrent change
	// rather than overwrite a newer status.
	if err := r.Client.Status().Patch(ctx, kc, client.MergeFromWithOptions(before, client.MergeFromWithOptimisticLock{})); err != nil {
		return fmt.Errorf("writing status: %w", err)
	}
	return nil
}

// SetupWithManager registers the reconciler with mgr, watching KezChats
// and every kind of child, so that a deleted or edited child is put back.
func (r *KezChatReconciler) SetupWithManager(mgr ctrl.Manager, opts controller.Options) error {
	userSecrets, err := r.userSecretSource(mgr)
	if err != nil {
		return err
	}
	if err := mgr.GetFieldIndexer().IndexField(context.Background(), &corev1.PersistentVolumeClaim{}, natsClaimIndex, natsClaimOf); err != nil {
		return fmt.Errorf("indexing NATS volume claims: %w", err)
	}
	// HTTPRoutes are watched only where the cluster serves them.
	if r.gatewayAPI, err = httpRoutesServed(mgr.GetRESTMapper()); err != nil {
		return err
	}
	// The schemas apply compares with are parsed now, before the cache
	// fills: parsing makes some 20 MB of garbage, which would otherwise
	// land on top of the informers' first lists.
	r.typeConverter()
	b := ctrl.NewControllerManagedBy(mgr).
		// Status writes change neither generation nor annotations, so the
		// operator's own status updates do not wake it.
		For(&chatv1.KezChat{}, builder.WithPredicates(predicate.Or(
			predicate.GenerationChangedPredicate{}, predicate.AnnotationChangedPredicate{}, beingDeleted))).
		Owns(&appsv1.Deployment{}).
		Owns(&appsv1.StatefulSet{}).
		Owns(&corev1.Service{}).
		Owns(&corev1.ConfigMap{}).
		Owns(&corev1.Secret{}).
		Owns(&corev1.PersistentVolumeClaim{}).
		Owns(&corev1.ServiceAccount{}).
		Owns(&networkingv1.Ingress{}).
		Owns(&networkingv1.NetworkPolicy{}).
		Owns(&policyv1.PodDisruptionBudget{}).
		// A pre-upgrade backup that finishes or is deleted wakes its
		// KezChat (preupgrade_backup.go).
		Owns(&chatv1.KezChatBackup{}, builder.WithPredicates(preUpgradeBackupChanges)).
		// A KezChat that lets go of an upgrade slot wakes the queued ones.
		Watches(&chatv1.KezChat{}, r.wakeQueued()).
		// The data under deletionPolicy Retain has no owner.
		Watches(&corev1.PersistentVolumeClaim{}, handler.EnqueueRequestsFromMapFunc(instanceOf)).
		Watches(&corev1.Secret{}, handler.EnqueueRequestsFromMapFunc(instanceOf)).
		WatchesRawSource(userSecrets)
	if r.gatewayAPI {
		b = b.Owns(&gatewayv1.HTTPRoute{})
	}
	if r.PrometheusOperator {
		b = b.Owns(&monitoringv1.PodMonitor{})
	}
	return b.WithOptions(opts).
		Named("kezchat").
		Complete(r)
}

// beingDeleted passes the update that marks a KezChat deleted, so that
// its finalizer runs.
var beingDeleted = predicate.Funcs{
	UpdateFunc: func(e event.UpdateEvent) bool {
		return !e.ObjectNew.GetDeletionTimestamp().IsZero()
	},
	CreateFunc:  func(event.CreateEvent) bool { return false },
	DeleteFunc:  func(event.DeleteEvent) bool { return false },
	GenericFunc: func(event.GenericEvent) bool { return false },
}

// CacheOptions limits the manager's cache to namespaces (all when empty)
// and, for the kinds of child, to what the operator made: a cluster's
// other Secrets and ConfigMaps never reach its memory.
func CacheOptions(namespaces []string) cache.Options {
	mine := k8slabels.SelectorFromSet(k8slabels.Set{managedByLabel: managedByValue})
	opts := cache.Options{ByObject: map[client.Object]cache.ByObject{}, DefaultTransform: ownManagedFieldsOnly}
	for _, obj := range []client.Object{
		&appsv1.Deployment{}, &appsv1.StatefulSet{},
		&corev1.Service{}, &corev1.ConfigMap{}, &corev1.Secret{},
		&corev1.PersistentVolumeClaim{}, &corev1.ServiceAccount{},
		&networkingv1.Ingress{}, &networkingv1.NetworkPolicy{}, &policyv1.PodDisruptionBudget{},
		&batchv1.Job{},
	} {
		opts.ByObject[obj] = cache.ByObject{Label: mine}
	}
	if len(namespaces) > 0 {
		opts.DefaultNamespaces = map[string]cache.Config{}
		for _, ns := range namespaces {
			opts.DefaultNamespaces[ns] = cache.Config{}
		}
	}
	return opts
}
