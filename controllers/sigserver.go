package controllers

import (
	"fmt"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"

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
	resources := resourcesOr(spec.Resources, "20m", "32Mi")
	volumes := []corev1.Volume{{Name: "data", VolumeSource: corev1.VolumeSource{
		PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: n.sigServerData()},
	}}}
	var initContainers []corev1.Container
	if kc.Spec.Bootstrap != nil {
		restore, restoreVolumes := restoreInitContainer(kc, chatv1.BackupPartSigServer, in.image(kc), resources)
		initContainers = append(initContainers, restore)
		volumes = append(volumes, restoreVolumes...)
	}
	return componentDeployment(kc, in, componentSpec{
		name:       n.sigServer(),
		component:  componentSigServer,
		replicas:   spec.ReplicaCount(),
		strategy:   appsv1.DeploymentStrategy{Type: appsv1.RecreateDeploymentStrategyType},
		scheduling: spec.Scheduling,
		container:  "sig-server",
		args: []string{
			"sig-server",
			fmt.Sprintf("--bind=:%d", sigServerPort),
			fmt.Sprintf("--metrics-bind=:%d", sigMetricsPort),
			"--db=" + sigServerDBFile,
			"--log-format=json",
		},
		env:            trustedProxiesEnv(kc),
		httpPort:       sigServerPort,
		metricsPort:    sigMetricsPort,
		resources:      resources,
		volumes:        volumes,
		mounts:         []corev1.VolumeMount{{Name: "data", MountPath: sigServerDataDir}},
		initContainers: initContainers,
	})
}

// sigServerService is the sig-server's in-cluster address.
func sigServerService(kc *chatv1.KezChat) *corev1.Service {
	return apiService(kc, namesOf(kc).sigServer(), componentSigServer, sigServerPort, sigMetricsPort)
}
