package main

import (
	"context"
	"encoding/json"
	"sort"
	"time"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// volumeUse is how many bytes each KezChat volume holds, as the kubelets
// of the nodes its pods run on report it (the stats summary every
// kubelet serves, through the API server's nodes/proxy). It is best
// effort: a user without nodes/proxy, or a node that does not answer in
// time, leaves those volumes out, and status shows their capacity alone.
func volumeUse(ctx context.Context, k *kube, ns string) map[claimKey]int64 {
	var pods corev1.PodList
	if err := k.client.List(ctx, &pods, client.InNamespace(ns),
		client.MatchingLabels{labelName: nameValue, labelManagedBy: managedByValue}); err != nil {
		return nil
	}
	nodes := nodesWithClaims(pods.Items)
	used := map[claimKey]int64{}
	for _, node := range nodes {
		nctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		body, err := k.core.CoreV1().RESTClient().Get().
			AbsPath("/api/v1/nodes", node, "proxy", "stats", "summary").DoRaw(nctx)
		cancel()
		if err != nil {
			continue
		}
		for key, n := range claimUseFromSummary(body) {
			used[key] = n
		}
	}
	return used
}

// nodesWithClaims are the nodes running pods that mount a claim, sorted.
func nodesWithClaims(pods []corev1.Pod) []string {
	set := map[string]bool{}
	for _, p := range pods {
		if p.Spec.NodeName == "" {
			continue
		}
		for _, v := range p.Spec.Volumes {
			if v.PersistentVolumeClaim != nil {
				set[p.Spec.NodeName] = true
			}
		}
	}
	nodes := make([]string, 0, len(set))
	for n := range set {
		nodes = append(nodes, n)
	}
	sort.Strings(nodes)
	return nodes
}

// statsSummary is the part of the kubelet's /stats/summary read here.
type statsSummary struct {
	Pods []struct {
		Volume []struct {
			UsedBytes *int64 `json:"usedBytes"`
			PVCRef    *struct {
				Name      string `json:"name"`
				Namespace string `json:"namespace"`
			} `json:"pvcRef"`
		} `json:"volume"`
	} `json:"pods"`
}

// claimUseFromSummary is the used bytes of each claim a kubelet's stats
// summary reports; nil for a body it cannot read.
func claimUseFromSummary(body []byte) map[claimKey]int64 {
	var s statsSummary
	if err := json.Unmarshal(body, &s); err != nil {
		return nil
	}
	out := map[claimKey]int64{}
	for _, p := range s.Pods {
		for _, v := range p.Volume {
			if v.PVCRef == nil || v.UsedBytes == nil {
				continue
			}
			out[claimKey{v.PVCRef.Namespace, v.PVCRef.Name}] = *v.UsedBytes
		}
	}
	return out
}
