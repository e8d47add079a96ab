package signing

import (
	"sync"

	voi "github.com/oasisprotocol/curve25519-voi/primitives/ed25519"
)

// expandedKeyBytes is what one cached key costs: curve25519-voi's
// ExpandedPublicKey (216 bytes) with the table it allocates (1,504), and
// the map's entry.
const expandedKeyBytes = 1800

// expandedKeyCacheBytes bounds the cache of expanded Ed25519 keys: about
// 2,300 keys, the senders active in any recent moment of a busy instance.
const expandedKeyCacheBytes = 4 << 20

// expandedKeys holds the public keys that verified recently, expanded for
// verification (the point decompressed, its negation precomputed): a
// verification under an expanded key takes about 80% of the time of one
// under the 32 bytes. Keyed by the key's bytes, never by a signature or a
// message: every signature is still verified in full.
var expandedKeys = newExpandedKeyCache(expandedKeyCacheBytes / expandedKeyBytes)

type expandedKeyCache struct {
	mu   sync.Mutex
	keys map[[keySize]byte]*voi.ExpandedPublicKey
	max  int
}

func newExpandedKeyCache(max int) *expandedKeyCache {
	return &expandedKeyCache{keys: make(map[[keySize]byte]*voi.ExpandedPublicKey), max: max}
}

func (c *expandedKeyCache) get(pub []byte) *voi.ExpandedPublicKey {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.keys[[keySize]byte(pub)]
}

// add keeps k for pub, first dropping an entry at random when full: no
// order to keep up per hit, and nothing a sender can aim at.
func (c *expandedKeyCache) add(pub []byte, k *voi.ExpandedPublicKey) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.keys) >= c.max {
		for old := range c.keys {
			delete(c.keys, old)
			break
		}
	}
	c.keys[[keySize]byte(pub)] = k
}
