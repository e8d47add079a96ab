package sqlite

import (
	"bytes"
	"fmt"
	"testing"

	"kez.lat/chat/server"
)

func TestTheUserCacheStaysWithinItsBytesAndHandsOutCopies(t *testing.T) {
	user := func(i int, keys int) *server.User {
		u := &server.User{Handle: fmt.Sprintf("user%03d", i), Server: "chat.test", PrimaryID: fmt.Sprintf("%040d", i), Alg: "ed25519",
			Key: bytes.Repeat([]byte{1}, 32), EncKey: bytes.Repeat([]byte{2}, 32)}
		for range keys {
			u.SigningKeys = append(u.SigningKeys, server.SigningKey{Alg: "ed25519", Key: bytes.Repeat([]byte{3}, 32), Label: "phone"})
		}
		return u
	}
	one := userBytes(user(0, 0))
	c := newUserCache(10 * one)
	for i := range 25 {
		c.put(user(i, 0))
		if c.used > c.max {
			t.Fatalf("after %d users the cache holds %d bytes, over its %d", i+1, c.used, c.max)
		}
	}
	if len(c.m) != 10 {
		t.Errorf("the cache holds %d users of %d bytes in %d bytes, want 10", len(c.m), one, c.max)
	}
	// Putting a cached user again does not count it twice.
	for h, u := range c.m {
		used := c.used
		c.put(cloneUser(u))
		if c.used != used {
			t.Errorf("putting %s again: %d bytes used, was %d", h, c.used, used)
		}
		break
	}
	// A user with more keys takes more room, and one larger than the whole
	// cache is not kept.
	big := user(99, 100)
	if userBytes(big) <= one {
		t.Fatalf("a user with 100 keys counts %d bytes, one without %d", userBytes(big), one)
	}
	c.put(big)
	if _, ok := c.get(big.Handle); ok || c.used > c.max {
		t.Errorf("a user larger than the cache was kept (%d of %d bytes used)", c.used, c.max)
	}
	// What get returns is a copy.
	c.put(user(7, 1))
	got, ok := c.get("user007")
	if !ok {
		t.Fatal("user007 not cached")
	}
	got.Key[0], got.SigningKeys[0].Key[0] = 9, 9
	if again, _ := c.get("user007"); again.Key[0] != 1 || again.SigningKeys[0].Key[0] != 3 {
		t.Error("changing what get returned changed the cache")
	}
}
