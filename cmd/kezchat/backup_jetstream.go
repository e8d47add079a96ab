package main

import (
	"context"
	"errors"
	"log/slog"

	"kez.lat/chat/server/backup"
)

func (f *backupFlags) jetStreamSource(ctx context.Context, log *slog.Logger) (backup.Source, func(), error) {
	return nil, nil, errors.New("--store jetstream: not implemented yet")
}

func (f *backupFlags) jetStreamTarget(ctx context.Context, log *slog.Logger) (backup.Target, func(), error) {
	return nil, nil, errors.New("--store jetstream: not implemented yet")
}
