package main

import (
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	chatv1 "kez.lat/chat/api/v1alpha1"
)

// The objects below stand for what the operator makes for a KezChat, with
// its labels (controllers/names.go) and names.

func operatorLabels(instance, component string) map[string]string {
	return map[string]string{
		labelName: nameValue, labelInstance: instance, labelComponent: component,
		"app.kubernetes.io/part-of": "kez-chat", labelManagedBy: managedByValue,
	}
}

func newKezChat(ns, name string) *chatv1.KezChat {
	return &chatv1.KezChat{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec:       chatv1.KezChatSpec{Domain: name + ".example.org"},
	}
}

func condition(typ string, status metav1.ConditionStatus, reason, msg string) metav1.Condition {
	return metav1.Condition{Type: typ, Status: status, Reason: reason, Message: msg, LastTransitionTime: metav1.Now()}
}

// readyStatus is the status the operator writes for a KezChat all of
// whose parts are up.
func readyStatus(kc *chatv1.KezChat) chatv1.KezChatStatus {
	return chatv1.KezChatStatus{
		URL:            "https://" + kc.Spec.Domain,
		VAPIDPublicKey: "BPublicKeyOf" + kc.Name,
		Conditions: []metav1.Condition{
			condition(chatv1.ConditionReady, metav1.ConditionTrue, "ComponentsReady", "every component is ready"),
			condition(chatv1.ConditionDegraded, metav1.ConditionFalse, "AsExpected", ""),
			condition(chatv1.ConditionProgressing, metav1.ConditionFalse, "AsExpected", ""),
		},
		Server:    &chatv1.ComponentStatus{Replicas: 1, ReadyReplicas: 1, Image: "ghcr.io/kez-lat/kezchat:v1.2.3", Version: "v1.2.3"},
		SigServer: &chatv1.ComponentStatus{Replicas: 1, ReadyReplicas: 1, Image: "ghcr.io/kez-lat/kezchat:v1.2.3", Version: "v1.2.3"},
		NATS:      &chatv1.ComponentStatus{Replicas: 1, ReadyReplicas: 1, Image: "docker.io/library/nats:2.15.2-alpine", Version: "2.15.2-alpine"},
	}
}

func serverPVC(ns, instance, size string) *corev1.PersistentVolumeClaim {
	return &corev1.PersistentVolumeClaim{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: instance + "-server-data", Labels: operatorLabels(instance, componentServer)},
		Spec: corev1.PersistentVolumeClaimSpec{
			AccessModes: []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
			Resources: corev1.VolumeResourceRequirements{
				Requests: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse(size)},
			},
		},
	}
}

// serverPod is a chat server pod, as its Deployment would make it, on
// node; setRunning makes it Running and ready once created.
func serverPod(ns, instance, name, node string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: operatorLabels(instance, componentServer)},
		Spec: corev1.PodSpec{
			NodeName: node,
			Containers: []corev1.Container{{
				Name: "server", Image: "ghcr.io/kez-lat/kezchat:v1.2.3",
				Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 6969}, {Name: "metrics", ContainerPort: 9469}},
			}},
			Volumes: []corev1.Volume{{Name: "data", VolumeSource: corev1.VolumeSource{
				PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: instance + "-server-data"},
			}}},
		},
	}
}

func setRunning(t testing.TB, pod *corev1.Pod, ready bool) {
	t.Helper()
	status := corev1.ConditionFalse
	if ready {
		status = corev1.ConditionTrue
	}
	pod.Status.Phase = corev1.PodRunning
	pod.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodReady, Status: status, LastTransitionTime: metav1.Now()}}
	setStatus(t, pod)
}

func serverService(ns, instance string) *corev1.Service {
	return &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: instance + "-server", Labels: operatorLabels(instance, componentServer)},
		Spec: corev1.ServiceSpec{
			Selector: map[string]string{labelName: nameValue, labelInstance: instance, labelComponent: componentServer},
			Ports: []corev1.ServicePort{
				{Name: "http", Port: 6969, TargetPort: intstr.FromString("http")},
				{Name: "metrics", Port: 9469, TargetPort: intstr.FromString("metrics")},
			},
		},
	}
}

func serverDeployment(ns, instance string, env []corev1.EnvVar, args []string) *appsv1.Deployment {
	sel := map[string]string{labelName: nameValue, labelInstance: instance, labelComponent: componentServer}
	return &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: instance + "-server", Labels: operatorLabels(instance, componentServer)},
		Spec: appsv1.DeploymentSpec{
			Selector: &metav1.LabelSelector{MatchLabels: sel},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: operatorLabels(instance, componentServer)},
				Spec: corev1.PodSpec{
					Containers: []corev1.Container{{Name: "server", Image: "ghcr.io/kez-lat/kezchat:v1.2.3", Args: args, Env: env}},
					Volumes: []corev1.Volume{{Name: "vapid", VolumeSource: corev1.VolumeSource{
						Secret: &corev1.SecretVolumeSource{SecretName: instance + "-vapid"},
					}}},
				},
			},
		},
	}
}

func completedBackup(ns, name, instance string, at time.Time, bytes int64) *chatv1.KezChatBackup {
	return &chatv1.KezChatBackup{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec:       chatv1.KezChatBackupSpec{KezChat: chatv1.KezChatReference{Name: instance}},
		Status: chatv1.KezChatBackupStatus{
			Phase: chatv1.BackupCompleted, BackupID: name + "-id", Bytes: bytes,
			StartedAt: &metav1.Time{Time: at.Add(-time.Minute)}, CompletedAt: &metav1.Time{Time: at},
		},
	}
}
