package sqlite

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"sync"

	sqlite "modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"

	"kez.lat/chat/server"
)

// userCacheBytes bounds the memory of the users kept in memory, by their
// size (about 300 bytes each, so some 28,000 users: every recipient of a
// replica with 10,000 open streams, whose sends each look up a sender and a
// recipient). The Store has no way to change or delete a user, so a cached
// record never goes stale; only lookups that found a user are cached.
const userCacheBytes = 8 << 20

// CreateUser registers u. A taken handle or primary_id is a handle_taken or
// primary_id_taken *server.Error; the single writer makes the check and the
// insert atomic.
func (db *DB) CreateUser(ctx context.Context, u *server.User) error {
	rec := cloneUser(u)
	err := db.submit(ctx, func(w *writer) error {
		return w.createUser(rec)
	})
	if err != nil {
		return fmt.Errorf("creating user %s: %w", u.Handle, err)
	}
	db.users.put(rec)
	return nil
}

func (w *writer) createUser(u *server.User) error {
	var one int
	switch err := queryRow(w.handleExists, u.Handle).Scan(&one); {
	case err == nil:
		return handleTaken(u)
	case !errors.Is(err, sql.ErrNoRows):
		return fmt.Errorf("checking handle: %w", err)
	}
	switch err := queryRow(w.primaryIDExists, u.PrimaryID).Scan(&one); {
	case err == nil:
		return primaryIDTaken(u)
	case !errors.Is(err, sql.ErrNoRows):
		return fmt.Errorf("checking primary_id: %w", err)
	}
	created := u.CreatedAt
	if created.IsZero() {
		created = w.batchTime
	}
	_, err := exec(w.insertUser, u.Handle, u.PrimaryID, u.Server, u.Alg,
		nonNil(u.Key), nonNil(u.EncKey), created.Unix())
	if err != nil {
		// Unreachable through this writer, but another process may share
		// the file.
		if col, ok := uniqueViolation(err); ok {
			if col == "users.primary_id" {
				return primaryIDTaken(u)
			}
			return handleTaken(u)
		}
		return fmt.Errorf("inserting user: %w", err)
	}
	if _, err := exec(w.insertInbox, u.Handle); err != nil {
		return fmt.Errorf("creating inbox: %w", err)
	}
	return nil
}

func handleTaken(u *server.User) error {
	return server.Errorf(server.CodeHandleTaken, "handle %q is already registered", u.Handle)
}

func primaryIDTaken(u *server.User) error {
	return server.Errorf(server.CodePrimaryIDTaken, "primary_id %s is already registered to another handle", u.PrimaryID)
}

// uniqueViolation reports whether err is a UNIQUE or PRIMARY KEY constraint
// failure, and on which table.column.
func uniqueViolation(err error) (column string, ok bool) {
	var se *sqlite.Error
	if !errors.As(err, &se) {
		return "", false
	}
	switch se.Code() {
	case sqlite3.SQLITE_CONSTRAINT_UNIQUE, sqlite3.SQLITE_CONSTRAINT_PRIMARYKEY:
	default:
		return "", false
	}
	// The message reads "... UNIQUE constraint failed: users.primary_id (2067)".
	msg := se.Error()
	if i := strings.LastIndex(msg, "failed: "); i >= 0 {
		column, _, _ = strings.Cut(msg[i+len("failed: "):], " (")
	}
	return column, true
}

// UserByHandle returns handle's record from the cache or the read pool, or
// an unknown_handle *server.Error.
func (db *DB) UserByHandle(ctx context.Context, handle string) (*server.User, error) {
	if u, ok := db.users.get(handle); ok {
		return u, nil
	}
	u := new(server.User)
	var created int64
	err := db.getUser.QueryRowContext(ctx, handle).Scan(
		&u.Handle, &u.Server, &u.PrimaryID, &u.Alg, &u.Key, &u.EncKey, &created)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("looking up user: %w", server.Errorf(server.CodeUnknownHandle, "no user %q", handle))
	}
	if err != nil {
		return nil, fmt.Errorf("looking up user %s: %w", handle, err)
	}
	u.CreatedAt = unixTime(created)
	db.users.put(u)
	return cloneUser(u), nil
}

func cloneUser(u *server.User) *server.User {
	c := *u
	c.Key = bytes.Clone(u.Key)
	c.EncKey = bytes.Clone(u.EncKey)
	if u.SigningKeys != nil {
		c.SigningKeys = make([]server.SigningKey, len(u.SigningKeys))
		for i, k := range u.SigningKeys {
			c.SigningKeys[i] = server.SigningKey{Alg: k.Alg, Key: bytes.Clone(k.Key), Label: k.Label}
		}
	}
	return &c
}

// nonNil turns a nil slice into an empty one: a nil []byte binds as NULL.
func nonNil(b []byte) []byte {
	if b == nil {
		return []byte{}
	}
	return b
}

// userCache is a map of users bounded in bytes; when full, arbitrary
// entries make room. It hands out copies.
type userCache struct {
	mu        sync.Mutex
	max, used int // bytes: the bound, and what the entries take (userBytes)
	m         map[string]*server.User
}

func newUserCache(maxBytes int) *userCache {
	return &userCache{max: maxBytes, m: make(map[string]*server.User)}
}

// userBytes is about what u takes in memory: its fields' bytes, plus the
// headers of the struct, its slices and its map entry.
func userBytes(u *server.User) int {
	n := 200 + len(u.Handle) + len(u.Server) + len(u.PrimaryID) + len(u.Alg) + len(u.Key) + len(u.EncKey)
	for _, k := range u.SigningKeys {
		n += 64 + len(k.Alg) + len(k.Key) + len(k.Label)
	}
	return n
}

func (c *userCache) get(handle string) (*server.User, bool) {
	c.mu.Lock()
	u, ok := c.m[handle]
	c.mu.Unlock()
	if !ok {
		return nil, false
	}
	return cloneUser(u), true
}

// put stores u, which the caller must not modify afterwards.
func (c *userCache) put(u *server.User) {
	size := userBytes(u)
	c.mu.Lock()
	defer c.mu.Unlock()
	if old, ok := c.m[u.Handle]; ok {
		c.used -= userBytes(old)
		delete(c.m, u.Handle)
	}
	if size > c.max {
		return
	}
	for h, v := range c.m {
		if c.used+size <= c.max {
			break
		}
		c.used -= userBytes(v)
		delete(c.m, h)
	}
	c.m[u.Handle] = u
	c.used += size
}
