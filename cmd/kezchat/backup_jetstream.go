package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"strings"

	"github.com/nats-io/nats.go"

	"kez.lat/chat/server/backup"
	"kez.lat/chat/server/jsstore"
	"kez.lat/chat/server/natsbus"
)

// natsConn connects to the chat server's NATS as the chat server does
// (--nats-url, --nats-user, --nats-password-file), but gives up when the
// connection is lost: a backup or restore that loses it fails and is
// retried whole.
func (f *backupFlags) natsConn(log *slog.Logger) (*nats.Conn, error) {
	cfg := natsbus.Config{URL: f.natsURL, Name: "kezchat backup " + f.id, User: f.natsUser}
	if f.natsPasswordFile != "" {
		b, err := os.ReadFile(f.natsPasswordFile)
		if err != nil {
			return nil, fmt.Errorf("--nats-password-file: %w", err)
		}
		cfg.Password = strings.TrimSpace(string(b))
	}
	return natsbus.Connect(cfg, log, nil, nats.MaxReconnects(0))
}

func (f *backupFlags) jetStreamSource(_ context.Context, log *slog.Logger) (backup.Source, func(), error) {
	nc, err := f.natsConn(log)
	if err != nil {
		return nil, nil, err
	}
	return backup.JetStreamSource{NC: nc, Log: log}, nc.Close, nil
}

func (f *backupFlags) jetStreamTarget(_ context.Context, log *slog.Logger) (backup.Target, func(), error) {
	nc, err := f.natsConn(log)
	if err != nil {
		return nil, nil, err
	}
	return backup.JetStreamTarget{NC: nc, Log: log, Lock: jsstore.RestoreLockOptions{Wait: f.restoreWait}}, nc.Close, nil
}
