package controllers

import (
	"fmt"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	chatv1 "kez.lat/chat/api/v1alpha1"
)

const sigServerDataDir = "/var/lib/kez-sig"

// sigServerPVC holds the sig-server's key log.
func sigServerPVC(kc *chatv1.KezChat) *corev1.PersistentVolumeClaim {
	return dataPVC(kc, namesOf(kc).sigServerData(), componentSigServer, &kc.Spec.SigServer.Storage)
}

// sigServerDeployment runs the sig-server from the same image as the chat
// server, on its own SQLite volume, so one pod replaced by Recreate.
func sigServerDeployment(kc *chatv1.KezChat, in Inputs) *appsv1.Deployment {
	n := namesOf(kc)
	spec := &kc.Spec.SigServer
	tmp, tmpMount := tmpVolume()
	return &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: n.sigServer(), Namespace: kc.Namespace, Labels: labels(kc, componentSigServer)},
		Spec: appsv1.DeploymentSpec{
			Replicas:             ptr.To(spec.ReplicaCount()),
			Selector:             &metav1.LabelSelector{MatchLabels: selectorLabels(kc, componentSigServer)},
			Strategy:             appsv1.DeploymentStrategy{Type: appsv1.RecreateDeploymentStrategyType},
			RevisionHistoryLimit: ptr.To[int32](5),
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels(kc, componentSigServer)},
				Spec: corev1.PodSpec{
					ServiceAccountName:           n.serviceAccount(),
					AutomountServiceAccountToken: ptr.To(false),
					SecurityContext:              podSecurityContext(),
					ImagePullSecrets:             kc.Spec.ImagePullSecrets,
					Containers: []corev1.Container{{
						Name:            "sig-server",
						Image:           in.image(kc),
						ImagePullPolicy: kc.Spec.ImagePullPolicy,
						Args: []string{
							"sig-server",
							fmt.Sprintf("--bind=:%d", sigServerPort),
							fmt.Sprintf("--metrics-bind=:%d", sigMetricsPort),
							"--db=" + sigServerDataDir + "/kez-sig.db",
							"--log-format=json",
						},
						Ports: []corev1.ContainerPort{
							{Name: "http", ContainerPort: sigServerPort, Protocol: corev1.ProtocolTCP},
							{Name: "metrics", ContainerPort: sigMetricsPort, Protocol: corev1.ProtocolTCP},
						},
						Resources:       resourcesOr(spec.Resources, "20m", "32Mi"),
						LivenessProbe:   httpProbe("/v1/healthz", "http", 10, 3),
						ReadinessProbe:  httpProbe("/v1/readyz", "http", 5, 2),
						SecurityContext: containerSecurityContext(),
						VolumeMounts: []corev1.VolumeMount{
							tmpMount,
							{Name: "data", MountPath: sigServerDataDir},
						},
					}},
					Volumes: []corev1.Volume{
						tmp,
						{Name: "data", VolumeSource: corev1.VolumeSource{
							PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: n.sigServerData()},
						}},
					},
				},
			},
		},
	}
}

// sigServerService is the sig-server's in-cluster address.
func sigServerService(kc *chatv1.KezChat) *corev1.Service {
	return apiService(kc, namesOf(kc).sigServer(), componentSigServer, sigServerPort, sigMetricsPort)
}
