package main

import (
	"strings"
	"testing"

	"k8s.io/utils/ptr"
)

func TestVAPIDKeyPrintsThePublicKeyFromStatus(t *testing.T) {
	ns := testNamespace(t)
	ready := newKezChat(ns, "team")
	fresh := newKezChat(ns, "fresh")
	off := newKezChat(ns, "quiet")
	off.Spec.Push.Enabled = ptr.To(false)
	mustCreate(t, ready, fresh, off)
	ready.Status = readyStatus(ready)
	setStatus(t, ready)

	cases := []struct {
		name, kezchat string
		code          int
		stdout, in    string
	}{
		{"reported", "team", 0, "BPublicKeyOfteam\n", ""},
		{"not yet reported", "fresh", 1, "", "has no VAPID key in its status yet"},
		{"push off", "quiet", 1, "", "has Web Push off"},
		{"no such KezChat", "nope", 1, "", `no such KezChat "nope"`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			code, out, stderr := runPlugin(t, "vapid-key", c.kezchat, "-n", ns)
			if code != c.code || out != c.stdout || !strings.Contains(stderr, c.in) {
				t.Errorf("exit %d, stdout %q, stderr %q", code, out, stderr)
			}
		})
	}
}

func TestCommandLine(t *testing.T) {
	cases := []struct {
		name string
		args []string
		code int
		in   string
	}{
		{"no command", nil, 2, "Usage: kubectl kezchat <command>"},
		{"help", []string{"help"}, 0, "port-forward"},
		{"an unknown command", []string{"frobnicate"}, 2, `unknown command "frobnicate"`},
		{"a command's help", []string{"status", "--help"}, 0, "--all-namespaces"},
		{"kubectl's flags", []string{"logs", "--help"}, 0, "--context"},
		{"an unknown flag", []string{"status", "--frob"}, 2, "unknown flag: --frob"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var out, errOut strings.Builder
			code := run(t.Context(), c.args, &out, &errOut)
			if code != c.code || !strings.Contains(errOut.String(), c.in) {
				t.Errorf("exit %d, stderr %q; want %d and %q", code, errOut.String(), c.code, c.in)
			}
		})
	}
}
