package controllers

import (
	"fmt"

	"k8s.io/apimachinery/pkg/api/meta"
	k8slabels "k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
)

// The children the operator makes only where their CRDs are installed:
// HTTPRoutes (spec.gateway) and PodMonitors (spec.monitoring). Whether
// they are is asked once, when the operator starts.
var podMonitorKind = monitoringv1.SchemeGroupVersion.WithKind(monitoringv1.PodMonitorsKind)

// served says whether the cluster serves kind.
func served(mapper meta.RESTMapper, kind schema.GroupVersionKind) (bool, error) {
	_, err := mapper.RESTMapping(kind.GroupKind(), kind.Version)
	switch {
	case err == nil:
		return true, nil
	case meta.IsNoMatchError(err):
		return false, nil
	}
	return false, fmt.Errorf("finding out whether the cluster serves %s: %w", kind, err)
}

// NewCache makes the manager's cache (ctrl.Options.NewCache) from
// CacheOptions: of the optional kinds the cluster serves it holds only
// the operator's own, like every other kind of child. The cache refuses
// options for a kind the cluster does not serve, so this is decided here,
// where the cluster is known.
func NewCache(config *rest.Config, opts cache.Options) (cache.Cache, error) {
	mine := cache.ByObject{Label: k8slabels.SelectorFromSet(k8slabels.Set{managedByLabel: managedByValue})}
	byObject := make(map[client.Object]cache.ByObject, len(opts.ByObject)+2)
	for obj, by := range opts.ByObject {
		byObject[obj] = by
	}
	for kind, obj := range map[schema.GroupVersionKind]client.Object{
		httpRouteKind:  &gatewayv1.HTTPRoute{},
		podMonitorKind: &monitoringv1.PodMonitor{},
	} {
		ok, err := served(opts.Mapper, kind)
		if err != nil {
			return nil, err
		}
		if ok {
			byObject[obj] = mine
		}
	}
	opts.ByObject = byObject
	return cache.New(config, opts)
}
