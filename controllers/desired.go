package controllers

import (
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	chatv1 "kez.lat/chat/api/v1alpha1"
)

// desiredObjects is every child kc should have, built from its spec and
// in, in the order they are applied: what a workload mounts or runs as
// comes before the workload.
func desiredObjects(kc *chatv1.KezChat, in Inputs) []client.Object {
	n := namesOf(kc)
	objs := []client.Object{serviceAccount(kc)}
	if kc.Spec.Server.StoreKind() == chatv1.StoreSQLite {
		objs = append(objs, serverPVC(kc))
	}
	objs = append(objs, serverService(kc), serverNetworkPolicy(kc), serverDeployment(kc, in))
	if kc.Spec.Server.ReplicaCount() > 1 {
		objs = append(objs, podDisruptionBudget(kc, n.server(), componentServer))
	}
	if kc.Spec.NATS.IsEnabled() {
		objs = append(objs, natsConfigMap(kc, in), natsHeadlessService(kc), natsService(kc), natsNetworkPolicy(kc), natsStatefulSet(kc, in))
		if kc.Spec.NATS.ReplicaCount() > 1 {
			objs = append(objs, podDisruptionBudget(kc, n.nats(), componentNATS))
		}
	}
	if kc.Spec.SigServer.IsEnabled() {
		objs = append(objs, sigServerPVC(kc), sigServerService(kc), sigServerNetworkPolicy(kc), sigServerDeployment(kc, in))
	}
	if kc.Spec.Ingress.IsEnabled() {
		objs = append(objs, ingress(kc))
	}
	if kc.Spec.Gateway.IsEnabled() && in.GatewayAPI {
		objs = append(objs, httpRoute(kc))
	}
	return objs
}

// unwantedObjects names the children kc's spec no longer asks for, which
// the reconcile deletes if it made them (an HTTPRoute only where the
// cluster serves them: in.GatewayAPI). Volumes are never among them:
// turning a component off keeps its data until the KezChat is deleted.
func unwantedObjects(kc *chatv1.KezChat, in Inputs) []client.Object {
	n := namesOf(kc)
	meta := func(name string) metav1.ObjectMeta { return metav1.ObjectMeta{Name: name, Namespace: kc.Namespace} }
	var objs []client.Object
	if kc.Spec.Server.ReplicaCount() <= 1 {
		objs = append(objs, &policyv1.PodDisruptionBudget{ObjectMeta: meta(n.server())})
	}
	if !kc.Spec.NATS.IsEnabled() {
		objs = append(objs,
			&appsv1.StatefulSet{ObjectMeta: meta(n.nats())},
			&corev1.Service{ObjectMeta: meta(n.nats())},
			&corev1.Service{ObjectMeta: meta(n.natsHeadless())},
			&corev1.ConfigMap{ObjectMeta: meta(n.natsConfig())},
			&networkingv1.NetworkPolicy{ObjectMeta: meta(n.nats())},
		)
	}
	if !kc.Spec.NATS.IsEnabled() || kc.Spec.NATS.ReplicaCount() <= 1 {
		objs = append(objs, &policyv1.PodDisruptionBudget{ObjectMeta: meta(n.nats())})
	}
	if !kc.Spec.SigServer.IsEnabled() {
		objs = append(objs,
			&appsv1.Deployment{ObjectMeta: meta(n.sigServer())},
			&corev1.Service{ObjectMeta: meta(n.sigServer())},
			&networkingv1.NetworkPolicy{ObjectMeta: meta(n.sigServer())},
		)
	}
	if !kc.Spec.Ingress.IsEnabled() {
		objs = append(objs, &networkingv1.Ingress{ObjectMeta: meta(n.ingress())})
	}
	if !kc.Spec.Gateway.IsEnabled() && in.GatewayAPI {
		objs = append(objs, &gatewayv1.HTTPRoute{ObjectMeta: meta(n.httpRoute())})
	}
	return objs
}
