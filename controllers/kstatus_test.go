package controllers

import (
	"errors"
	"os"
	"testing"

	lua "github.com/yuin/gopher-lua"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	kstatus "sigs.k8s.io/cli-utils/pkg/kstatus/status"

	chatv1 "kez.lat/chat/api/v1alpha1"
)

// kstatusOf is what kstatus, as Flux and kubectl-based tools run it, makes
// of kc.
func kstatusOf(t *testing.T, kc *chatv1.KezChat) kstatus.Status {
	t.Helper()
	content, err := runtime.DefaultUnstructuredConverter.ToUnstructured(kc)
	if err != nil {
		t.Fatal(err)
	}
	u := &unstructured.Unstructured{Object: content}
	u.SetAPIVersion(chatv1.GroupVersion.String())
	u.SetKind("KezChat")
	res, err := kstatus.Compute(u)
	if err != nil {
		t.Fatal(err)
	}
	return res.Status
}

func TestKStatusReadsTheConditions(t *testing.T) {
	ready := &componentState{ready: true, reason: ReasonAvailable, replicas: chatv1.ComponentStatus{Replicas: 1, ReadyReplicas: 1}}
	pending := &componentState{reason: ReasonRollingOut, message: "0 of 1 replicas updated"}
	failed := &componentState{failed: true, reason: ReasonRolloutFailed, message: "progress deadline exceeded"}
	for _, tt := range []struct {
		name string
		obs  observed
		want kstatus.Status
	}{
		{"every component ready", observed{server: ready, nats: ready, sigServer: ready}, kstatus.CurrentStatus},
		{"a component rolling out", observed{server: ready, nats: pending, sigServer: ready}, kstatus.InProgressStatus},
		{"a rollout past its deadline", observed{server: failed, nats: ready}, kstatus.FailedStatus},
		{"a VAPID Secret to fix", observed{server: ready, failure: errors.New("VAPID secret nope does not exist"), failureReason: ReasonVAPIDSecret}, kstatus.FailedStatus},
		{"a full volume", observed{server: pending, storageFull: "pod answers 507"}, kstatus.FailedStatus},
	} {
		t.Run(tt.name, func(t *testing.T) {
			kc := newKezChat()
			kc.Generation = 3
			kc.Status = computeStatus(kc, tt.obs)
			if got := kstatusOf(t, kc); got != tt.want {
				t.Errorf("kstatus %s, want %s; conditions %+v", got, tt.want, kc.Status.Conditions)
			}
			// A spec the operator has not yet seen is in progress, whatever
			// the conditions say.
			kc.Generation = 4
			if got := kstatusOf(t, kc); got != kstatus.InProgressStatus {
				t.Errorf("with a newer generation: kstatus %s, want InProgress", got)
			}
		})
	}
}

// luaValue is v, as decoded from JSON, in Lua, as Argo CD hands an object
// to a health script.
func luaValue(L *lua.LState, v any) lua.LValue {
	switch v := v.(type) {
	case map[string]any:
		t := L.NewTable()
		for k, e := range v {
			t.RawSetString(k, luaValue(L, e))
		}
		return t
	case []any:
		t := L.NewTable()
		for i, e := range v {
			t.RawSetInt(i+1, luaValue(L, e))
		}
		return t
	case string:
		return lua.LString(v)
	case bool:
		return lua.LBool(v)
	case int64:
		return lua.LNumber(v)
	case float64:
		return lua.LNumber(v)
	}
	return lua.LNil
}

// argoCDHealth runs config/argocd/kezchat-health.lua on kc as Argo CD
// would, and returns the health status it gives.
func argoCDHealth(t *testing.T, kc *chatv1.KezChat) string {
	t.Helper()
	script, err := os.ReadFile("../config/argocd/kezchat-health.lua")
	if err != nil {
		t.Fatal(err)
	}
	content, err := runtime.DefaultUnstructuredConverter.ToUnstructured(kc)
	if err != nil {
		t.Fatal(err)
	}
	L := lua.NewState()
	defer L.Close()
	L.SetGlobal("obj", luaValue(L, content))
	if err := L.DoString(string(script)); err != nil {
		t.Fatalf("the health script fails: %v", err)
	}
	hs, ok := L.Get(-1).(*lua.LTable)
	if !ok {
		t.Fatalf("the health script returned %v", L.Get(-1))
	}
	return hs.RawGetString("status").String()
}

func TestArgoCDHealthScriptReadsTheConditions(t *testing.T) {
	ready := &componentState{ready: true, reason: ReasonAvailable}
	pending := &componentState{reason: ReasonRollingOut, message: "0 of 1 replicas updated"}
	for _, tt := range []struct {
		name   string
		obs    observed
		paused bool
		want   string
	}{
		{"every component ready", observed{server: ready, nats: ready}, false, "Healthy"},
		{"a component rolling out", observed{server: ready, nats: pending}, false, "Progressing"},
		{"a VAPID Secret to fix", observed{server: ready, failure: errors.New("nope"), failureReason: ReasonVAPIDSecret}, false, "Degraded"},
		{"paused", observed{server: ready}, true, "Suspended"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			kc := newKezChat()
			kc.Generation = 3
			kc.Status = computeStatus(kc, tt.obs)
			if tt.paused {
				meta.SetStatusCondition(&kc.Status.Conditions, metav1.Condition{Type: chatv1.ConditionPaused, Status: metav1.ConditionTrue, Reason: ReasonPaused})
			}
			if got := argoCDHealth(t, kc); got != tt.want {
				t.Errorf("Argo CD health %s, want %s", got, tt.want)
			}
		})
	}
	kc := newKezChat()
	if got := argoCDHealth(t, kc); got != "Progressing" {
		t.Errorf("a KezChat without status: Argo CD health %s, want Progressing", got)
	}
	kc.Generation = 4
	kc.Status = computeStatus(kc, observed{server: ready})
	kc.Generation = 5
	if got := argoCDHealth(t, kc); got != "Progressing" {
		t.Errorf("a spec not yet seen: Argo CD health %s, want Progressing", got)
	}
}
