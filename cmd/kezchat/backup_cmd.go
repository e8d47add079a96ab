package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"time"

	"kez.lat/chat/server/backup"
	"kez.lat/chat/server/backup/s3"
	"kez.lat/chat/server/sqlite"
)

// backupFlags are the settings `kezchat backup` and `kezchat restore` share
// (docs/backups.md); each also comes from its KEZ_ environment variable.
type backupFlags struct {
	part, id    string
	s3          s3.Config
	prefix      string
	db, store   string
	nats        natsFlags
	log         logFlags
	keepCount   int
	keepAge     time.Duration
	resultFile  string
	restoreWait time.Duration
}

func (f *backupFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&f.part, "part", "", "what to back up: server (the chat server's store) or sigserver (the sig-server's key log)")
	fs.StringVar(&f.id, "id", "", "the backup's id: its folder in the bucket, <prefix>/<id>/<part>/")
	fs.StringVar(&f.s3.Endpoint, "s3-endpoint", "", "S3-compatible object store, https://host[:port] (http://host[:port] with --s3-insecure-http)")
	fs.StringVar(&f.s3.Bucket, "s3-bucket", "", "bucket the backups are kept in (required)")
	fs.StringVar(&f.prefix, "s3-prefix", "", "folder inside the bucket (empty: the bucket's root)")
	fs.StringVar(&f.s3.Region, "s3-region", "us-east-1", "the bucket's region")
	fs.StringVar(&f.s3.CAFile, "s3-ca-file", "", "PEM CA bundle to trust for the endpoint instead of the system's")
	fs.BoolVar(&f.s3.InsecureHTTP, "s3-insecure-http", false, "allow a plain http endpoint (credentials and data cross the network in the clear)")
	fs.StringVar(&f.db, "db", "", "SQLite database file: the chat server's --db with --part server, the sig-server's --db with --part sigserver")
	fs.StringVar(&f.store, "store", "sqlite", "with --part server: the chat server's --store, sqlite (--db) or jetstream (--nats-url)")
	f.nats.registerBeside(fs)
	f.log.register(fs, "text")
}

// check validates the flags before anything reaches the network or disk.
func (f *backupFlags) check() (backup.Part, backup.Layout, error) {
	part, err := backup.ParsePart(f.part)
	if err != nil {
		return "", backup.Layout{}, err
	}
	if err := backup.CheckID(f.id); err != nil {
		return "", backup.Layout{}, err
	}
	if err := f.s3.Validate(); err != nil {
		return "", backup.Layout{}, err
	}
	layout, err := backup.NewLayout(f.prefix)
	if err != nil {
		return "", backup.Layout{}, err
	}
	switch {
	case f.store != "sqlite" && f.store != "jetstream":
		return "", layout, fmt.Errorf("--store %q: want sqlite or jetstream", f.store)
	case part == backup.PartSigServer && f.store != "sqlite":
		return "", layout, errors.New("--part sigserver is the sig-server's SQLite key log: --store jetstream is for --part server")
	case f.store == "sqlite" && f.db == "":
		return "", layout, fmt.Errorf("--part %s needs --db, the SQLite database file", part)
	case f.store == "sqlite" && f.nats.url != "":
		return "", layout, errors.New("--nats-url is for --store jetstream")
	case f.store == "jetstream" && f.nats.url == "":
		return "", layout, errors.New("--store jetstream needs --nats-url")
	case f.store == "jetstream" && f.db != "":
		return "", layout, errors.New("--db is for --store sqlite; --store jetstream reads NATS at --nats-url")
	}
	if err := f.s3.CredentialsFromEnv(); err != nil {
		return "", layout, err
	}
	return part, layout, nil
}

func (f *backupFlags) dbKind(part backup.Part) sqlite.DatabaseKind {
	if part == backup.PartSigServer {
		return sqlite.KeyLogDatabase
	}
	return sqlite.ChatDatabase
}

func runBackup(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var f backupFlags
	fs := newFlagSet("backup", "backup --part server|sigserver --id ID --s3-endpoint URL --s3-bucket NAME [flags]\n\n"+
		"Backs one part of a KezChat up to an S3-compatible object store, online, verifies the upload,\n"+
		"then deletes backups of the same part that retention no longer keeps. Credentials come from\n"+
		"AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN). On success it prints one\n"+
		"JSON line, also written to --result-file; on failure {\"error\":...} there.", stderr)
	f.register(fs)
	fs.IntVar(&f.keepCount, "keep-count", 0, "after a verified backup, keep at most this many backups of the part, the new one included (0: no count limit)")
	fs.DurationVar(&f.keepAge, "keep-age", 0, "after a verified backup, delete backups of the part completed longer ago than this, e.g. 720h (0: no age limit)")
	fs.StringVar(&f.resultFile, "result-file", "", "file the result line is written to (default /dev/termination-log when it exists, so Kubernetes shows it as the pod's termination message)")
	res, err := f.backup(ctx, fs, args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return err
	}
	line := resultLine(res, err)
	if err == nil {
		fmt.Fprintln(stdout, string(line))
	}
	if werr := writeResultFile(f.resultFile, line); werr != nil {
		err = errors.Join(err, werr)
	}
	return oneLine(err)
}

func (f *backupFlags) backup(ctx context.Context, fs *flag.FlagSet, args []string, stderr io.Writer) (*backup.Result, error) {
	log, err := parseDaemonFlags(fs, args, &f.log, stderr)
	if err != nil {
		return nil, err
	}
	part, layout, err := f.check()
	if err != nil {
		return nil, err
	}
	ret := backup.Retention{KeepCount: f.keepCount, KeepAge: f.keepAge}
	if err := ret.Validate(); err != nil {
		return nil, err
	}
	store, err := s3.New(f.s3)
	if err != nil {
		return nil, err
	}
	src, closeSrc, err := f.source(ctx, part, log)
	if err != nil {
		return nil, err
	}
	defer closeSrc()
	return backup.Take(ctx, src, backup.Options{Store: store, Layout: layout, ID: f.id, Part: part,
		Version: version, Retention: ret, Log: log})
}

func (f *backupFlags) source(ctx context.Context, part backup.Part, log *slog.Logger) (backup.Source, func(), error) {
	if f.store == "jetstream" {
		return f.jetStreamSource(ctx, log)
	}
	return backup.SQLiteSource{Path: f.db, DB: f.dbKind(part), Log: log}, func() {}, nil
}

func runRestore(ctx context.Context, args []string, _, stderr io.Writer) error {
	var f backupFlags
	fs := newFlagSet("restore", "restore --part server|sigserver --id ID --s3-endpoint URL --s3-bucket NAME [flags]\n\n"+
		"Restores one part of a backup, unless its database (or JetStream stream) exists already: then it\n"+
		"does nothing and exits 0, so it can run before every start. It checks every object's size and\n"+
		"SHA-256, the database's integrity, and every identity's key-log chain before moving anything into place.", stderr)
	f.register(fs)
	fs.DurationVar(&f.restoreWait, "wait-timeout", 30*time.Minute, "with --store jetstream: how long to wait for another restore into the same NATS (another chat server replica's) to finish before failing")
	log, err := parseDaemonFlags(fs, args, &f.log, stderr)
	if err != nil {
		return err
	}
	part, layout, err := f.check()
	if err != nil {
		return err
	}
	if f.restoreWait <= 0 {
		return fmt.Errorf("--wait-timeout %s: want a positive duration", f.restoreWait)
	}
	store, err := s3.New(f.s3)
	if err != nil {
		return err
	}
	dst, closeDst, err := f.target(ctx, part, log)
	if err != nil {
		return err
	}
	defer closeDst()
	_, err = backup.Restore(ctx, dst, backup.RestoreOptions{Store: store, Layout: layout, ID: f.id, Part: part, Log: log})
	return oneLine(err)
}

func (f *backupFlags) target(ctx context.Context, part backup.Part, log *slog.Logger) (backup.Target, func(), error) {
	if f.store == "jetstream" {
		return f.jetStreamTarget(ctx, log)
	}
	return backup.SQLiteTarget{Path: f.db, DB: f.dbKind(part), Log: log}, func() {}, nil
}

// maxResult keeps the result under Kubernetes's 4 KiB termination message.
const maxResult = 4000

// resultLine is the JSON line a backup reports.
func resultLine(res *backup.Result, err error) []byte {
	if err != nil {
		msg := oneLine(err).Error()
		if len(msg) > maxResult-32 {
			msg = msg[:maxResult-32]
		}
		b, _ := json.Marshal(map[string]string{"error": msg})
		return b
	}
	b, _ := json.Marshal(res)
	for len(b) > maxResult && len(res.Deleted) > 0 {
		// The ids beyond what fits are in the log.
		res.Deleted = res.Deleted[:len(res.Deleted)/2]
		b, _ = json.Marshal(res)
	}
	return b
}

// terminationLog is where Kubernetes reads a container's termination message.
var terminationLog = "/dev/termination-log"

func writeResultFile(path string, line []byte) error {
	if path == "" {
		if _, err := os.Stat(terminationLog); err != nil {
			return nil
		}
		path = terminationLog
	}
	if err := os.WriteFile(path, append(line, '\n'), 0o644); err != nil {
		return fmt.Errorf("writing the result to --result-file: %w", err)
	}
	return nil
}

// oneLine makes err's text one line, as a termination message and a log
// line should be.
func oneLine(err error) error {
	if err == nil || errors.Is(err, flag.ErrHelp) {
		return err
	}
	msg := err.Error()
	if !strings.ContainsAny(msg, "\r\n") {
		return err
	}
	return errors.New(strings.Join(strings.Fields(strings.ReplaceAll(msg, "\n", "; ")), " "))
}
