package main

import (
	"context"
	"log/slog"

	"kez.lat/chat/server/backup"
	"kez.lat/chat/server/jsstore"
)

func (f *backupFlags) jetStreamSource(_ context.Context, log *slog.Logger) (backup.Source, func(), error) {
	nc, err := f.nats.connectOnce(log, "kezchat backup "+f.id)
	if err != nil {
		return nil, nil, err
	}
	return backup.JetStreamSource{NC: nc, Log: log}, nc.Close, nil
}

func (f *backupFlags) jetStreamTarget(_ context.Context, log *slog.Logger) (backup.Target, func(), error) {
	nc, err := f.nats.connectOnce(log, "kezchat backup "+f.id)
	if err != nil {
		return nil, nil, err
	}
	return backup.JetStreamTarget{NC: nc, Log: log, Lock: jsstore.RestoreLockOptions{Wait: f.restoreWait}}, nc.Close, nil
}
