package server

import "testing"

func TestHandlesThatLookLikeAReservedNameAreReserved(t *testing.T) {
	for _, h := range []string{"admin", "admin.", "admin_", "ad-min", "a.d.m.i.n", "adm1n", "4dmin", "adrnin", "r00t",
		"no-reply", "no_reply", "n0reply", "5upport", "he1p", "wvvw", "kez", "k3z", "api", "ap1"} {
		if got := ErrorCode(ValidateHandle(h)); got != CodeReservedHandle {
			t.Errorf("ValidateHandle(%q) = %q, want reserved_handle", h, got)
		}
	}
	for _, h := range []string{"alice", "adminton", "administrators", "rooted", "kezia", "bob.smith", "info-desk", "sup"} {
		if err := ValidateHandle(h); err != nil {
			t.Errorf("ValidateHandle(%q) = %v, want nil", h, err)
		}
	}
}
